"""Autoregressive decoding over a key/value cache: beam search, temperature sampling, greedy.

Model-agnostic. A model plugs in through one function,

  tokens_to_logits(DecodingState) -> (logits_BxV, new_cache),

which reads the token at `cur_index`, returns the logits (or log-probs) for position
`cur_index + 1` and its cache advanced by one position. The semantics are those of T5X's
`t5x.decoding`, which produced this project's goldens:

- sequences carry a dummy BOS slot (token 0) at position 0 that the outputs drop, so decodes
  have length `max_decode_len`;
- `inputs_BxL` are the decoder input tokens, already shifted right (T5X passes a zero-filled
  `decoder_input_tokens`). Non-zero tokens are teacher-forced as a decoding prompt: `inputs[:, j]`
  forces output position `j - 1` and contributes no log-probability;
- results are sorted best LAST along the decode axis N (`decodes[:, -1]` is the top decode);
- tokens after EOS are 0.

Cache rule (beam expansion and beam reordering): every cache leaf with at least one dimension is
batched, its leading dimension being the batch (B before expansion, B * N inside the search, laid
out `[b0, b0, .., b1, b1, ..]`); scalar leaves (e.g. a cache index shared by the whole batch) are
passed through untouched. A non-scalar leaf whose leading dimension is not the batch is an error.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.struct
import jax
from jax import lax
import jax.numpy as jnp

PyTree = Any

# "Effective -inf" of beam search. A finite constant, as in T5X: dead beams and EOS-masked
# candidates keep ordered, finite log-probs, which the selection and stopping rules rely on.
NEG_INF = -1.0e7
# Masks sampling logits (top-k / top-p). Far below NEG_INF because temperature-scaled logits can
# themselves be ~1e7 in magnitude at temperatures near MIN_TEMPERATURE.
SAMPLING_NEG_INF = -1.0e10
# Temperatures at or below this are treated as 0 (argmax), so 1/temperature never overflows.
MIN_TEMPERATURE = 1.0e-4


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at one step; B is the flat batch (batch * num_decodes).

  Attributes:
    cur_index: int32 scalar, the 0-based position whose token is being fed.
    cur_token: int32 [B], the token at `cur_index` (the previous output; 0 = BOS at position 0).
    cache: the model's cache pytree, following the module's cache rule.
  """

  cur_index: jax.Array
  cur_token: jax.Array
  cache: PyTree


TokensToLogits = Callable[[DecodingState], tuple[jax.Array, PyTree]]


# ------------------------------------------------------------------------------------------------
# Beam utilities.
# ------------------------------------------------------------------------------------------------


