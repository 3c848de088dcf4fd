"""Postprocessors: generated (or target) text -> what the metrics compare.

All follow seqio's signature `fn(output, example=None, is_target=False)`. None of them
raises on unexpected text: a string that is no label maps to `INVALID_LABEL`, which
every metric in `metrics.py` counts as wrong.
"""

import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

INVALID_LABEL = -1
INVALID_FLOAT = -1.0

# Words WSC's referent check ignores, so "the dog" matches "dog".
_DETERMINERS = frozenset(
    {
        "a",
        "an",
        "few",
        "her",
        "his",
        "each",
        "every",
        "many",
        "much",
        "my",
        "our",
        "some",
        "that",
        "the",
        "their",
        "these",
        "this",
        "those",
        "which",
        "whose",
        "your",
    }
)


def as_text(value: Any) -> str:
  """bytes / numpy bytes / str -> str, never raising on bad UTF-8."""
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8", errors="replace")
  return str(value)


def string_label_to_class_id(
    output: Any,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
    *,
    label_names: Sequence[str],
    default: int = INVALID_LABEL
) -> int:
  """Label name -> its index in `label_names`; anything else -> `default`.

  Surrounding whitespace is ignored; case is not (T5's labels are case-sensitive).
  """
  del example, is_target  # The text alone decides.
  text = as_text(output).strip()
  return list(label_names).index(text) if text in label_names else default


def string_to_float(
    output: Any,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
    *,
    default: float = INVALID_FLOAT
) -> float:
  """`"3.4"` -> 3.4; unparsable (or non-finite) text -> `default`."""
  del example, is_target
  try:
    value = float(as_text(output).strip())
  except ValueError:
    return default
  return value if np.isfinite(value) else default


def multirc(
    output: Any, example: Optional[Mapping[str, Any]] = None, is_target: bool = False
) -> dict[str, Any]:
  """`{"value": 0/1/-1}`; targets also carry `"group"` = (paragraph id, question id)."""
  result = {"value": string_label_to_class_id(output, label_names=("False", "True"))}
  if is_target:
    result["group"] = (int(example["idx/paragraph"]), int(example["idx/question"]))
  return result


def record(
    output: Any, example: Optional[Mapping[str, Any]] = None, is_target: bool = False
) -> dict[str, Any]:
  """Prediction -> `{"value": text}`; target -> all gold answers and the query's group."""
  if not is_target:
    return {"value": as_text(output)}
  return {
      "value": [as_text(a) for a in example["answers"]],
      "group": (int(example["idx/passage"]), int(example["idx/query"])),
  }


def axg(
    output: Any, example: Optional[Mapping[str, Any]] = None, is_target: bool = False
) -> dict[str, Any]:
  """AX-g label id; targets also carry `idx`, which pairs examples for gender parity."""
  result = {"value": string_label_to_class_id(output, label_names=("entailment", "not_entailment"))}
  if is_target:
    result["idx"] = int(example["idx"])
  return result


def _referent_words(text: str) -> str:
  """Lower-cased text without determiners, for comparing WSC referents."""
  words = text.strip().lower().split(" ")
  return " ".join(w for w in words if w not in _DETERMINERS)


def wsc_simple(
    output: Any, example: Optional[Mapping[str, Any]] = None, is_target: bool = False
) -> int:
  """Target -> the 0/1 label; prediction -> 1 if it names the example's referent noun.

  As in T5: determiners and case are ignored; one side's words may be a subset of the
  other's ("fuzzy bunny" vs "bunny"), but a possessive must match a possessive.
  """
  if is_target:
    return int(example["label"])
  prediction = _referent_words(as_text(output))
  if not prediction:
    return INVALID_LABEL  # An empty guess must not match label 0.
  referent = _referent_words(as_text(example["targets_pretokenized"]))
  if ("'" in prediction) != ("'" in referent):
    return 0
  predicted, gold = set(prediction.split(" ")), set(referent.split(" "))
  return int(predicted <= gold or gold <= predicted)


_WHITESPACE = re.compile(r"\s+")


def strip_text(
    output: Any, example: Optional[Mapping[str, Any]] = None, is_target: bool = False
) -> str:
  """Free text -> str with runs of whitespace collapsed (for user-registered tasks)."""
  del example, is_target
  return _WHITESPACE.sub(" ", as_text(output)).strip()


def qa(output: Any, example: Optional[Mapping[str, Any]] = None, is_target: bool = False) -> Any:
  """Prediction -> its text; target -> `{"value": every gold answer}` (SQuAD F1/EM).

  The dict keeps seqio from stacking the answer lists, which differ in length, into an array.
  """
  if is_target:
    return {"value": [as_text(a) for a in example["answers"]]}
  return as_text(output)


def translated_label(
    output: Any,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
    *,
    replacements: Sequence[tuple[str, str]],
    label_names: Sequence[str]
) -> int:
  """Class id of the text after replacing words (zero-shot transfer between label sets).

  A prompt trained on QQP answers `duplicate` / `not_duplicate`; on MRPC those mean
  `equivalent` / `not_equivalent`. As in the original, the words are replaced as substrings,
  so `("duplicate", "equivalent")` also turns `not_duplicate` into `not_equivalent`. Targets are
  already in the evaluated task's words and pass through unchanged.
  """
  del example, is_target
  text = as_text(output)
  for old, new in replacements:
    text = text.replace(old, new)
  return string_label_to_class_id(text, label_names=label_names)
