"""T5 1.1 encoder-decoder in Flax linen, with T5X's parameter names.

The parameter tree is exactly a T5X checkpoint's `target` tree (`token_embedder/embedding`,
`encoder/layers_0/attention/query/kernel`, ..., `decoder/logits_dense/kernel`), so checkpoints load
without renaming. Numerics follow the original flaxformer T5 1.1: RMS norm (eps 1e-6) computed in
float32, gated-GELU MLP (tanh approximation), no biases, no 1/sqrt(d) attention scaling, one
relative-position table per stack, masks turned into a -1e10 bias, padded rows zeroed by a "logit
mask" after every norm.

An optional prompt module (the contract is `prompts.PromptModule`, built by the encoder's
`prompt_factory`, a `prompts.PromptFactory`) sits in the encoder as `encoder/prompt`: it receives
the embedded inputs and returns them with `length` positions prepended. Masks and relative
positions then cover the concatenated sequence. With no prompt the same code is the plain model.

An optional deep prompt (`deep_prompts.py`, built by `EncoderDecoder.deep_prompt_factory`) sits at
`deep_prompt` and gives each self-attention layer trainable key/value prefixes [2, P', H, K] that
every query attends to (prefix tuning, P-tuning v2); without one no layer has prefixes.

Shapes: B batch, L encoder input length (tokens), P prompt length (0 without a prompt), so the
encoder's activations are [B, P + L, D]; T decoder length, D embed, H heads, K head dim, F mlp,
V vocab. In attention, Q and S are the query and key/value lengths (P + L or T).
"""

import dataclasses
import functools
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import deep_prompts
from prompt_tuning import prompts

Array = jax.Array
NEG_INF = -1e10  # flaxformer's mask bias; finite so fully-masked rows stay finite.


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 1.1 model (defaults: the lm100k "small" size)."""

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  mlp_activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"  # activation dtype; parameters are always float32
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  # Activation rematerialisation of each layer in training (REMAT_POLICIES): "none" keeps every
  # activation the backward pass needs; "full" keeps only each layer's input and recomputes the
  # rest; "dots" keeps the matmul outputs and recomputes the elementwise work (norms, GELU,
  # softmax). Parameters and results are the same; memory and time change.
  remat_policy: str = "none"

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"remat_policy={self.remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}."
      )


# Sizes of the T5 1.1 LM-adapted ("lm100k") checkpoints, plus the tiny test checkpoint's. Every
# lm100k size has heads of dimension 64, vocabulary 32128, 32 relative-position buckets (max
# distance 128) and an untied `logits_dense`; its frozen parameter count is the paper's Table 4
# (small 76,961,152; base 247,577,856; large 783,150,080; xl 2,849,757,184; xxl 11,135,332,352),
# as tests/test_sizes.py checks.
SIZES = {
    "tiny": dict(
        emb_dim=4,
        num_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        head_dim=2,
        mlp_dim=8,
        relative_attention_num_buckets=4,
        relative_attention_max_distance=8,
    ),
    "small": dict(
        emb_dim=512,
        num_heads=6,
        num_encoder_layers=8,
        num_decoder_layers=8,
        head_dim=64,
        mlp_dim=1024,
    ),
    "base": dict(
        emb_dim=768,
        num_heads=12,
        num_encoder_layers=12,
        num_decoder_layers=12,
        head_dim=64,
        mlp_dim=2048,
    ),
    "large": dict(
        emb_dim=1024,
        num_heads=16,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=2816,
    ),
    "xl": dict(
        emb_dim=2048,
        num_heads=32,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=5120,
    ),
    "xxl": dict(
        emb_dim=4096,
        num_heads=64,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=10240,
    ),
    # The embedded default (prompt_tuning/embedded/assets, built by its pretraining recipe):
    # 600 SentencePiece pieces + 100 extra ids, padded to 768.
    "embedded": dict(
        vocab_size=768,
        emb_dim=128,
        num_heads=4,
        num_encoder_layers=3,
        num_decoder_layers=2,
        head_dim=32,
        mlp_dim=256,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=64,
    ),
}


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _maybe_remat(layer_cls, cfg: T5Config, static_argnums: tuple[int, ...]):
  """`layer_cls`, wrapped in `nn.remat` with the config's policy (same parameter names)."""
  if cfg.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=static_argnums)


