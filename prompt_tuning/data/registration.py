"""Registering seqio tasks and mixtures: the shared steps, replacement, and mixing rates.

`add_task` / `add_mixture` register under a name, replacing whatever was registered under it
before (registering again, e.g. from another data directory, is deliberate here). `add_alias`
registers a copy of a task or mixture under a second name (the original's names for our tasks).
`rate_num_examples` is the proportional mixing rate; a rate that cannot be computed is an error,
never a silent 0.
"""

import math
from typing import Any, Callable, Mapping, Optional

from absl import logging
import seqio
import tensorflow as tf

from prompt_tuning.data import files


class MixtureRateError(ValueError):
  """The mixing rate of a task cannot be computed; the message names the task and the cause."""


def tokenize_and_append_eos() -> list[Callable[..., tf.data.Dataset]]:
  """The steps after text formatting, shared by every task (as in T5)."""
  return [
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]


def _replace(registry, name: str, *args, **kwargs):
  """`registry.add(name, ...)` after removing any provider registered as `name`."""
  registry.remove(name)  # A no-op when `name` is not registered.
  return registry.add(name, *args, **kwargs)


# What each name was registered with, so `add_alias` can register the same under another name.
_TASK_KWARGS: dict[str, dict[str, Any]] = {}
_MIXTURE_ARGS: dict[str, tuple[Any, dict[str, Any]]] = {}


def add_task(name: str, **task_kwargs: Any) -> seqio.Task:
  """Registers `seqio.Task(name, **task_kwargs)`, replacing a task of that name."""
  _TASK_KWARGS[name] = dict(task_kwargs)
  return _replace(seqio.TaskRegistry, name, **task_kwargs)


def add_mixture(name: str, tasks: Any, **mixture_kwargs: Any) -> seqio.Mixture:
  """Registers `seqio.Mixture(name, tasks, ...)`, replacing a mixture of that name."""
  _MIXTURE_ARGS[name] = (tasks, dict(mixture_kwargs))
  return _replace(seqio.MixtureRegistry, name, tasks, **mixture_kwargs)


def add_alias(alias: str, name: str) -> None:
  """Registers the task or mixture `name` (registered by this module) again as `alias`.

  The alias is a copy made now: the same source, preprocessors, postprocessor and metrics (or
  mixture members and rates); metrics are reported under the alias.
  """
  if name in _TASK_KWARGS:
    add_task(alias, **_TASK_KWARGS[name])
  elif name in _MIXTURE_ARGS:
    tasks, kwargs = _MIXTURE_ARGS[name]
    add_mixture(alias, tasks, **kwargs)
  else:
    raise ValueError(f"Cannot alias {alias!r} to {name!r}: no task or mixture of that name.")


def _count_train_examples(task: seqio.Task) -> tuple[Optional[int], str]:
  """(number of train examples, "") or (None, why it is unknown)."""
  try:
    if task.cache_dir:
      count = task.get_cached_stats("train")["examples"]
    else:
      count = task.num_input_examples("train")
  except KeyError as e:  # TFDS: the dataset has not been prepared (its splits are empty).
    return None, f"its data is not prepared ({e})"
  except files.DataNotFoundError as e:
    return None, f"its data is missing ({e})"
  if count is None or not math.isfinite(count):
    return None, f"its source does not know the number of train examples (got {count})"
  return int(count), ""


def rate_num_examples(fallback_num_examples: Mapping[str, float]) -> Callable[[seqio.Task], float]:
  """Mixing rate = number of training examples, from the data when it is there.

  When the data is not there yet (TFDS not prepared, a local file missing) or its size is
  unknown, the rate is `fallback_num_examples[task.name]`, the published size of the train split,
  so a mixture is usable (and its proportions right) before its data is prepared. A task with no
  train split, or with neither a count nor a fallback, raises `MixtureRateError`.
  """

  def rate(task: seqio.Task) -> float:
    if "train" not in task.splits:
      raise MixtureRateError(
          f"Mixing rate of task {task.name!r}: it has no 'train' split (splits: "
          f"{list(task.splits)}); give it a fixed rate (e.g. 0 for evaluation only)."
      )
    count, cause = _count_train_examples(task)
    if count is not None:
      return float(count)
    if task.name in fallback_num_examples:
      logging.info("No example count for %s (%s); using its published size.", task.name, cause)
      return float(fallback_num_examples[task.name])
    raise MixtureRateError(
        f"Mixing rate of task {task.name!r}: the number of train examples is unknown: {cause}, "
        "and no published size is given for it. Prepare its data or add its train-split size "
        "to the fallback sizes."
    )

  return rate
