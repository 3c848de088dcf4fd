"""Multi-task prompt tuning's data: each example's inputs start with its task's index token.

`prompt_variants.MultiTaskPrompt` reads the task of every example from its first input token and
drops that token, as the original's multi-task prompts do. This module is the one place that
puts it there: importing it registers, for each synthetic task of the embedded default in
`TASKS` (index i in that order),

  synthetic_multitask_super_glue_<task>_v102    the taskless task with `<extra_id_i>` first
  synthetic_multitask_super_glue_v102           their mixture, proportional to train examples

so the index travels from the SeqIO mixture to the batch inside `encoder_input_tokens`, through
the ordinary feature converter, padding, sharding and decoding, with no extra feature. Task i's
token is `<extra_id_i>`, id `vocab_size - 1 - i` (`first_task_token() - i`); a vocabulary with
fewer extra ids than tasks is an error. The token is added after tokenisation and before EOS is
appended, so inputs are trimmed to `TASK_FEATURE_LENGTHS['inputs']` with it counted.

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


def task_name(name: str) -> str:
  return f"synthetic_multitask_super_glue_{name}_v102"


def task_names() -> tuple[str, ...]:
  """The tasks in index order: what `MultiTaskPrompt.task_names` must list."""
  return TASKS


def first_task_token(vocabulary=None) -> int:
  """Id of task 0's token, `<extra_id_0>` (the last id of the vocabulary)."""
  vocabulary = vocabulary or vocab.get_vocabulary()
  if vocabulary.extra_ids < len(TASKS):
    raise ValueError(
        f"The vocabulary has {vocabulary.extra_ids} extra ids; the multi-task prompt needs one "
        f"per task ({len(TASKS)}: {list(TASKS)})."
    )
  return vocabulary.vocab_size - 1


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
  registration.add_mixture(MIXTURE, [(t, rate) for t in registered])
  return registered + [MIXTURE]


REGISTERED = _register(TASKS)