def config_for_size(size: str, **overrides) -> T5Config:
  if size not in SIZES:
    raise ValueError(f"Unknown T5 1.1 size {size!r}; choose one of {sorted(SIZES)}.")
  return T5Config(**{**SIZES[size], **overrides})


def _param(module, name, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _constrain(x, axes):
  return nn.with_logical_constraint(x, axes)


_ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "linear": lambda x: x,
    "silu": nn.silu,
}


# ------------------------------------------------------------------------------------------------
# Layers.


class Dense(nn.Module):
  """Bias-free projection with a 2-D kernel [in, out], as T5X stores it."""

  features: int
  axes: tuple[str, str]
  init_scale: float = 1.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., in] -> [..., features], computed in `dtype`."""
    init = nn.initializers.variance_scaling(self.init_scale, "fan_in", "truncated_normal")
    kernel = _param(self, "kernel", init, (x.shape[-1], self.features), self.axes)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class Embed(nn.Module):
  """Token embedding table [V, D], shared by encoder and decoder (T5 1.1 has a separate output
  layer, `decoder/logits_dense`, so the table is never used for logits)."""

  num_embeddings: int
  features: int
  dtype: str = "float32"

  def setup(self):
    self.embedding = _param(
        self,
        "embedding",
        nn.initializers.normal(stddev=1.0),
        (self.num_embeddings, self.features),
        ("vocab", "embed"),
    )

  def __call__(self, ids: Array) -> Array:
    """Token ids [B, L] (or [B, T]) -> embeddings [B, L, D] in `dtype`."""
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)


class LayerNorm(nn.Module):
  """T5's RMS norm: no mean subtraction, no bias, statistics in float32."""

  epsilon: float = 1e-6
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., D] -> [..., D] in `dtype`; the mean square is taken over D."""
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    scale = scale.reshape((1,) * (x.ndim - 1) + (-1,))
    return x.astype(self.dtype) * scale.astype(self.dtype)


def relative_position_buckets(
    query_pos: np.ndarray,
    key_pos: np.ndarray,
    *,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> np.ndarray:
  """T5's bucketing of key - query distances: exact for small, logarithmic for large ones.

  Computed with numpy in float32 at trace time, as the original does, so bucket edges agree.
  """
  n = -(key_pos[None, :] - query_pos[:, None])
  bucket = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(n.dtype) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  eps = np.finfo(np.float32).eps
  log_ratio = np.log(n.astype(np.float32) / np.float32(max_exact) + np.float32(eps))
  large = max_exact + (
      log_ratio / np.float32(np.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
  ).astype(n.dtype)
  large = np.minimum(large, num_buckets - 1)
  return bucket + np.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """One bias table [H, buckets] shared by all layers of a stack."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: str = "float32"

  @nn.compact
  def __call__(self, q_len: int, k_len: int, decode_position: Optional[Array] = None) -> Array:
    """Bias [1, H, Q, S] (Q = q_len, S = k_len); with `decode_position`, its row [1, H, 1, S]."""
    table = _param(
        self,
        "rel_embedding",
        nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
        (self.num_heads, self.num_buckets),
        ("heads", "relpos_buckets"),
    )
    buckets = relative_position_buckets(
        np.arange(q_len, dtype=np.int32),
        np.arange(k_len, dtype=np.int32),
        bidirectional=self.bidirectional,
        num_buckets=self.num_buckets,
        max_distance=self.max_distance,
    )
    buckets = jnp.asarray(buckets)
    if decode_position is not None:
      buckets = jax.lax.dynamic_slice_in_dim(buckets, decode_position, 1, axis=0)
    bias_HxQxK = jnp.take(table, buckets, axis=1)
    return bias_HxQxK[None].astype(self.dtype)


def mask_to_bias(mask: Array, dtype) -> Array:
  return jnp.where(mask > 0, 0.0, NEG_INF).astype(dtype)


def attention_mask(query_valid: Array, key_valid: Array) -> Array:
  """[B, Q] x [B, K] validity -> [B, 1, Q, K] mask (float32 0/1)."""
  return (query_valid[:, None, :, None] & key_valid[:, None, None, :]).astype(jnp.float32)


