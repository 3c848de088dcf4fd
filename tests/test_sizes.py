"""Model sizes: the paper's Table 4 parameter counts and the lm100k T5X parameter trees.

Every size is built abstractly (`jax.eval_shape`), so no weights are allocated.
"""

import functools
import math
import re

import flax.linen as nn
import jax
import pytest

from conftest import GOLDEN, TINY_CHECKPOINT, require
from prompt_tuning import checkpoints
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning.models import t5

# T5 1.1 lm100k: (d_model, heads, d_ff, encoder layers, decoder layers); heads have dimension 64.
LM100K = {
    "small": (512, 6, 1024, 8, 8),
    "base": (768, 12, 2048, 12, 12),
    "large": (1024, 16, 2816, 24, 24),
    "xl": (2048, 32, 5120, 24, 24),
    "xxl": (4096, 64, 10240, 24, 24),
}
# Frozen parameters of the paper's Table 4.
TABLE_4 = {
    "small": 76_961_152,
    "base": 247_577_856,
    "large": 783_150_080,
    "xl": 2_849_757_184,
    "xxl": 11_135_332_352,
}


def t5x_listing(
    vocab: int,
    d: int,
    heads: int,
    head_dim: int,
    d_ff: int,
    encoder_layers: int,
    decoder_layers: int,
    buckets: int,
) -> dict[str, tuple[int, ...]]:
  """The T5X T5 1.1 parameter tree (path -> shape), written from the architecture's facts."""
  hk = heads * head_dim
  attention = lambda name: {
      f"{name}/query/kernel": (d, hk),
      f"{name}/key/kernel": (d, hk),
      f"{name}/value/kernel": (d, hk),
      f"{name}/out/kernel": (hk, d),
  }
  mlp = {"mlp/wi_0/kernel": (d, d_ff), "mlp/wi_1/kernel": (d, d_ff), "mlp/wo/kernel": (d_ff, d)}
  encoder_layer = {
      **attention("attention"),
      **mlp,
      "pre_attention_layer_norm/scale": (d,),
      "pre_mlp_layer_norm/scale": (d,),
  }
  decoder_layer = {
      **attention("self_attention"),
      **attention("encoder_decoder_attention"),
      **mlp,
      "pre_self_attention_layer_norm/scale": (d,),
      "pre_cross_attention_layer_norm/scale": (d,),
      "pre_mlp_layer_norm/scale": (d,),
  }
  tree = {
      "token_embedder/embedding": (vocab, d),
      "encoder/relpos_bias/rel_embedding": (heads, buckets),
      "encoder/encoder_norm/scale": (d,),
      "decoder/relpos_bias/rel_embedding": (heads, buckets),
      "decoder/decoder_norm/scale": (d,),
      "decoder/logits_dense/kernel": (d, vocab),
  }  # Untied from the embedding in T5 1.1.
  for i in range(encoder_layers):
    tree.update({f"encoder/layers_{i}/{k}": v for k, v in encoder_layer.items()})
  for i in range(decoder_layers):
    tree.update({f"decoder/layers_{i}/{k}": v for k, v in decoder_layer.items()})
  return tree


def lm100k_listing(size: str) -> dict[str, tuple[int, ...]]:
  d, heads, d_ff, encoder_layers, decoder_layers = LM100K[size]
  return t5x_listing(32128, d, heads, 64, d_ff, encoder_layers, decoder_layers, 32)


@functools.lru_cache(maxsize=None)
def abstract_params(module: nn.Module) -> dict[str, jax.ShapeDtypeStruct]:
  """Path -> abstract parameter of `module`, traced without allocating any weight.

  Cached by the module's definition (its fields), so equal modules built here and from gin
  (tests/test_configs.py) are traced once per session.
  """
  model = model_lib.EncoderDecoderModel(module)
  variables = jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0))
  return optim.flatten(nn.unbox(variables["params"]))


def abstract_tree(size: str) -> dict[str, tuple[int, ...]]:
  """Our model's parameter shapes for `size`."""
  params = abstract_params(t5.EncoderDecoder(t5.config_for_size(size)))
  return {k: tuple(v.shape) for k, v in params.items()}


def original_tiny_tree() -> dict[str, tuple[int, ...]]:
  """The original's no-prompt tiny parameter tree, as listed in golden/original/param_tree.txt."""
  text = require(GOLDEN / "param_tree.txt").read_text()
  section = text.split("## no_prompt_fp32: train_state.params")[1].split("\n## ")[0]
  tree = {}
  for line in section.splitlines()[1:]:
    path, shape = line.split("\t")[:2]
    tree[path.removeprefix("params/")] = tuple(int(n) for n in re.findall(r"\d+", shape))
  return tree


def test_listing_is_the_original_t5x_tree():
  """The listing, at the tiny checkpoint's dimensions, is exactly the tree the original loads."""
  original = original_tiny_tree()
  assert len(original) == 52
  assert t5x_listing(32128, 4, 2, 2, 8, 2, 2, 4) == original


def test_tiny_model_has_the_checkpoint_names_and_shapes():
  checkpoint = optim.flatten(checkpoints.load_t5x_checkpoint(require(TINY_CHECKPOINT)))
  assert set(abstract_tree("tiny")) == set(checkpoint)
  assert abstract_tree("tiny") == {k: tuple(v.shape) for k, v in checkpoint.items()}
  assert abstract_tree("tiny") == original_tiny_tree()


@pytest.mark.parametrize("size", sorted(LM100K))
def test_lm100k_tree_names_and_shapes(size):
  d, heads, d_ff, _, _ = LM100K[size]
  tree = abstract_tree(size)
  assert tree == lm100k_listing(size)
  # The shapes the lm100k checkpoints store, spelled out for the reader.
  assert tree["token_embedder/embedding"] == (32128, d)
  assert tree["encoder/layers_0/attention/query/kernel"] == (d, heads * 64)
  last = f"decoder/layers_{LM100K[size][4] - 1}"
  assert tree[f"{last}/encoder_decoder_attention/out/kernel"] == (heads * 64, d)
  assert tree[f"{last}/pre_cross_attention_layer_norm/scale"] == (d,)
  assert tree["encoder/layers_0/mlp/wi_0/kernel"] == (d, d_ff)
  assert tree["decoder/layers_0/mlp/wo/kernel"] == (d_ff, d)
  assert tree["encoder/relpos_bias/rel_embedding"] == (heads, 32)
  assert tree["decoder/logits_dense/kernel"] == (d, 32128)
  assert tree["encoder/encoder_norm/scale"] == (d,)


@pytest.mark.parametrize("size", sorted(LM100K))
def test_size_independent_structure_is_the_tiny_checkpoints(size):
  """Strip layer indices and shapes: every size has the tiny checkpoint's parameter kinds."""
  kinds = lambda tree: {re.sub(r"layers_\d+", "layers_N", k) for k in tree}
  assert kinds(abstract_tree(size)) == kinds(original_tiny_tree())


@pytest.mark.parametrize("size", sorted(TABLE_4))
def test_frozen_parameter_count_is_table_4(size):
  assert sum(math.prod(s) for s in abstract_tree(size).values()) == TABLE_4[size]


@pytest.mark.parametrize("size", sorted(LM100K))
def test_lm100k_config(size):
  cfg = t5.config_for_size(size)
  d, heads, d_ff, encoder_layers, decoder_layers = LM100K[size]
  assert (cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (d, heads, 64, d_ff)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (encoder_layers, decoder_layers)
  assert (
      cfg.vocab_size,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
  ) == (32128, 32, 128)
  assert tuple(cfg.mlp_activations) == ("gelu", "linear")
