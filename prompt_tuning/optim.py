"""Optimisation: which parameters train, and Adafactor as T5X configures it for prompt tuning.

Trainable parameters are chosen by regexes over `/`-joined parameter paths (default: the prompt).
The train step differentiates only with respect to that subset and the optimizer state exists only
for it; frozen parameters never get a gradient or a slot. Model tuning is the same code with
`trainable_patterns=(".*",)`.

`adafactor` reproduces T5X's Adafactor semantics, which optax's stock `adafactor` does not:
  * the second-moment decay `1 - (step + 1) ** -decay_rate` counts from the *global* step, which
    starts at the initial checkpoint's step (~1.1M for the lm100k checkpoints), passed in as the
    `step` extra argument of `update`;
  * weight decay multiplies the parameter by (1 - weight_decay_rate), *not* scaled by the
    learning rate;
  * factoring is decided per logical axis (the prompt's axes are never factored), falling back to
    the two largest dimensions when no axes are given;
  * updates are clipped to RMS <= clipping_threshold; no momentum unless beta1 is set.

Any other optax optimizer is available by name (`create_optimizer`); its learning-rate schedule,
like Adafactor's, is a function of the global step.
"""

import inspect
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

Params = Mapping[str, Any]
Schedule = Union[float, Callable[[jax.Array], jax.Array]]

PROMPT_PATTERNS = (".*prompt.*",)
ROW, COLUMN, NONE = "row", "column", "none"
# T5X's standard logical factor rules plus prompt tuning's: prompt axes are never factored.
FACTOR_RULES = {
    "embed": ROW,
    "vocab": COLUMN,
    "mlp": COLUMN,
    "joined_kv": COLUMN,
    "heads": COLUMN,
    "kv": COLUMN,
    "relpos_buckets": NONE,
    "prompt": NONE,
    "prompt_embed": NONE,
}


# ------------------------------------------------------------------------------------------------
# Trainable / frozen split.


def flatten(params: Params, is_leaf=None) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(
      params, sep="/", is_leaf=((lambda _, x: is_leaf(x)) if is_leaf else None)
  )


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return flax.traverse_util.unflatten_dict(dict(flat), sep="/")


def is_trainable(path: str, patterns: Sequence[str]) -> bool:
  return any(re.fullmatch(p, path) for p in patterns)


