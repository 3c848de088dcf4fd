"""T5X checkpoints in orbax's format, read with orbax-checkpoint.

Newer T5X (`use_orbax`) writes `checkpoint_<N>/state/` with orbax's `PyTreeCheckpointHandler` and
OCDBT: `state/_METADATA` (the tree), `state/manifest.ocdbt` and `state/ocdbt.process_*/` (the
arrays), plus `checkpoint_<N>/_CHECKPOINT_METADATA` once the save is complete. The tree is the
train state's `{"target": params, "state": {"step", "param_states"}}`, as in the msgpack
format. `checkpoints.py` sends such directories here.

orbax-checkpoint comes with flax; it is imported only when such a checkpoint is read. A read
restores the whole tree (parameters and optimizer state) as numpy arrays.
"""

from __future__ import annotations

import os
from typing import Any

STATE_DIR = "state"
_TREE_METADATA = "_METADATA"
_COMPLETE_MARKER = "_CHECKPOINT_METADATA"


class OrbaxError(ValueError):
  """An orbax checkpoint cannot be read."""


def _epath(path: str):
  from etils import epath  # pylint: disable=g-import-not-at-top  # orbax's path library.

  return epath.Path(path)


def state_dir(path: str | os.PathLike) -> str | None:
  """The `state/` item of a T5X orbax checkpoint at `path` (the step dir or `state/`), or None."""
  path = os.fspath(path).rstrip("/")
  remote = path.startswith("gs://")
  for candidate in (path + "/" + STATE_DIR, path):
    marker = candidate + "/" + _TREE_METADATA
    if _epath(marker).exists() if remote else os.path.isfile(marker):
      return candidate
  return None


def is_complete(step_dir: str | os.PathLike) -> bool:
  """Whether orbax finished writing the `checkpoint_<N>` directory (local paths)."""
  step_dir = os.fspath(step_dir)
  return os.path.isfile(os.path.join(step_dir, _COMPLETE_MARKER)) and os.path.isfile(
      os.path.join(step_dir, STATE_DIR, _TREE_METADATA)
  )


def _checkpointer():
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise OrbaxError(
        f"Reading an orbax checkpoint needs orbax-checkpoint (pip install orbax-checkpoint): {e}"
    ) from e
  return ocp.PyTreeCheckpointer()


def read_tree(state: str) -> dict[str, Any]:
  """The whole saved tree of the `state/` item, as numpy arrays and Python scalars."""
  tree = _checkpointer().restore(state)
  if not isinstance(tree, dict) or "target" not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise OrbaxError(f"{state!r} is not a T5X train state: no 'target' (top level: {keys}).")
  return tree


def read_shapes(state: str) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
  """Path -> (shape, dtype name) of every leaf under `target`, reading no array."""
  metadata = _checkpointer().metadata(state)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "target" not in tree:
    raise OrbaxError(f"{state!r} is not a T5X train state: no 'target' in its metadata.")
  out = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, prefix + (str(k),))
    elif node is not None:
      out[prefix] = (tuple(node.shape), str(node.dtype))

  walk(tree["target"], ())
  return out
