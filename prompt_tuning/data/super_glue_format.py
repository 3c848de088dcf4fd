"""The official SuperGLUE JSONL files, converted to the TFDS `super_glue/<config>:1.0.2` schema.

`read_super_glue_jsonl(config, path, split)` reads one official file
(`<data_dir>/BoolQ/{train,val,test}.jsonl`, ..., `<data_dir>/AX-b/AX-b.jsonl`) and returns
exactly the examples TFDS yields: same fields, dtypes, ids, MultiRC/ReCoRD flattening and WSC
span fixes, so the same preprocessors serve both. `super_glue_signature(config)` gives their
`tf.TensorSpec`s. Every field is checked while reading (see `files.py`).
"""

from typing import Any

import tensorflow as tf

from prompt_tuning.data import files

# Official SuperGLUE layout: one folder per task, `val.jsonl` for the validation split.
SUPER_GLUE_DIRS = {
    "boolq": "BoolQ",
    "cb": "CB",
    "copa": "COPA",
    "multirc": "MultiRC",
    "record": "ReCoRD",
    "rte": "RTE",
    "wic": "WiC",
    "wsc": "WSC",
    "wsc.fixed": "WSC",
    "axb": "AX-b",
    "axg": "AX-g",
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


# ---------------------------------------------------------------------------- labels


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


# -------------------------------------------------------------------- conversion


def _fix_wsc_span(example: dict[str, Any], span: str, fields: files.Fields) -> None:
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


def _flat_example(config: str, f: files.Fields, split: str) -> dict[str, Any]:
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


def _multirc_examples(f: files.Fields, split: str) -> list[dict[str, Any]]:
  """One official paragraph -> one TFDS example per answer-option."""
  passage = f.child("passage")
  paragraph = passage.text("text")
  examples = []
  for q in passage.children("questions"):
    question = q.text("question")
    for a in q.children("answers"):
      examples.append(
          {
              "paragraph": paragraph,
              "question": question,
              "answer": a.text("text"),
              "label": a.label("label", SUPER_GLUE_LABELS["multirc"], split, _binary_name),
              "idx": {
                  "paragraph": f.integer("idx"),
                  "question": q.integer("idx"),
                  "answer": a.integer("idx"),
              },
          }
      )
  return examples


def _record_entities(passage: files.Fields) -> list[str]:
  """Sorted unique entity strings; official `end` offsets are inclusive."""
  text = passage.text("text")
  entities = set()
  for e in passage.children("entities"):
    start, end = e.integer("start"), e.integer("end")
    if not 0 <= start <= end < len(text):
      raise e.error("end", f"span [{start}, {end}] is outside the passage text.")
    entities.add(text[start : end + 1])
  return sorted(entities)


def _record_examples(f: files.Fields, split: str) -> list[dict[str, Any]]:
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
    examples.append(
        {
            "passage": text,
            "query": qa.text("query"),
            "entities": entities,
            "answers": answers,
            "idx": {"passage": f.integer("idx"), "query": qa.integer("idx")},
        }
    )
  return examples


def official_to_tfds(config: str, f: files.Fields, split: str) -> list[dict[str, Any]]:
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
    return {
        "passage": text,
        "query": text,
        "entities": tf.TensorSpec([None], tf.string),
        "answers": tf.TensorSpec([None], tf.string),
        "idx": {"passage": int32, "query": int32},
    }
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
  for line, record in files.read_jsonl(path):
    examples.extend(official_to_tfds(config, files.Fields(path, line, record), split))
  return examples
