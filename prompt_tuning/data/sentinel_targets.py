"""Any task with a sentinel before every target: the paper's "span corruption + sentinel".

A model pretrained only with span corruption has only ever decoded outputs that start with a
sentinel (`<extra_id_0> span <extra_id_1> ...`). The paper's third pretraining-objective variant
prompt-tunes such a model with `<extra_id_0>` prepended to every downstream target (the
original's `add_sentinel_to_targets`), so the targets look like its pretraining outputs; the
sentinel is stripped again before the task's own postprocessor and metrics.

  MIXTURE_OR_TASK_NAME = @sentinel_targets.register()
  sentinel_targets.register.task_name = 'synthetic_taskless_super_glue_cb_v102'

(`configs/tasks/sentinel_targets.gin` does this for the task named by SENTINEL_TARGETS_TASK.)
`register` registers a copy of the task, `<task_name>_sentinel_targets`, and returns its name,
so training, evaluation and inference all read the copy.
"""

import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

from prompt_tuning.data import pipeline
from prompt_tuning.data import postprocessors

SENTINEL = "<extra_id_0>"  # T5's first sentinel: the highest id of the vocabulary's extra ids.
SUFFIX = "_sentinel_targets"


def prepend_sentinel(dataset: tf.data.Dataset, sentinel: str = SENTINEL) -> tf.data.Dataset:
  """Text preprocessor: `targets` -> `"<sentinel> <targets>"`. With the space, T5's
  SentencePiece vocabulary encodes it as the sentinel's id followed by the target's own ids."""

  @seqio.map_over_dataset
  def prepend(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {**x, "targets": tf.strings.join([sentinel, x["targets"]], separator=" ")}

  return prepend(dataset)


def strip_sentinel(
    output: Any,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
    *,
    postprocess_fn: Optional[Callable[..., Any]] = None,
    sentinel: str = SENTINEL,
) -> Any:
  """Postprocessor: removes a leading `sentinel` (and the space after it) from the decoded text,
  then applies the task's own `postprocess_fn`. Text without the sentinel is passed on as it is,
  so a prediction that omits it is judged on the rest, like any other."""
  text = postprocessors.as_text(output)
  if text.startswith(sentinel):
    text = text[len(sentinel) :].lstrip()
  if postprocess_fn is None:
    return text
  return postprocess_fn(text, example=example, is_target=is_target)


def with_sentinel_targets(task: seqio.Task, sentinel: str = SENTINEL) -> seqio.Task:
  """A copy of `task`, named `<name>_sentinel_targets`, whose targets start with `sentinel`."""
  steps = list(task.preprocessors)
  if seqio.preprocessors.tokenize not in steps:
    raise ValueError(
        f"Task {task.name!r}: sentinel targets are added to the target text before "
        "seqio.preprocessors.tokenize, which its preprocessors do not use."
    )
  at = steps.index(seqio.preprocessors.tokenize)
  return task.replace(
      name=task.name + SUFFIX,
      preprocessors=steps[:at]
      + [functools.partial(prepend_sentinel, sentinel=sentinel)]
      + steps[at:],
      postprocess_fn=functools.partial(
          strip_sentinel, postprocess_fn=task.postprocessor, sentinel=sentinel
      ),
  )


def register(
    task_name: str,
    module: Union[None, str, Sequence[str]] = None,
    sentinel: str = SENTINEL,
) -> str:
  """Registers `with_sentinel_targets` of the task `task_name` (after importing `module`, as
  MIXTURE_OR_TASK_MODULE) and returns the copy's name. Registering again replaces the copy."""
  task = pipeline.get_task(task_name, module)
  if not isinstance(task, seqio.Task):
    raise ValueError(
        f"sentinel_targets.register: {task_name!r} is a mixture; register the sentinel copy of "
        "each of its tasks and mix those."
    )
  copy = with_sentinel_targets(task, sentinel)
  seqio.TaskRegistry.remove(copy.name)  # A no-op when it is not registered yet.
  seqio.TaskRegistry.add_provider(copy.name, copy)
  return copy.name