def split_params(
    params: Params,
    patterns: Sequence[str] = PROMPT_PATTERNS,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(trainable, frozen) nested dicts, each holding only its own leaves."""
  flat = flatten(params)
  trainable = {k: v for k, v in flat.items() if is_trainable(k, patterns)}
  if not trainable:
    raise ValueError(
        f"No parameter matches the trainable patterns {list(patterns)}; parameter names look "
        f"like {sorted(flat)[:4]}."
    )
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  return unflatten(trainable), unflatten(frozen)


def merge_params(trainable: Params, frozen: Params) -> dict[str, Any]:
  return unflatten({**flatten(frozen), **flatten(trainable)})


# ------------------------------------------------------------------------------------------------
# Adafactor.


class FactoredState(NamedTuple):
  v_row: jax.Array
  v_col: jax.Array


class AdafactorState(NamedTuple):
  v: Any  # Per leaf: an array (unfactored second moment) or a FactoredState.
  m: Any  # Per leaf momentum, or None without beta1.


def _factored_dims(shape, axes, min_dim_size: int, rules) -> Optional[tuple[int, int]]:
  """(row_dim, column_dim) to factor the second moment over, or None."""
  if len(shape) < 2:
    return None
  if axes is not None:
    kinds = [rules.get(a, NONE) if a is not None else NONE for a in axes]
    if NONE in kinds or ROW not in kinds or COLUMN not in kinds:
      return None
    dims = kinds.index(ROW), kinds.index(COLUMN)
  else:
    order = sorted(range(len(shape)), key=lambda d: shape[d])
    dims = order[-2], order[-1]
  if min(shape[dims[0]], shape[dims[1]]) < min_dim_size:
    return None
  return dims


def adafactor(
    learning_rate: Schedule = 0.3,
    *,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    multiply_by_parameter_scale: bool = False,
    clipping_threshold: Optional[float] = 1.0,
    weight_decay_rate: Optional[float] = 1e-5,
    epsilon1: float = 1e-30,
    epsilon2: float = 1e-3,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    beta1: Optional[float] = None,
    param_axes: Optional[Params] = None,
    factor_rules: Mapping[str, str] = FACTOR_RULES,
) -> optax.GradientTransformationExtraArgs:
  """T5X-style Adafactor. `update(grads, state, params, step=global_step)` returns deltas.

  `param_axes`: optional pytree (same structure as the params it will see) of logical axis-name
  tuples, deciding which dimensions are factored.
  """

  def leaf_dims(params):
    axes = param_axes if param_axes is not None else jax.tree.map(lambda _: None, params)
    is_axes = lambda x: x is None or isinstance(x, tuple)
    return jax.tree.map(
        lambda p, a: _factored_dims(p.shape, a, min_dim_size_to_factor, factor_rules)
        if factored
        else None,
        params,
        axes,
        is_leaf=is_axes,
    )

  def init(params):
    dims = leaf_dims(params)

    def init_v(p, d):
      if d is None:
        return jnp.zeros(p.shape, jnp.float32)
      row, col = d
      return FactoredState(
          jnp.zeros(tuple(s for i, s in enumerate(p.shape) if i != col)),
          jnp.zeros(tuple(s for i, s in enumerate(p.shape) if i != row)),
      )

    v = jax.tree.map(init_v, params, dims, is_leaf=lambda x: x is None or isinstance(x, tuple))
    m = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params) if beta1 else None
    return AdafactorState(v=v, m=m)

  def update(grads, state, params=None, *, step=0, **unused_extra_args):
    if params is None:
      raise ValueError("adafactor needs the parameters (weight decay, parameter scale).")
    step = jnp.asarray(step, jnp.float32) - step_offset
    lr = learning_rate(step) if callable(learning_rate) else learning_rate
    decay = 1.0 - jnp.power(step + 1.0, -decay_rate)
    mixing = 1.0 - decay
    dims = leaf_dims(params)

    def leaf(g, v, p, d, m):
      g = g.astype(jnp.float32)
      p32 = p.astype(jnp.float32)
      scale = lr
      if multiply_by_parameter_scale:
        scale = scale * jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(p32))), epsilon2)
      g_sqr = jnp.square(g) + epsilon1
      if d is None:
        new_v = decay * v + mixing * g_sqr
        y = g * jax.lax.rsqrt(new_v)
      else:
        row, col = d
        v_row = decay * v.v_row + mixing * jnp.mean(g_sqr, axis=col)
        v_col = decay * v.v_col + mixing * jnp.mean(g_sqr, axis=row)
        row_mean = jnp.mean(v_row, axis=row if row < col else row - 1, keepdims=True)
        row_factor = jnp.expand_dims(jax.lax.rsqrt(v_row / row_mean), col)
        col_factor = jnp.expand_dims(jax.lax.rsqrt(v_col), row)
        y = g * row_factor * col_factor
        new_v = FactoredState(v_row, v_col)
      if clipping_threshold is not None:
        y = y / jnp.maximum(1.0, jnp.sqrt(jnp.mean(jnp.square(y))) / clipping_threshold)
      delta = scale * y
      new_m = None
      if beta1:
        delta = beta1 * m + (1.0 - beta1) * delta
        new_m = delta
      delta = -delta
      if weight_decay_rate:
        delta = delta - weight_decay_rate * p32  # Decoupled, not scaled by the learning rate.
      return delta.astype(p.dtype), new_v, new_m

    is_dim = lambda x: x is None or isinstance(x, tuple)
    flat_g, treedef = jax.tree.flatten(grads)
    flat_p = treedef.flatten_up_to(params)
    flat_d = treedef.flatten_up_to(jax.tree.map(lambda x: x, dims, is_leaf=is_dim))
    flat_v = treedef.flatten_up_to(state.v)
    flat_m = treedef.flatten_up_to(state.m) if beta1 else [None] * len(flat_g)
    out = [leaf(g, v, p, d, m) for g, v, p, d, m in zip(flat_g, flat_v, flat_p, flat_d, flat_m)]
    deltas = treedef.unflatten([o[0] for o in out])
    new_v = treedef.unflatten([o[1] for o in out])
    new_m = treedef.unflatten([o[2] for o in out]) if beta1 else None
    return deltas, AdafactorState(v=new_v, m=new_m)

  return optax.GradientTransformationExtraArgs(init, update)


def create_optimizer(
    name: str = "adafactor",
    learning_rate: Schedule = 0.3,
    param_axes: Optional[Params] = None,
    **kwargs,
) -> optax.GradientTransformationExtraArgs:
  """The optimizer by name, for gin: 'adafactor' (T5X semantics) or any `optax.<name>`.

  The trainer passes `param_axes` (logical axes of the trainable parameters) for factoring.
  A schedule is a function of the *global* step (the `step` extra argument of `update`), as in
  T5X, for optax optimizers too: their own step counter restarts at 0 with every fresh optimizer
  state (e.g. a run continued from another run's checkpoint), so it is not used. The rate an
  optax optimizer's last update used is its state's `hyperparams["learning_rate"]`.
  """
  if name == "adafactor":
    return adafactor(learning_rate, param_axes=param_axes, **kwargs)
  factory = getattr(optax, name, None)
  if factory is None:
    raise ValueError(f"Unknown optimizer {name!r}: use 'adafactor' or an optax optimizer name.")
  if not callable(learning_rate):
    return optax.with_extra_args_support(factory(learning_rate, **kwargs))
  arg_names = set(inspect.signature(factory).parameters)
  if "learning_rate" not in arg_names:
    raise ValueError(f"optax.{name} takes no learning_rate, so it cannot follow a schedule.")
  schedule = learning_rate
  # Only the learning rate is injected: the other arguments stay Python values, as some optax
  # optimizers branch on them.
  inner = optax.inject_hyperparams(factory, static_args=arg_names - {"learning_rate"})(
      learning_rate=schedule(0), **kwargs
  )

  def update(grads, state, params=None, *, step=None, **extra_args):
    if step is None:
      raise ValueError(
          f"optax.{name} with a learning-rate schedule needs the global step: "
          "update(..., step=step)."
      )
    rate = state.hyperparams["learning_rate"]
    hyperparams = dict(state.hyperparams, learning_rate=jnp.asarray(schedule(step), rate.dtype))
    return inner.update(
        grads, state._replace(hyperparams=hyperparams), params, step=step, **extra_args
    )

  return optax.GradientTransformationExtraArgs(inner.init, update)
