"""Deep prompts (prompt_tuning/deep_prompts.py): per-layer key/value prefixes on a frozen T5.

References are independent of the module's code path: attention over the concatenated
[prefix; sequence] in numpy, the plain model (zero-length prefixes), decoding by re-running the
whole model without a cache, and parameter counts from the formula in the module's docstring.
"""

import math

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import config
from prompt_tuning import deep_prompts
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.models import t5

# The tiny size with a small vocabulary: every test builds and compiles a few models.
CFG = t5.config_for_size("tiny", dtype="float32", vocab_size=32)
ENCODER_TOKENS = np.array([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0]], np.int32)
BATCH = {
    "encoder_input_tokens": ENCODER_TOKENS,
    "decoder_input_tokens": np.array([[0, 9, 10, 11], [0, 12, 0, 0]], np.int32),
    "decoder_target_tokens": np.array([[9, 10, 11, 1], [12, 1, 0, 0]], np.int32),
}


def _model(factory=None, **kwargs) -> model_lib.EncoderDecoderModel:
  return model_lib.EncoderDecoderModel(
      t5.EncoderDecoder(CFG, deep_prompt_factory=factory), **kwargs
  )


def _params(model, backbone=None, seed=0):
  """Initial parameters; with `backbone`, every parameter but the deep prompt's from it."""
  params = jax.jit(lambda r: nn.unbox(model.get_initial_variables(r)["params"]))(
      jax.random.PRNGKey(seed)
  )
  return params if backbone is None else {**backbone, "deep_prompt": params["deep_prompt"]}


def _logits(model, params, batch=BATCH):
  return np.asarray(jax.jit(model.compute_logits)(params, batch))


@pytest.fixture(scope="module")
def backbone():
  return _params(_model(), seed=1)


def test_attention_with_prefix_matches_numpy_reference():
  heads, head_dim, prefix_len, length = 2, 3, 4, 5
  rng = np.random.RandomState(0)
  x = rng.normal(size=(2, length, 6)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
  mask_bias = np.where(valid[:, None, None, :], 0.0, t5.NEG_INF).astype(np.float32)
  relpos_bias = rng.normal(size=(1, heads, length, length)).astype(np.float32)
  bias = mask_bias + relpos_bias
  prefix = rng.normal(size=(2, prefix_len, heads, head_dim)).astype(np.float32)
  attention = t5.MultiHeadAttention(heads, head_dim)
  params = nn.unbox(attention.init(jax.random.PRNGKey(1), x, x, bias)["params"])
  out = jax.jit(lambda p, x, b, kv: attention.apply({"params": p}, x, x, b, prefix_kv=kv))(
      params, x, bias, prefix
  )

  w = {name: np.asarray(p["kernel"]) for name, p in params.items()}
  split = lambda t: t.reshape(t.shape[:-1] + (heads, head_dim))
  q, k, v = (split(x @ w[name]) for name in ("query", "key", "value"))
  batch = x.shape[0]
  k = np.concatenate([np.broadcast_to(prefix[0], (batch,) + prefix[0].shape), k], axis=1)
  v = np.concatenate([np.broadcast_to(prefix[1], (batch,) + prefix[1].shape), v], axis=1)
  # The prefix columns are always visible and get no relative-position bias.
  prefix_bias = np.zeros((batch, heads, length, prefix_len), np.float32)
  full_bias = np.concatenate([prefix_bias, np.broadcast_to(bias, (batch,) + bias.shape[1:])], -1)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) + full_bias
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1) @ w["out"]
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


def test_zero_length_prefixes_are_the_plain_model(backbone):
  deep = _model(lambda cfg: deep_prompts.DeepPrompt(cfg, length=0, in_decoder=True))
  params = _params(deep, backbone)
  assert params["deep_prompt"]["encoder_prefixes"].shape == (2, 2, 0, 2, 2)
  assert params["deep_prompt"]["decoder_prefixes"].shape == (2, 2, 0, 2, 2)
  np.testing.assert_allclose(_logits(deep, params), _logits(_model(), backbone), atol=1e-6)


def _encode(model, params):
  return jax.jit(lambda p: model.module.apply({"params": p}, ENCODER_TOKENS, method="encode"))(
      params
  )


