"""Data sources: TFDS by default, local JSONL/TSV files as the alternative.

`super_glue_source(config, "jsonl", data_dir)` reads the official SuperGLUE files
(`<data_dir>/BoolQ/{train,val,test}.jsonl`, ..., `<data_dir>/AX-b/AX-b.jsonl`) and yields
exactly the examples TFDS `super_glue/<config>:1.0.2` yields: same fields, dtypes, ids,
MultiRC/ReCoRD flattening and WSC span fixes, so the same preprocessors serve both.

Local files are read and checked in Python before anything reaches tf.data. Bad data
(an unreadable file, invalid JSON, a missing field, a wrong type, empty text, a label
that is not one of the task's labels) raises `DataError` naming the file, the line and
the field; a label is never guessed.

`register_text_task(...)` registers a seqio Task from your own JSONL or TSV files.
"""
import csv
import dataclasses
import functools
import io
import json
import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import vocab

SUPER_GLUE_TFDS_VERSION = "1.0.2"
GLUE_TFDS_VERSION = "2.0.0"

# Official SuperGLUE layout: one folder per task, `val.jsonl` for the validation split.
SUPER_GLUE_DIRS = {
    "boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC",
    "record": "ReCoRD", "rte": "RTE", "wic": "WiC", "wsc": "WSC", "wsc.fixed": "WSC",
    "axb": "AX-b", "axg": "AX-g",
}
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
DIAGNOSTIC_CONFIGS = ("axb", "axg")  # Test split only, in `<Dir>/<Dir>.jsonl`.

# TFDS label classes (ClassLabel names, in index order); ReCoRD has answers instead.
SUPER_GLUE_LABELS = {
    "boolq": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"),
    "multirc": ("False", "True"),
    "rte": ("entailment", "not_entailment"),
    "wic": ("False", "True"),
    "wsc": ("False", "True"),
    "wsc.fixed": ("False", "True"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}
# Text features of the flat (one-line-one-example) configs, as TFDS names them.
_TEXT_FIELDS = {
    "boolq": ("question", "passage"),
    "cb": ("premise", "hypothesis"),
    "copa": ("premise", "choice1", "choice2", "question"),
    "rte": ("premise", "hypothesis"),
    "wic": ("word", "sentence1", "sentence2"),
    "wsc": ("text",),
    "wsc.fixed": ("text",),
    "axb": ("sentence1", "sentence2"),
    "axg": ("premise", "hypothesis"),
}
# WSC spans that no fix can make substrings of the text (TFDS keeps them as they are).
_WSC_UNFIXABLE_SPANS = ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin")


class DataError(ValueError):
  """Bad local data; the message names the file, line and field."""


# ---------------------------------------------------------------------------- reading


def _open_lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, decoded line) for each line of `path`."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise DataError(f"{path}: cannot read file: {e}") from e
  for number, raw in enumerate(io.BytesIO(data), start=1):
    try:
      yield number, raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{number}: not valid UTF-8: {e}") from e