class ExamplePrefixes(NamedTuple):
  """Deep-prompt prefixes that differ per example (`prompt_library`'s mixed batches).

  kv [layers, B, 2, P', H, K] (a layer's: [B, 2, P', H, K]); valid [B, P'], False where an
  example's prompt is shorter than P' (its padding is masked out of the attention).
  """

  kv: Array
  valid: Array


class MultiHeadAttention(nn.Module):
  """T5 attention. In decode mode it keeps a key/value cache of the decoder's own positions."""

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: str = "float32"
  # Keys/values come from an input that is the same at every decode step (the encoder output):
  # in decode mode they are projected once, when the cache is created, and read from it after.
  static_kv: bool = False

  @nn.compact
  def __call__(
      self,
      x_q: Array,
      x_kv: Array,
      bias: Optional[Array],
      *,
      enable_dropout: bool = False,
      decode: bool = False,
      decode_position: Optional[Array] = None,
      prefix_kv: Optional[Array] = None,
  ) -> Array:
    """Queries from x_q [B, Q, D], keys/values from x_kv [B, S, D] -> [B, Q, D].

    `prefix_kv` [2, P', H, K] (keys, then values; the same for every example) adds P' key/value
    positions that every query attends to, whatever the mask (see `_attend_with_prefix`); an
    `ExamplePrefixes` gives each example its own (the prompt library's mixed batches).

    `bias` (masks and relative positions) broadcasts to [B, H, Q, S]. Decode mode: the first call
    creates the cache; each later one takes one position (Q == 1) and attends over the whole
    cache (S = the maximum decode length), causally masked. With `static_kv` (cross-attention)
    the cache holds the projected x_kv instead, and later calls ignore x_kv.
    """
    hk = self.num_heads * self.head_dim
    emb_dim = x_q.shape[-1]
    # T5 folds 1/sqrt(head_dim) into the query initialisation rather than the attention.
    dense = functools.partial(Dense, hk, ("embed", "joined_kv"), dtype=self.dtype)
    split = lambda t: _constrain(
        t.reshape(t.shape[:-1] + (self.num_heads, self.head_dim)),
        ("batch", "length", "heads", "kv"),
    )
    q = split(dense(name="query", init_scale=1.0 / self.head_dim)(x_q))
    project_kv = lambda: (split(dense(name="key")(x_kv)), split(dense(name="value")(x_kv)))

    # Queries and the attention's output are heads-first, [B, H, Q, K]. Keys and values over
    # whole sequences too, so each head's matmuls read contiguous rows (on CPU at small, 14% off
    # the scoring step, 4% off the prompt step; benchmarks/README.md). The static cache holds
    # them as [B, H, K, S] and [B, H, S, K], the layouts the matmuls read, so decode steps do not
    # transpose it again; the decoder's own cache keeps [B, T, H, K], one position written a step.
    q = jnp.swapaxes(q, 1, 2)
    qk, wv = "bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd"
    if decode and self.static_kv:
      qk = "bhqd,bhdk->bhqk"
      if self.has_variable("cache", "cached_key"):
        k = self.get_variable("cache", "cached_key")
        v = self.get_variable("cache", "cached_value")
      else:
        k, v = project_kv()
        k, v = jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))
        self.put_variable("cache", "cached_key", k)
        self.put_variable("cache", "cached_value", v)
    elif decode:
      k, v = project_kv()
    else:
      k, v = (jnp.swapaxes(t, 1, 2) for t in project_kv())

    if decode and not self.static_kv:
      qk, wv = "bhqd,bkhd->bhqk", "bhqk,bkhd->bhqd"
      # The cache holds keys/values [B, T_max, H, K] for every decoder position; one new position
      # is written per step and attention runs over the whole (causally masked) cache.
      is_init = not self.has_variable("cache", "cached_key")
      cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
      if not is_init:
        if k.shape[1] != 1:
          raise ValueError(f"decode=True expects one position per step, got {k.shape[1]}.")
        cached_k.value = jax.lax.dynamic_update_slice_in_dim(
            cached_k.value, k, decode_position, axis=1
        )
        cached_v.value = jax.lax.dynamic_update_slice_in_dim(
            cached_v.value, v, decode_position, axis=1
        )
        k, v = cached_k.value, cached_v.value
        causal = (jnp.arange(k.shape[1]) <= decode_position)[None, None, None, :]
        causal_bias = mask_to_bias(causal, self.dtype)
        bias = causal_bias if bias is None else bias + causal_bias

    logits_BxHxQxK = jnp.einsum(qk, q, k)
    if bias is not None:
      logits_BxHxQxK = logits_BxHxQxK + bias.astype(logits_BxHxQxK.dtype)
    if prefix_kv is None:
      weights = jax.nn.softmax(logits_BxHxQxK.astype(jnp.float32)).astype(self.dtype)
      weights = self._dropout(weights, enable_dropout)
      out = jnp.einsum(wv, weights, v)
    else:
      out = self._attend_with_prefix(q, logits_BxHxQxK, v, wv, prefix_kv, enable_dropout)
    out = jnp.swapaxes(out, 1, 2)
    out = out.reshape(out.shape[:-2] + (hk,))
    return Dense(emb_dim, ("joined_kv", "embed"), dtype=self.dtype, name="out")(out)

  def _dropout(self, weights: Array, enable_dropout: bool) -> Array:
    if enable_dropout and self.dropout_rate > 0:
      return nn.Dropout(self.dropout_rate)(weights, deterministic=False)
    return weights

  def _attend_with_prefix(self, q, logits_BxHxQxS, v, wv, prefix_kv, enable_dropout) -> Array:
    """Attention over [prefix; sequence]: one softmax over both, each part mixed separately.

    The prefix logits get no bias: no mask (a prefix is never padding, and in the decoder it
    precedes every position, so causality allows it; only `ExamplePrefixes` pad a shorter prompt,
    and that padding is masked) and no relative-position bias. Prefixes are
    position-free memory slots, the same for every query; a T5 bucket would give each an
    arbitrary distance to each query and share that bias with real tokens at that distance.
    The sequence part is never concatenated with the prefix, so the decode cache keeps holding
    only the decoder's own positions.
    """
    if isinstance(prefix_kv, ExamplePrefixes):  # Each example its own; padding masked out.
      keys, values = (prefix_kv.kv[:, i].astype(q.dtype) for i in (0, 1))
      logits_BxHxQxP = jnp.einsum("bhqd,bphd->bhqp", q, keys)
      logits_BxHxQxP += mask_to_bias(prefix_kv.valid[:, None, None, :], q.dtype)
      mix = "bhqp,bphd->bhqd"
    else:
      keys, values = prefix_kv.astype(q.dtype)
      logits_BxHxQxP = jnp.einsum("bhqd,phd->bhqp", q, keys)
      mix = "bhqp,phd->bhqd"
    logits = jnp.concatenate([logits_BxHxQxP, logits_BxHxQxS.astype(q.dtype)], axis=-1)
    weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(self.dtype)
    weights = self._dropout(weights, enable_dropout)
    length = keys.shape[-3]
    out = jnp.einsum(mix, weights[..., :length], values)
    return out + jnp.einsum(wv, weights[..., length:], v)


