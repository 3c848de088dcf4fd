"""Tests for prompt_tuning/data/preprocessors.py on hand-built TFDS-schema examples."""

import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.data import preprocessors


def run(preprocessor, examples, **kwargs) -> list[dict]:
  """Applies a dataset preprocessor to a few examples; returns numpy dicts."""
  columns = tf.nest.map_structure(lambda *values: list(values), *examples)
  ds = tf.data.Dataset.from_tensor_slices(columns)
  return list(preprocessor(ds, **kwargs).as_numpy_iterator())


def text(examples, key="inputs") -> list[str]:
  return [ex[key].decode() for ex in examples]


RTE = [
    {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0, "idx": 3},
    {"premise": "It rains.", "hypothesis": "It is dry.", "label": 1, "idx": 4},
    {"premise": "Unlabelled.", "hypothesis": "Test split.", "label": -1, "idx": 5},
]


@pytest.mark.parametrize("task_name,prefix", [("rte", "rte "), (None, "")])
def test_classification_joins_fields_in_order(task_name, prefix):
  out = run(
      preprocessors.classification,
      RTE,
      task_name=task_name,
      field_names=("hypothesis", "premise"),
      label_names=("entailment", "not_entailment"),
  )
  assert text(out) == [
      f"{prefix}hypothesis: A man rests. premise: A man sleeps.",
      f"{prefix}hypothesis: It is dry. premise: It rains.",
      f"{prefix}hypothesis: Test split. premise: Unlabelled.",
  ]
  assert text(out, "targets") == ["entailment", "not_entailment", "<unk>"]
  assert [ex["idx"] for ex in out] == [3, 4, 5]
  assert sorted(out[0]) == ["idx", "inputs", "targets"]


def test_classification_rename_shows_other_field_names():
  axb = [{"sentence1": "All dogs bark.", "sentence2": "Some dogs bark.", "label": 0, "idx": 0}]
  out = run(
      preprocessors.classification,
      axb,
      task_name="rte",
      field_names=("hypothesis", "premise"),
      label_names=("entailment", "not_entailment"),
      rename={"hypothesis": "sentence2", "premise": "sentence1"},
  )
  assert text(out) == ["rte hypothesis: Some dogs bark. premise: All dogs bark."]


def test_stsb_rounds_to_a_fifth_with_one_decimal():
  rows = [
      {"sentence1": "a", "sentence2": "b", "label": np.float32(v), "idx": i}
      for i, v in enumerate([4.75, 0.4, 5.0, 2.63])
  ]
  out = run(preprocessors.stsb, rows, task_name="stsb")
  assert text(out) == ["stsb sentence1: a sentence2: b"] * 4
  assert text(out, "targets") == ["4.8", "0.4", "5.0", "2.6"]


def test_multirc_strips_markup_and_keeps_ids():
  row = {
      "paragraph": "<b>Sent 1: </b>Cats purr.<br><b>Sent 2: </b>Dogs bark.<br>",
      "question": "What do <b>cats</b> do?",
      "answer": "Purr",
      "label": 1,
      "idx": {"paragraph": 7, "question": 70, "answer": 700},
  }
  [out] = run(preprocessors.multirc, [row], task_name="multirc")
  assert out["inputs"].decode() == (
      "multirc question: What do cats do? answer: Purr "
      "paragraph: Sent 1: Cats purr. Sent 2: Dogs bark. "
  )
  assert out["targets"] == b"True"
  assert (out["idx/paragraph"], out["idx/question"], out["idx/answer"]) == (7, 70, 700)


def _record(answers):
  return {
      "passage": "Rome -- It rained.\n@highlight\nRome was wet\n@highlight\nSun later!",
      "query": "@placeholder was wet.",
      "entities": ["Rome", "Sun"],
      "answers": answers,
      "idx": {"passage": 1, "query": 2},
  }


