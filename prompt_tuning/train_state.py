"""The train state and its checkpoints in `MODEL_DIR/checkpoint_<step>/`.

A training checkpoint is a T5X checkpoint (see `checkpoints.py`) whose `target` holds the
trainable parameters (or, with `save_mode='full'`, every parameter) and whose `state` holds the
step, the optimizer state and the input position (batches consumed). The frozen backbone is not
saved in prompt tuning: it is re-read from `INITIAL_CHECKPOINT_PATH` (see `restore.py`).

The layout is T5X's, so either implementation resumes the other's checkpoints: Adafactor's slots
are `state/param_states/<param path>/{v, v_row, v_col, m}`, unused ones a (1,) placeholder, and a
full checkpoint gives each frozen parameter a None state (the original's MultiOptimizer). The
input position is `state/input_position`; T5X does not read it, and a checkpoint without one (the
original's) resumes from the start of the data stream. Any other optax optimizer's state is
`state/param_states` as flax serialises it, which only this project reads. Beside it,
`MODEL_DIR/numpy_checkpoints/checkpoint_<step>/<param path with dots>.npy` holds each trainable
parameter as a plain `.npy` (the prompt: `encoder.prompt.prompt.prompt.npy`), and the arrays the
prompt module computes from them (`exports`: docs/prompt_variants.md).
"""

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Mapping, Optional, Sequence

import flax
import flax.serialization
import jax
import numpy as np
from jax.experimental import multihost_utils

from prompt_tuning import checkpoints
from prompt_tuning import optim
from prompt_tuning import partitioning

Params = Mapping[str, Any]
SAVE_MODES = ("trainable", "full")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Global step: starts at the initial checkpoint's step, as in T5X.
  params: Params  # Trainable parameters only.
  opt_state: Any  # Optimizer state for the trainable parameters only.


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """What is saved and how often.

  save_mode: 'trainable' saves the trainable parameters (kilobytes for a prompt); 'full' saves
    every parameter (model tuning, or a self-contained checkpoint).
  keep: how many recent checkpoints to keep (None: all); the best one is never removed.
  """

  period: int = 1000
  keep: Optional[int] = None
  save_mode: str = "trainable"
  export_numpy: bool = True

  def __post_init__(self):
    if self.save_mode not in SAVE_MODES:
      raise ValueError(
          f"CheckpointConfig.save_mode (SAVE_MODE) must be one of {SAVE_MODES}; "
          f"got {self.save_mode!r}."
      )
    if self.period <= 0:
      raise ValueError(
          f"CheckpointConfig.period (CHECKPOINT_PERIOD) must be positive; got " f"{self.period}."
      )
    if self.keep is not None and self.keep <= 0:
      raise ValueError(
          f"CheckpointConfig.keep (CHECKPOINTS_TO_KEEP) must be positive or None; "
          f"got {self.keep}."
      )


def _npy_name(path: str) -> str:
  return path.replace("/", ".") + ".npy"


def save(
    model_dir: str,
    state: TrainState,
    frozen: Params,
    input_position: int,
    cfg: CheckpointConfig,
    protected_steps: Sequence[int] = (),
    exports: Optional[Mapping[str, Any]] = None,
    sidecars: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> str:
  """Writes `MODEL_DIR/checkpoint_<step>` atomically, the numpy export, and prunes old ones.

  `exports` (name without `.npy`, '/' for a subfolder -> array) are arrays computed from the
  parameters that the numpy export holds beside them (`model.EncoderDecoderModel.numpy_exports`:
  a reparameterised prompt as the plain prompt it amounts to, each task's multi-task prompt).
  `sidecars` (the same names -> JSON objects) go beside them as `<name>.json`: a plain prompt's
  placement (`model.EncoderDecoderModel.numpy_sidecars`), read by the prompt library.

  Multi-host: every process calls this (arrays split over processes are gathered); process 0
  writes.
  """
  step = int(state.step)
  target = (
      state.params if cfg.save_mode == "trainable" else optim.merge_params(state.params, frozen)
  )
  param_states = _param_states(state.opt_state)
  if cfg.save_mode == "full" and isinstance(state.opt_state, optim.AdafactorState):
    param_states = optim.unflatten(
        {**{k: None for k in optim.flatten(frozen)}, **optim.flatten(param_states, _is_slots)}
    )
  extra = {"input_position": np.asarray(input_position, np.int64)}
  path = os.path.join(model_dir, f"checkpoint_{step}")
  # Process 0's view decides, so all processes take part in the gathers or none does.
  if not partitioning.broadcast_from_process_0(os.path.exists(path)):
    checkpoints.save_t5x_checkpoint(path, target, step=step, state=param_states, extra_state=extra)
  if cfg.export_numpy:
    host_params = {
        _npy_name(k): partitioning.to_host(v) for k, v in optim.flatten(state.params).items()
    }
    for name, value in (exports or {}).items():
      if name + ".npy" in host_params:
        raise ValueError(f"Numpy export {name}.npy would overwrite the parameter of that name.")
      host_params[name + ".npy"] = partitioning.to_host(value)
    if jax.process_index() == 0:
      out = os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}")
      for name, value in host_params.items():
        os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
        np.save(os.path.join(out, name), value)
      for name, meta in (sidecars or {}).items():
        with open(os.path.join(out, name + ".json"), "w") as f:
          json.dump(meta, f)
  if cfg.keep and jax.process_index() == 0:
    for old in checkpoints.all_checkpoint_steps(model_dir)[: -cfg.keep]:
      if old not in protected_steps:
        shutil.rmtree(os.path.join(model_dir, f"checkpoint_{old}"), ignore_errors=True)
        shutil.rmtree(
            os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{old}"), ignore_errors=True
        )
  if jax.process_count() > 1:  # Nobody reads it (restore, evaluation) before process 0 is done.
    multihost_utils.sync_global_devices(f"save_checkpoint {path}")
  return path