def read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed JSON) for each non-blank line of `path`."""
  for number, line in _open_lines(path):
    if not line.strip():
      continue
    try:
      yield number, json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{number}: invalid JSON: {e}") from e


def read_tsv(path: str) -> Iterator[tuple[int, dict[str, str]]]:
  """(line number, {column: value}) per row of a TSV file with a header line."""
  lines = [line for _, line in _open_lines(path)]
  reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
  header = reader.fieldnames or []
  for row in reader:
    if None in row or any(v is None for v in row.values()):
      raise DataError(f"{path}:{reader.line_num}: expected {len(header)} tab-separated "
                      f"columns {header}, got a different number.")
    yield reader.line_num, row


@dataclasses.dataclass(frozen=True)
class Fields:
  """Checked access to one record; errors say `<file>:<line>: field '<name>'`."""
  path: str
  line: int
  record: Any
  prefix: str = ""

  def error(self, field: str, problem: str) -> DataError:
    return DataError(f"{self.path}:{self.line}: field '{self.prefix}{field}': {problem}")

  def has(self, field: str) -> bool:
    return isinstance(self.record, Mapping) and field in self.record

  def get(self, field: str) -> Any:
    if not isinstance(self.record, Mapping):
      raise DataError(f"{self.path}:{self.line}: expected a JSON object at "
                      f"'{self.prefix or '<line>'}', got {type(self.record).__name__}.")
    if field not in self.record:
      raise self.error(field, "missing.")
    return self.record[field]

  def text(self, field: str) -> str:
    value = self.get(field)
    if not isinstance(value, str):
      raise self.error(field, f"expected a string, got {value!r}.")
    if not value.strip():
      raise self.error(field, "empty text.")
    return value

  def integer(self, field: str) -> int:
    value = self.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
      raise self.error(field, f"expected an integer, got {value!r}.")
    return value

  def child(self, field: str) -> "Fields":
    return Fields(self.path, self.line, self.get(field), f"{self.prefix}{field}.")

  def children(self, field: str) -> list["Fields"]:
    value = self.get(field)
    if not isinstance(value, list):
      raise self.error(field, f"expected a list, got {type(value).__name__}.")
    return [Fields(self.path, self.line, v, f"{self.prefix}{field}[{i}].")
            for i, v in enumerate(value)]

  def label(self, field: str, label_names: Sequence[str], split: str,
            convert: Callable[[Any], Any] = lambda v: v) -> int:
    """Index of the label in `label_names`; -1 if absent in the test split."""
    if not self.has(field):
      if split == "test":
        return -1
      raise self.error(field, "missing (only the test split may be unlabelled).")
    value = self.record[field]
    name = convert(value)
    if not isinstance(name, str) or name not in label_names:
      raise self.error(field, f"label {value!r} is not one of {list(label_names)}.")
    return list(label_names).index(name)


def _bool_name(value: Any) -> Any:
  """JSON true/false -> "True"/"False" (other values pass through to be rejected)."""
  return str(value) if isinstance(value, bool) else value


def _binary_name(value: Any) -> Any:
  """MultiRC answer labels: true/false or 0/1."""
  if isinstance(value, bool) or value in (0, 1):
    return str(bool(value))
  return value


def _copa_name(value: Any) -> Any:
  """COPA labels: 0 -> choice1, 1 -> choice2 (integers only)."""
  if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
    return ("choice1", "choice2")[value]
  return value


# ------------------------------------------------------- official SuperGLUE -> TFDS


def _fix_wsc_span(example: dict[str, Any], span: str, fields: Fields) -> None:
  """TFDS's `wsc.fixed` repair of a span that is not a substring of the text."""
  text, index = example[f"{span}_text"], example[f"{span}_index"]
  if text in example["text"] or text in _WSC_UNFIXABLE_SPANS:
    return
  if "theyscold" in text:
    # TFDS moves the pronoun index here but leaves the text unchanged; so do we.
    example["span2_index"] = 10
  words = example["text"].split()
  if not 0 <= index < len(words):
    raise fields.error(f"target.{span}_index", f"{index} is not a word of the text.")
  text = (text[0].lower() if words[index][0].islower() else text[0].upper()) + text[1:]
  text = text.rstrip(".").replace("\n", " ")
  if text not in example["text"]:
    raise fields.error(f"target.{span}_text", f"{text!r} is not part of the text.")
  example[f"{span}_text"] = text


def _flat_example(config: str, f: Fields, split: str) -> dict[str, Any]:
  """One official line -> one TFDS example (every config but MultiRC and ReCoRD)."""
  labels = SUPER_GLUE_LABELS[config]
  is_wsc = config.startswith("wsc")
  spans = f.child("target") if is_wsc else f
  example = {k: f.text(k) for k in _TEXT_FIELDS[config]}
  if is_wsc:
    for k in ("span1_text", "span2_text"):
      example[k] = spans.text(k)
    for k in ("span1_index", "span2_index"):
      example[k] = spans.integer(k)
    if config == "wsc.fixed":
      _fix_wsc_span(example, "span1", f)
      _fix_wsc_span(example, "span2", f)
  if config == "wic":
    for k in ("start1", "start2", "end1", "end2"):
      example[k] = f.integer(k)
  example["idx"] = f.integer("idx")
  convert = {"copa": _copa_name}.get(config, _bool_name)
  example["label"] = f.label("label", labels, split, convert)
  return example


def _multirc_examples(f: Fields, split: str) -> list[dict[str, Any]]:
  """One official paragraph -> one TFDS example per answer-option."""
  passage = f.child("passage")
  paragraph = passage.text("text")
  examples = []
  for q in passage.children("questions"):
    question = q.text("question")
    for a in q.children("answers"):
      examples.append({
          "paragraph": paragraph,
          "question": question,
          "answer": a.text("text"),
          "label": a.label("label", SUPER_GLUE_LABELS["multirc"], split, _binary_name),
          "idx": {"paragraph": f.integer("idx"), "question": q.integer("idx"),
                  "answer": a.integer("idx")},
      })
  return examples


