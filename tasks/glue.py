"""GLUE tasks in T5's text-to-text formats (TFDS `glue/<config>:2.0.0`).

Registered on import:
  glue_{cola,sst2,mrpc,qqp,stsb,mnli,mnli_matched,mnli_mismatched,qnli,rte,wnli,ax}_v002
  taskless_<each of the above>            same text without the task name
  glue_v002_proportional, taskless_glue_v002_proportional
and the original's names for them (google-research/prompt-tuning `data/glue.py`; its demo
scripts train `taskless_glue_sst2_v200_examples`), as copies of the tasks above: `_v200` (TFDS
glue 2.0.0, which every task here reads) and `_examples` (the original's also logged text
examples to TensorBoard):
  glue_<c>_{v002,v200}_examples                          -> glue_<c>_v002
  taskless_glue_<c>_{v002_examples,v200,v200_examples}   -> taskless_glue_<c>_v002
  [taskless_]glue_mnli_and_dev_{v002,v200}_examples      mixture: MNLI train, matched, mismatched
Formats, targets and metrics: docs/tasks.md.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

from prompt_tuning.data import glue_format
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registration
from prompt_tuning.data import sources
from prompt_tuning.data import vocab

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
  label_names = glue_format.GLUE_LABELS[labels]
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


def register_original_names() -> list[str]:
  """Registers the original's names listed above; returns them."""
  names = []
  for t in GLUE_TASKS:
    for taskless in (False, True):
      canonical = task_name(t.config, taskless)
      variants = [("v002", "_examples"), ("v200", "_examples")]
      if taskless:  # The original leaves `glue_<c>_v200` to T5, which does not define it.
        variants.append(("v200", ""))
      for version, suffix in variants:
        alias = canonical.replace("_v002", f"_{version}") + suffix
        registration.add_alias(alias, canonical)
        names.append(alias)
  for taskless in (False, True):
    mnli = [task_name(c, taskless) for c in ("mnli", "mnli_matched", "mnli_mismatched")]
    for version in ("v002", "v200"):
      mixture = f"{'taskless_' if taskless else ''}glue_mnli_and_dev_{version}_examples"
      registration.add_mixture(mixture, mnli, default_rate=1.0)
      names.append(mixture)
  return names


REGISTERED = register_glue() + register_original_names()
