"""Reads and writes T5X checkpoints (msgpack + zarr) without depending on t5x.

A T5X checkpoint is a directory `checkpoint_<step>/` holding a msgpack file
`checkpoint` (a nested dict) plus one zarr v2 array directory per large array.
Small arrays are inline as msgpack ExtType 1 (flax.serialization's encoding);
large ones are replaced in the msgpack tree by a tensorstore spec whose kvstore
path is relative to the checkpoint directory.

Two layouts exist: version-3 files written through flax's `Optimizer` keep
`optimizer/target` and `optimizer/state`; newer ones keep `target` and `state`
at the top. Both are read; the newer one is written. T5X's orbax format
(`checkpoint_<step>/state/` with OCDBT) is read too, through `orbax_checkpoints.py`.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
import shutil
import tempfile
from typing import Any, Iterator, Mapping

import jax
import ml_dtypes  # registers bfloat16 & co. with numpy
import msgpack
import numpy as np
import tensorstore as ts

from prompt_tuning import orbax_checkpoints
from prompt_tuning import partitioning

__all__ = [
    "CheckpointError",
    "all_checkpoint_steps",
    "check_against",
    "latest_checkpoint",
    "list_parameters",
    "load_state",
    "load_t5x_checkpoint",
    "read_step",
    "save_t5x_checkpoint",
]

CHECKPOINT_FILE = "checkpoint"
VERSION = 3
_NDARRAY_EXT = 1  # flax.serialization's ext codes
_NPSCALAR_EXT = 3
_CHUNKED_KEY = "__msgpack_chunked_array__"  # flax splits >1 GiB leaves this way
_CHECKPOINT_DIR_RE = re.compile(r"checkpoint_(\d+)")
_ZARR_CHUNK_BYTES = 2**26
_ZARR_COMPRESSOR = {"id": "gzip", "level": 1}

Path = tuple[str, ...]
# A Sharding, a nested dict of them, or (path, shape, dtype) -> Sharding.
ShardingsArg = Any


class CheckpointError(ValueError):
  """A checkpoint is missing, malformed, or does not fit the model."""


# ----------------------------------------------------------------------------
# Paths and raw file access.
# ----------------------------------------------------------------------------


def _is_gcs(path: str) -> bool:
  return path.startswith("gs://")


def _split_gcs(path: str) -> tuple[str, str]:
  """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
  bucket, _, key = path[len("gs://") :].partition("/")
  return bucket, key


def _join(directory: str, name: str) -> str:
  if _is_gcs(directory):
    return posixpath.join(directory, name)
  return os.path.join(directory, name)


def _resolve(path: str | os.PathLike) -> tuple[str, str]:
  """(checkpoint directory, msgpack file) for a directory or file path."""
  path = os.fspath(path)
  if _is_gcs(path):
    path = path.rstrip("/")
    if posixpath.basename(path) == CHECKPOINT_FILE:
      return posixpath.dirname(path), path
    return path, posixpath.join(path, CHECKPOINT_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"Checkpoint path {path!r} does not exist.")
  if os.path.isdir(path):
    file = os.path.join(path, CHECKPOINT_FILE)
    if not os.path.isfile(file):
      hint = latest_checkpoint(path)
      hint = f" Did you mean {hint!r}?" if hint else ""
      raise CheckpointError(
          f"Directory {path!r} has no {CHECKPOINT_FILE!r} file, so it is not a "
          f"T5X checkpoint directory.{hint}"
      )
    return path, file
  return os.path.dirname(os.path.abspath(path)), path


def _read_bytes(file: str) -> bytes:
  if not _is_gcs(file):
    with open(file, "rb") as f:
      return f.read()
  bucket, key = _split_gcs(file)
  store = ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result()
  result = store.read(key).result()
  if result.state == "missing":
    raise CheckpointError(f"Checkpoint file {file!r} does not exist.")
  return bytes(result.value)


def _read_orbax(state: str) -> dict[str, Any]:
  try:
    return orbax_checkpoints.read_tree(state)
  except (orbax_checkpoints.OrbaxError, OSError, ValueError) as e:
    raise CheckpointError(f"Cannot read the orbax checkpoint {state!r}: {e}") from e