class MlpBlock(nn.Module):
  """Gated MLP: prod_i act_i(x @ wi_i) @ wo (T5 1.1: gelu(x wi_0) * (x wi_1))."""

  mlp_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array, enable_dropout: bool = False) -> Array:
    """[B, L, D] -> hidden [B, L, F] -> [B, L, D]."""
    emb_dim = x.shape[-1]
    hidden = None
    for i, act in enumerate(self.activations):
      name = f"wi_{i}" if len(self.activations) > 1 else "wi"
      h = _ACTIVATIONS[act](Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name=name)(x))
      hidden = h if hidden is None else hidden * h
    hidden = _constrain(hidden, ("batch", "length", "mlp"))
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not enable_dropout)
    return Dense(emb_dim, ("mlp", "embed"), dtype=self.dtype, name="wo")(hidden)


def _sublayer(cfg: T5Config, x, norm_name: str, layer, logit_mask, enable_dropout):
  """Pre-norm residual block: x + dropout(layer(norm(x) * logit_mask))."""
  h = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name=norm_name)(x) * logit_mask
  h = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(layer(h), deterministic=not enable_dropout)
  return x + h


class EncoderLayer(nn.Module):
  """Self-attention then MLP, each a pre-norm residual block."""

  config: T5Config

  @nn.compact
  def __call__(
      self,
      x: Array,
      bias: Array,
      logit_mask: Array,
      enable_dropout: bool = False,
      prefix_kv: Optional[Array] = None,
  ) -> Array:
    """x [B, P + L, D], bias [B, H, P + L, P + L], logit_mask [B, P + L, 1] -> [B, P + L, D].

    `prefix_kv` [2, P', H, K]: this layer's deep-prompt keys and values (None: none).
    """
    cfg = self.config
    attention = MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.dtype, name="attention"
    )
    mlp = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, name="mlp")
    x = _sublayer(
        cfg,
        x,
        "pre_attention_layer_norm",
        lambda h: attention(h, h, bias, enable_dropout=enable_dropout, prefix_kv=prefix_kv),
        logit_mask,
        enable_dropout,
    )
    x = _sublayer(
        cfg, x, "pre_mlp_layer_norm", lambda h: mlp(h, enable_dropout), logit_mask, enable_dropout
    )
    return _constrain(x * logit_mask, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention to the encoder output, MLP; each pre-norm residual."""

  config: T5Config

  @nn.compact
  def __call__(
      self,
      y: Array,
      encoded: Array,
      self_bias: Optional[Array],
      cross_bias: Array,
      logit_mask: Array,
      enable_dropout: bool = False,
      decode: bool = False,
      decode_position: Optional[Array] = None,
      prefix_kv: Optional[Array] = None,
  ) -> Array:
    """y [B, T, D], encoded [B, P + L, D] -> [B, T, D].

    self_bias broadcasts to [B, H, T, T] (None in decode mode: the cache masks), cross_bias to
    [B, H, T, P + L]; logit_mask is [B, T, 1]. `prefix_kv` [2, P', H, K]: deep-prompt keys and
    values of the self-attention (None: none).
    """
    cfg = self.config
    attention = functools.partial(
        MultiHeadAttention, cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.dtype
    )
    self_attention = attention(name="self_attention")
    cross_attention = attention(name="encoder_decoder_attention", static_kv=True)
    mlp = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, name="mlp")
    y = _sublayer(
        cfg,
        y,
        "pre_self_attention_layer_norm",
        lambda h: self_attention(
            h,
            h,
            self_bias,
            enable_dropout=enable_dropout,
            decode=decode,
            decode_position=decode_position,
            prefix_kv=prefix_kv,
        ),
        logit_mask,
        enable_dropout,
    )
    y = _sublayer(
        cfg,
        y,
        "pre_cross_attention_layer_norm",
        lambda h: cross_attention(
            h, encoded, cross_bias, enable_dropout=enable_dropout, decode=decode
        ),
        logit_mask,
        enable_dropout,
    )
    y = _sublayer(
        cfg, y, "pre_mlp_layer_norm", lambda h: mlp(h, enable_dropout), logit_mask, enable_dropout
    )
    return _constrain(y * logit_mask, ("batch", "length", "embed"))


# ------------------------------------------------------------------------------------------------
# Stacks.


class Encoder(nn.Module):
  """Embeds tokens, lets the optional prompt module place its positions, runs the layers."""

  config: T5Config
  token_embedder: nn.Module
  prompt_factory: Optional[prompts.PromptFactory] = None  # None: the plain model.

  def setup(self):
    cfg = self.config
    self.prompt = self.prompt_factory() if self.prompt_factory else None
    self.relpos_bias = RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        bidirectional=True,
        dtype=cfg.dtype,
    )
    # static_argnums count `self` as 0: enable_dropout.
    layer_cls = _maybe_remat(EncoderLayer, cfg, static_argnums=(4,))
    self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_encoder_layers)]
    self.encoder_norm = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype)
    self.input_dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    self.output_dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

  def valid_positions(self, tokens_BxL: Array) -> Array:
    """[B, S] bool: which encoder positions are real (S = L without a prompt, else the prompt
    module's sequence, P + L for an input prompt; the module says where its positions are)."""
    if self.prompt is None:
      return tokens_BxL > 0
    return self.prompt.valid_positions(tokens_BxL)

  def numpy_exports(self) -> dict[str, Array]:
    """Arrays computed from the parameters for the numpy checkpoint (`PromptModule.exports`)."""
    return {} if self.prompt is None else self.prompt.exports(self.config.emb_dim)

  def numpy_sidecars(self) -> dict[str, dict]:
    """`{export name: {"placement": ...}}` for each plain prompt [P, D] of the numpy checkpoint
    whose module places it (the prompt library serves a prompt where it was trained to go)."""
    placement = getattr(self.prompt, "placement", None)
    if placement is None:
      return {}
    names = list(self.prompt.exports(self.config.emb_dim)) or [prompts.PLAIN_PROMPT_EXPORT]
    return {name: {"placement": placement} for name in names}

  def __call__(
      self, tokens_BxL: Array, enable_dropout: bool = False, prefix_kv: Optional[Array] = None
  ) -> Array:
    """Token ids [B, L] -> encoded [B, P + L, D]; padded positions are exactly 0.

    `prefix_kv` [layers, 2, P', H, K]: each layer's deep-prompt keys and values (None: none).
    """
    cfg = self.config
    x = self.token_embedder(tokens_BxL)
    if self.prompt is not None:
      x = self.prompt(x, tokens_BxL)
    x = x.astype(cfg.dtype)
    x = self.input_dropout(x, deterministic=not enable_dropout)
    x = _constrain(x, ("batch", "length", "embed"))
    valid_BxL = self.valid_positions(tokens_BxL)
    length = valid_BxL.shape[1]
    bias = mask_to_bias(attention_mask(valid_BxL, valid_BxL), cfg.dtype) + self.relpos_bias(
        length, length
    )
    logit_mask = valid_BxL[..., None].astype(cfg.dtype)
    for i, layer in enumerate(self.layers):
      x = layer(x, bias, logit_mask, enable_dropout, layer_prefix(prefix_kv, i))
    x = self.encoder_norm(x)
    x = self.output_dropout(x, deterministic=not enable_dropout)
    return x * logit_mask


def layer_prefix(prefix_kv, i: int):
  """Layer i's prefixes of a stack's [layers, 2, P', H, K] or `ExamplePrefixes`, or None."""
  if prefix_kv is None:
    return None
  if isinstance(prefix_kv, ExamplePrefixes):
    return ExamplePrefixes(prefix_kv.kv[i], prefix_kv.valid)
  return prefix_kv[i]


def decoder_logit_mask(decoder_input_tokens_BxT: Array) -> Array:
  """Keep a position if its input or the next input is non-zero, or it is position 0."""
  valid = decoder_input_tokens_BxT > 0
  next_valid = jnp.pad(valid[:, 1:], ((0, 0), (0, 1)))
  first = jnp.zeros_like(valid).at[:, 0].set(True)
  return valid | next_valid | first


class Decoder(nn.Module):
  """Embeds the decoder inputs, runs the layers, projects to the vocabulary (its own head)."""

  config: T5Config
  token_embedder: nn.Module

  def setup(self):
    cfg = self.config
    self.relpos_bias = RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        bidirectional=False,
        dtype=cfg.dtype,
    )
    # static_argnums count `self` as 0: enable_dropout, decode.
    layer_cls = _maybe_remat(DecoderLayer, cfg, static_argnums=(6, 7))
    self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_decoder_layers)]
    self.decoder_norm = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype)
    self.input_dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    self.output_dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    self.logits_dense = Dense(cfg.vocab_size, ("embed", "vocab"), dtype="float32")

  def __call__(
      self,
      encoded_BxLxD,
      encoder_valid_BxL,
      decoder_input_tokens_BxT,
      decoder_target_tokens_BxT=None,
      enable_dropout=False,
      decode=False,
      decode_position=None,
      max_decode_length=None,
      prefix_kv=None,
  ) -> Array:
    """encoded [B, P + L, D], encoder_valid [B, P + L], decoder tokens [B, T] -> float32 logits
    [B, T, V]. `prefix_kv` [layers, 2, P', H, K]: each layer's self-attention deep-prompt keys
    and values (None: none).

    Decode mode: a first call with the full-length inputs creates the cache; each later call
    takes one position (T == 1) at index `decode_position` of a cache of `max_decode_length`.
    """
    cfg = self.config
    y = self.token_embedder(decoder_input_tokens_BxT).astype(cfg.dtype)
    y = self.input_dropout(y, deterministic=not enable_dropout)
    batch, length = decoder_input_tokens_BxT.shape
    if decode:
      # One new position per step (or the whole length once, to create the cache): the causal
      # mask comes from the cache, all queries are real, no logit mask.
      query_valid = jnp.ones((batch, length), bool)
      self_bias = None
      if decode_position is not None:
        self_bias = self.relpos_bias(
            max_decode_length, max_decode_length, decode_position=decode_position
        )
      logit_mask = jnp.ones((batch, length, 1), cfg.dtype)
    else:
      targets = (
          decoder_input_tokens_BxT
          if decoder_target_tokens_BxT is None
          else decoder_target_tokens_BxT
      )
      query_valid = targets > 0
      causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
      self_mask = attention_mask(query_valid, query_valid) * causal
      self_bias = mask_to_bias(self_mask, cfg.dtype) + self.relpos_bias(length, length)
      logit_mask = decoder_logit_mask(decoder_input_tokens_BxT)[..., None].astype(cfg.dtype)
    cross_bias = mask_to_bias(attention_mask(query_valid, encoder_valid_BxL), cfg.dtype)
    for i, layer in enumerate(self.layers):
      y = layer(
          y,
          encoded_BxLxD,
          self_bias,
          cross_bias,
          logit_mask,
          enable_dropout,
          decode,
          decode_position,
          layer_prefix(prefix_kv, i),
      )
    y = self.decoder_norm(y)
    y = self.output_dropout(y, deterministic=not enable_dropout)
    y = y * logit_mask
    logits = self.logits_dense(y)
    return _constrain(logits, ("batch", "length", "vocab"))


