"""Input-level prompt variants: placement, reparameterisation, multi-task prompts.

References are independent of the code under test: a prompt whose rows are the embeddings of
real tokens must give what the plain model gives on a hand-built token sequence holding those
tokens where the prompt goes; a multi-task batch must give what each example gives alone with
its task's exported prompt; a reparameterised prompt's export is recomputed with numpy.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import placement
from prompt_tuning import prompt_variants
from prompt_tuning import prompts
from prompt_tuning.models import t5

CFG = t5.config_for_size("tiny", dtype="float32", vocab_size=64)
TOL = 1e-5
# Two examples, the second one full: the suffix goes after each one's last real token (EOS, 1).
TOKENS = np.array([[5, 6, 7, 1, 0, 0], [8, 9, 10, 11, 12, 1]], np.int32)
DECODER_IN = np.array([[0, 3, 4], [0, 5, 0]], np.int32)
DECODER_TARGETS = np.array([[3, 4, 1], [5, 1, 0]], np.int32)
PROMPT_TOKENS = [20, 21, 22]  # The prompt's rows are these tokens' embeddings.


@functools.lru_cache(maxsize=1)
def _plain_params():
  ones = jnp.ones((1, 4), jnp.int32)
  return nn.unbox(t5.EncoderDecoder(CFG).init(jax.random.PRNGKey(0), ones, ones, ones))["params"]


def _with_prompt(params, prompt_params):
  return {**params, "encoder": {**params["encoder"], "prompt": prompt_params}}


@functools.partial(jax.jit, static_argnums=0)
def _run(module, params, tokens, decoder_in, decoder_targets):
  variables = {"params": params}
  encoded = module.apply(variables, tokens, method=module.encode)
  logits = module.apply(variables, tokens, decoder_in, decoder_targets)
  return encoded, logits


def _hand_built(tokens, inserted, where):
  """Each row with `inserted` placed by hand as the docs describe, padding moved to the end."""
  rows = []
  for row in tokens:
    real = [int(t) for t in row if t > 0]
    pad = [0] * (len(row) - len(real))
    if where == "prefix":
      rows.append(inserted + real + pad)
    elif where == "after_first":
      rows.append(real[:1] + inserted + real[1:] + pad)
    else:
      rows.append(real + inserted + pad)
  return np.array(rows, np.int32)


@pytest.mark.parametrize("where", placement.PLACEMENTS)
def test_placement_equals_plain_model_on_hand_built_tokens(where):
  params = _plain_params()
  table = np.asarray(params["token_embedder"]["embedding"])
  prompted = t5.EncoderDecoder(
      CFG,
      prompt_factory=prompts.input_prompt_factory(
          3, prompts.from_array(table[PROMPT_TOKENS]), where
      ),
  )
  prompt_params = {"prompt": {"prompt": table[PROMPT_TOKENS]}}
  encoded, logits = _run(
      prompted, _with_prompt(params, prompt_params), TOKENS, DECODER_IN, DECODER_TARGETS
  )
  reference_tokens = _hand_built(TOKENS, PROMPT_TOKENS, where)
  ref_encoded, ref_logits = _run(
      t5.EncoderDecoder(CFG), params, reference_tokens, DECODER_IN, DECODER_TARGETS
  )
  assert encoded.shape == (2, 9, CFG.emb_dim)
  np.testing.assert_allclose(encoded, ref_encoded, atol=TOL, rtol=0)  # Padding rows: 0 in both.
  np.testing.assert_allclose(logits, ref_logits, atol=TOL, rtol=0)  # Cross-attention masks.
  valid = jax.jit(lambda t: placement.valid_positions(t, 3, where))(TOKENS)
  np.testing.assert_array_equal(valid, reference_tokens > 0)


def test_placement_rejects_unknown_name():
  with pytest.raises(ValueError, match="PROMPT_PLACEMENT='middle'.*suffix"):
    prompts.input_prompt_factory(3, prompts.random_uniform(), "middle")