def brevity_penalty(alpha: float, length: int | jax.Array) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha; scores are log_prob / penalty."""
  return jnp.power((5.0 + length) / 6.0, alpha)


def flat_batch_beam_expand(x: jax.Array, beam_size: int) -> jax.Array:
  """[B, ...] -> [B * beam_size, ...], each row repeated in place: [b0, b0, .., b1, b1, ..]."""
  return jnp.repeat(x, beam_size, axis=0, total_repeat_length=x.shape[0] * beam_size)


def unflatten_beam_dim(x: jax.Array, batch_size: int, beam_size: int) -> jax.Array:
  """[B * beam_size, ...] -> [B, beam_size, ...] (inverse of the flat layout above)."""
  if x.shape[0] != batch_size * beam_size:
    raise ValueError(
        f"Leading dim {x.shape[0]} != batch_size * beam_size = " f"{batch_size} * {beam_size}."
    )
  return x.reshape((batch_size, beam_size) + x.shape[1:])


def map_batched_leaves(
    fn: Callable[[jax.Array], jax.Array], cache: PyTree, batch_size: int
) -> PyTree:
  """Applies `fn` to every batched cache leaf; scalar leaves pass through (the cache rule)."""

  def apply(path, x):
    if jnp.ndim(x) == 0:
      return x
    if jnp.shape(x)[0] != batch_size:
      raise ValueError(
          f"Cache leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(x)}: non-scalar cache "
          f"leaves must have the batch ({batch_size}) as leading dimension."
      )
    return fn(x)

  return jax.tree_util.tree_map_with_path(apply, cache)


def _gather_beams(x_BxKx: jax.Array, indices_BxM: jax.Array) -> jax.Array:
  """Per batch row, picks beams: out[b, m] = x[b, indices[b, m]]."""
  return jax.vmap(lambda x, i: x[i])(x_BxKx, indices_BxM)


def _top_k_best_last(scores_BxK: jax.Array, k: int) -> jax.Array:
  """Indices of the k best entries per row, in ascending order of score (best last)."""
  _, indices_Bxk = lax.top_k(scores_BxK, k)
  return jnp.flip(indices_Bxk, axis=1)


def _prompt_tokens(inputs_BxL: jax.Array, seq_len: int) -> jax.Array:
  """Inputs cut or zero-padded to `seq_len` positions, with position 0 the BOS slot (0)."""
  x_BxT = inputs_BxL.astype(jnp.int32)[:, :seq_len]
  x_BxT = jnp.pad(x_BxT, ((0, 0), (0, seq_len - x_BxT.shape[1])))
  return x_BxT.at[:, 0].set(0)


def _call_model(
    tokens_to_logits: TokensToLogits, state: DecodingState, flat_size: int
) -> tuple[jax.Array, PyTree]:
  logits_BxV, new_cache = tokens_to_logits(state)
  if logits_BxV.ndim != 2 or logits_BxV.shape[0] != flat_size:
    raise ValueError(
        f"tokens_to_logits must return logits of shape [{flat_size}, vocab], got "
        f"{logits_BxV.shape}."
    )
  return logits_BxV.astype(jnp.float32), new_cache


def _check_lengths(num_decodes: int, max_decode_len: int) -> None:
  if num_decodes < 1:
    raise ValueError(f"num_decodes must be >= 1, got {num_decodes}.")
  if max_decode_len < 1:
    raise ValueError(f"max_decode_len must be >= 1, got {max_decode_len}.")


# ------------------------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class BeamState:
  """Beam search loop state. T = max_decode_len + 1 (the BOS slot); cache leaves are [B*N, ...]."""

  cur_index: jax.Array  # int32 scalar
  live_logprobs_BxN: jax.Array  # float32, best last
  finished_scores_BxN: jax.Array  # float32, length-normalised, best last
  live_seqs_BxNxT: jax.Array  # int32
  finished_seqs_BxNxT: jax.Array  # int32
  finished_flags_BxN: jax.Array  # bool: slot holds a sequence that really ended in EOS
  cache: PyTree


def _beam_search_final_state(
    inputs_BxL: jax.Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int,
    alpha: float,
    max_decode_len: int,
) -> BeamState:
  """Runs the beam search loop and returns its final state (see `beam_search`)."""
  batch_size, beam_size = inputs_BxL.shape[0], num_decodes
  flat_size = batch_size * beam_size
  seq_len = max_decode_len + 1
  prompt_BxT = _prompt_tokens(inputs_BxL, seq_len)

  # Only beam 0 is live at the start, so the first step does not pick N copies of one token.
  live_logprobs_N = jnp.array([0.0] + [NEG_INF] * (beam_size - 1), jnp.float32)
  init_state = BeamState(
      cur_index=jnp.array(0, jnp.int32),
      live_logprobs_BxN=jnp.tile(live_logprobs_N[None, :], (batch_size, 1)),
      finished_scores_BxN=jnp.full((batch_size, beam_size), NEG_INF, jnp.float32),
      live_seqs_BxNxT=jnp.zeros((batch_size, beam_size, seq_len), jnp.int32),
      finished_seqs_BxNxT=jnp.zeros((batch_size, beam_size, seq_len), jnp.int32),
      finished_flags_BxN=jnp.zeros((batch_size, beam_size), jnp.bool_),
      cache=map_batched_leaves(
          functools.partial(flat_batch_beam_expand, beam_size=beam_size), cache, batch_size
      ),
  )

  def cond_fn(state: BeamState) -> jax.Array:
    not_at_end = state.cur_index < seq_len - 1
    # Upper bound on any finished score an alive beam can still reach: log-probs only fall, and
    # the penalty is largest at the longest length. As in T5X that length is seq_len, which
    # counts the BOS slot (one more than any real length): a looser but still valid bound.
    best_live_Bx1 = state.live_logprobs_BxN[:, -1:] / brevity_penalty(alpha, seq_len)
    worst_finished_Bx1 = jnp.min(state.finished_scores_BxN, axis=1, keepdims=True)
    # A slot holding no real finished sequence can always be improved on.
    worst_finished_BxN = jnp.where(state.finished_flags_BxN, worst_finished_Bx1, NEG_INF)
    search_done = jnp.all(worst_finished_BxN > best_live_Bx1)
    return not_at_end & ~search_done

  def body_fn(state: BeamState) -> BeamState:
    i = state.cur_index
    cur_token_BxN = lax.dynamic_index_in_dim(state.live_seqs_BxNxT, i, axis=2, keepdims=False)
    logits_BNxV, new_cache = _call_model(
        tokens_to_logits,
        DecodingState(cur_index=i, cur_token=cur_token_BxN.reshape(flat_size), cache=state.cache),
        flat_size,
    )
    vocab_size = logits_BNxV.shape[-1]
    log_probs_BxNxV = jax.nn.log_softmax(logits_BNxV).reshape(batch_size, beam_size, vocab_size)
    candidates_BxNxV = log_probs_BxNxV + state.live_logprobs_BxN[:, :, None]
    candidates_BxNV = candidates_BxNxV.reshape(batch_size, beam_size * vocab_size)

    # Keep 2N candidates: even if N of them end in EOS, N remain to carry the search on.
    topk_logprobs_Bx2N, topk_flat_Bx2N = lax.top_k(candidates_BxNV, 2 * beam_size)
    topk_parent_Bx2N = topk_flat_Bx2N // vocab_size
    topk_ids_Bx2N = topk_flat_Bx2N % vocab_size

    # Teacher-forced prompt position: the first candidate carries the forced token with log-prob
    # 0 and the others are killed, so a single beam walks through the prompt (T5X's rule).
    forced_B = lax.dynamic_index_in_dim(prompt_BxT, i + 1, axis=1, keepdims=False)
    in_prompt_Bx1 = (forced_B != 0)[:, None]
    forced_logprobs_Bx2N = jnp.concatenate(
        [
            jnp.zeros((batch_size, 1), jnp.float32),
            jnp.full((batch_size, 2 * beam_size - 1), NEG_INF, jnp.float32),
        ],
        axis=1,
    )
    topk_logprobs_Bx2N = jnp.where(in_prompt_Bx1, forced_logprobs_Bx2N, topk_logprobs_Bx2N)
    topk_ids_Bx2N = jnp.where(in_prompt_Bx1, forced_B[:, None], topk_ids_Bx2N)

    topk_seqs_Bx2NxT = _gather_beams(state.live_seqs_BxNxT, topk_parent_Bx2N)
    topk_seqs_Bx2NxT = lax.dynamic_update_slice(
        topk_seqs_Bx2NxT, topk_ids_Bx2N[:, :, None], (0, 0, i + 1)
    )
    newly_finished_Bx2N = topk_ids_Bx2N == eos_id

    # Alive set: the best N candidates that did not just end (EOS ones pushed down by NEG_INF).
    alive_logprobs_Bx2N = topk_logprobs_Bx2N + newly_finished_Bx2N * NEG_INF
    alive_idx_BxN = _top_k_best_last(alive_logprobs_Bx2N, beam_size)
    live_seqs_BxNxT = _gather_beams(topk_seqs_Bx2NxT, alive_idx_BxN)
    live_logprobs_BxN = _gather_beams(alive_logprobs_Bx2N, alive_idx_BxN)
    # Each new beam continues the cache of the beam it extends.
    parent_BxN = _gather_beams(topk_parent_Bx2N, alive_idx_BxN)
    flat_parent_BN = (jnp.arange(batch_size)[:, None] * beam_size + parent_BxN).reshape(flat_size)
    new_cache = map_batched_leaves(
        lambda x: jnp.take(x, flat_parent_BN, axis=0), new_cache, flat_size
    )

    # Finished set: the best N of the old finished and the candidates that just ended, scored
    # with the length penalty at length i + 1 (generated tokens, EOS included).
    new_scores_Bx2N = (
        topk_logprobs_Bx2N / brevity_penalty(alpha, i + 1) + (~newly_finished_Bx2N) * NEG_INF
    )
    all_seqs_Bx3NxT = jnp.concatenate([state.finished_seqs_BxNxT, topk_seqs_Bx2NxT], axis=1)
    all_scores_Bx3N = jnp.concatenate([state.finished_scores_BxN, new_scores_Bx2N], axis=1)
    all_flags_Bx3N = jnp.concatenate([state.finished_flags_BxN, newly_finished_Bx2N], axis=1)
    finished_idx_BxN = _top_k_best_last(all_scores_Bx3N, beam_size)

    return BeamState(
        cur_index=i + 1,
        live_logprobs_BxN=live_logprobs_BxN,
        finished_scores_BxN=_gather_beams(all_scores_Bx3N, finished_idx_BxN),
        live_seqs_BxNxT=live_seqs_BxNxT,
        finished_seqs_BxNxT=_gather_beams(all_seqs_Bx3NxT, finished_idx_BxN),
        finished_flags_BxN=_gather_beams(all_flags_Bx3N, finished_idx_BxN),
        cache=new_cache,
    )

  return lax.while_loop(cond_fn, body_fn, init_state)


def beam_search(
    inputs_BxL: jax.Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 0.6,
    max_decode_len: int | None = None,
    decode_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Beam search with GNMT length normalisation, T5X semantics.

  Args:
    inputs_BxL: int32 decoder input tokens (zeros for plain decoding; see module docstring).
    cache: the model's cache for batch B; expanded to B * num_decodes beams (module cache rule).
    tokens_to_logits: the model step (module docstring).
    eos_id: end-of-sequence id.
    num_decodes: beam size N.
    alpha: brevity-penalty exponent; 0 scores finished sequences by plain log-prob.
    max_decode_len: decode length L; defaults to `inputs_BxL.shape[1]`.
    decode_rng: unused (beam search is deterministic); accepted for a uniform decode API.

  Returns:
    decodes_BxNxL int32, best last, 0 after EOS; scores_BxN: finished sequences' log-prob /
    brevity_penalty(alpha, length incl. EOS). A batch element with no finished sequence returns
    its alive beams instead, scored by their raw log-probs (T5X's behaviour, no normalisation).
  """
  del decode_rng
  if max_decode_len is None:
    max_decode_len = inputs_BxL.shape[1]
  _check_lengths(num_decodes, max_decode_len)
  state = _beam_search_final_state(
      inputs_BxL, cache, tokens_to_logits, eos_id, num_decodes, alpha, max_decode_len
  )
  any_finished_B = jnp.any(state.finished_flags_BxN, axis=1)
  seqs_BxNxT = jnp.where(
      any_finished_B[:, None, None], state.finished_seqs_BxNxT, state.live_seqs_BxNxT
  )
  scores_BxN = jnp.where(
      any_finished_B[:, None], state.finished_scores_BxN, state.live_logprobs_BxN
  )
  return seqs_BxNxT[:, :, 1:], scores_BxN


