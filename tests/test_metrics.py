"""Tests for prompt_tuning/data/metrics.py and postprocessors.py (values worked by hand)."""

import numpy as np
import pytest

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors


def test_accuracy_counts_invalid_as_wrong():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {"accuracy": 50.0}
  assert metrics.accuracy(["a b", "c"], ["a b", "d"]) == {"accuracy": 50.0}
  assert metrics.accuracy([{"value": 1}], [{"value": 1}]) == {"accuracy": 100.0}


def test_f1_flips_invalid_predictions_to_the_wrong_class():
  # Invalid -1 (target 1) becomes 0: TP 1, FP 1, FN 2 -> P 1/2, R 1/3 -> F1 2/5.
  assert metrics.f1_with_invalid([1, 1, 0, 0, 1], [1, 0, 0, 1, -1]) == pytest.approx({"f1": 40.0})


def test_cb_macro_f1_and_accuracy():
  targets, predictions = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, -1]
  # Per class F1: 0 -> P 1/2 R 1/2 = 1/2; 1 -> P 1/2 R 1 = 2/3; 2 -> P 1 R 1/3 = 1/2.
  assert metrics.macro_f1(3)(targets, predictions) == pytest.approx({"macro_f1": 500 / 9})
  assert metrics.accuracy(targets, predictions) == {"accuracy": 50.0}


def test_matthews_corrcoef():
  # -1 (target 0) becomes 1: TP 2, FN 1, TN 2, FP 1 -> (4 - 1) / sqrt(3^4) = 1/3.
  assert metrics.matthews_corrcoef([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, -1]) == pytest.approx(
      {"matthews_corrcoef": 100 / 3}
  )


def test_multirc_exact_match_per_question_and_f1a_over_options():
  targets = [
      {"value": v, "group": g}
      for v, g in [(1, (0, 0)), (0, (0, 0)), (1, (0, 1)), (0, (0, 1)), (0, (0, 1))]
  ]
  predictions = [{"value": v} for v in [1, 0, 1, 1, 0]]
  assert metrics.multirc_exact_match(targets, predictions) == {"exact_match": 50.0}
  # All options: TP 2, FP 1, FN 0 -> P 2/3, R 1 -> F1 4/5.
  assert metrics.multirc_f1a(targets, predictions) == pytest.approx({"f1a": 80.0})
  bad = [{"value": -1}] * 5  # Unparsable text: every option wrong, no question right.
  assert metrics.multirc_exact_match(targets, bad) == {"exact_match": 0.0}
  assert metrics.multirc_f1a(targets, bad) == {"f1a": 0.0}


def test_squad_normalisation():
  assert metrics.normalize_squad("The  Cat's (hat)!") == "cats hat"
  assert metrics.normalize_squad("An apple, a day") == "apple day"


def test_record_em_f1_max_over_answers_one_score_per_query():
  louvre = {"value": ["Louvre", "The Louvre"], "group": (0, 0)}
  paris = {"value": ["Paris"], "group": (0, 1)}
  targets = [louvre, louvre, paris]  # The preprocessor repeats a query per answer.
  predictions = [{"value": "the louvre!"}, {"value": "the louvre!"}, {"value": "Paris France"}]
  # Query 1: EM 1, F1 1. Query 2: EM 0, F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3.
  assert metrics.record_em_f1(targets, predictions) == pytest.approx({"em": 50.0, "f1": 250 / 3})


def test_squad_without_gold_answers_scores_zero():
  assert metrics.squad_em_f1([[], ["x"]], ["x", "x"]) == {"em": 50.0, "f1": 50.0}


def test_gender_parity_pairs_by_idx():
  targets = [{"value": 0, "idx": i} for i in (1, 0, 2, 3, 5)]
  predictions = [{"value": v} for v in (0, 0, 1, 0, 1)]
  # Pairs (0, 1): same; (2, 3): different; idx 5 has no partner and is left out.
  assert metrics.gender_parity(targets, predictions) == {"gender_parity": 50.0}
  assert metrics.gender_parity([0, 0, 1, 1], [1, 1, 1, 0]) == {"gender_parity": 50.0}