_PLACEHOLDER = (1,)  # T5X's shape for an Adafactor slot a parameter does not use.
_SLOTS = ("v", "v_row", "v_col", "m")


def _is_slots(x) -> bool:
  return isinstance(x, Mapping) and set(x) == set(_SLOTS)


def _param_states(opt_state) -> Any:
  """The optimizer state as T5X's `state/param_states` (see the module docstring)."""
  if not isinstance(opt_state, optim.AdafactorState):
    return flax.serialization.to_state_dict(opt_state)
  placeholder = np.zeros(_PLACEHOLDER, np.float32)
  m = optim.flatten(opt_state.m) if opt_state.m is not None else {}
  slots = {}
  for name, v in optim.flatten(opt_state.v).items():
    factored = isinstance(v, optim.FactoredState)
    slots[name] = {
        "v": placeholder if factored else v,
        "v_row": v.v_row if factored else placeholder,
        "v_col": v.v_col if factored else placeholder,
        "m": m.get(name, placeholder),
    }
  return optim.unflatten(slots)


def _opt_state_from(param_states, template, path: str) -> Any:
  """The optimizer state shaped like `template`, from a checkpoint's `state/param_states`."""
  if not isinstance(template, optim.AdafactorState):
    return flax.serialization.from_state_dict(template, param_states)
  slots = optim.flatten(param_states, _is_slots)

  def slot(name, key, like):
    value = slots.get(name, {}).get(key) if isinstance(slots.get(name), Mapping) else None
    if value is None or np.shape(value) != np.shape(like):
      raise checkpoints.CheckpointError(
          f"{path}: Adafactor slot state/param_states/{name}/{key} has shape "
          f"{None if value is None else np.shape(value)}, the optimizer needs "
          f"{np.shape(like)} (factored differently, or another optimizer?)."
      )
    return value

  v = {}
  for name, like in optim.flatten(template.v).items():
    if isinstance(like, optim.FactoredState):
      v[name] = optim.FactoredState(
          slot(name, "v_row", like.v_row), slot(name, "v_col", like.v_col)
      )
    else:
      v[name] = slot(name, "v", like)
  m = None
  if template.m is not None:
    m = optim.unflatten({k: slot(k, "m", t) for k, t in optim.flatten(template.m).items()})
  return optim.AdafactorState(v=optim.unflatten(v), m=m)


def read_params(path: str, shardings: Any = None) -> dict[str, Any]:
  """The parameters saved at `path`, flat ('/'-joined names): trainable ones, or all (full)."""
  return optim.flatten(checkpoints.load_t5x_checkpoint(path, shardings=shardings))


def restore(
    path: str, state: TrainState, frozen: Params, shardings: Any, replicated: jax.sharding.Sharding
) -> tuple[TrainState, Params, int]:
  """(state, frozen, input position) resumed from `path`.

  `state` and `frozen` are freshly initialised templates: their structure and shardings say
  what the checkpoint must hold. A full checkpoint also replaces the frozen parameters.
  """
  saved = read_params(path, shardings)
  trainable = optim.flatten(state.params)
  missing = sorted(set(trainable) - set(saved))
  if missing:
    raise checkpoints.CheckpointError(
        f"{path}: trainable parameters missing from the checkpoint: {missing}. Was it written "
        "with other TRAINABLE_PATTERNS?"
    )
  params = optim.unflatten({k: saved[k] for k in trainable})
  checkpoints.check_against(state.params, params)
  frozen_flat = optim.flatten(frozen)
  if any(k in frozen_flat for k in saved):  # A full-model checkpoint.
    frozen = optim.unflatten({k: saved.get(k, v) for k, v in frozen_flat.items()})
  extra = checkpoints.load_state(path)
  opt_state = _opt_state_from(extra.get("param_states") or {}, state.opt_state, path)
  opt_state = jax.tree.map(
      lambda t, v: jax.device_put(np.asarray(v, t.dtype), t.sharding), state.opt_state, opt_state
  )
  step = jax.device_put(np.asarray(int(extra["step"]), np.int32), replicated)
  state = TrainState(step=step, params=params, opt_state=opt_state)
  if "input_position" not in extra:
    logging.warning(
        "%s has no input position (a T5X checkpoint): the data stream restarts from its start.",
        path,
    )
  return state, frozen, int(extra.get("input_position", 0))