def _read_raw(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
  """Returns (checkpoint dir, msgpack tree with ExtTypes left undecoded).

  An orbax checkpoint gives its whole tree, already decoded (numpy leaves).
  """
  state = orbax_checkpoints.state_dir(path)
  if state is not None:
    return state, _read_orbax(state)
  directory, file = _resolve(path)
  data = _read_bytes(file)
  try:
    # ExtTypes stay as raw bytes so arrays are decoded only when selected.
    raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
  except Exception as e:  # msgpack raises several unrelated types.
    raise CheckpointError(f"{file!r} is not a msgpack T5X checkpoint file: {e}") from e
  if not isinstance(raw, dict):
    raise CheckpointError(
        f"{file!r} is not a T5X checkpoint: it decodes to a " f"{type(raw).__name__}, not a dict."
    )
  return directory, raw


def _section(raw: dict[str, Any], name: str, file_hint: str) -> Any:
  """`target` or `state`, from either the old (optimizer/...) or new layout."""
  root = raw.get("optimizer", raw)
  if not isinstance(root, dict) or name not in root:
    raise CheckpointError(
        f"{file_hint!r} is not a T5X checkpoint: it has neither {name!r} nor "
        f"'optimizer/{name}' (top-level keys: {sorted(map(str, raw))})."
    )
  return root[name]


# ----------------------------------------------------------------------------
# Trees.
# ----------------------------------------------------------------------------


def _is_ts_spec(node: Any) -> bool:
  return isinstance(node, Mapping) and isinstance(node.get("driver"), str)


def _is_leaf(node: Any) -> bool:
  """Leaves of a decoded-or-raw tree: everything but plain sub-dicts."""
  if not isinstance(node, Mapping):
    return True
  return _is_ts_spec(node) or _CHUNKED_KEY in node


def _flatten(tree: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
  """Yields (path, leaf) in key order; empty dicts yield nothing."""
  if _is_leaf(tree):
    yield prefix, tree
    return
  for key, value in tree.items():
    yield from _flatten(value, prefix + (str(key),))


def _unflatten(items: Mapping[Path, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in items.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _path_str(path: Path) -> str:
  return "/".join(path)


# ----------------------------------------------------------------------------
# Decoding leaves.
# ----------------------------------------------------------------------------


def _np_dtype(name: str | bytes) -> np.dtype:
  name = name.decode() if isinstance(name, bytes) else name
  try:
    return np.dtype(name)
  except TypeError:
    return np.dtype(getattr(ml_dtypes, name))


def _inline_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of an ExtType-1 payload, without copying its buffer."""
  unpacker = msgpack.Unpacker(raw=True)
  unpacker.feed(data)
  unpacker.read_array_header()
  shape = tuple(int(d) for d in unpacker.unpack())
  return shape, _np_dtype(unpacker.unpack())


def _decode_ndarray(data: bytes) -> np.ndarray:
  shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
  # Copy so callers get an ordinary writable array, not a view into msgpack.
  array = np.frombuffer(buffer, dtype=_np_dtype(dtype_name)).reshape(shape)
  return array.copy()


def _decode_inline(node: Any) -> Any:
  """Decodes an inline leaf (ExtType, chunked array or plain value)."""
  if isinstance(node, msgpack.ExtType):
    if node.code == _NDARRAY_EXT:
      return _decode_ndarray(node.data)
    if node.code == _NPSCALAR_EXT:
      return _decode_ndarray(node.data)[()]
    raise CheckpointError(f"Unsupported msgpack ExtType code {node.code}.")
  if isinstance(node, Mapping) and _CHUNKED_KEY in node:
    shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
    chunks = [_decode_inline(node["chunks"][str(i)]) for i in range(len(node["chunks"]))]
    return np.concatenate(chunks).reshape(shape)
  return node


def _ts_spec(spec: Mapping[str, Any], directory: str) -> dict[str, Any]:
  """Re-roots a spec's relative kvstore path at the checkpoint directory."""
  spec = copy.deepcopy(dict(spec))
  # Stored metadata is only a hint; the .zarray file is the truth.
  spec.pop("metadata", None)
  kvstore = spec.get("kvstore")
  rel = kvstore.get("path") if isinstance(kvstore, Mapping) else None
  rel = rel if rel is not None else spec.pop("path", None)  # older spec style
  if rel is None:
    raise CheckpointError(f"Tensorstore spec without a path: {spec}")
  full = rel if (_is_gcs(rel) or os.path.isabs(rel)) else _join(directory, rel)
  if _is_gcs(full):
    bucket, key = _split_gcs(full)
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket, "path": key}
  else:
    # 'gfile' is TensorFlow's filesystem; locally it is plain files.
    spec["kvstore"] = {"driver": "file", "path": full}
  return spec


def _open_ts(spec: Mapping[str, Any], directory: str) -> ts.TensorStore:
  full = _ts_spec(spec, directory)
  try:
    return ts.open(full, read=True, open=True).result()
  except Exception as e:  # tensorstore raises ValueError / OSError variants.
    raise CheckpointError(f"Cannot open array {full['kvstore']}: {e}") from e


def _leaf_shape_dtype(node: Any, directory: str) -> tuple[tuple[int, ...], str]:
  """(shape, dtype name) of a raw leaf, reading no array data."""
  if isinstance(node, msgpack.ExtType) and node.code in (_NDARRAY_EXT, _NPSCALAR_EXT):
    shape, dtype = _inline_header(node.data)
    return (() if node.code == _NPSCALAR_EXT else shape), dtype.name
  if _is_ts_spec(node):
    meta = node.get("metadata") or {}
    if "shape" in meta and isinstance(meta.get("dtype"), str):
      return tuple(int(d) for d in meta["shape"]), _np_dtype(meta["dtype"]).name
    store = _open_ts(node, directory)  # reads .zarray only
    return tuple(store.shape), store.dtype.numpy_dtype.name
  value = np.asarray(_decode_inline(node))
  return value.shape, value.dtype.name


def _sharding_for(shardings: ShardingsArg, path: Path, shape: tuple[int, ...], dtype: np.dtype):
  """The sharding requested for `path`, or None to return a numpy array."""
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return shardings
  if isinstance(shardings, Mapping):
    node = shardings
    for key in path:
      if not isinstance(node, Mapping) or key not in node:
        return None  # Not requested: left on host, check_against reports it.
      node = node[key]
    if node is not None and not isinstance(node, jax.sharding.Sharding):
      raise CheckpointError(
          f"{_path_str(path)}: shardings must hold jax.sharding.Sharding "
          f"leaves, got {type(node).__name__}."
      )
    return node
  if callable(shardings):
    return shardings(_path_str(path), shape, dtype)
  raise CheckpointError(
      f"shardings must be a Sharding, a nested dict or a callable, got "
      f"{type(shardings).__name__}."
  )


def _cast(x: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
  return x if dtype is None or x.dtype == dtype else x.astype(dtype)


def _index_key(index: tuple[slice, ...]) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def _read_leaf(
    node: Any, path: Path, directory: str, dtype: np.dtype | None, shardings: ShardingsArg
) -> Any:
  """Reads one leaf, placing it on devices when a sharding is requested."""
  if _is_ts_spec(node):
    store = _open_ts(node, directory)
    shape = tuple(store.shape)
    read = lambda index: store[index].read().result()
  else:
    value = _decode_inline(node)
    if isinstance(value, np.generic):
      value = np.asarray(value)
    if not isinstance(value, np.ndarray):
      return value  # None or a plain Python value: nothing to place.
    shape = value.shape
    # value[()] would turn a 0-d array into a numpy scalar.
    read = lambda index: value[index] if index else value
  out_dtype = (
      dtype
      if dtype is not None
      else (store.dtype.numpy_dtype if _is_ts_spec(node) else value.dtype)
  )
  sharding = _sharding_for(shardings, path, shape, out_dtype)
  if sharding is None:
    return _cast(read(()), dtype)
  # Replicated devices ask for the same slice; read each distinct slice once.
  cache: dict[tuple, np.ndarray] = {}

  def callback(index: tuple[slice, ...]) -> np.ndarray:
    key = _index_key(index)
    if key not in cache:
      cache[key] = _cast(read(index), dtype)
    return cache[key]

  return jax.make_array_from_callback(shape, sharding, callback)


# ----------------------------------------------------------------------------
# Public reading API.
# ----------------------------------------------------------------------------


def load_t5x_checkpoint(
    path: str | os.PathLike,
    *,
    regex: str | None = None,
    shardings: ShardingsArg = None,
    dtype: Any = None,
) -> dict[str, Any]:
  """Loads a checkpoint's `target` (the model parameters).

  Args:
    path: a `checkpoint_<step>` directory or the `checkpoint` file in it; local
      or `gs://`.
    regex: keep only parameters whose '/'-joined path fullmatches it; the
      others are never read.
    shardings: None (numpy arrays), one `jax.sharding.Sharding` for all, a
      nested dict of shardings mirroring the result (missing entries stay
      numpy), or a callable `(path_str, shape, dtype) -> Sharding | None`.
      Sharded arrays are read slice by slice: each device reads its part only.
    dtype: optional dtype to cast every array to.

  Returns:
    Nested dict of numpy arrays or `jax.Array`s, keys as in the file.
  """
  directory, raw = _read_raw(path)
  target = _section(raw, "target", os.fspath(path))
  del raw  # `target` keeps what it needs; the state subtree can go.
  leaves = dict(_flatten(target))
  if regex is not None:
    pattern = re.compile(regex)
    selected = {p: v for p, v in leaves.items() if pattern.fullmatch(_path_str(p))}
    if not selected:
      names = sorted(_path_str(p) for p in leaves)
      raise CheckpointError(
          f"regex {regex!r} selects no parameter of {os.fspath(path)!r}; "
          f"{len(names)} available, e.g. {names[:8]}."
      )
    leaves = selected
  dtype = None if dtype is None else np.dtype(dtype)
  out = {}
  for p in list(leaves):
    # Pop so the raw msgpack payload of each read leaf can be freed at once.
    out[p] = _read_leaf(leaves.pop(p), p, directory, dtype, shardings)
  return _unflatten(out)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
  """Loads the `state` subtree ({'step', 'param_states'}) as numpy values."""
  directory, raw = _read_raw(path)
  state = _section(raw, "state", os.fspath(path))
  if _is_leaf(state):
    return _read_leaf(state, (), directory, None, None)
  return _unflatten({p: _read_leaf(v, p, directory, None, None) for p, v in _flatten(state)})


def read_step(path: str | os.PathLike) -> int:
  """The checkpoint's `state/step`."""
  directory, raw = _read_raw(path)
  state = _section(raw, "state", os.fspath(path))
  if not isinstance(state, Mapping) or "step" not in state:
    raise CheckpointError(f"{os.fspath(path)!r} has no state/step.")
  return int(_read_leaf(state["step"], ("step",), directory, None, None))


def list_parameters(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
  """'/'-path -> (shape, dtype name) of every parameter, reading no arrays."""
  state = orbax_checkpoints.state_dir(path)
  if state is not None:
    try:
      shapes = orbax_checkpoints.read_shapes(state)
    except (orbax_checkpoints.OrbaxError, OSError, ValueError) as e:
      raise CheckpointError(f"Cannot read the orbax checkpoint {state!r}: {e}") from e
    return {_path_str(p): v for p, v in shapes.items()}
  directory, raw = _read_raw(path)
  target = _section(raw, "target", os.fspath(path))
  return {_path_str(p): _leaf_shape_dtype(v, directory) for p, v in _flatten(target)}


def all_checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
  """Sorted steps of the complete `checkpoint_<N>` dirs (msgpack or orbax) in a local model_dir."""
  model_dir = os.fspath(model_dir)
  if not os.path.isdir(model_dir):
    return []
  steps = []
  for name in os.listdir(model_dir):
    match = _CHECKPOINT_DIR_RE.fullmatch(name)  # skips `.tmp-` dirs too
    step_dir = os.path.join(model_dir, name)
    complete = os.path.isfile(os.path.join(step_dir, CHECKPOINT_FILE))
    if match and (complete or orbax_checkpoints.is_complete(step_dir)):
      steps.append(int(match.group(1)))
  return sorted(steps)


def latest_checkpoint(model_dir: str | os.PathLike) -> str | None:
  """The complete `checkpoint_<N>` dir with the largest N, or None."""
  steps = all_checkpoint_steps(model_dir)
  if not steps:
    return None
  return os.path.join(os.fspath(model_dir), f"checkpoint_{steps[-1]}")


def check_against(
    params_shapes: Mapping[str, Any],
    loaded: Mapping[str, Any],
    *,
    allow_missing_regex: str | None = None,
) -> None:
  """Raises CheckpointError unless `loaded` fits the model's parameter tree.

  Args:
    params_shapes: the model's tree of arrays or `jax.ShapeDtypeStruct`s.
    loaded: the tree read from the checkpoint.
    allow_missing_regex: model parameters whose path fullmatches it may be
      absent from the checkpoint (e.g. '.*prompt.*' for a fresh prompt).
  """
  expected = {_path_str(p): v for p, v in _flatten(params_shapes)}
  found = {_path_str(p): v for p, v in _flatten(loaded)}
  allow = re.compile(allow_missing_regex) if allow_missing_regex else None
  problems = []
  for name in sorted(expected.keys() & found.keys()):
    want, got = np.shape(expected[name]), np.shape(found[name])
    if tuple(want) != tuple(got):
      problems.append(
          f"{name}: checkpoint has shape {tuple(got)} but the " f"model expects {tuple(want)}"
      )
  missing = sorted(n for n in expected.keys() - found.keys() if not (allow and allow.fullmatch(n)))
  if missing:
    problems.append(f"missing from the checkpoint: {missing}")
  unexpected = sorted(found.keys() - expected.keys())
  if unexpected:
    problems.append(f"in the checkpoint but not in the model: {unexpected}")
  if problems:
    raise CheckpointError("Checkpoint does not match the model:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------


def _encode_ndarray(x: np.ndarray) -> bytes:
  """flax.serialization's ndarray payload: (shape, dtype name, C bytes)."""
  return msgpack.packb((list(x.shape), x.dtype.name, x.tobytes("C")), use_bin_type=True)


def _zarr_dtype(dtype: np.dtype) -> str:
  # ml_dtypes (bfloat16, float8...) have no typestr; zarr knows their names.
  return dtype.name if dtype.kind == "V" else dtype.str


def _choose_chunks(
    shape: tuple[int, ...], itemsize: int, target_bytes: int = _ZARR_CHUNK_BYTES
) -> list[int]:
  """Halves the largest dimension until a chunk fits in target_bytes."""
  chunks = [max(1, d) for d in shape]
  while int(np.prod(chunks)) * itemsize > target_bytes and max(chunks) > 1:
    i = int(np.argmax(chunks))
    chunks[i] = (chunks[i] + 1) // 2
  return chunks


def _write_zarr(x: np.ndarray, directory: str, name: str) -> dict[str, Any]:
  """Writes `x` as zarr under directory/name; returns its (relative) spec."""
  metadata = {
      "chunks": _choose_chunks(x.shape, x.dtype.itemsize),
      "compressor": dict(_ZARR_COMPRESSOR),
      "dtype": _zarr_dtype(x.dtype),
      "shape": list(x.shape),
  }
  store = ts.open(
      {
          "driver": "zarr",
          "kvstore": {"driver": "file", "path": os.path.join(directory, name)},
          "metadata": metadata,
      },
      create=True,
      open=False,
  ).result()
  store.write(x).result()
  return {"driver": "zarr", "kvstore": {"driver": "file", "path": name}, "metadata": metadata}


def _encode_tree(tree: Any, prefix: str, directory: str, threshold: int, names: set[str]) -> Any:
  """Replaces arrays by inline ExtTypes or by specs of freshly written zarrs."""
  if isinstance(tree, Mapping):
    out = {}
    for key, value in tree.items():
      if not isinstance(key, str):
        raise CheckpointError(f"{prefix}: keys must be str, got {key!r}.")
      out[key] = _encode_tree(value, f"{prefix}.{key}", directory, threshold, names)
    return out
  if tree is None or isinstance(tree, (bool, int, float, str)):
    return tree
  if isinstance(tree, np.generic):
    return msgpack.ExtType(_NPSCALAR_EXT, _encode_ndarray(np.asarray(tree)))
  if not isinstance(tree, (np.ndarray, jax.Array)):
    raise CheckpointError(
        f"{prefix}: cannot save a {type(tree).__name__}; use nested dicts of " "arrays."
    )
  x = partitioning.to_host(tree)
  if x.dtype == object:
    raise CheckpointError(f"{prefix}: object arrays cannot be saved.")
  if x.ndim == 0 or x.nbytes <= threshold:
    return msgpack.ExtType(_NDARRAY_EXT, _encode_ndarray(x))
  if prefix in names:
    raise CheckpointError(f"Two parameters map to the zarr dir {prefix!r}.")
  names.add(prefix)
  return _write_zarr(x, directory, prefix)


def _write_synced(file: str, data: bytes) -> None:
  with open(file, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(directory: str) -> None:
  # Makes renames and new entries durable; not supported everywhere.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _commit(tmp: str, directory: str, overwrite: bool) -> None:
  """Renames the finished tmp dir into place, replacing an old one if asked."""
  if os.path.exists(directory):
    if not overwrite:
      raise CheckpointError(f"{directory!r} already exists; pass overwrite=True to replace it.")
    # Move the old one aside under an ignored `.tmp-` name, never deleting it
    # before the new one is in place.
    old = f"{directory}.tmp-old-{os.path.basename(tmp).rsplit('-', 1)[-1]}"
    os.rename(directory, old)
    try:
      os.rename(tmp, directory)
    except BaseException:
      os.rename(old, directory)  # put the previous checkpoint back
      raise
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, directory)
  _fsync_dir(os.path.dirname(directory))


def save_t5x_checkpoint(
    directory: str | os.PathLike,
    target: Mapping[str, Any],
    *,
    step: int,
    state: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Any] | None = None,
    inline_threshold_bytes: int = 2**14,
    overwrite: bool = False,
) -> str:
  """Atomically writes a T5X checkpoint (new layout) to `directory`.

  Args:
    directory: the checkpoint directory itself, e.g. `.../checkpoint_100`
      (local filesystem only).
    target: nested dict of numpy / jax arrays (the model parameters).
    step: the training step, stored as `state/step`.
    state: optional nested dict of arrays stored as `state/param_states`
      (None leaves are kept: T5X's state of a parameter without optimizer slots).
    extra_state: optional arrays stored beside it, as `state/<key>`.
    inline_threshold_bytes: arrays up to this size go inline in the msgpack
      file; larger ones become gzip zarr arrays.
    overwrite: replace an existing `directory` instead of raising.

  Returns:
    The checkpoint directory. Everything is written into a temporary sibling
    first and renamed into place, so a crash never leaves a partial
    `directory`. On multi-host, call it on every process; only process 0
    writes.
  """
  directory = os.fspath(directory)
  if _is_gcs(directory):
    raise CheckpointError("save_t5x_checkpoint supports local paths only.")
  directory = os.path.abspath(directory)
  # Process 0's view, on every process: its own write may already be there when another
  # process looks (nothing to gather for replicated arrays), and all must raise or go on together.
  if partitioning.broadcast_from_process_0(os.path.exists(directory)) and not overwrite:
    raise CheckpointError(f"{directory!r} already exists; pass overwrite=True to replace it.")
  if jax.process_index() != 0:
    # Only take part in the gathers of multi-host arrays; process 0 writes.
    for tree in (target, state or {}):
      for _, leaf in _flatten(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
          partitioning.to_host(leaf)
    return directory
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
  try:
    names: set[str] = set()
    encoded = {
        "version": VERSION,
        "target": _encode_tree(target, "target", tmp, inline_threshold_bytes, names),
        "state": {
            "step": msgpack.ExtType(_NPSCALAR_EXT, _encode_ndarray(np.asarray(np.int32(step)))),
            "param_states": _encode_tree(
                state or {}, "state.param_states", tmp, inline_threshold_bytes, names
            ),
            **{
                k: _encode_tree(v, f"state.{k}", tmp, inline_threshold_bytes, names)
                for k, v in (extra_state or {}).items()
            },
        },
    }
    # The msgpack file goes last: a dir without it is never a checkpoint.
    _write_synced(os.path.join(tmp, CHECKPOINT_FILE), msgpack.packb(encoded, use_bin_type=True))
    _fsync_dir(tmp)
    _commit(tmp, directory, overwrite)
  finally:
    if os.path.exists(tmp):  # only after a failure: success renamed it
      shutil.rmtree(tmp, ignore_errors=True)
  return directory
