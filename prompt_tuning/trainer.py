"""The training loop: state, jitted steps, metrics, evaluation and checkpoints.

The path of one batch: `pipeline.train_batches` (SeqIO task -> host numpy batch) ->
`partitioner.shard_batch` (global jax arrays split over `data`) -> `train_step` (gradient of
`model.loss_fn` with respect to the *trainable* subset only, T5X Adafactor update) ->
`save_checkpoint` (trainable state, optimizer state, step, input position; the frozen backbone is
always re-read from `INITIAL_CHECKPOINT_PATH`).
"""
import dataclasses
import logging
import os
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from prompt_tuning import checkpoints
from prompt_tuning import optim
from prompt_tuning import partitioning

Params = Mapping[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Global step: starts at the initial checkpoint's step, as in T5X.
  params: Params  # Trainable parameters only.
  opt_state: Any  # Optimizer state for the trainable parameters only.


@dataclasses.dataclass
class CheckpointConfig:
  """What is saved and how often. `save_mode='full'` saves every parameter (model tuning)."""
  period: int = 1000
  keep: Optional[int] = None
  save_mode: str = "trainable"
  export_numpy: bool = True


# ------------------------------------------------------------------------------------------------
# Initialisation and restore.


def _is_axes(x) -> bool:
  return isinstance(x, tuple)


def _select(flat: Mapping[str, Any], patterns: Sequence[str], keep: bool) -> dict[str, Any]:
  return {k: v for k, v in flat.items() if optim.is_trainable(k, patterns) == keep}


class Trainer:
  """Holds the model, optimizer and partitioner, and the jitted functions built from them."""

  def __init__(self, model, optimizer_factory: Callable[..., optax.GradientTransformation],
               partitioner: partitioning.Partitioner,
               trainable_patterns: Sequence[str] = optim.PROMPT_PATTERNS,
               init_from_scratch_patterns: Optional[Sequence[str]] = None,
               input_shapes: Mapping[str, int] = None, seed: int = 0):
    self.model = model
    self.partitioner = partitioner
    self.trainable_patterns = tuple(trainable_patterns)
    # Parameters never read from the initial checkpoint (the prompt, for prompt tuning).
    self.scratch_patterns = tuple(init_from_scratch_patterns if init_from_scratch_patterns
                                  is not None else optim.PROMPT_PATTERNS)
    self.rng = jax.random.PRNGKey(seed)
    shapes = dict(input_shapes or {"inputs": 8, "targets": 4})
    boxed = jax.eval_shape(lambda r: model.get_initial_variables(
        r, 1, shapes["inputs"], shapes["targets"])["params"], self.rng)
    self.abstract_params = nn.unbox(boxed)
    self.param_axes = jax.tree.map(lambda s: tuple(s), nn.get_partition_spec(boxed),
                                   is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    self.param_shardings = partitioner.param_shardings(boxed)
    flat = optim.flatten(self.abstract_params)
    if not _select(flat, self.trainable_patterns, True):
      raise ValueError(f"No parameter matches the trainable patterns {self.trainable_patterns}; "
                       f"names look like {sorted(flat)[:4]}.")
    trainable_axes = optim.unflatten(_select(optim.flatten(self.param_axes, is_leaf=_is_axes),
                                             self.trainable_patterns, True))
    self.optimizer = optimizer_factory(param_axes=trainable_axes)
    self._train_step = None

  # -- state -------------------------------------------------------------------------------------

  def _split(self, tree):
    flat = optim.flatten(tree)
    return (optim.unflatten(_select(flat, self.trainable_patterns, True)),
            optim.unflatten(_select(flat, self.trainable_patterns, False)))

  def _shardings_of(self, tree):
    flat = optim.flatten(self.param_shardings)
    return optim.unflatten({k: flat[k] for k in optim.flatten(tree)})

  def init_scratch_params(self, rng) -> dict:
    """Initialises only the parameters not read from a checkpoint (XLA drops the rest)."""
    flat_abstract = optim.flatten(self.abstract_params)
    scratch = optim.unflatten(_select(flat_abstract, self.scratch_patterns, True))
    if not scratch:
      return {}

    def init(r):
      params = nn.unbox(self.model.get_initial_variables(r)["params"])
      flat = optim.flatten(params)
      return optim.unflatten({k: flat[k] for k in optim.flatten(scratch)})
    return jax.jit(init, out_shardings=self._shardings_of(scratch))(rng)

  def load_initial_params(self, initial_checkpoint_path: Optional[str]) -> tuple[dict, int]:
    """(all parameters, global step): backbone from the checkpoint, the rest from scratch."""
    if not initial_checkpoint_path:
      logging.warning("No INITIAL_CHECKPOINT_PATH: every parameter starts from scratch.")
      params = jax.jit(lambda r: nn.unbox(self.model.get_initial_variables(r)["params"]),
                       out_shardings=self.param_shardings)(self.rng)
      return params, 0
    scratch = self.init_scratch_params(self.rng)
    scratch_flat = optim.flatten(scratch)
    regex = None
    if scratch_flat:  # Read everything except the parameters initialised from scratch.
      regex = "(?!(" + "|".join(f"(?:{p})" for p in self.scratch_patterns) + ")$).*"
    loaded = checkpoints.load_t5x_checkpoint(initial_checkpoint_path, regex=regex,
                                             shardings=self.param_shardings, dtype=jnp.float32)
    loaded_all = optim.unflatten({**optim.flatten(loaded), **scratch_flat})
    checkpoints.check_against(self.abstract_params, loaded_all)
    return loaded_all, checkpoints.read_step(initial_checkpoint_path)

  def create_state(self, params: Params, step: int) -> tuple[TrainState, dict]:
    trainable, frozen = self._split(params)
    opt_state = jax.jit(self.optimizer.init,
                        out_shardings=self.opt_state_shardings(trainable))(trainable)
    state = TrainState(step=self.global_step(step), params=trainable, opt_state=opt_state)
    return state, frozen

  def opt_state_shardings(self, trainable: Params) -> Any:
    """Optimizer slots shaped like their parameter are sharded like it; the rest replicated.

    (Left to itself, jit puts the all-zero initial slots on one device.) A slot belongs to the
    parameter whose path its dict keys spell, e.g. Adafactor's `v/<param path>` or Adam's
    `mu/<param path>`; factored rows/columns and counters are small and replicated.
    """
    flat = optim.flatten(trainable)
    flat_shardings = optim.flatten(self._shardings_of(trainable))
    replicated = self.partitioner.replicated()

    def sharding(path, slot):
      name = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
      if name in flat and tuple(flat[name].shape) == tuple(slot.shape):
        return flat_shardings[name]
      return replicated
    return jax.tree_util.tree_map_with_path(sharding, jax.eval_shape(self.optimizer.init,
                                                                     trainable))

  # -- steps -------------------------------------------------------------------------------------

  def global_step(self, step: int) -> jax.Array:
    return jax.device_put(jnp.asarray(step, jnp.int32), self.partitioner.replicated())

  def train_step(self, state: TrainState, frozen: Params, batch: Mapping[str, jax.Array]
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step; only the trainable parameters are differentiated and updated."""
    if self._train_step is None:
      def step_fn(state, frozen, batch, rng):
        dropout_rng = jax.random.fold_in(rng, state.step)

        def loss_fn(trainable):
          return self.model.loss_fn(optim.merge_params(trainable, frozen), batch, dropout_rng)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params,
                                                   step=state.step)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
      # The new state keeps the layout of the old one, so the step compiles once.
      state_shardings = jax.tree.map(lambda x: x.sharding, state)
      self._train_step = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(
          state_shardings, self.partitioner.replicated()))
    with self.partitioner.activation_rules():
      return self._train_step(state, frozen, batch, self.rng)


# ------------------------------------------------------------------------------------------------
# Checkpoints of the train state.


def _npy_name(path: str) -> str:
  return path.replace("/", ".") + ".npy"


def _to_host(tree: Params) -> dict[str, np.ndarray]:
  """Flat numpy copy; arrays split over several processes are gathered (a collective)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return {k: get(v) for k, v in optim.flatten(tree).items()}


def save_checkpoint(model_dir: str, state: TrainState, frozen: Params, input_position: int,
                    cfg: CheckpointConfig, protected_steps: Sequence[int] = ()) -> str:
  """Writes `MODEL_DIR/checkpoint_<step>` atomically, the numpy export, and prunes old ones.

  `input_position` is the number of batches consumed, so a restart resumes the data stream.
  """
  step = int(state.step)
  target = state.params if cfg.save_mode == "trainable" else optim.merge_params(state.params,
                                                                              frozen)
  extra = {"opt_state": flax.serialization.to_state_dict(state.opt_state),
           "input_position": np.asarray(input_position, np.int64)}
  path = os.path.join(model_dir, f"checkpoint_{step}")
  # Multi-host: every process calls this. Process 0's view decides, so all take part in the
  # gathers of arrays split over processes (in save_t5x_checkpoint and _to_host) or none does.
  exists = os.path.exists(path)
  if jax.process_count() > 1:
    exists = bool(multihost_utils.broadcast_one_to_all(np.asarray(exists)))
  if not exists:
    checkpoints.save_t5x_checkpoint(path, target, step=step, state=extra)
  if cfg.export_numpy:
    host_params = _to_host(state.params)
    if jax.process_index() == 0:
      out = os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}")
      os.makedirs(out, exist_ok=True)
      for name, value in host_params.items():
        np.save(os.path.join(out, _npy_name(name)), value)
  if cfg.keep and jax.process_index() == 0:
    steps = checkpoints.all_checkpoint_steps(model_dir)
    for old in steps[:-cfg.keep]:
      if old not in protected_steps:
        shutil.rmtree(os.path.join(model_dir, f"checkpoint_{old}"), ignore_errors=True)
        shutil.rmtree(os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{old}"),
                      ignore_errors=True)
  if jax.process_count() > 1:  # Nobody reads it (restore, evaluation) before process 0 is done.
    multihost_utils.sync_global_devices(f"save_checkpoint {path}")
  return path


def restore_checkpoint(trainer: Trainer, path: str, state: TrainState, frozen: Params
                       ) -> tuple[TrainState, Params, int]:
  """Combines the frozen backbone already loaded with the trainable state saved at `path`."""
  target = checkpoints.load_t5x_checkpoint(path, shardings=trainer.param_shardings)
  flat_target = optim.flatten(target)
  trainable_flat = optim.flatten(state.params)
  missing = sorted(set(trainable_flat) - set(flat_target))
  if missing:
    raise checkpoints.CheckpointError(
        f"{path}: trainable parameters missing from the checkpoint: {missing}. Was it written "
        "with other trainable patterns?")
  params = optim.unflatten({k: flat_target[k] for k in trainable_flat})
  checkpoints.check_against(state.params, params)
  frozen_flat = optim.flatten(frozen)
  if any(k in frozen_flat for k in flat_target):  # A full-model checkpoint.
    frozen = optim.unflatten({k: flat_target.get(k, v) for k, v in frozen_flat.items()})
  saved = checkpoints.load_state(path)
  extra = saved["param_states"]
  opt_state = flax.serialization.from_state_dict(state.opt_state, extra["opt_state"])
  opt_state = jax.tree.map(lambda t, v: jax.device_put(np.asarray(v, t.dtype), t.sharding),
                           state.opt_state, opt_state)
  state = TrainState(step=trainer.global_step(int(saved["step"])), params=params,
                     opt_state=opt_state)
  return state, frozen, int(extra["input_position"])
