"""Where an input-level prompt goes in the encoder sequence, and which positions are then real.

Pure functions over arrays, shared by every input prompt module (`prompts.PrefixPrompt`,
`prompt_variants.*`). With P prompt rows and L token positions the encoder sees P + L positions:

  prefix       [prompt, tokens, pad]                    the paper's setting (and T5X's original)
  after_first  [token_0, prompt, tokens_1.., pad]       the original's "after BOS" placement
  suffix       [tokens, prompt, pad]                    after each example's last real token

Padding stays at the end of every row, so T5's relative positions between real positions are
those of the same sequence without padding. The prompt rows are always valid; a token position is
valid where its id is non-zero.
"""

import jax
import jax.numpy as jnp

Array = jax.Array
PLACEMENTS = ("prefix", "after_first", "suffix")


def check(placement: str) -> str:
  if placement not in PLACEMENTS:
    raise ValueError(f"PROMPT_PLACEMENT={placement!r}; choose one of {list(PLACEMENTS)}.")
  return placement


def suffix_start_B(tokens_BxL: Array) -> Array:
  """Index just after each row's last real (non-zero) token: where a suffix prompt starts."""
  positions_1xL = jnp.arange(1, tokens_BxL.shape[1] + 1)[None, :]
  return jnp.max(jnp.where(tokens_BxL > 0, positions_1xL, 0), axis=1)


def layout(start_Bx1: Array, prompt_length, num_positions: int) -> tuple[Array, Array]:
  """(in_prompt [B, S], source index [B, S]) for prompts starting at `start_Bx1`, S positions.

  Row b's prompt fills positions [start_b, start_b + P_b) (`prompt_length`: an int or [B, 1]);
  the tokens fill the rest in order. A prompt position's source is its prompt row; a token
  position's is its token index.
  """
  pos_1xS = jnp.arange(num_positions)[None, :]
  in_prompt = (pos_1xS >= start_Bx1) & (pos_1xS < start_Bx1 + prompt_length)
  source = jnp.where(
      in_prompt,
      pos_1xS - start_Bx1,
      jnp.where(pos_1xS < start_Bx1, pos_1xS, pos_1xS - prompt_length),
  )
  return in_prompt, source


def _suffix_layout(tokens_BxL: Array, prompt_length: int) -> tuple[Array, Array]:
  """`layout` of a suffix prompt, S = P + L."""
  start_Bx1 = suffix_start_B(tokens_BxL)[:, None]
  return layout(start_Bx1, prompt_length, prompt_length + tokens_BxL.shape[1])


def insert(prompt_BxPxD: Array, embedded_BxLxD: Array, tokens_BxL: Array, placement: str) -> Array:
  """The encoder input [B, P + L, D]: the embedded tokens with the prompt placed in them."""
  check(placement)
  prompt_BxPxD = prompt_BxPxD.astype(embedded_BxLxD.dtype)
  if placement == "prefix":
    return jnp.concatenate([prompt_BxPxD, embedded_BxLxD], axis=1)
  if placement == "after_first":
    return jnp.concatenate([embedded_BxLxD[:, :1], prompt_BxPxD, embedded_BxLxD[:, 1:]], axis=1)
  in_prompt_BxS, source_BxS = _suffix_layout(tokens_BxL, prompt_BxPxD.shape[1])
  last_token = embedded_BxLxD.shape[1] - 1
  from_tokens = jnp.take_along_axis(
      embedded_BxLxD, jnp.clip(source_BxS, 0, last_token)[..., None], axis=1
  )
  from_prompt = jnp.take_along_axis(
      prompt_BxPxD, jnp.clip(source_BxS, 0, prompt_BxPxD.shape[1] - 1)[..., None], axis=1
  )
  return jnp.where(in_prompt_BxS[..., None], from_prompt, from_tokens)


def valid_positions(tokens_BxL: Array, prompt_length: int, placement: str) -> Array:
  """[B, P + L] bool: the prompt's positions, and token positions whose id is non-zero."""
  check(placement)
  real_BxL = tokens_BxL > 0
  prompt_BxP = jnp.ones((tokens_BxL.shape[0], prompt_length), bool)
  if placement == "prefix":
    return jnp.concatenate([prompt_BxP, real_BxL], axis=1)
  if placement == "after_first":
    return jnp.concatenate([real_BxL[:, :1], prompt_BxP, real_BxL[:, 1:]], axis=1)
  in_prompt_BxS, source_BxS = _suffix_layout(tokens_BxL, prompt_length)
  last_token = tokens_BxL.shape[1] - 1
  token_real = jnp.take_along_axis(real_BxL, jnp.clip(source_BxS, 0, last_token), axis=1)
  return in_prompt_BxS | token_real
