"""Model wrapper: T5X loss, scoring and decoding against the original implementation."""

import functools

import jax
import numpy as np
import pytest

from conftest import GOLDEN, TINY_CHECKPOINT, golden, golden_batch, require
from prompt_tuning import checkpoints
from prompt_tuning import decoding
from prompt_tuning import model as model_lib
from prompt_tuning import prompts
from prompt_tuning.models import t5


@pytest.fixture(scope="module")
def setups():
  params = checkpoints.load_t5x_checkpoint(require(TINY_CHECKPOINT))
  prompt = np.load(require(GOLDEN / "prompt_5x4.npy"))
  cfg = t5.config_for_size("tiny", dtype="float32")
  prompted = dict(params, encoder=dict(params["encoder"], prompt={"prompt": {"prompt": prompt}}))
  factory = functools.partial(prompts.PrefixPrompt, 5, prompts.from_array(prompt))
  kwargs = {"num_decodes": 1, "alpha": 0.6}
  return {
      "no_prompt_fp32": (
          model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg), decode_kwargs=kwargs),
          params,
      ),
      "prompt_tuned_fp32": (
          model_lib.EncoderDecoderModel(
              t5.EncoderDecoder(cfg, prompt_factory=factory), decode_kwargs=kwargs
          ),
          prompted,
      ),
  }


@pytest.mark.parametrize("name", ["no_prompt_fp32", "prompt_tuned_fp32"])
def test_loss_matches_original(setups, name):
  model, params = setups[name]
  g, batch = golden(name), golden_batch()
  loss, metrics = jax.jit(model.loss_fn)(params, batch)
  np.testing.assert_allclose(loss, g["total_loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["z_loss_sum"], g["per_example_z_loss"].sum(), rtol=1e-4)
  logits = jax.jit(model.compute_logits)(params, batch)
  per_token, z = model_lib.cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"], 1e-4)
  np.testing.assert_allclose(per_token, g["per_token_loss_incl_z"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(z, g["per_token_z_loss"], rtol=1e-4, atol=1e-7)
  weights = batch["decoder_loss_weights"]
  np.testing.assert_allclose(
      (np.asarray(per_token) * weights).sum(-1), g["per_example_loss"], rtol=1e-5
  )


def test_loss_normalisation_and_packing(setups):
  model, params = setups["no_prompt_fp32"]
  batch = golden_batch()
  total, _ = model.loss_fn(params, batch)
  normalised = model_lib.EncoderDecoderModel(
      model.module, loss_normalizing_factor="num_real_target_tokens"
  )
  per_token, _ = normalised.loss_fn(params, batch)
  np.testing.assert_allclose(per_token, total / batch["decoder_loss_weights"].sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="packed"):
    model.loss_fn(params, dict(batch, encoder_segment_ids=batch["encoder_input_tokens"]))


@pytest.mark.parametrize("name", ["no_prompt_fp32", "prompt_tuned_fp32"])
def test_score_batch_is_target_log_likelihood(setups, name):
  model, params = setups[name]
  g, batch = golden(name), golden_batch()
  scores = jax.jit(model.score_batch)(params, batch)
  expected = (g["target_log_softmax"] * batch["decoder_loss_weights"]).sum(-1)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["no_prompt_fp32", "prompt_tuned_fp32"])
def test_beam_search_reproduces_original_decodes(setups, name):
  model, params = setups[name]
  g, batch = golden(name), golden_batch()
  decodes, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  np.testing.assert_array_equal(decodes, g["predict_batch_decodes"])
  np.testing.assert_allclose(aux["scores"], g["predict_batch_scores"], rtol=1e-5)


def test_greedy_with_cache_equals_argmax_of_teacher_forcing(setups):
  """Greedy decoding through the cache = repeatedly feeding the argmax through the full model."""
  model, params = setups["prompt_tuned_fp32"]
  batch = golden_batch()
  greedy = model_lib.EncoderDecoderModel(
      model.module, decode_fn=decoding.greedy, decode_kwargs={"num_decodes": 1}
  )
  decodes = np.asarray(jax.jit(greedy.predict_batch)(params, batch))
  tokens = np.zeros_like(batch["decoder_input_tokens"])
  for i in range(tokens.shape[1]):
    dec_in = np.concatenate([np.zeros((2, 1), tokens.dtype), tokens[:, :-1]], axis=1)
    logits = model.module.apply(
        {"params": params}, batch["encoder_input_tokens"], dec_in, np.ones_like(tokens)
    )
    tokens[:, i] = np.asarray(logits[:, i]).argmax(-1)
  np.testing.assert_array_equal(decodes, tokens)
