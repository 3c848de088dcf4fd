"""SuperGLUE tasks in T5's text-to-text formats, with and without the task name.

Registered on import (source: TFDS, or the official JSONL files in
`$PROMPT_TUNING_SUPER_GLUE_DIR` when that is set):
  super_glue_{boolq,cb,copa,multirc,record,rte,wic,wsc_fixed,axb,axg}_v102
  super_glue_wsc_v102_simple_{train,eval}   T5's short-answer WSC
  taskless_<each of the above>              same text without the task name
  super_glue_v102_proportional, taskless_super_glue_v102_proportional
and the original's names for them (google-research/prompt-tuning `data/super_glue.py`), as
copies; `_examples` is the same task (the original's also logged text examples to TensorBoard):
  [taskless_]super_glue_<c>_v102_examples   (every config above but wsc_fixed, as the original)
  [taskless_]super_glue_wsc_v102_simple_{train,eval}_examples
  [taskless_]super_glue_wsc_and_dev_v102_simple[_examples]   mixture: WSC-simple train + eval
`register_super_glue(source, data_dir, prefix)` registers another copy, e.g. from
local files under different names. Formats, targets and metrics: docs/tasks.md.
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence

import seqio

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registration
from prompt_tuning.data import sources
from prompt_tuning.data import super_glue_format
from prompt_tuning.data import vocab

SUPER_GLUE_DIR_ENV_VAR = "PROMPT_TUNING_SUPER_GLUE_DIR"

# Published train-split sizes (TFDS super_glue 1.0.2), the mixing rates used when
# the data is not there to count. AX-b/AX-g have no train split.
TRAIN_SIZES = {
    "boolq": 9_427,
    "cb": 250,
    "copa": 400,
    "multirc": 27_243,
    "record": 100_730,
    "rte": 2_490,
    "wic": 5_428,
    "wsc.fixed": 554,
}


@dataclasses.dataclass(frozen=True)
class SuperGlueTask:
  """How one SuperGLUE config becomes a text-to-text task."""

  name: str  # As in the task name: "wsc_fixed".
  config: str  # TFDS config: "wsc.fixed".
  task_name: str  # First word of the inputs (AX-b/AX-g are cast as RTE).
  text_preprocessor: Callable[..., Any]  # Takes `task_name=` (None: taskless).
  postprocess_fn: Callable[..., Any]
  metric_fns: Sequence[Callable[..., dict[str, float]]]


def _classification(
    config: str, field_names: Sequence[str], rename: Optional[dict[str, str]] = None
) -> Callable[..., Any]:
  return functools.partial(
      preprocessors.classification,
      field_names=tuple(field_names),
      label_names=super_glue_format.SUPER_GLUE_LABELS[config],
      rename=rename,
  )


def _label_ids(config: str) -> Callable[..., int]:
  return functools.partial(
      postprocessors.string_label_to_class_id,
      label_names=super_glue_format.SUPER_GLUE_LABELS[config],
  )


# Field order is T5's: GLUE-style tasks list their fields alphabetically, except
# MultiRC (question, answer, paragraph) and WiC (sentence1, sentence2, word).
SUPER_GLUE_TASKS = (
    SuperGlueTask(
        "boolq",
        "boolq",
        "boolq",
        _classification("boolq", ("passage", "question")),
        _label_ids("boolq"),
        [metrics.accuracy],
    ),
    SuperGlueTask(
        "cb",
        "cb",
        "cb",
        _classification("cb", ("hypothesis", "premise")),
        _label_ids("cb"),
        [metrics.macro_f1(3), metrics.accuracy],
    ),
    SuperGlueTask(
        "copa",
        "copa",
        "copa",
        _classification("copa", ("choice1", "choice2", "premise", "question")),
        _label_ids("copa"),
        [metrics.accuracy],
    ),
    SuperGlueTask(
        "multirc",
        "multirc",
        "multirc",
        preprocessors.multirc,
        postprocessors.multirc,
        [metrics.multirc_exact_match, metrics.multirc_f1a],
    ),
    SuperGlueTask(
        "record",
        "record",
        "record",
        preprocessors.record,
        postprocessors.record,
        [metrics.record_em_f1],
    ),
    SuperGlueTask(
        "rte",
        "rte",
        "rte",
        _classification("rte", ("hypothesis", "premise")),
        _label_ids("rte"),
        [metrics.accuracy],
    ),
    SuperGlueTask(
        "wic",
        "wic",
        "wic",
        _classification("wic", ("sentence1", "sentence2", "word")),
        _label_ids("wic"),
        [metrics.accuracy],
    ),
    SuperGlueTask(
        "wsc_fixed",
        "wsc.fixed",
        "wsc",
        preprocessors.wsc_fixed,
        _label_ids("wsc.fixed"),
        [metrics.accuracy],
    ),
    # AX-b's sentence1/sentence2 are shown as premise/hypothesis, like RTE's.
    SuperGlueTask(
        "axb",
        "axb",
        "rte",
        _classification(
            "axb",
            ("hypothesis", "premise"),
            rename={"hypothesis": "sentence2", "premise": "sentence1"},
        ),
        _label_ids("axb"),
        [metrics.matthews_corrcoef],
    ),
    SuperGlueTask(
        "axg",
        "axg",
        "rte",
        _classification("axg", ("hypothesis", "premise")),
        postprocessors.axg,
        [metrics.accuracy, metrics.gender_parity],
    ),
)


def task_name(name: str, taskless: bool = False, prefix: str = "") -> str:
  """`super_glue_rte_v102`, `taskless_super_glue_rte_v102`, with `prefix` in front."""
  return f"{prefix}{'taskless_' if taskless else ''}super_glue_{name}_v102"


def _add_task(
    name: str,
    source: seqio.DataSource,
    text_preprocessor: Callable[..., Any],
    postprocess_fn: Optional[Callable[..., Any]],
    metric_fns: Sequence[Callable[..., Any]],
) -> None:
  registration.add_task(
      name,
      source=source,
      preprocessors=[text_preprocessor, *registration.tokenize_and_append_eos()],
      output_features=vocab.get_output_features(),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
  )


def _register_wsc_simple(
    source: str, data_dir: Optional[str | Callable[[], str]], prefix: str, taskless: bool
) -> list[str]:
  """T5's short-answer WSC: train on true referents only; score the referent match."""
  label = None if taskless else "wsc:"
  train = task_name("wsc", taskless, prefix) + "_simple_train"
  evaluate = task_name("wsc", taskless, prefix) + "_simple_eval"
  _add_task(
      train,
      sources.super_glue_source("wsc.fixed", source, data_dir, ["train"]),
      functools.partial(preprocessors.wsc_simple, task_name=label, correct_referent_only=True),
      None,
      [],
  )
  _add_task(
      evaluate,
      sources.super_glue_source("wsc.fixed", source, data_dir, ["validation", "test"]),
      functools.partial(preprocessors.wsc_simple, task_name=label),
      postprocessors.wsc_simple,
      [metrics.accuracy],
  )
  return [train, evaluate]