def _record_entities(passage: Fields) -> list[str]:
  """Sorted unique entity strings; official `end` offsets are inclusive."""
  text = passage.text("text")
  entities = set()
  for e in passage.children("entities"):
    start, end = e.integer("start"), e.integer("end")
    if not 0 <= start <= end < len(text):
      raise e.error("end", f"span [{start}, {end}] is outside the passage text.")
    entities.add(text[start:end + 1])
  return sorted(entities)


def _record_examples(f: Fields, split: str) -> list[dict[str, Any]]:
  """One official passage -> one TFDS example per query."""
  passage = f.child("passage")
  text, entities = passage.text("text"), _record_entities(passage)
  examples = []
  for qa in f.children("qas"):
    if qa.has("answers"):
      answers = sorted({a.text("text") for a in qa.children("answers")})
    else:
      answers = []
    if not answers and split != "test":
      raise qa.error("answers", "missing or empty (only the test split may be unlabelled).")
    examples.append({
        "passage": text, "query": qa.text("query"), "entities": entities,
        "answers": answers,
        "idx": {"passage": f.integer("idx"), "query": qa.integer("idx")},
    })
  return examples


def official_to_tfds(config: str, f: Fields, split: str) -> list[dict[str, Any]]:
  """One line of an official SuperGLUE JSONL file -> its TFDS examples."""
  if config == "multirc":
    return _multirc_examples(f, split)
  if config == "record":
    return _record_examples(f, split)
  return [_flat_example(config, f, split)]


def super_glue_signature(config: str) -> dict[str, Any]:
  """The `tf.TensorSpec`s of TFDS `super_glue/<config>` examples."""
  text, int32 = tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)
  if config == "record":
    return {"passage": text, "query": text,
            "entities": tf.TensorSpec([None], tf.string),
            "answers": tf.TensorSpec([None], tf.string),
            "idx": {"passage": int32, "query": int32}}
  if config == "multirc":
    fields = {k: text for k in ("paragraph", "question", "answer")}
    fields["idx"] = {"paragraph": int32, "question": int32, "answer": int32}
  else:
    fields = {k: text for k in _TEXT_FIELDS[config]}
    fields["idx"] = int32
  if config.startswith("wsc"):
    fields.update({k: text for k in ("span1_text", "span2_text")})
    fields.update({k: int32 for k in ("span1_index", "span2_index")})
  if config == "wic":
    fields.update({k: int32 for k in ("start1", "start2", "end1", "end2")})
  fields["label"] = tf.TensorSpec([], tf.int64)
  return fields


def super_glue_jsonl_files(config: str, data_dir: str) -> dict[str, str]:
  """Split -> official JSONL path under `data_dir`."""
  folder = f"{data_dir.rstrip('/')}/{SUPER_GLUE_DIRS[config]}"
  if config in DIAGNOSTIC_CONFIGS:
    return {"test": f"{folder}/{SUPER_GLUE_DIRS[config]}.jsonl"}
  return {split: f"{folder}/{name}" for split, name in SPLIT_FILES.items()}


def read_super_glue_jsonl(config: str, path: str, split: str) -> list[dict[str, Any]]:
  """All TFDS-schema examples of one official file, checked while reading."""
  examples = []
  for line, record in read_jsonl(path):
    examples.extend(official_to_tfds(config, Fields(path, line, record), split))
  return examples


def dataset_from_examples(examples: Sequence[Mapping[str, Any]],
                          signature: Mapping[str, Any]) -> tf.data.Dataset:
  """A tf.data pipeline over already-checked Python examples."""

  def cast(value, spec):
    if isinstance(value, Mapping):
      return {k: cast(value[k], spec[k]) for k in spec}
    if spec.dtype == tf.string:
      return np.array(value, dtype=object) if spec.shape.rank else value
    return np.array(value, dtype=spec.dtype.as_numpy_dtype)

  def generate():
    for example in examples:
      yield {k: cast(example[k], spec) for k, spec in signature.items()}

  return tf.data.Dataset.from_generator(generate, output_signature=dict(signature))


