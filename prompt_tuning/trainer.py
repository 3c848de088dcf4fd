"""The trainer: model + optimizer + partitioner, and the jitted train step built from them.

One batch's step: gradient of `model.loss_fn` with respect to the *trainable* subset only (the
frozen backbone gets no gradient and no optimizer slot), then the optimizer's update of that
subset. The train state (`train_state.TrainState`) holds the trainable parameters, their
optimizer state and the global step; the frozen parameters travel beside it.
"""

import concurrent.futures
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from prompt_tuning import host_memory
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import restore
from prompt_tuning.train_state import TrainState

Params = Mapping[str, Any]
# The model features of a batch (SeqIO's `EncDecFeatureConverter`, unpacked) -> their length.
BATCH_FEATURES = {
    "encoder_input_tokens": "inputs",
    "decoder_input_tokens": "targets",
    "decoder_target_tokens": "targets",
    "decoder_loss_weights": "targets",
}


class Trainer:
  """Holds the model, optimizer and partitioner, and the train step compiled from them."""

  def __init__(
      self,
      model,
      optimizer_factory: Callable[..., optax.GradientTransformation],
      partitioner: partitioning.Partitioner,
      trainable_patterns: Sequence[str] = optim.PROMPT_PATTERNS,
      input_shapes: Optional[Mapping[str, int]] = None,
      seed: int = 0,
  ):
    self.model = model
    self.partitioner = partitioner
    self.trainable_patterns = tuple(trainable_patterns)
    self.rng = jax.random.PRNGKey(seed)
    self.spec = restore.ParamSpec.of(model, partitioner, input_shapes, self.rng)
    trainable_axes = self.spec.select(self.spec.axes, self.trainable_patterns)
    if not trainable_axes:
      names = sorted(optim.flatten(self.spec.shapes))
      raise ValueError(
          f"No parameter matches TRAINABLE_PATTERNS {list(self.trainable_patterns)};"
          f" names look like {names[:4]}."
      )
    self.optimizer = optimizer_factory(param_axes=trainable_axes)
    self._train_step = None

  def create_state(self, params: Params, step: int) -> tuple[TrainState, dict]:
    """(train state with a fresh optimizer state, frozen parameters) from every parameter."""
    trainable, frozen = optim.split_params(params, self.trainable_patterns)
    opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_state_shardings(trainable))(
        trainable
    )
    step = jax.device_put(jnp.asarray(step, jnp.int32), self.partitioner.replicated())
    return TrainState(step=step, params=trainable, opt_state=opt_state), frozen

  def opt_state_shardings(self, trainable: Params) -> Any:
    """Optimizer slots shaped like their parameter are sharded like it; the rest replicated.

    (Left to itself, jit puts the all-zero initial slots on one device.) A slot belongs to the
    parameter whose path its dict keys spell, e.g. Adafactor's `v/<param path>` or Adam's
    `mu/<param path>`; factored rows/columns and counters are small and replicated.
    """
    flat = optim.flatten(trainable)
    flat_shardings = optim.flatten(self.spec.shardings_of(trainable))
    replicated = self.partitioner.replicated()

    def sharding(path, slot):
      name = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
      if name in flat and tuple(flat[name].shape) == tuple(slot.shape):
        return flat_shardings[name]
      return replicated

    return jax.tree_util.tree_map_with_path(
        sharding, jax.eval_shape(self.optimizer.init, trainable)
    )

  def train_step(
      self, state: TrainState, frozen: Params, batch: Mapping[str, jax.Array]
  ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step; only the trainable parameters are differentiated and updated."""
    return self._step_fn(state)(state, frozen, batch, self.rng)

  def compile_ahead(
      self, state: TrainState, frozen: Params, batch_size: int, lengths: Mapping[str, int]
  ) -> concurrent.futures.Future:
    """Compiles the train step in a background thread; wait on the future before a step.

    XLA compiles without Python's lock, so the caller meanwhile builds its input pipeline and
    evaluator (TensorFlow tracing, seconds on a small CPU) and the first `train_step`, lowered
    again for the real batch, finds the same program in JAX's compilation cache. `batch_size`
    is global; the batch is SeqIO's encoder-decoder features (int32) at `lengths`.
    """
    sharding = self.partitioner.data_sharding()
    batch = {
        name: jax.ShapeDtypeStruct((batch_size, lengths[feature]), jnp.int32, sharding=sharding)
        for name, feature in BATCH_FEATURES.items()
    }

    def compile_step():
      compiled = self.lower_train_step(state, frozen, batch).compile()
      host_memory.release_freed()
      return compiled

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile_ahead")
    future = pool.submit(compile_step)
    pool.shutdown(wait=False)
    return future

  def lower_train_step(self, state: TrainState, frozen: Params, batch: Mapping[str, jax.Array]):
    """The train step lowered for these arguments (`.compile().cost_analysis()` gives its FLOPs)."""
    return self._step_fn(state).lower(state, frozen, batch, self.rng)

  def _step_fn(self, state: TrainState):
    if self._train_step is None:

      def step_fn(state, frozen, batch, rng):
        dropout_rng = jax.random.fold_in(rng, state.step)

        def loss_fn(trainable):
          return self.model.loss_fn(optim.merge_params(trainable, frozen), batch, dropout_rng)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(
            grads, state.opt_state, state.params, step=state.step
        )
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

      # The new state keeps the layout of the old one, so the step compiles once.
      state_shardings = jax.tree.map(lambda x: x.sharding, state)
      self._train_step = self.partitioner.jit(
          step_fn,
          donate_argnums=(0,),
          out_shardings=(state_shardings, self.partitioner.replicated()),
      )
    return self._train_step