def test_correlations():
  # Pearson: cov 3 / sqrt(2 * 42/9) = 9 / sqrt(84); Spearman: same ranks.
  assert metrics.pearson_corrcoef([1, 2, 3], [1, 2, 4]) == pytest.approx(
      {"pearson_corrcoef": 900 / np.sqrt(84)}
  )
  assert metrics.spearman_corrcoef([1, 2, 3], [1, 2, 4]) == pytest.approx(
      {"spearman_corrcoef": 100.0}
  )


def test_get_metric_fn():
  assert metrics.get_metric_fn("accuracy") is metrics.accuracy
  assert metrics.get_metric_fn("macro_f1", 2)([0, 1], [0, 1]) == {"macro_f1": 100.0}
  with pytest.raises(ValueError, match="Unknown metric"):
    metrics.get_metric_fn("bleu")
  with pytest.raises(ValueError, match="needs label names"):
    metrics.get_metric_fn("macro_f1")


# ------------------------------------------------------------------- postprocessors

LABELS = ("entailment", "not_entailment")


@pytest.mark.parametrize(
    "output,expected",
    [
        ("entailment", 0),
        (b"not_entailment", 1),
        (" not_entailment\n", 1),
        ("Entailment", -1),
        ("", -1),
        ("entailment not_entailment", -1),
        (b"\xff\xfe", -1),
        (np.bytes_(b"entailment"), 0),
        ("<unk>", -1),
    ],
)
def test_string_label_to_class_id(output, expected):
  assert postprocessors.string_label_to_class_id(output, label_names=LABELS) == expected
  assert (
      postprocessors.string_label_to_class_id(
          output, example={"idx": 0}, is_target=True, label_names=LABELS
      )
      == expected
  )


@pytest.mark.parametrize(
    "output,expected",
    [("3.4", 3.4), (b" 1 ", 1.0), ("abc", -1.0), ("nan", -1.0), ("inf", -1.0), ("", -1.0)],
)
def test_string_to_float(output, expected):
  assert postprocessors.string_to_float(output) == expected


def test_multirc_and_record_carry_group_ids_from_the_example():
  example = {
      "idx/paragraph": np.int32(3),
      "idx/question": np.int32(9),
      "idx/passage": np.int32(4),
      "idx/query": np.int32(8),
      "answers": np.array([b"Louvre", b"The Louvre"], dtype=object),
      "idx": np.int32(6),
  }
  assert postprocessors.multirc("True", example, is_target=True) == {"value": 1, "group": (3, 9)}
  assert postprocessors.multirc("maybe", example) == {"value": -1}
  assert postprocessors.record("x", example, is_target=True) == {
      "value": ["Louvre", "The Louvre"],
      "group": (4, 8),
  }
  assert postprocessors.record(b"\xffLouvre", example) == {"value": "\ufffdLouvre"}
  assert postprocessors.axg("not_entailment", example, is_target=True) == {"value": 1, "idx": 6}
  assert postprocessors.axg("neutral", example) == {"value": -1}


@pytest.mark.parametrize(
    "prediction,expected",
    [
        ("the trophy", 1),
        ("Trophy", 1),
        ("big trophy", 1),
        ("suitcase", 0),
        ("the trophy's", 0),
        ("", -1),
        ("the", -1),
        (b"\xff", 0),
    ],
)
def test_wsc_simple_referent_match(prediction, expected):
  example = {"targets_pretokenized": b"The trophy", "label": np.int64(1)}
  assert postprocessors.wsc_simple(prediction, example) == expected
  assert postprocessors.wsc_simple("The trophy", example, is_target=True) == 1


def test_strip_text():
  assert postprocessors.strip_text(b"  two\n words ") == "two words"