class CheckedFileDataSource(seqio.FunctionDataSource):
  """Files read and checked in Python by `read_fn(path, split) -> examples`.

  Paths may be local or anything `tf.io.gfile` opens (e.g. gs://), and glob patterns.
  """

  def __init__(self, files_by_split: Mapping[str, Sequence[str] | str],
               read_fn: Callable[[str, str], list[dict[str, Any]]],
               signature: Mapping[str, Any]):
    self._patterns = {s: [p] if isinstance(p, str) else list(p)
                      for s, p in files_by_split.items()}
    self._read_fn = read_fn
    self._signature = signature
    self._num_examples = {}  # split -> count from the last read (mixing rates ask often).
    super().__init__(dataset_fn=self._dataset_fn, splits=list(self._patterns))

  def files(self, split: str) -> list[str]:
    """The files of `split`, patterns expanded; DataError if a pattern matches none."""
    paths = []
    for pattern in self._patterns[split]:
      matches = sorted(tf.io.gfile.glob(pattern)) if _is_glob(pattern) else [pattern]
      if not matches:
        raise DataError(f"{pattern}: no file matches this pattern (split {split!r}).")
      paths.extend(matches)
    return paths

  def read(self, split: str) -> list[dict[str, Any]]:
    examples = [ex for path in self.files(split) for ex in self._read_fn(path, split)]
    self._num_examples[split] = len(examples)
    return examples

  def _dataset_fn(self, split: str, shuffle_files: bool,
                  seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed  # Files are read whole; seqio shuffles examples.
    return dataset_from_examples(self.read(split), self._signature)

  def num_input_examples(self, split: str) -> Optional[int]:
    if split not in self._num_examples:
      self.read(split)
    return self._num_examples[split]

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._patterns})"


def _is_glob(pattern: str) -> bool:
  return any(ch in pattern for ch in "*?[")


# ------------------------------------------------------------------- source factory


def super_glue_source(config: str, source: str = "tfds", data_dir: Optional[str] = None,
                      splits: Optional[Sequence[str]] = None) -> seqio.DataSource:
  """The source of SuperGLUE `config` (a TFDS config name, e.g. "wsc.fixed").

  Args:
    config: TFDS `super_glue` config name.
    source: "tfds" (`super_glue/<config>:1.0.2`) or "jsonl" (official files).
    data_dir: for "jsonl", the folder holding `BoolQ/`, `CB/`, ...; for "tfds", an
      optional TFDS data directory.
    splits: a subset of the splits (default: all the config has).
  """
  all_splits = ["test"] if config in DIAGNOSTIC_CONFIGS else list(SPLIT_FILES)
  splits = list(splits or all_splits)
  if source == "tfds":
    return seqio.TfdsDataSource(
        tfds_name=f"super_glue/{config}:{SUPER_GLUE_TFDS_VERSION}",
        tfds_data_dir=data_dir, splits=splits)
  if source == "jsonl":
    if not data_dir:
      raise ValueError("source='jsonl' needs data_dir (the folder holding BoolQ/, CB/, ...).")
    files = super_glue_jsonl_files(config, data_dir)
    return CheckedFileDataSource({s: files[s] for s in splits},
                                 functools.partial(read_super_glue_jsonl, config),
                                 super_glue_signature(config))
  raise ValueError(f"source must be 'tfds' or 'jsonl', got {source!r}.")


def glue_source(config: str, splits: Sequence[str],
                data_dir: Optional[str] = None) -> seqio.DataSource:
  """TFDS `glue/<config>:2.0.0` with its splits listed (so no metadata is needed)."""
  return seqio.TfdsDataSource(tfds_name=f"glue/{config}:{GLUE_TFDS_VERSION}",
                              tfds_data_dir=data_dir, splits=list(splits))


def tokenize_and_append_eos() -> list[Callable[..., tf.data.Dataset]]:
  """The steps after text formatting, shared by every task (as in T5)."""
  return [
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]


def rate_num_examples(
    fallback_num_examples: Mapping[str, float]) -> Callable[[seqio.Task], float]:
  """Mixing rate = number of training examples, from the data when it is there.

  `seqio.mixing_rate_num_examples` needs the data (or TFDS metadata) of each task. When
  that fails (data not downloaded yet), the rate falls back to
  `fallback_num_examples[task.name]`, the published size of the train split, so a
  mixture is usable (and its proportions right) before its data is prepared.
  """

  def rate(task: seqio.Task) -> float:
    try:
      value = seqio.mixing_rate_num_examples(task)
      if value is not None and math.isfinite(value):
        return float(value)
    except Exception as e:  # pylint: disable=broad-except
      logging.info("No example count for %s (%s); using its published size.", task.name, e)
    return float(fallback_num_examples.get(task.name, 0.0))

  return rate


# --------------------------------------------------------------- your own text task


