"""GLUE tasks in T5's text-to-text formats (TFDS `glue/<config>:2.0.0`).

Registered on import:
  glue_{cola,sst2,mrpc,qqp,stsb,mnli,mnli_matched,mnli_mismatched,qnli,rte,wnli,ax}_v002
  taskless_<each of the above>            same text without the task name
  glue_v002_proportional, taskless_glue_v002_proportional
Formats, targets and metrics: docs/tasks.md.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registration
from prompt_tuning.data import sources
from prompt_tuning.data import vocab

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
# Published train-split sizes, the mixing rates used when the data is not there.
TRAIN_SIZES = {
    "cola": 8_551,
    "sst2": 67_349,
    "mrpc": 3_668,
    "qqp": 363_846,
    "stsb": 5_749,
    "mnli": 392_702,
    "qnli": 104_743,
    "rte": 2_490,
    "wnli": 635,
}
_SPLITS = ("train", "validation", "test")
_MNLI_SPLITS = (
    "train",
    "validation_matched",
    "validation_mismatched",
    "test_matched",
    "test_mismatched",
)


@dataclasses.dataclass(frozen=True)
class GlueTask:
  """How one GLUE config becomes a text-to-text task."""

  config: str
  task_name: str  # First word of the inputs (AX is cast as MNLI).
  splits: Sequence[str]
  text_preprocessor: Callable[..., Any]  # Takes `task_name=` (None: taskless).
  postprocess_fn: Callable[..., Any]
  metric_fns: Sequence[Callable[..., dict[str, float]]]


def _classification(
    labels: str,
    config: str,
    task_name: str,
    field_names: Sequence[str],
    metric_fns: Sequence[Callable[..., Any]],
    splits: Sequence[str] = _SPLITS,
) -> GlueTask:
  label_names = GLUE_LABELS[labels]
  return GlueTask(
      config,
      task_name,
      splits,
      functools.partial(
          preprocessors.classification, field_names=tuple(field_names), label_names=label_names
      ),
      functools.partial(postprocessors.string_label_to_class_id, label_names=label_names),
      metric_fns,
  )


# T5 lists each task's fields alphabetically.
GLUE_TASKS = (
    _classification("cola", "cola", "cola", ("sentence",), [metrics.matthews_corrcoef]),
    _classification("sst2", "sst2", "sst2", ("sentence",), [metrics.accuracy]),
    _classification(
        "mrpc",
        "mrpc",
        "mrpc",
        ("sentence1", "sentence2"),
        [metrics.f1_with_invalid, metrics.accuracy],
    ),
    _classification(
        "qqp", "qqp", "qqp", ("question1", "question2"), [metrics.f1_with_invalid, metrics.accuracy]
    ),
    GlueTask(
        "stsb",
        "stsb",
        _SPLITS,
        preprocessors.stsb,
        postprocessors.string_to_float,
        [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
    ),
    _classification(
        "mnli", "mnli", "mnli", ("hypothesis", "premise"), [metrics.accuracy], _MNLI_SPLITS
    ),
    _classification(
        "mnli",
        "mnli_matched",
        "mnli",
        ("hypothesis", "premise"),
        [metrics.accuracy],
        ("validation", "test"),
    ),
    _classification(
        "mnli",
        "mnli_mismatched",
        "mnli",
        ("hypothesis", "premise"),
        [metrics.accuracy],
        ("validation", "test"),
    ),
    _classification("qnli", "qnli", "qnli", ("question", "sentence"), [metrics.accuracy]),
    _classification("rte", "rte", "rte", ("sentence1", "sentence2"), [metrics.accuracy]),
    _classification("wnli", "wnli", "wnli", ("sentence1", "sentence2"), [metrics.accuracy]),
    # The diagnostic set has no labels: predictions only, for the GLUE server.
    _classification("mnli", "ax", "mnli", ("hypothesis", "premise"), [], ("test",)),
)


def task_name(config: str, taskless: bool = False, prefix: str = "") -> str:
  """`glue_sst2_v002`, `taskless_glue_sst2_v002`, with `prefix` in front."""
  return f"{prefix}{'taskless_' if taskless else ''}glue_{config}_v002"


def register_glue(data_dir: Optional[str] = None, prefix: str = "") -> list[str]:
  """Registers every GLUE task and the mixtures; returns their names.

  Args:
    data_dir: an optional TFDS data directory.
    prefix: put before every name, to register a second copy beside the default one.
  """
  names = []
  for taskless in (False, True):
    sizes = {}
    for t in GLUE_TASKS:
      name = task_name(t.config, taskless, prefix)
      registration.add_task(
          name,
          source=sources.glue_source(t.config, t.splits, data_dir),
          preprocessors=[
              functools.partial(t.text_preprocessor, task_name=None if taskless else t.task_name),
              *registration.tokenize_and_append_eos(),
          ],
          output_features=vocab.get_output_features(),
          postprocess_fn=t.postprocess_fn,
          metric_fns=list(t.metric_fns),
      )
      names.append(name)
      if t.config in TRAIN_SIZES:
        sizes[name] = TRAIN_SIZES[t.config]
    mixture = f"{prefix}{'taskless_' if taskless else ''}glue_v002_proportional"
    rate = registration.rate_num_examples(sizes)
    registration.add_mixture(mixture, [(n, rate) for n in sizes])
    names.append(mixture)
  return names


REGISTERED = register_glue()