# ------------------------------------------------------------------------------------------------
# Temperature sampling and greedy decoding.
# ------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class SamplingState:
  """Sampling loop state; B is the flat batch (batch * num_decodes), T = max_decode_len + 1."""

  cur_index: jax.Array  # int32 scalar
  sequences_BxT: jax.Array  # int32: BOS slot, then decoded (or still-to-force prompt) tokens
  cache: PyTree
  cur_token_B: jax.Array  # int32
  ended_B: jax.Array  # bool
  rng: jax.Array
  log_prob_B: jax.Array  # float32


def _topk_mask(logits_BxV: jax.Array, topk: int) -> jax.Array:
  """Keeps the k largest logits per row (ties with the k-th kept), masks the rest."""
  if topk >= logits_BxV.shape[-1]:
    return logits_BxV
  kth_Bx1 = lax.top_k(logits_BxV, topk)[0][:, -1:]
  return jnp.where(logits_BxV < kth_Bx1, SAMPLING_NEG_INF, logits_BxV)


def _topp_mask(logits_BxV: jax.Array, topp: float) -> jax.Array:
  """Keeps the smallest top set whose probability reaches `topp` (at least the top logit)."""
  sorted_BxV = jnp.flip(jnp.sort(logits_BxV, axis=-1), axis=-1)
  cum_probs_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
  # Index of the token at which the cumulative probability first reaches topp; rounding can
  # leave the total just below 1, hence the clip.
  cutoff_Bx1 = jnp.minimum(
      jnp.sum(cum_probs_BxV < topp, axis=-1, keepdims=True), logits_BxV.shape[-1] - 1
  )
  cutoff_logit_Bx1 = jnp.take_along_axis(sorted_BxV, cutoff_Bx1, axis=-1)
  return jnp.where(logits_BxV < cutoff_logit_Bx1, SAMPLING_NEG_INF, logits_BxV)