def _text_value(f: Fields, field: str) -> str:
  value = f.get(field)
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  return f.text(field)


def _target_text(f: Fields, field: str, label_names: Optional[Sequence[str]],
                 split: str) -> str:
  """The target string; with `label_names`, a label name or an index into them."""
  if not f.has(field) and split == "test":
    return preprocessors.UNKNOWN_LABEL
  if label_names is None:
    return _text_value(f, field)
  value = f.get(field)
  if isinstance(value, str) and value in label_names:
    return value
  index = value.strip() if isinstance(value, str) else value
  if isinstance(index, str) and index.lstrip("-").isdigit():
    index = int(index)
  if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(label_names):
    return label_names[index]
  raise f.error(field, f"label {value!r} is neither one of {list(label_names)} nor an "
                f"index in [0, {len(label_names) - 1}].")


def _text_example(f: Fields, split: str, index: int, input_field: str | Sequence[str],
                  target_field: str, prefix: str,
                  label_names: Optional[Sequence[str]]) -> dict[str, Any]:
  if isinstance(input_field, str):
    text = _text_value(f, input_field)
  else:
    text = " ".join(f"{name}: {_text_value(f, name)}" for name in input_field)
  return {
      "inputs": f"{prefix} {text}" if prefix else text,
      "targets": _target_text(f, target_field, label_names, split),
      "idx": index,
  }


def _read_text_file(path: str, split: str, *, file_format: str, **kwargs) -> list[dict[str, Any]]:
  rows = read_jsonl(path) if file_format == "jsonl" else read_tsv(path)
  return [_text_example(Fields(path, line, row), split, i, **kwargs)
          for i, (line, row) in enumerate(rows)]


TEXT_TASK_SIGNATURE = {"inputs": tf.TensorSpec([], tf.string),
                       "targets": tf.TensorSpec([], tf.string),
                       "idx": tf.TensorSpec([], tf.int32)}


def register_text_task(
    name: str,
    path_pattern_by_split: Mapping[str, str | Sequence[str]],
    input_field: str | Sequence[str],
    target_field: str,
    *,
    file_format: str = "jsonl",
    prefix: str = "",
    label_names: Optional[Sequence[str]] = None,
    metrics: Sequence[str] = ("accuracy",),
    overwrite: bool = False,
) -> seqio.Task:
  """Registers a text-to-text seqio Task read from local JSONL or TSV files.

  Args:
    name: the task name.
    path_pattern_by_split: split -> file path or glob pattern (or a list of them).
    input_field: the field holding the input text; a list of fields gives
      `"f1: <v1> f2: <v2>"` (GLUE style).
    target_field: the field holding the target.
    file_format: "jsonl" (one JSON object a line) or "tsv" (with a header line).
    prefix: text put before the input, e.g. the task name (T5 style); "" for none.
    label_names: for classification: the labels, in class-index order. A target may be
      a label name or an index; predictions are scored as class ids.
    metrics: names from `metrics.METRIC_NAMES` ("accuracy", "f1", "macro_f1", ...).
    overwrite: replace a task already registered under `name`.

  Returns:
    The registered task.
  """
  if file_format not in ("jsonl", "tsv"):
    raise ValueError(f"file_format must be 'jsonl' or 'tsv', got {file_format!r}.")
  label_names = tuple(label_names) if label_names is not None else None
  num_classes = len(label_names) if label_names else None
  if label_names is None and set(metrics) - {"accuracy", "squad"}:
    raise ValueError(f"Metrics {sorted(set(metrics) - {'accuracy', 'squad'})} need label_names.")
  if "f1" in metrics and num_classes != 2:
    raise ValueError("Metric 'f1' is binary: give exactly two label_names.")
  metric_fns = [metrics_lib.get_metric_fn(m, num_classes) for m in metrics]
  if label_names is None:
    postprocess_fn = postprocessors.strip_text
  else:
    postprocess_fn = functools.partial(postprocessors.string_label_to_class_id,
                                       label_names=label_names)
  read_fn = functools.partial(_read_text_file, file_format=file_format,
                              input_field=input_field, target_field=target_field,
                              prefix=prefix, label_names=label_names)
  if overwrite:
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=CheckedFileDataSource(path_pattern_by_split, read_fn, TEXT_TASK_SIGNATURE),
      preprocessors=tokenize_and_append_eos(),
      output_features=vocab.get_output_features(),
      postprocess_fn=postprocess_fn,
      metric_fns=metric_fns)
