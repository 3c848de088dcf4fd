"""GLUE/SuperGLUE metrics in seqio's `fn(targets, predictions) -> {name: value}` form.

Values are percentages (0-100), as T5 reports them. Targets and predictions are what the
postprocessors in `postprocessors.py` return: class ids (with `-1` for text that was no
label, always counted as wrong), floats, strings, or dicts with a `"value"` and, on the
target side, a `"group"` / `"idx"` that ties examples together.
"""

import collections
import re
import string
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _values(items: Sequence[Any]) -> list[Any]:
  """Unwraps `{"value": v}` dicts; passes anything else through."""
  return [x["value"] if isinstance(x, Mapping) else x for x in items]


def _binary_with_invalid(
    targets: Sequence[Any], predictions: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
  """Int arrays where a prediction other than 0/1 is replaced by the wrong class."""
  t = np.asarray(_values(targets), dtype=np.int64)
  p = np.asarray(_values(predictions), dtype=np.int64)
  invalid = (p != 0) & (p != 1)
  return t, np.where(invalid, 1 - t, p)


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Percentage of predictions equal to their target (ints or strings)."""
  t, p = _values(targets), _values(predictions)
  if len(t) != len(p):
    raise ValueError(f"{len(t)} targets but {len(p)} predictions.")
  correct = [a == b for a, b in zip(t, p)]
  return {"accuracy": 100 * float(np.mean(correct)) if correct else float("nan")}


def f1_with_invalid(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Binary F1 of class 1 (MRPC `equivalent`, QQP `duplicate`); invalid = wrong."""
  t, p = _binary_with_invalid(targets, predictions)
  return {"f1": 100 * float(sklearn.metrics.f1_score(t, p, zero_division=0))}


def macro_f1(num_classes: int) -> MetricFn:
  """Mean of per-class F1 over `num_classes` classes (CB: 3); `-1` is in no class."""

  def fn(targets, predictions):
    f1 = sklearn.metrics.f1_score(
        _values(targets),
        _values(predictions),
        labels=list(range(num_classes)),
        average="macro",
        zero_division=0,
    )
    return {"macro_f1": 100 * float(f1)}

  return fn


def matthews_corrcoef(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Matthews correlation (AX-b, CoLA); binary, an invalid prediction counts as wrong."""
  t, p = _binary_with_invalid(targets, predictions)
  return {"matthews_corrcoef": 100 * float(sklearn.metrics.matthews_corrcoef(t, p))}


def pearson_corrcoef(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  return {
      "pearson_corrcoef": 100
      * float(scipy.stats.pearsonr(_values(targets), _values(predictions))[0])
  }


def spearman_corrcoef(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  return {
      "spearman_corrcoef": 100
      * float(scipy.stats.spearmanr(_values(targets), _values(predictions))[0])
  }


def multirc_f1a(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """MultiRC F1a: binary F1 over every answer-option of every question."""
  return {"f1a": f1_with_invalid(targets, predictions)["f1"]}


def _group_ids(targets: Sequence[Any], key: str) -> list[Hashable]:
  return [t[key] if isinstance(t, Mapping) else i for i, t in enumerate(targets)]


def multirc_exact_match(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Any]
) -> dict[str, float]:
  """MultiRC EM: percentage of questions with every answer-option labelled right."""
  all_right = collections.defaultdict(lambda: True)
  for group, t, p in zip(_group_ids(targets, "group"), _values(targets), _values(predictions)):
    all_right[group] &= t == p
  return {"exact_match": 100 * float(np.mean(list(all_right.values())))}


def normalize_squad(text: str) -> str:
  """SQuAD normalisation: lowercase, drop punctuation and a/an/the, squash spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
  pred_tokens, gold_tokens = normalize_squad(prediction).split(), normalize_squad(gold).split()
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_em_f1(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """Mean over examples of the best EM / token F1 against any gold answer.

  `targets` holds each example's gold answers, bare or as `{"value": answers}` (seqio matches
  metrics by the argument names, and needs the dict to keep lists of different lengths).
  """
  em, f1 = [], []
  for golds, prediction in zip(_values(targets), _values(predictions)):
    golds = [golds] if isinstance(golds, str) else list(golds)
    # An example without gold answers (an unlabelled split) scores 0, not an error.
    em.append(
        max((float(normalize_squad(prediction) == normalize_squad(g)) for g in golds), default=0.0)
    )
    f1.append(max((_token_f1(prediction, g) for g in golds), default=0.0))
  return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def record_em_f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """ReCoRD EM/F1: one example per (passage, query) group, max over its gold answers.

  The preprocessor repeats a query once per gold answer; all copies share the same
  inputs (so the same prediction) and answer list, so the first of each group is kept.
  """
  seen, golds, preds = set(), [], []
  for group, gold, prediction in zip(
      _group_ids(targets, "group"), _values(targets), _values(predictions)
  ):
    if group not in seen:
      seen.add(group)
      golds.append(gold)
      preds.append(prediction)
  return squad_em_f1(golds, preds)


def gender_parity(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """AX-g gender parity: percentage of pairs whose two predictions agree.

  The pairs of AX-g differ only in the pronoun's gender; they are examples 2k and 2k+1
  (by `idx` when targets carry it, else by position). A pair missing a member is left
  out.
  """
  idx = [t["idx"] if isinstance(t, Mapping) else i for i, t in enumerate(targets)]
  pairs = collections.defaultdict(list)
  for i, p in zip(idx, _values(predictions)):
    pairs[i // 2].append(p)
  same = [a == b for a, b in (pair for pair in pairs.values() if len(pair) == 2)]
  return {"gender_parity": 100 * float(np.mean(same)) if same else float("nan")}


def _metric_factories() -> dict[str, Callable[[Optional[int]], MetricFn]]:
  return {
      "accuracy": lambda n: accuracy,
      "f1": lambda n: f1_with_invalid,
      "macro_f1": macro_f1,
      "matthews_corrcoef": lambda n: matthews_corrcoef,
      "pearson_corrcoef": lambda n: pearson_corrcoef,
      "spearman_corrcoef": lambda n: spearman_corrcoef,
      "squad": lambda n: squad_em_f1,
  }


METRIC_NAMES = tuple(_metric_factories())


def get_metric_fn(name: str, num_classes: Optional[int] = None) -> MetricFn:
  """A metric by name (see `METRIC_NAMES`); `macro_f1` needs `num_classes`."""
  factories = _metric_factories()
  if name not in factories:
    raise ValueError(f"Unknown metric {name!r}; choose from {METRIC_NAMES}.")
  if name == "macro_f1" and not num_classes:
    raise ValueError("Metric 'macro_f1' needs label names (to know the classes).")
  return factories[name](num_classes)
