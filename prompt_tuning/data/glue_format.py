"""GLUE's label names, and the official TSV files of QQP and MRPC as TFDS `glue` examples.

`GLUE_LABELS`: each config's label names in class-index order (TFDS `glue/<config>:2.0.0`).

`<dir>/QQP/{train,dev}.tsv` (columns `id qid1 qid2 question1 question2 is_duplicate`) and
`<dir>/MRPC/{train,dev}.tsv` (columns `Quality #1 ID #2 ID #1 String #2 String`), as GLUE's
download script writes them. Each row becomes the TFDS example (`question1`, `question2` /
`sentence1`, `sentence2`, `label`, `idx` = row position), so the GLUE preprocessors serve both.
Only these two configs: they are the zero-shot transfer pair of the paper (section 5).
"""

import os
from typing import Any

import tensorflow as tf

from prompt_tuning.data import files

# TFDS glue 2.0.0 label classes, in class-index order.
GLUE_LABELS = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
}
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
# config -> (folder, {TFDS field: TSV column}, label column)
_LAYOUT = {
    "qqp": ("QQP", {"question1": "question1", "question2": "question2"}, "is_duplicate"),
    "mrpc": ("MRPC", {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality"),
}
CONFIGS = tuple(_LAYOUT)


def field_names(config: str) -> tuple[str, ...]:
  """The text fields of QQP or MRPC, in T5's (alphabetical) order."""
  return tuple(_LAYOUT[config][1])


def glue_signature(config: str) -> dict[str, tf.TensorSpec]:
  fields = {name: tf.TensorSpec([], tf.string) for name in _LAYOUT[config][1]}
  return {**fields, "label": tf.TensorSpec([], tf.int64), "idx": tf.TensorSpec([], tf.int32)}


def glue_tsv_files(config: str, data_dir: str) -> dict[str, str]:
  """split -> path of `config`'s official file under `data_dir`."""
  if config not in _LAYOUT:
    raise ValueError(f"Local GLUE files are read for {list(CONFIGS)} only, not {config!r}.")
  return {s: os.path.join(data_dir, _LAYOUT[config][0], f) for s, f in SPLIT_FILES.items()}


def read_glue_tsv(config: str, path: str, split: str) -> list[dict[str, Any]]:
  """The rows of one official QQP or MRPC file as TFDS-schema examples."""
  del split  # The train and dev files are labelled.
  _, fields, label_column = _LAYOUT[config]
  examples = []
  for idx, (line, row) in enumerate(files.read_tsv(path)):
    f = files.Fields(path, line, row)
    example = {name: f.text(column) for name, column in fields.items()}
    label = f.get(label_column).strip()
    if label not in ("0", "1"):
      raise f.error(label_column, f"label {label!r} is not 0 or 1.")
    examples.append({**example, "label": int(label), "idx": idx})
  return examples