def _decode(model, params, encoded):
  fn = lambda p, e: model.module.apply(
      {"params": p},
      e,
      ENCODER_TOKENS,
      BATCH["decoder_input_tokens"],
      BATCH["decoder_target_tokens"],
      method="decode",
  )
  return jax.jit(fn)(params, encoded)


@pytest.mark.parametrize("decoder", [False, True])
def test_prefixes_reach_exactly_the_stacks_they_are_in(backbone, decoder):
  deep = _model(deep_prompts.deep_prompt_factory(3, decoder=decoder))
  params = _params(deep, backbone)
  plain_encoded = _encode(_model(), backbone)
  assert not np.allclose(_encode(deep, params), plain_encoded, atol=1e-3)
  # On the plain encoder's output, the decoder differs from the plain one iff it has prefixes.
  plain_logits = _decode(_model(), backbone, plain_encoded)
  differs = not np.allclose(_decode(deep, params, plain_encoded), plain_logits, atol=1e-3)
  assert differs == decoder


@pytest.mark.parametrize(
    "factory",
    [
        deep_prompts.deep_prompt_factory(3, decoder=True),
        deep_prompts.prefix_tuning_factory(3, decoder=True, hidden_dim=5),
    ],
    ids=["direct", "mlp"],
)
def test_decoding_with_the_cache_equals_rerunning_without_it(backbone, factory):
  model = _model(factory)
  module = model.module
  params = _params(model, backbone)
  tokens = np.array([[0, 9, 10, 11], [0, 12, 13, 14]], np.int32)
  batch = {**BATCH, "decoder_input_tokens": tokens, "decoder_target_tokens": np.ones_like(tokens)}
  full = _logits(model, params, batch)

  @jax.jit
  def stepwise(params):
    encoded = module.apply({"params": params}, ENCODER_TOKENS, method="encode")
    decode = lambda cache, x, **kw: module.apply(
        {"params": params, **cache},
        encoded,
        ENCODER_TOKENS,
        x,
        decode=True,
        mutable=["cache"],
        method="decode",
        **kw,
    )
    _, cache = decode({}, jnp.zeros_like(tokens))
    logits = []
    for t in range(tokens.shape[1]):  # The cache holds the decoder's positions, never a prefix.
      step_logits, cache = decode(
          cache, tokens[:, t : t + 1], decode_position=t, max_decode_length=tokens.shape[1]
      )
      logits.append(step_logits[:, 0])
    return jnp.stack(logits, axis=1)

  np.testing.assert_allclose(np.asarray(stepwise(params)), full, atol=1e-5, rtol=1e-5)


def test_only_the_prefixes_get_gradients_and_optimizer_state(backbone):
  model = _model(deep_prompts.deep_prompt_factory(3, decoder=True))
  trainer = trainer_lib.Trainer(
      model,
      optim.create_optimizer,
      partitioning.Partitioner(),
      input_shapes={"inputs": 5, "targets": 4},
  )
  state, frozen = trainer.create_state(_params(model, backbone), step=0)
  names = ["deep_prompt/decoder_prefixes", "deep_prompt/encoder_prefixes"]
  assert sorted(optim.flatten(state.params)) == names
  slots = jax.tree_util.tree_leaves_with_path(state.opt_state)
  assert all("'deep_prompt'" in jax.tree_util.keystr(path) for path, _ in slots)
  assert sum(np.size(x) for _, x in slots) == sum(np.size(x) for x in jax.tree.leaves(state.params))
  before = jax.tree.map(np.asarray, state.params)
  new_state, _ = trainer.train_step(state, frozen, {k: np.asarray(v) for k, v in BATCH.items()})
  for name in names:  # Both stacks' prefixes moved.
    moved = optim.flatten(new_state.params)[name] - optim.flatten(before)[name]
    assert np.abs(np.asarray(moved)).min() > 0, name
  assert "deep_prompt" not in frozen


def _numpy_export(params, directory):
  """What train_state.save writes for each trainable parameter."""
  for name, value in optim.flatten({"deep_prompt": params["deep_prompt"]}).items():
    np.save(directory / (name.replace("/", ".") + ".npy"), np.asarray(value))