def _register_mixture(prefix: str, taskless: bool) -> str:
  """All training tasks at rate = number of train examples; eval-only ones at 0."""
  sizes = {
      task_name(t.name, taskless, prefix): TRAIN_SIZES[t.config]
      for t in SUPER_GLUE_TASKS
      if t.config in TRAIN_SIZES
  }
  sizes[task_name("wsc", taskless, prefix) + "_simple_train"] = TRAIN_SIZES["wsc.fixed"]
  # wsc_fixed and WSC-simple would train on the same data twice; keep T5's choice.
  sizes.pop(task_name("wsc_fixed", taskless, prefix))
  rate = registration.rate_num_examples(sizes)
  eval_only = [
      task_name("wsc", taskless, prefix) + "_simple_eval",
      task_name("axb", taskless, prefix),
      task_name("axg", taskless, prefix),
  ]
  name = f"{prefix}{'taskless_' if taskless else ''}super_glue_v102_proportional"
  registration.add_mixture(name, [(t, rate) for t in sizes] + [(t, 0.0) for t in eval_only])
  return name


def register_super_glue(
    source: str = "tfds",
    data_dir: Optional[str | Callable[[], str]] = None,
    prefix: str = "",
    tasks: Sequence[SuperGlueTask] = SUPER_GLUE_TASKS,
) -> list[str]:
  """Registers every SuperGLUE task and mixture; returns their names.

  Args:
    source: "tfds" (`super_glue/<config>:1.0.2`) or "jsonl" (the official files).
    data_dir: for "jsonl", the folder holding `BoolQ/`, `CB/`, ..., or a function returning it,
      called when a task's data is read; for "tfds", an optional TFDS data directory.
    prefix: put before every name, to register a second copy beside the default one.
    tasks: how each config becomes text; a copy of `SUPER_GLUE_TASKS` with some replaced gives
      other formats under the same names (the synthetic tasks' RTE and CB).
  """
  names = []
  for taskless in (False, True):
    for t in tasks:
      name = task_name(t.name, taskless, prefix)
      _add_task(
          name,
          sources.super_glue_source(t.config, source, data_dir),
          functools.partial(t.text_preprocessor, task_name=None if taskless else t.task_name),
          t.postprocess_fn,
          t.metric_fns,
      )
      names.append(name)
    names += _register_wsc_simple(source, data_dir, prefix, taskless)
    names.append(_register_mixture(prefix, taskless))
  return names


def register_original_names() -> list[str]:
  """Registers the original's names listed above; returns them."""
  names = []
  for taskless in (False, True):
    canonical = [task_name(t.name, taskless) for t in SUPER_GLUE_TASKS if t.name != "wsc_fixed"]
    wsc = task_name("wsc", taskless)
    canonical += [wsc + "_simple_train", wsc + "_simple_eval"]
    for name in canonical:
      registration.add_alias(name + "_examples", name)
      names.append(name + "_examples")
    for suffix in ("", "_examples"):
      mixture = f"{'taskless_' if taskless else ''}super_glue_wsc_and_dev_v102_simple{suffix}"
      registration.add_mixture(
          mixture, [wsc + "_simple_train", wsc + "_simple_eval"], default_rate=1.0
      )
      names.append(mixture)
  return names


def _register_default() -> list[str]:
  """The default names (and the original's copies of them) from TFDS or the JSONL folder."""
  data_dir = os.environ.get(SUPER_GLUE_DIR_ENV_VAR)
  names = register_super_glue("jsonl" if data_dir else "tfds", data_dir or None)
  return names + register_original_names()


REGISTERED = _register_default()
