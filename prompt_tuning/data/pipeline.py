"""From a SeqIO task or mixture to numpy batches: the one input path for train, eval and infer.

`seqio.get_dataset` with the encoder-decoder feature converter (no packing: prompt tuning rejects
it), sharded per host with `seqio.ShardInfo`, in a deterministic order for a seed. The position in
the stream is a number of batches, saved in checkpoints; resuming skips that many batches.
"""

import dataclasses
import difflib
import functools
import importlib
from typing import Callable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import jax
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import compat


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What to read. `batch_size` is global; each host reads its share."""

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = "train"
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 42
  use_cached: bool = False
  module: Union[None, str, Sequence[str]] = None  # Modules that register tasks (imported first).


def import_task_modules(modules: Union[None, str, Sequence[str]]) -> None:
  """Imports the modules that register tasks, e.g. `--gin.MIXTURE_OR_TASK_MODULE=my_tasks`."""
  if not modules:
    return
  for name in [modules] if isinstance(modules, str) else modules:
    name = compat.TASK_MODULES.get(name, name)  # The original's module names.
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ImportError(
          f"Could not import the task module {name!r} " f"(MIXTURE_OR_TASK_MODULE): {e}"
      ) from e


def get_task(name: str, module: Union[None, str, Sequence[str]] = None):
  """The registered task or mixture, or an error listing the closest registered names."""
  import_task_modules(module)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Closest registered names: {close}." if close else ""
    raise ValueError(
        f"Unknown task or mixture {name!r} (MIXTURE_OR_TASK_NAME).{hint} Tasks register when "
        "their module is imported: pass it with --gin.MIXTURE_OR_TASK_MODULE=..."
    ) from None


# Packages whose tf.data functions are graph code as written: tracing them needs no AutoGraph.
GRAPH_CODE_PACKAGES = ("seqio", "prompt_tuning", "tensorflow", "tensorflow_text")
_T = TypeVar("_T")


def _is_graph_code(obj) -> bool:
  if isinstance(obj, functools.partial):  # Its function and any function bound to it.
    bound = [v for v in (*obj.args, *obj.keywords.values()) if callable(v)]
    return all(_is_graph_code(f) for f in (obj.func, *bound))
  module = (getattr(obj, "__module__", None) if callable(obj) else None) or type(obj).__module__
  return any(module == p or module.startswith(p + ".") for p in GRAPH_CODE_PACKAGES)


def needs_autograph(mixture_or_task_name: str) -> bool:
  """Whether a function the task's pipeline traces comes from outside `GRAPH_CODE_PACKAGES`.

  Looks at each task's preprocessors, its source and the callables it holds (a
  `seqio.FunctionDataSource`'s `dataset_fn`, a file source's reader) and its vocabularies.
  """
  task_or_mixture = seqio.get_mixture_or_task(mixture_or_task_name)
  tasks = task_or_mixture.tasks if isinstance(task_or_mixture, seqio.Mixture) else [task_or_mixture]
  for task in tasks:
    held = [v for v in getattr(task.source, "__dict__", {}).values() if callable(v)]
    vocabularies = [f.vocabulary for f in task.output_features.values()]
    for obj in [*task.preprocessors, task.source, *held, *vocabularies]:
      if not _is_graph_code(obj):
        return True
  return False


def build(mixture_or_task_name: str, fn: Callable[[], _T]) -> _T:
  """Runs `fn`, which builds the task's tf.data pipeline, without AutoGraph where none is needed.

  tf.data passes every function it traces through AutoGraph, which rewrites its source: 5.7 s of
  the embedded default's start-up on 2 CPU cores (benchmarks/README.md), for SeqIO's and this
  package's functions, which do not need it. A task with any function from elsewhere (a user's
  preprocessor may branch on a tensor in Python) keeps TensorFlow's default.
  """
  if needs_autograph(mixture_or_task_name):
    return fn()
  return tf.autograph.experimental.do_not_convert(fn)()


def check_feature_lengths(lengths: Mapping[str, int]) -> None:
  """Fails early, with the fix, on feature lengths the model cannot take."""
  if not isinstance(lengths, Mapping) or set(lengths) != {"inputs", "targets"}:
    raise ValueError(
        f"TASK_FEATURE_LENGTHS must be {{'inputs': N, 'targets': M}}; got {lengths!r}."
    )
  for k, v in lengths.items():
    if not isinstance(v, int) or v <= 0:
      raise ValueError(f"TASK_FEATURE_LENGTHS[{k!r}] must be a positive integer; got {v!r}.")


def feature_converter() -> seqio.FeatureConverter:
  return seqio.EncDecFeatureConverter(pack=False)


def host_batch_size(global_batch_size: int, num_shards: int) -> int:
  if global_batch_size % num_shards:
    raise ValueError(
        f"BATCH_SIZE {global_batch_size} is not divisible by the {num_shards} " "host data shards."
    )
  return global_batch_size // num_shards


def train_batches(
    cfg: DatasetConfig, skip_batches: int = 0, shard: tuple[int, int] = (0, 1)
) -> Iterator[dict[str, np.ndarray]]:
  """Endless host-local batches of this host's data shard `(index, count)`.

  `skip_batches` resumes the stream where a checkpoint left it; `shard` comes from
  `Partitioner.data_shard_info()`.
  """
  get_task(cfg.mixture_or_task_name, cfg.module)
  index, count = shard
  get_dataset = functools.partial(
      seqio.get_dataset,
      cfg.mixture_or_task_name,
      task_feature_lengths=dict(cfg.task_feature_lengths),
      dataset_split=cfg.split,
      shuffle=cfg.shuffle,
      num_epochs=None,
      seed=cfg.seed,
      use_cached=cfg.use_cached,
      shard_info=seqio.ShardInfo(index=index, num_shards=count),
      feature_converter=feature_converter(),
  )
  ds = build(cfg.mixture_or_task_name, get_dataset)
  ds = ds.batch(host_batch_size(cfg.batch_size, count), drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.as_numpy_iterator()


def padded_batches(ds, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """Batches of an enumerated `(index, features)` dataset; the last is padded with copies.

  Yields (indices, batch) where padded rows have index -1, so results can be dropped.
  """
  items = []
  for index, features in ds.as_numpy_iterator():
    items.append((index, features))
    if len(items) == batch_size:
      yield _stack(items, batch_size)
      items = []
  if items:
    yield _stack(items, batch_size)


def _stack(items, batch_size):
  indices = np.full((batch_size,), -1, np.int64)
  indices[: len(items)] = [i for i, _ in items]
  rows = [f for _, f in items] + [items[-1][1]] * (batch_size - len(items))
  return indices, {k: np.stack([r[k] for r in rows]) for k in rows[0]}