def test_export_of_a_deep_prompt_reloads_to_identical_logits(backbone, tmp_path):
  trained = _model(deep_prompts.deep_prompt_factory(3, decoder=True))
  params = _params(trained, backbone, seed=2)
  (tmp_path / "npy").mkdir()
  _numpy_export(params, tmp_path / "npy")
  written = deep_prompts.export(tmp_path / "npy", tmp_path / "out")
  assert sorted(p.split("/")[-1] for p in written) == [
      "deep_prompt.decoder_prefixes.npy",
      "deep_prompt.encoder_prefixes.npy",
  ]
  loaded = _model(
      deep_prompts.deep_prompt_factory(3, decoder=True, directory=str(tmp_path / "out"))
  )
  reloaded = _params(loaded, backbone, seed=3)
  np.testing.assert_array_equal(_logits(loaded, reloaded), _logits(trained, params))


def test_export_of_prefix_tuning_drops_the_mlp(backbone, tmp_path):
  trained = _model(deep_prompts.prefix_tuning_factory(3, decoder=True, hidden_dim=5))
  params = _params(trained, backbone, seed=2)
  (tmp_path / "npy").mkdir()
  _numpy_export(params, tmp_path / "npy")
  deep_prompts.export(tmp_path / "npy", tmp_path / "out")
  loaded = _model(
      deep_prompts.deep_prompt_factory(3, decoder=True, directory=str(tmp_path / "out"))
  )
  reloaded = _params(loaded, backbone)
  assert sorted(optim.flatten(reloaded["deep_prompt"])) == ["decoder_prefixes", "encoder_prefixes"]
  np.testing.assert_allclose(_logits(loaded, reloaded), _logits(trained, params), atol=1e-5)


def test_export_mismatches_are_named(tmp_path):
  with pytest.raises(deep_prompts.DeepPromptError, match="holds no deep prompt"):
    deep_prompts.export(tmp_path, tmp_path / "out")
  np.save(tmp_path / "deep_prompt.encoder_prefixes.npy", np.zeros((2, 2, 4, 2, 2), np.float32))
  np.save(tmp_path / "deep_prompt.decoder_prefixes.npy", np.zeros((2, 2, 4, 2, 2), np.float32))
  with pytest.raises(deep_prompts.DeepPromptError, match="DEEP_PROMPT_DECODER"):
    deep_prompts.deep_prompt_factory(4, decoder=False, directory=str(tmp_path))
  wrong_length = _model(deep_prompts.deep_prompt_factory(3, decoder=True, directory=str(tmp_path)))
  with pytest.raises(
      deep_prompts.DeepPromptError, match=r"deep_prompt.encoder_prefixes.npy.*\(2, 2, 3, 2, 2\)"
  ):
    _params(wrong_length)
  with pytest.raises(deep_prompts.DeepPromptError, match="must be positive"):
    deep_prompts.deep_prompt_factory(0)


def _trainable_count(files, bindings=()):
  gin.clear_config()
  try:
    config.parse_gin(files, list(bindings))
    model = config.macro("MODEL", evaluate=True)
    shapes = jax.eval_shape(
        lambda r: model.get_initial_variables(r)["params"], jax.random.PRNGKey(0)
    )
    flat = optim.flatten(nn.unbox(shapes))
  finally:
    gin.clear_config()
  trainable = {k: v for k, v in flat.items() if optim.is_trainable(k, optim.PROMPT_PATTERNS)}
  assert all(k.startswith("deep_prompt/") for k in trainable), sorted(trainable)
  return sum(math.prod(v.shape) for v in trainable.values())


def test_gin_files_build_the_counted_parameters():
  """The embedded size (layers 3 + 2, heads 4 x 32, width 128), PROMPT_LENGTH 20 as its runs."""
  size = ["models/t5_1_1_prompt.gin", "models/sizes/embedded.gin"]
  p, hk, enc, dec, width, mlp = 20, 4 * 32, 3, 2, 128, 512
  assert (
      _trainable_count(size + ["prompts/deep_prompt.gin"], ["PROMPT_LENGTH = 20"])
      == enc * 2 * p * hk
  )
  with_decoder = ["PROMPT_LENGTH = 20", "DEEP_PROMPT_DECODER = True"]
  assert (
      _trainable_count(size + ["prompts/deep_prompt.gin"], with_decoder) == (enc + dec) * 2 * p * hk
  )
  per_stack = lambda n: p * width + width * mlp + mlp + (mlp + 1) * n * 2 * hk
  assert _trainable_count(size + ["prompts/prefix_tuning.gin"], ["PROMPT_LENGTH = 20"]) == (
      per_stack(enc) + per_stack(dec)
  )
