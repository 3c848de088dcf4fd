"""The model wrapper: loss, scoring and decoding around the Flax encoder-decoder.

Like T5X's `EncoderDecoderModel`, this is plain Python holding the module; the trainer only calls
`loss_fn`, `score_batch` and `predict_batch`. Batches are the seqio `EncDecFeatureConverter`'s:
`encoder_input_tokens`, `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import decoding

Array = jax.Array
Batch = Mapping[str, Array]
Params = Mapping[str, Any]


def cross_entropy_with_z_loss(
    logits_BxTxV: Array, targets_BxT: Array, z_loss: float
) -> tuple[Array, Array]:
  """Per-token (cross entropy + z_loss * log(Z)^2, z-loss part), T5X's objective, in float32."""
  logits = logits_BxTxV.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
  z_term = z_loss * jnp.square(log_z)
  return log_z - target_logit + z_term, z_term


def _loss_weights(batch: Batch) -> Array:
  weights = batch.get("decoder_loss_weights")
  if weights is None:  # Without explicit weights, padding targets do not count.
    weights = batch["decoder_target_tokens"] > 0
  return weights.astype(jnp.float32)


@dataclasses.dataclass
class EncoderDecoderModel:
  """Loss, scoring and decoding for `models.t5.EncoderDecoder` (prompted or not).

  Attributes:
    module: the Flax module.
    z_loss: weight of T5X's auxiliary log(Z)^2 term.
    loss_normalizing_factor: None sums the loss over tokens and examples (T5X's default for
      finetuning, and what the original prompt-tuning configs use); a number divides by it;
      "num_real_target_tokens" divides by the number of weighted target tokens.
    decode_fn / decode_kwargs: decoding algorithm for `predict_batch` (beam search, alpha 0.6,
      as T5X's default).
    eos_id: end-of-sequence id of the output vocabulary.
  """

  module: nn.Module
  z_loss: float = 1e-4
  loss_normalizing_factor: Union[None, float, str] = None
  decode_fn: Callable[..., Any] = decoding.beam_search
  decode_kwargs: Optional[Mapping[str, Any]] = None
  eos_id: int = 1

  def get_initial_variables(
      self, rng: Array, batch_size: int = 1, encoder_length: int = 8, decoder_length: int = 4
  ) -> Mapping[str, Any]:
    """Variables with logical-axis boxes (see `nn.get_partition_spec`); unbox for numerics."""
    enc = jnp.ones((batch_size, encoder_length), jnp.int32)
    dec = jnp.ones((batch_size, decoder_length), jnp.int32)
    return self.module.init(rng, enc, dec, dec, enable_dropout=False)

  def compute_logits(
      self,
      params: Params,
      batch: Batch,
      dropout_rng: Optional[Array] = None,
  ) -> Array:
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        enable_dropout=dropout_rng is not None,
        rngs=rngs,
    )

  def loss_fn(
      self,
      params: Params,
      batch: Batch,
      dropout_rng: Optional[Array] = None,
  ) -> tuple[Array, dict[str, Array]]:
    """Returns (loss, metrics). Metrics are sums/counts so they can be averaged across steps."""
    if "encoder_segment_ids" in batch:
      raise ValueError("Prompt tuning does not support packed examples (encoder_segment_ids).")
    logits = self.compute_logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = _loss_weights(batch)
    per_token, z_term = cross_entropy_with_z_loss(logits, targets, self.z_loss)
    loss = jnp.sum(per_token * weights)
    z_loss = jnp.sum(z_term * weights)
    num_tokens = jnp.sum(weights)
    if self.loss_normalizing_factor == "num_real_target_tokens":
      norm = jnp.maximum(num_tokens, 1.0)
    elif self.loss_normalizing_factor is None:
      norm = 1.0
    else:
      norm = float(self.loss_normalizing_factor)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
    metrics = {
        "loss_sum": loss,
        "z_loss_sum": z_loss,
        "correct_tokens": jnp.sum(correct),
        "num_tokens": num_tokens,
        "num_examples": jnp.asarray(targets.shape[0], jnp.float32),
    }
    return loss / norm, metrics

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """Log-likelihood of each example's target sequence [B] (for rank classification)."""
    logits = self.compute_logits(params, batch)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_ll = jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[
        ..., 0
    ]
    return jnp.sum(token_ll * _loss_weights(batch), axis=-1)

  def predict_batch_with_aux(
      self,
      params: Params,
      batch: Batch,
      rng: Optional[Array] = None,
      num_decodes: Optional[int] = None,
      return_all_decodes: bool = False,
      **decode_overrides
  ) -> tuple[Array, dict[str, Array]]:
    """Decodes with the key/value cache. Returns (decodes [B, T] or [B, N, T], {'scores': ...})."""
    enc_tokens = batch["encoder_input_tokens"]
    dec_inputs = jnp.zeros_like(batch["decoder_input_tokens"])
    max_len = dec_inputs.shape[1]
    kwargs = {"num_decodes": 1, **(self.decode_kwargs or {}), **decode_overrides}
    if num_decodes is not None:
      kwargs["num_decodes"] = num_decodes
    n = kwargs["num_decodes"]

    encoded = self.module.apply({"params": params}, enc_tokens, method=self.module.encode)
    _, init_vars = self.module.apply(
        {"params": params},
        encoded,
        enc_tokens,
        dec_inputs,
        decode=True,
        mutable=["cache"],
        method=self.module.decode,
    )
    encoded_n = decoding.flat_batch_beam_expand(encoded, n)
    enc_tokens_n = decoding.flat_batch_beam_expand(enc_tokens, n)

    def tokens_to_logits(state):
      logits, new_vars = self.module.apply(
          {"params": params, "cache": state.cache},
          encoded_n,
          enc_tokens_n,
          state.cur_token[:, None],
          decode=True,
          decode_position=state.cur_index,
          max_decode_length=max_len,
          mutable=["cache"],
          method=self.module.decode,
      )
      return logits[:, 0], new_vars["cache"]

    if rng is not None:
      kwargs["decode_rng"] = rng
    decodes, scores = self.decode_fn(
        dec_inputs,
        init_vars["cache"],
        tokens_to_logits,
        eos_id=self.eos_id,
        max_decode_len=max_len,
        **kwargs
    )
    if return_all_decodes:
      return decodes, {"scores": scores}
    return decodes[:, -1], {"scores": scores[:, -1]}  # Best is last, as in T5X.

  def predict_batch(
      self, params: Params, batch: Batch, rng: Optional[Array] = None, **kwargs
  ) -> Array:
    return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]

  def numpy_exports(self, params: Params) -> dict[str, Array]:
    """Arrays computed from the parameters, saved beside them in the numpy checkpoint: the
    prompt modules' `exports` (e.g. a reparameterised prompt as a plain one)."""
    return self.module.apply({"params": params}, method=lambda m: m.numpy_exports())

  def numpy_sidecars(self, params: Params) -> dict[str, dict]:
    """JSON metadata saved beside the numpy checkpoint's plain prompts, by export name: where
    the prompt goes (`{"placement": ...}`), which serving needs (`prompt_library`)."""
    return self.module.apply({"params": params}, method=lambda m: m.numpy_sidecars())
