"""Where arrays live: a `data` x `model` device mesh and logical-axis rules, as T5X's partitioner.

Parameters and activations carry logical axis names (`embed`, `mlp`, `heads`, ...; see
`models/t5.py`); the rules below map them to mesh axes in one place. `num_partitions` is the size
of the `model` axis (model parallelism); the rest of the devices form the `data` axis. The same
code runs on one CPU, 8 forced host devices, a GPU, or a multi-host TPU slice.
"""

import contextlib
import functools
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# T5X's standard rules (1-D parameter partitioning) plus prompt tuning's: prompts are replicated.
DEFAULT_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("length", None),
    ("prompt", None),
    ("prompt_embed", None),
)

# XLA:CPU hands matmuls to YNNPACK and, by default, lets it fuse an attention's two matmuls with
# the bias and softmax between them into one library call, which runs at a tenth of the matmul
# rate (T5 1.1 small, 228 positions: 35 ms per layer against 10 ms for the same work as separate
# calls, and 106 MB more temporaries in the prompt-tuning step). One matmul per YNNPACK call is
# the default here; benchmarks/README.md has the measurements.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}


def default_compiler_options(platform: str) -> dict[str, str]:
  """XLA options this project compiles with on `platform`; none that XLA_FLAGS already sets,
  so a user's flag is never overridden."""
  if platform != "cpu":
    return {}
  flags = os.environ.get("XLA_FLAGS", "")
  return {k: v for k, v in CPU_COMPILER_OPTIONS.items() if f"--{k}" not in flags}


def jit(fn: Callable[..., Any], **jit_kwargs) -> Callable[..., Any]:
  """`jax.jit` with `default_compiler_options`, for code compiled without a mesh (the prompt
  library's calls)."""
  options = default_compiler_options(jax.default_backend())
  return jax.jit(fn, compiler_options=options or None, **jit_kwargs)


class Partitioner:
  """Builds the mesh and turns logical specs into shardings."""

  def __init__(
      self,
      num_partitions: int = 1,
      logical_axis_rules: Sequence = DEFAULT_RULES,
      devices: Optional[Sequence[jax.Device]] = None,
      compiler_options: Optional[Mapping[str, Any]] = None,
  ):
    """`compiler_options`: XLA options for every compilation (`jax.jit(compiler_options=)`);
    None: `default_compiler_options` for the devices' platform, {}: XLA's own defaults."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    if devices.size % num_partitions:
      raise ValueError(
          f"num_partitions={num_partitions} does not divide the {devices.size} " "devices."
      )
    self.mesh = Mesh(devices.reshape(-1, num_partitions), ("data", "model"))
    self.rules = tuple(tuple(r) for r in logical_axis_rules)
    if compiler_options is None:
      compiler_options = default_compiler_options(devices.flat[0].platform)
    self.compiler_options = dict(compiler_options)

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape["data"]

  @contextlib.contextmanager
  def activation_rules(self):
    """Context in which `nn.with_logical_constraint` inside the model takes effect."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def jit(self, fn: Callable[..., Any], **jit_kwargs) -> Callable[..., Any]:
    """`jax.jit(fn)` whose every call runs under this mesh and these logical-axis rules.

    The one way the project compiles model code, so no call site enters the context by hand,
    and every program gets `compiler_options`.
    """
    jitted = jax.jit(fn, compiler_options=self.compiler_options or None, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
      with self.activation_rules():
        return jitted(*args, **kwargs)

    def lower(*args, **kwargs):
      with self.activation_rules():
        return jitted.lower(*args, **kwargs)

    call.lower = lower  # For XLA's cost analysis and memory statistics (benchmarks).
    return call

  def sharding(self, logical_spec) -> NamedSharding:
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(logical_spec, self.rules))

  def param_shardings(self, boxed_params: Any) -> Any:
    """Shardings for a tree of `nn.LogicallyPartitioned` params (from `model.init`)."""
    specs = nn.get_partition_spec(boxed_params)
    return jax.tree.map(self.sharding, specs, is_leaf=lambda x: isinstance(x, P))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def data_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  def data_shard_info(self) -> tuple[int, int]:
    """(index, count): which slice of the global batch this host reads.

    A host reads the rows held by its devices' `data` coordinates. When the `model` axis spans
    hosts, several hosts hold the same rows and must read the same data, so the count is the
    number of distinct row blocks, not the number of hosts.
    """
    rows_of = {}
    for data_index, row in enumerate(self.mesh.devices):
      for device in row:
        rows_of.setdefault(device.process_index, set()).add(data_index)
    blocks = sorted({tuple(sorted(r)) for r in rows_of.values()})
    flat = [i for b in blocks for i in b]
    contiguous = all(list(b) == list(range(b[0], b[0] + len(b))) for b in blocks)
    if len(set(flat)) != len(flat) or len({len(b) for b in blocks}) != 1 or not contiguous:
      raise ValueError(
          f"Hosts hold overlapping or uneven rows of the `data` axis {blocks}; "
          "choose num_partitions so each host's devices form whole data rows."
      )
    return blocks.index(tuple(sorted(rows_of[jax.process_index()]))), len(blocks)

  def shard_batch(self, host_batch: dict) -> dict:
    """Assembles each host's slice of the batch into global arrays split over `data`."""
    sharding = self.data_sharding()
    _, count = self.data_shard_info()
    out = {}
    for k, v in host_batch.items():
      v = np.asarray(v)
      out[k] = jax.make_array_from_process_local_data(
          sharding, v, (v.shape[0] * count,) + v.shape[1:]
      )
    return out


def to_host(x: Any) -> np.ndarray:
  """A numpy copy of `x`; an array split over several processes is gathered (a collective,
  so every process must call this for the same arrays)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def broadcast_from_process_0(value: Any) -> Any:
  """Process 0's `value` on every process (a collective); the value itself on one process.

  For decisions only process 0 can make (SeqIO computes metrics there) that every process must
  act on together (saves that gather arrays).
  """
  if jax.process_count() == 1:
    return value
  return multihost_utils.broadcast_one_to_all(np.asarray(value)).item()
