"""T5 1.1 module: parity with the original implementation, and the model's own invariants."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_CHECKPOINT, golden, golden_batch, require
from prompt_tuning import checkpoints
from prompt_tuning import prompts
from prompt_tuning.models import t5

TOL = 1e-5


def tiny(dtype="float32", prompt_factory=None):
  return t5.EncoderDecoder(t5.config_for_size("tiny", dtype=dtype), prompt_factory=prompt_factory)


@pytest.fixture(scope="module")
def params():
  return checkpoints.load_t5x_checkpoint(require(TINY_CHECKPOINT))


def _apply(module, params, batch):
  logits = jax.jit(
      lambda p, b: module.apply(
          {"params": p},
          b["encoder_input_tokens"],
          b["decoder_input_tokens"],
          b["decoder_target_tokens"],
      )
  )(params, batch)
  encoded = jax.jit(
      lambda p, b: module.apply({"params": p}, b["encoder_input_tokens"], method=module.encode)
  )(params, batch)
  return np.asarray(encoded), np.asarray(logits)


def test_parameter_tree_is_t5x_checkpoint_tree(params):
  variables = tiny().init(
      jax.random.PRNGKey(0),
      jnp.ones((1, 8), jnp.int32),
      jnp.ones((1, 4), jnp.int32),
      jnp.ones((1, 4), jnp.int32),
  )
  model_shapes = jax.tree.map(lambda x: x.shape, nn.unbox(variables["params"]))
  ckpt_shapes = jax.tree.map(lambda x: x.shape, params)
  assert model_shapes == ckpt_shapes
  checkpoints.check_against(nn.unbox(variables["params"]), params)


def test_plain_model_matches_original(params):
  g, batch = golden("no_prompt_fp32"), golden_batch()
  encoded, logits = _apply(tiny(), params, batch)
  valid = batch["encoder_input_tokens"] > 0
  np.testing.assert_allclose(encoded[valid], g["encoder_output"][valid], atol=TOL, rtol=0)
  # Note 4 of the golden README (the decoder logit mask) is reproduced, so compare everywhere.
  np.testing.assert_allclose(logits, g["logits"], atol=TOL, rtol=0)
  np.testing.assert_array_equal(logits.argmax(-1), g["logits_argmax"])
  np.testing.assert_allclose(jax.nn.logsumexp(logits, -1), g["logits_logsumexp"], atol=TOL)


def test_prompted_model_matches_original(params):
  g, batch = golden("prompt_tuned_fp32"), golden_batch()
  prompt = np.load(require(TINY_CHECKPOINT.parents[2].parent / "golden/original/prompt_5x4.npy"))
  np.testing.assert_array_equal(prompt, g["prompt_param"])
  module = tiny(
      prompt_factory=functools.partial(prompts.PrefixPrompt, 5, prompts.from_array(prompt))
  )
  p = dict(params, encoder=dict(params["encoder"], prompt={"prompt": {"prompt": prompt}}))
  encoded, logits = _apply(module, p, batch)
  valid = g["tokens_with_fake_prompt"] > 0
  assert encoded.shape == g["encoder_output"].shape == (2, 13, 4)
  np.testing.assert_allclose(encoded[valid], g["encoder_output"][valid], atol=TOL, rtol=0)
  assert np.all(encoded[~valid] == 0)  # Padded rows are exactly zero, prompt rows never.
  np.testing.assert_allclose(logits, g["logits"], atol=TOL, rtol=0)
  np.testing.assert_array_equal(logits.argmax(-1), g["logits_argmax"])


@pytest.mark.parametrize("name", ["no_prompt_bf16", "prompt_tuned_bf16"])
def test_bfloat16_close_to_original(params, name):
  """bf16 goldens are only loosely reproducible (README note 8: jit vs eager differ by 0.38)."""
  g, batch = golden(name), golden_batch()
  factory = None
  if name.startswith("prompt"):
    prompt = g["prompt_param"]
    factory = functools.partial(prompts.PrefixPrompt, 5, prompts.from_array(prompt))
    params = dict(params, encoder=dict(params["encoder"], prompt={"prompt": {"prompt": prompt}}))
  encoded, logits = _apply(tiny("bfloat16", factory), params, batch)
  assert encoded.dtype == jnp.bfloat16 and logits.dtype == np.float32
  w = batch["decoder_loss_weights"] > 0
  lse = np.asarray(jax.nn.logsumexp(logits, -1))
  np.testing.assert_allclose(lse[w], g["logits_logsumexp"][w], atol=0.05)
  valid = (np.asarray(encoded, np.float32) != 0).any(-1)
  np.testing.assert_allclose(
      np.asarray(encoded, np.float32)[valid], g["encoder_output"][valid], atol=0.1
  )


def test_relative_position_buckets_hand_computed():
  # Bidirectional, 32 buckets, max distance 128 (T5 1.1): 16 buckets per direction, 8 exact.
  b = t5.relative_position_buckets(
      np.array([0]), np.arange(0, 200), bidirectional=True, num_buckets=32, max_distance=128
  )[0]
  # Keys after the query (k - q > 0) go to the upper half; small distances are exact.
  assert b[0] == 0 and b[1] == 17 and b[7] == 23
  # Log buckets: 8 + floor(log(n/8) / log(16) * 8), capped at 15 (+16 for the upper half).
  for n in (8, 12, 20, 50, 100, 127, 199):
    expected = 16 + min(15, 8 + int(np.log(n / 8) / np.log(128 / 8) * 8))
    assert b[n] == expected, n
  causal = t5.relative_position_buckets(
      np.arange(5), np.arange(5), bidirectional=False, num_buckets=32, max_distance=128
  )
  assert np.all(causal[np.triu_indices(5, 1)] == 0)  # Future keys share bucket 0.
  assert causal[4, 0] == 4


def test_padding_does_not_change_valid_outputs(params):
  """Appending padding to the encoder input or the targets changes no valid position."""
  batch = {k: np.asarray(v) for k, v in golden_batch().items()}
  module = tiny()
  enc1, logits1 = _apply(module, params, batch)
  padded = dict(batch)
  padded["encoder_input_tokens"] = np.pad(batch["encoder_input_tokens"], ((0, 0), (0, 3)))
  for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
    padded[k] = np.pad(batch[k], ((0, 0), (0, 2)))
  enc2, logits2 = _apply(module, params, padded)
  valid = batch["encoder_input_tokens"] > 0
  np.testing.assert_allclose(enc2[:, :8][valid], enc1[valid], atol=1e-6)
  w = batch["decoder_loss_weights"] > 0
  np.testing.assert_allclose(logits2[:, :4][w], logits1[w], atol=1e-5)


def test_incremental_decoding_matches_teacher_forcing():
  """The key/value cache path gives the same logits as the full causal pass."""
  cfg = t5.T5Config(
      vocab_size=37,
      emb_dim=16,
      num_heads=2,
      num_encoder_layers=2,
      num_decoder_layers=2,
      head_dim=8,
      mlp_dim=32,
      dtype="float32",
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
  )
  module = t5.EncoderDecoder(cfg)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 37, (2, 7))
  enc[1, 5:] = 0
  targets = rng.randint(2, 37, (2, 6))
  dec_in = np.concatenate([np.zeros((2, 1), int), targets[:, :-1]], axis=1)
  variables = module.init(jax.random.PRNGKey(1), enc, dec_in, targets)
  params = nn.unbox(variables["params"])
  full = module.apply({"params": params}, enc, dec_in, targets)
  encoded = module.apply({"params": params}, enc, method=module.encode)
  _, cache = module.apply(
      {"params": params},
      encoded,
      enc,
      jnp.zeros_like(dec_in),
      decode=True,
      mutable=["cache"],
      method=module.decode,
  )
  step = jax.jit(
      lambda cache, tok, i: module.apply(
          {"params": params, **cache},
          encoded,
          enc,
          tok,
          decode=True,
          decode_position=i,
          max_decode_length=6,
          mutable=["cache"],
          method=module.decode,
      )
  )
  for i in range(6):
    logits, cache = step(cache, dec_in[:, i : i + 1], i)
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5, rtol=1e-5)


def test_sizes_have_lm100k_dimensions():
  base = t5.config_for_size("base")
  assert (base.emb_dim, base.num_heads, base.mlp_dim, base.num_encoder_layers) == (
      768,
      12,
      2048,
      12,
  )
  assert t5.config_for_size("xxl").emb_dim == 4096 and base.vocab_size == 32128
  with pytest.raises(ValueError, match="Unknown T5 1.1 size 'huge'"):
    t5.config_for_size("huge")


def test_logical_axes_on_every_parameter():
  variables = tiny().init(
      jax.random.PRNGKey(0),
      jnp.ones((1, 8), jnp.int32),
      jnp.ones((1, 4), jnp.int32),
      jnp.ones((1, 4), jnp.int32),
  )
  specs = nn.get_partition_spec(variables["params"])
  flat = jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: x is not None and not isinstance(x, dict)
  )[0]
  assert len(flat) == 52
  for path, spec in flat:
    assert spec is not None and all(a is not None for a in spec), path


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_keeps_parameters_loss_and_gradients(params, policy):
  """Rematerialisation trades memory for recomputation only: the same parameter tree, loss and
  gradients as without it (the gradient is taken through the prompt and the backbone)."""
  batch = golden_batch()
  factory = prompts.prefix_prompt_factory(3, prompts.random_uniform())

  def loss_and_grads(module):
    variables = module.init(
        jax.random.PRNGKey(0),
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
    )
    prompt = nn.unbox(variables["params"])["encoder"]["prompt"]
    prompted = {**params, "encoder": {**params["encoder"], "prompt": prompt}}

    def loss(p):
      logits = module.apply(
          {"params": p},
          batch["encoder_input_tokens"],
          batch["decoder_input_tokens"],
          batch["decoder_target_tokens"],
      )
      return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * (batch["decoder_target_tokens"] > 0))

    return jax.tree.map(np.asarray, jax.jit(jax.value_and_grad(loss))(prompted))

  cfg = t5.config_for_size("tiny", dtype="float32")
  plain = t5.EncoderDecoder(cfg, prompt_factory=factory)
  remat = t5.EncoderDecoder(dataclasses.replace(cfg, remat_policy=policy), prompt_factory=factory)
  (loss, grads), (remat_loss, remat_grads) = loss_and_grads(plain), loss_and_grads(remat)
  assert jax.tree.map(np.shape, grads) == jax.tree.map(np.shape, remat_grads)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  # Recomputation changes XLA's fusions, so float32 sums round differently: a near-zero entry
  # of a gradient whose entries reach ~7 differed by 2e-6 on one CPU. Tolerance relative to the
  # gradient's scale, not to each entry.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max()),
      remat_grads,
      grads,
  )


def test_unknown_remat_policy_is_named():
  with pytest.raises(ValueError, match="remat_policy='scan'"):
    t5.config_for_size("tiny", remat_policy="scan")