def temperature_sample(
    inputs_BxL: jax.Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: jax.Array | None = None,
    num_decodes: int = 1,
    temperature: float | jax.Array = 1.0,
    topk: int = 0,
    topp: float = 0.0,
    max_decode_len: int | None = None,
    rescale_log_probs: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Ancestral sampling with temperature and optional top-k or top-p, T5X semantics.

  Each step samples from softmax(logits / temperature) restricted by top-k (the k largest
  logits) or top-p (the smallest top set of probability >= topp); temperature <= 1e-4 takes the
  argmax. Decoding stops once every sample has produced EOS or reached `max_decode_len`.

  Args:
    inputs_BxL, cache, tokens_to_logits, eos_id: as in `beam_search`.
    decode_rng: PRNG key (one stream for the whole batch, split once per step as in T5X);
      None uses PRNGKey(0).
    num_decodes: samples per input (the batch is expanded like beams).
    temperature: Python float or scalar array (may be traced).
    topk: if > 0, sample among the top-k logits only (static).
    topp: if > 0, nucleus sampling (static). At most one of topk and topp may be set.
    max_decode_len: decode length L; defaults to `inputs_BxL.shape[1]`.
    rescale_log_probs: True (T5X default) scores tokens under the distribution actually sampled
      from (temperature, top-k / top-p applied; so a temperature-0 or top-1 decode scores 0).
      False scores them under the model's own log_softmax(logits).

  Returns:
    decodes_BxNxL int32 (0 after EOS) and scores_BxN, the sum of the sampled tokens' log-probs
    up to and including EOS (forced prompt tokens excluded), both sorted by score, best last.
  """
  if topk and topp:
    raise ValueError("At most one of `topk` and `topp` may be non-zero.")
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)
  if max_decode_len is None:
    max_decode_len = inputs_BxL.shape[1]
  _check_lengths(num_decodes, max_decode_len)
  batch_size = inputs_BxL.shape[0]
  flat_size = batch_size * num_decodes
  temperature = jnp.asarray(temperature, jnp.float32)

  init_state = SamplingState(
      cur_index=jnp.array(0, jnp.int32),
      sequences_BxT=_prompt_tokens(
          flat_batch_beam_expand(inputs_BxL, num_decodes), max_decode_len + 1
      ),
      cache=map_batched_leaves(
          functools.partial(flat_batch_beam_expand, beam_size=num_decodes), cache, batch_size
      ),
      cur_token_B=jnp.zeros((flat_size,), jnp.int32),
      ended_B=jnp.zeros((flat_size,), jnp.bool_),
      rng=decode_rng,
      log_prob_B=jnp.zeros((flat_size,), jnp.float32),
  )

  def token_log_prob(log_probs_BxV: jax.Array, token_B: jax.Array) -> jax.Array:
    return jnp.take_along_axis(log_probs_BxV, token_B[:, None], axis=-1)[:, 0]

  def body_fn(state: SamplingState) -> SamplingState:
    i = state.cur_index
    sample_rng, next_rng = jax.random.split(state.rng)
    logits_BxV, new_cache = _call_model(
        tokens_to_logits,
        DecodingState(cur_index=i, cur_token=state.cur_token_B, cache=state.cache),
        flat_size,
    )

    def sample(logits_BxV):
      scaled_BxV = logits_BxV / jnp.maximum(temperature, MIN_TEMPERATURE)
      if topk:
        scaled_BxV = _topk_mask(scaled_BxV, topk)
      if topp:
        scaled_BxV = _topp_mask(scaled_BxV, topp)
      token_B = jax.random.categorical(sample_rng, scaled_BxV).astype(jnp.int32)
      log_probs_BxV = jax.nn.log_softmax(scaled_BxV if rescale_log_probs else logits_BxV)
      return token_B, token_log_prob(log_probs_BxV, token_B)

    def argmax(logits_BxV):
      token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
      if rescale_log_probs:  # The temperature-0 distribution is a point mass.
        return token_B, jnp.zeros((flat_size,), jnp.float32)
      return token_B, token_log_prob(jax.nn.log_softmax(logits_BxV), token_B)

    token_B, token_log_prob_B = lax.cond(temperature > MIN_TEMPERATURE, sample, argmax, logits_BxV)
    forced_B = lax.dynamic_index_in_dim(state.sequences_BxT, i + 1, axis=1, keepdims=False)
    out_of_prompt_B = forced_B == 0
    token_B = jnp.where(out_of_prompt_B, token_B, forced_B)
    log_prob_B = state.log_prob_B + jnp.where(
        out_of_prompt_B & ~state.ended_B, token_log_prob_B, 0.0
    )
    token_B = jnp.where(state.ended_B, 0, token_B)
    sequences_BxT = lax.dynamic_update_slice(state.sequences_BxT, token_B[:, None], (0, i + 1))
    # Only a generated EOS ends a sample; one inside a forced prompt does not.
    ended_B = state.ended_B | (out_of_prompt_B & (token_B == eos_id)) | (i >= max_decode_len - 1)
    return SamplingState(
        cur_index=i + 1,
        sequences_BxT=sequences_BxT,
        cache=new_cache,
        cur_token_B=token_B,
        ended_B=ended_B,
        rng=next_rng,
        log_prob_B=log_prob_B,
    )

  state = lax.while_loop(lambda s: ~jnp.all(s.ended_B), body_fn, init_state)
  decodes_BxNxL = unflatten_beam_dim(state.sequences_BxT[:, 1:], batch_size, num_decodes)
  scores_BxN = unflatten_beam_dim(state.log_prob_B, batch_size, num_decodes)
  order_BxN = jnp.argsort(scores_BxN, axis=-1)
  return (
      jnp.take_along_axis(decodes_BxNxL, order_BxN[:, :, None], axis=1),
      jnp.take_along_axis(scores_BxN, order_BxN, axis=-1),
  )


def greedy(
    inputs_BxL: jax.Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 1,
    max_decode_len: int | None = None,
    decode_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Argmax decoding: `temperature_sample` at temperature 0.

  Unlike T5X's temperature-0 sampling (which scores 0), scores are the model's log-probs of the
  decoded tokens. `num_decodes` identical copies are returned, so this is a drop-in `decode_fn`.
  """
  del decode_rng
  return temperature_sample(
      inputs_BxL,
      cache,
      tokens_to_logits,
      eos_id,
      decode_rng=jax.random.PRNGKey(0),
      num_decodes=num_decodes,
      temperature=0.0,
      max_decode_len=max_decode_len,
      rescale_log_probs=False,
  )
