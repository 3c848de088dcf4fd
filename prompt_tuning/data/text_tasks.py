"""`register_text_task`: a text-to-text seqio Task from your own JSONL or TSV files.

Each line (JSONL) or row (TSV, with a header line) is one example; the input and target fields
are checked while reading (`files.DataError` names the file, line and field).
"""

import functools
from typing import Any, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import files
from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registration
from prompt_tuning.data import sources
from prompt_tuning.data import vocab

TEXT_TASK_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "idx": tf.TensorSpec([], tf.int32),
}


def _text_value(f: files.Fields, field: str) -> str:
  value = f.get(field)
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  return f.text(field)


def _target_text(
    f: files.Fields, field: str, label_names: Optional[Sequence[str]], split: str
) -> str:
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
  raise f.error(
      field,
      f"label {value!r} is neither one of {list(label_names)} nor an "
      f"index in [0, {len(label_names) - 1}].",
  )


def _text_example(
    f: files.Fields,
    split: str,
    index: int,
    input_field: str | Sequence[str],
    target_field: str,
    prefix: str,
    label_names: Optional[Sequence[str]],
) -> dict[str, Any]:
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
  rows = files.read_jsonl(path) if file_format == "jsonl" else files.read_tsv(path)
  return [
      _text_example(files.Fields(path, line, row), split, i, **kwargs)
      for i, (line, row) in enumerate(rows)
  ]


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
    overwrite: replace a task already registered under `name` (otherwise that is an error).

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
    postprocess_fn = functools.partial(
        postprocessors.string_label_to_class_id, label_names=label_names
    )
  read_fn = functools.partial(
      _read_text_file,
      file_format=file_format,
      input_field=input_field,
      target_field=target_field,
      prefix=prefix,
      label_names=label_names,
  )
  add = registration.add_task if overwrite else seqio.TaskRegistry.add
  return add(
      name,
      source=sources.CheckedFileDataSource(path_pattern_by_split, read_fn, TEXT_TASK_SIGNATURE),
      preprocessors=registration.tokenize_and_append_eos(),
      output_features=vocab.get_output_features(),
      postprocess_fn=postprocess_fn,
      metric_fns=metric_fns,
  )