def test_record_one_example_per_answer_keeping_all_answers():
  ds = tf.data.Dataset.from_generator(
      lambda: iter([_record(["Rome", "rome"]), _record([])]),
      output_signature={
          "passage": tf.TensorSpec([], tf.string),
          "query": tf.TensorSpec([], tf.string),
          "entities": tf.TensorSpec([None], tf.string),
          "answers": tf.TensorSpec([None], tf.string),
          "idx": {"passage": tf.TensorSpec([], tf.int32), "query": tf.TensorSpec([], tf.int32)},
      },
  )
  out = list(preprocessors.record(ds, task_name=None).as_numpy_iterator())
  expected_inputs = (
      "query: @placeholder was wet. entities: Rome, Sun passage: Rome -- It "
      "rained. Rome was wet. Sun later!"
  )
  assert text(out) == [expected_inputs] * 3
  assert text(out, "targets") == ["Rome", "rome", "<unk>"]
  assert [list(ex["answers"]) for ex in out] == [[b"Rome", b"rome"], [b"Rome", b"rome"], []]
  assert [(ex["idx/passage"], ex["idx/query"]) for ex in out] == [(1, 2)] * 3


def _wsc(text_, span1, i1, span2, i2, label=1, idx=0):
  return {
      "text": text_,
      "span1_text": span1,
      "span1_index": i1,
      "span2_text": span2,
      "span2_index": i2,
      "label": label,
      "idx": idx,
  }


def test_wsc_fixed_marks_noun_and_pronoun():
  rows = [
      _wsc("Bob asked Tom if he could lend some money.", "Tom", 2, "he", 4),
      # The pronoun comes first: no index shift for it.
      _wsc("He said that Mr. (Jo) Smith was late.", "Mr. (Jo) Smith", 3, "He", 0, 0),
      # Span 1 is not found, but (as in T5) span 2's index still shifts: no marks.
      _wsc("The span is not here.", "absent", 1, "is", 2, -1),
  ]
  out = run(preprocessors.wsc_fixed, rows, task_name="wsc")
  assert text(out) == [
      "wsc text: Bob asked * Tom * if # he # could lend some money.",
      "wsc text: # He # said that * Mr. (Jo) Smith * was late.",
      "wsc text: The span is not here.",
  ]
  assert text(out, "targets") == ["True", "False", "<unk>"]


def test_mark_span_needs_the_span_at_its_word():
  marked = preprocessors.mark_span(tf.constant("a b a b"), tf.constant("a"), tf.constant(2), "*")
  assert marked.numpy().decode() == "a b * a * b"
  unchanged = preprocessors.mark_span(tf.constant("a b"), tf.constant("b"), tf.constant(0), "*")
  assert unchanged.numpy().decode() == "a b"


def test_wsc_simple_marks_the_pronoun_and_filters_for_training():
  rows = [
      _wsc("Bob asked Tom if he could lend some money.", "Tom", 2, "he", 4, 1, 0),
      _wsc("Bob asked Tom if he could lend some money.", "Bob", 0, "he", 4, 0, 1),
      _wsc("He left early.", "Sam", 5, "He", 0, -1, 2),
  ]
  out = run(preprocessors.wsc_simple, rows)
  assert text(out) == ["wsc: Bob asked Tom if *he* could lend some money."] * 2 + [
      "wsc:  *He* left early."
  ]
  assert text(out, "targets") == ["Tom", "Bob", "Sam"]
  assert [ex["label"] for ex in out] == [1, 0, -1]
  train = run(preprocessors.wsc_simple, rows, task_name=None, correct_referent_only=True)
  assert text(train) == ["Bob asked Tom if *he* could lend some money."]


def test_wsc_simple_special_cases_and_bad_index_do_not_fail():
  special = next(iter(preprocessors._WSC_SIMPLE_SPECIAL_CASES))  # pylint: disable=protected-access
  rows = [_wsc(special, "John", 0, "him", 99), _wsc("Too short.", "x", 0, "it", 50)]
  out = run(preprocessors.wsc_simple, rows, task_name=None)
  assert text(out)[0].endswith('"Good for *him* ," he said.')
  assert text(out)[1] == "Too *short.* "
