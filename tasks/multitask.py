"""Multi-task prompt tuning's data: each example's inputs start with its task's index token.

`prompt_variants.MultiTaskPrompt` reads the task of every example from its first input token and
drops that token, as the original's multi-task prompts do. This module is the one place that
puts it there: importing it registers, for each synthetic task of the embedded default in
`TASKS` (index i in that order),

  synthetic_multitask_super_glue_<task>_v102    the taskless task with `<extra_id_i>` first
  synthetic_multitask_super_glue_v102           their mixture, proportional to train examples
  synthetic_multitask_super_glue_rte_cb_v102    the mixture of the RTE- and CB-like tasks only
                                                (the methods comparison's, `MIXTURES`)

so the index travels from the SeqIO mixture to the batch inside `encoder_input_tokens`, through
the ordinary feature converter, padding, sharding and decoding, with no extra feature. Task i's
token is `<extra_id_i>`, id `vocab_size - 1 - i` (`first_task_token() - i`); a vocabulary with
fewer extra ids than tasks is an error. The token is added after tokenisation and before EOS is
appended, so inputs are trimmed to `TASK_FEATURE_LENGTHS['inputs']` with it counted.

A mixture of some of the tasks keeps their tokens: its prompt has one task prompt per member
(`task_names(tasks)`), and `first_task_token(tasks=...)` is its first member's token, so the
members must be consecutive in `TASKS` (task j of the mixture is then `first_task_token - j`).

Use it as a task module: `--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.tasks.multitask'`
(`configs/prompts/multitask.gin` sets it).
"""

from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import registration
from prompt_tuning.data import vocab
from prompt_tuning.tasks import super_glue
from prompt_tuning.tasks import synthetic

TASKS = ("boolq", "rte", "cb")
MIXTURE = "synthetic_multitask_super_glue_v102"
# Registered mixtures by member tasks (each a consecutive run of TASKS).
MIXTURES = {TASKS: MIXTURE, ("rte", "cb"): "synthetic_multitask_super_glue_rte_cb_v102"}
TASKLESS_PREFIX = synthetic.PREFIX + "taskless_super_glue_"


def task_name(name: str) -> str:
  return f"synthetic_multitask_super_glue_{name}_v102"


def _members(tasks: Sequence[str]) -> tuple[str, ...]:
  """`tasks` checked: known, and consecutive in `TASKS` (their tokens then count down)."""
  tasks = tuple(tasks)
  unknown = [t for t in tasks if t not in TASKS]
  if not tasks or unknown:
    raise ValueError(f"MULTITASK_TASKS={list(tasks)}: choose tasks among {list(TASKS)}.")
  start = TASKS.index(tasks[0])
  if tasks != TASKS[start : start + len(tasks)]:
    raise ValueError(
        f"MULTITASK_TASKS={list(tasks)}: the tasks of a mixture must be consecutive in "
        f"{list(TASKS)}, in that order (task j's token is the first task's minus j)."
    )
  return tasks


def task_names(tasks: Sequence[str] = TASKS) -> tuple[str, ...]:
  """The tasks in index order: what `MultiTaskPrompt.task_names` must list."""
  return _members(tasks)


def first_task_token(vocabulary=None, tasks: Sequence[str] = TASKS) -> int:
  """Id of the token of `tasks[0]`: `<extra_id_i>` for its index i in `TASKS` (`<extra_id_0>`,
  the last id of the vocabulary, for the whole mixture)."""
  vocabulary = vocabulary or vocab.get_vocabulary()
  if vocabulary.extra_ids < len(TASKS):
    raise ValueError(
        f"The vocabulary has {vocabulary.extra_ids} extra ids; the multi-task prompt needs one "
        f"per task ({len(TASKS)}: {list(TASKS)})."
    )
  return vocabulary.vocab_size - 1 - TASKS.index(_members(tasks)[0])


def mixture_name(tasks: Sequence[str] = TASKS) -> str:
  """The registered mixture of `tasks` (`MIXTURES`)."""
  tasks = _members(tasks)
  if tasks not in MIXTURES:
    raise ValueError(
        f"MULTITASK_TASKS={list(tasks)}: no such mixture is registered; the mixtures are "
        f"{[list(m) for m in MIXTURES]} (add one to tasks/multitask.py's MIXTURES)."
    )
  return MIXTURES[tasks]


def target_task(taskless_name: str, tasks: Sequence[str] = TASKS) -> str:
  """The multi-task version of `taskless_name` (`synthetic_taskless_super_glue_cb_v102` ->
  `synthetic_multitask_super_glue_cb_v102`): what a prompt trained on the mixture of `tasks` is
  evaluated on when the target is named as its taskless task (an ablation grid's task axis)."""
  tasks = _members(tasks)
  name = taskless_name[len(TASKLESS_PREFIX) :].removesuffix("_v102")
  if not taskless_name.startswith(TASKLESS_PREFIX) or name not in tasks:
    raise ValueError(
        f"MIXTURE_OR_TASK_NAME={taskless_name!r}: the target must be one of the mixture's "
        f"taskless tasks {[TASKLESS_PREFIX + t + '_v102' for t in tasks]}."
    )
  return task_name(name)


def prepend_task_token(index: int):
  """A preprocessor putting task `index`'s token first in the tokenised `inputs`."""

  @seqio.map_over_dataset
  def prepend(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    token = tf.constant([first_task_token() - index], x["inputs"].dtype)
    return {**x, "inputs": tf.concat([token, x["inputs"]], axis=0)}

  return prepend


def _register(names: Sequence[str]) -> list[str]:
  registered = []
  for index, name in enumerate(names):
    base = seqio.get_mixture_or_task(synthetic.PREFIX + f"taskless_super_glue_{name}_v102")
    steps = list(base.preprocessors)
    if steps[-1] is not seqio.preprocessors.append_eos_after_trim:
      raise AssertionError(f"{base.name}: expected EOS appended last, got {steps[-1]}.")
    registration.add_task(
        task_name(name),
        source=base.source,
        output_features=base.output_features,
        preprocessors=steps[:-1] + [prepend_task_token(index), steps[-1]],
        postprocess_fn=base.postprocessor,
        metric_objs=base.metric_objs,
    )
    registered.append(task_name(name))
  # Proportional to each task's train examples (counted; the published sizes if uncountable).
  rate = registration.rate_num_examples({task_name(n): super_glue.TRAIN_SIZES[n] for n in names})
  for members, mixture in MIXTURES.items():
    registration.add_mixture(mixture, [(task_name(t), rate) for t in _members(members)])
    registered.append(mixture)
  return registered


REGISTERED = _register(TASKS)
