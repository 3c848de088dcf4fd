"""Extractive QA files (SQuAD v1.1 JSON, MRQA 2019 JSONL) as checked Python examples.

Both readers yield one example per question, with the fields the QA preprocessor reads
(`QA_SIGNATURE`): `id`, `context`, `question`, `answers` (every gold answer, for the metric) and
`target` (the answer trained on and scored by teacher forcing).

- SQuAD v1.1 (`train-v1.1.json`, `dev-v1.1.json`): `{"data": [{"title", "paragraphs":
  [{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}`. Texts are
  stripped, as TFDS `squad/v1.1` strips them; `target` is the first answer.
- MRQA 2019 (`<Dataset>.jsonl.gz` as downloaded, or gunzipped `.jsonl`): a header line
  `{"header": {"dataset", "split"}}`, then one context a line: `{"context", "qas": [{"qid",
  "question", "answers": [...], "detected_answers": [{"text", ...}]}]}`. `target` is the first
  detected answer (the span found in the context), as the original's MRQA-to-TSV script chose.

Bad data raises `files.DataError` naming the file, line and field.
"""

from typing import Any

import tensorflow as tf

from prompt_tuning.data import files

QA_SIGNATURE = {
    "id": tf.TensorSpec([], tf.string),
    "context": tf.TensorSpec([], tf.string),
    "question": tf.TensorSpec([], tf.string),
    "answers": tf.TensorSpec([None], tf.string),
    "target": tf.TensorSpec([], tf.string),
}


def _texts(f: files.Fields, field: str) -> list[str]:
  """A non-empty list of non-empty strings."""
  values = f.get(field)
  if not isinstance(values, list) or not values:
    raise f.error(field, f"expected a non-empty list of strings, got {values!r}.")
  for i, v in enumerate(values):
    if not isinstance(v, str) or not v.strip():
      raise f.error(f"{field}[{i}]", f"expected non-empty text, got {v!r}.")
  return values


def read_squad_json(path: str, split: str) -> list[dict[str, Any]]:
  """The questions of a SQuAD v1.1 file, in file order."""
  del split  # Every SQuAD v1.1 question has answers.
  doc = files.Fields(path, 1, files.read_json(path))
  examples = []
  for article in doc.children("data"):
    for paragraph in article.children("paragraphs"):
      context = paragraph.text("context").strip()
      for qa in paragraph.children("qas"):
        answers = [a.text("text").strip() for a in qa.children("answers")]
        if not answers:
          raise qa.error("answers", "empty: a SQuAD v1.1 question needs at least one answer.")
        examples.append(
            {
                "id": qa.text("id"),
                "context": context,
                "question": qa.text("question").strip(),
                "answers": answers,
                "target": answers[0],
            }
        )
  return examples


def read_mrqa_jsonl(path: str, split: str) -> list[dict[str, Any]]:
  """The questions of an MRQA 2019 file (header line first), in file order."""
  del split
  lines = list(files.read_jsonl(path))
  if not lines or not files.Fields(path, *lines[0]).has("header"):
    first = str(lines[0][1])[:80] if lines else "an empty file"
    raise files.DataError(
        f'{path}:1: expected the MRQA header line {{"header": {{"dataset": ..., "split": ...}}}} '
        f"first, got {first!r}."
    )
  examples = []
  for line, record in lines[1:]:
    f = files.Fields(path, line, record)
    if f.has("header"):
      raise files.DataError(f"{path}:{line}: a second header line; one file is one dataset.")
    context = f.text("context")
    for qa in f.children("qas"):
      detected = qa.children("detected_answers")
      if not detected:
        raise qa.error("detected_answers", "empty: no answer span in the context.")
      examples.append(
          {
              "id": qa.text("qid"),
              "context": context,
              "question": qa.text("question"),
              "answers": _texts(qa, "answers"),
              "target": detected[0].text("text"),
          }
      )
  if not examples:
    raise files.DataError(f"{path}: no questions after the header line.")
  return examples