class EncoderDecoder(nn.Module):
  """T5 1.1: shared token embedder, encoder (optionally prompted), decoder with its own head."""

  config: T5Config
  prompt_factory: Optional[prompts.PromptFactory] = None  # Builds the `prompts.PromptModule`.
  # Builds the `deep_prompts.DeepPromptModule` (per-layer key/value prefixes); None: none.
  deep_prompt_factory: Optional[deep_prompts.DeepPromptFactory] = None

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype)
    self.encoder = Encoder(cfg, self.token_embedder, self.prompt_factory)
    self.decoder = Decoder(cfg, self.token_embedder)
    if self.deep_prompt_factory is not None:
      self.deep_prompt = self.deep_prompt_factory(cfg)

  def numpy_exports(self) -> dict[str, Array]:
    """Arrays computed from the parameters for the numpy checkpoint: the prompt module's and the
    deep prompt's `exports` (a reparameterised prompt as the plain one it amounts to)."""
    out = self.encoder.numpy_exports()
    if self.deep_prompt_factory is not None:
      out.update(self.deep_prompt.exports())
    return out

  def numpy_sidecars(self) -> dict[str, dict]:
    return self.encoder.numpy_sidecars()

  def _prefix_kv(self, stack: str, encoder_input_tokens: Array):
    """The deep prompt's [layers, 2, P', H, K] for "encoder" or "decoder", or None (the same
    for every example here; a subclass may pick them per example from the tokens)."""
    del encoder_input_tokens
    return None if self.deep_prompt_factory is None else self.deep_prompt(stack)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False) -> Array:
    """Token ids [B, L] -> encoded [B, P + L, D]."""
    prefix_kv = self._prefix_kv("encoder", encoder_input_tokens)
    return self.encoder(encoder_input_tokens, enable_dropout, prefix_kv)

  def decode(
      self,
      encoded: Array,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Optional[Array] = None,
      enable_dropout: bool = False,
      decode: bool = False,
      decode_position: Optional[Array] = None,
      max_decode_length: Optional[int] = None,
  ) -> Array:
    """encoded [B, P + L, D], encoder tokens [B, L], decoder tokens [B, T] -> logits [B, T, V]."""
    encoder_valid = self.encoder.valid_positions(encoder_input_tokens)
    return self.decoder(
        encoded,
        encoder_valid,
        decoder_input_tokens,
        decoder_target_tokens,
        enable_dropout,
        decode,
        decode_position,
        max_decode_length,
        self._prefix_kv("decoder", encoder_input_tokens),
    )

  def __call__(
      self,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      enable_dropout: bool = False,
  ) -> Array:
    """Teacher forcing: encoder tokens [B, L], decoder tokens [B, T] -> logits [B, T, V]."""
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    return self.decode(
        encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, enable_dropout
    )
