"""Tests for decoding.py: beam search, sampling and greedy against plain-Python references.

The toy model's logits depend on its cache (the previous token and the running token sum it
stores), so a cache that is not reordered with its beam changes the decodes and the scores,
which the references compute from the token history alone.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding

EOS = 1
BIG = -1.0e6  # Scores below this come from dead (NEG_INF) beams, not real sequences.


# ------------------------------------------------------------------------------------------------
# Toy model: logits = A[example, cur_token] + B[example, prev_token] + C[token_sum % V].
# ------------------------------------------------------------------------------------------------


class ToyModel:
  """A cache-dependent model with a JAX step function and a float64 NumPy twin."""

  def __init__(self, a_ExVxV, b_ExVxV=None, c_VxV=None):
    self.a = np.asarray(a_ExVxV, np.float64)
    self.vocab = self.a.shape[-1]
    self.b = np.zeros_like(self.a) if b_ExVxV is None else np.asarray(b_ExVxV, np.float64)
    self.c = np.zeros((self.vocab, self.vocab)) if c_VxV is None else np.asarray(c_VxV, np.float64)

  def tokens_to_logits(self, state: decoding.DecodingState):
    a, b, c = (jnp.asarray(t, jnp.float32) for t in (self.a, self.b, self.c))
    cache = state.cache
    ex, prev, total = cache["example_id"], cache["prev_token"], cache["token_sum"]
    logits_BxV = a[ex, state.cur_token] + b[ex, prev] + c[total % self.vocab]
    fed_BxL = jax.lax.dynamic_update_slice(
        cache["fed_tokens"], state.cur_token[:, None], (0, state.cur_index)
    )
    new_cache = {
        "example_id": ex,
        "prev_token": state.cur_token,
        "token_sum": total + state.cur_token,
        "fed_tokens": fed_BxL,
        "num_calls": cache["num_calls"] + 1,
    }
    return logits_BxV, new_cache

  @staticmethod
  def init_cache(example_ids, max_len):
    n = len(example_ids)
    return {
        "example_id": jnp.asarray(example_ids, jnp.int32),
        "prev_token": jnp.zeros((n,), jnp.int32),
        "token_sum": jnp.zeros((n,), jnp.int32),
        "fed_tokens": jnp.zeros((n, max_len), jnp.int32),
        "num_calls": jnp.array(0, jnp.int32),
    }  # A scalar leaf, shared by the batch.

  def logits(self, ex, history):
    """Next-token logits after feeding `history` (BOS 0 first)."""
    cur = history[-1]
    prev = history[-2] if len(history) > 1 else 0
    return self.a[ex, cur] + self.b[ex, prev] + self.c[sum(history[:-1]) % self.vocab]

  def log_probs(self, ex, history):
    z = self.logits(ex, history)
    return z - np.logaddexp.reduce(z)

  def seq_log_prob(self, ex, seq):
    return sum(self.log_probs(ex, [0] + list(seq[:t]))[seq[t]] for t in range(len(seq)))


def random_model(seed, vocab=7, examples=2, scale=2.0):
  rng = np.random.RandomState(seed)
  return ToyModel(
      scale * rng.randn(examples, vocab, vocab),
      scale * rng.randn(examples, vocab, vocab),
      scale * rng.randn(vocab, vocab),
  )


def run_beam(model, example_ids, num_decodes, alpha, max_len, inputs=None):
  if inputs is None:
    inputs = jnp.zeros((len(example_ids), max_len), jnp.int32)
  fn = jax.jit(
      functools.partial(
          decoding.beam_search,
          tokens_to_logits=model.tokens_to_logits,
          eos_id=EOS,
          num_decodes=num_decodes,
          alpha=alpha,
          max_decode_len=max_len,
      )
  )
  decodes, scores = fn(inputs, ToyModel.init_cache(example_ids, max_len))
  assert decodes.dtype == jnp.int32
  assert decodes.shape == (len(example_ids), num_decodes, max_len)
  assert scores.shape == (len(example_ids), num_decodes)
  return np.asarray(decodes), np.asarray(scores)


def run_beam_final_state(model, example_ids, num_decodes, alpha, max_len):
  """The search's final loop state, to inspect its cache and stopping step."""
  fn = jax.jit(
      functools.partial(
          decoding._beam_search_final_state,  # pylint: disable=protected-access
          tokens_to_logits=model.tokens_to_logits,
          eos_id=EOS,
          num_decodes=num_decodes,
          alpha=alpha,
          max_decode_len=max_len,
      )
  )
  return fn(
      jnp.zeros((len(example_ids), max_len), jnp.int32), ToyModel.init_cache(example_ids, max_len)
  )


def run_sample(model, example_ids, max_len, seed=0, inputs=None, **kwargs):
  if inputs is None:
    inputs = jnp.zeros((len(example_ids), max_len), jnp.int32)
  fn = jax.jit(
      functools.partial(
          decoding.temperature_sample,
          tokens_to_logits=model.tokens_to_logits,
          eos_id=EOS,
          max_decode_len=max_len,
          **kwargs
      )
  )
  decodes, scores = fn(
      inputs, ToyModel.init_cache(example_ids, max_len), decode_rng=jax.random.PRNGKey(seed)
  )
  assert decodes.dtype == jnp.int32
  return np.asarray(decodes), np.asarray(scores)


def run_greedy(model, example_ids, max_len, inputs=None, num_decodes=1):
  if inputs is None:
    inputs = jnp.zeros((len(example_ids), max_len), jnp.int32)
  fn = jax.jit(
      functools.partial(
          decoding.greedy,
          tokens_to_logits=model.tokens_to_logits,
          eos_id=EOS,
          num_decodes=num_decodes,
          max_decode_len=max_len,
      )
  )
  decodes, scores = fn(inputs, ToyModel.init_cache(example_ids, max_len))
  return np.asarray(decodes), np.asarray(scores)


def penalty(alpha, length):
  return ((5.0 + length) / 6.0) ** alpha


def pad(seq, length):
  return list(seq) + [0] * (length - len(seq))


# ------------------------------------------------------------------------------------------------
# References.
# ------------------------------------------------------------------------------------------------


def reference_beam_search(model, ex, num_decodes, alpha, max_len):
  """The beam search rules in plain Python over real beams only; best first.

  Dead beams (NEG_INF) are left out: they never outrank a real candidate. Early stopping is
  left out too: it only stops when the finished set can no longer change.
  """
  live = [((), 0.0)]
  finished = []
  for t in range(max_len):
    cands = [
        (s + (v,), lp + model.log_probs(ex, [0, *s])[v])
        for s, lp in live
        for v in range(model.vocab)
    ]
    cands = sorted(cands, key=lambda c: -c[1])[: 2 * num_decodes]
    finished += [(s, lp / penalty(alpha, t + 1)) for s, lp in cands if s[-1] == EOS]
    finished = sorted(finished, key=lambda c: -c[1])[:num_decodes]
    live = [c for c in cands if c[0][-1] != EOS][:num_decodes]
  return finished if finished else live


def brute_force_finished(model, ex, alpha, max_len):
  """Every sequence ending at its first EOS within max_len, with normalised score; best first."""
  out = []
  for k in range(1, max_len + 1):
    for prefix in itertools.product([v for v in range(model.vocab) if v != EOS], repeat=k - 1):
      seq = (*prefix, EOS)
      out.append((seq, model.seq_log_prob(ex, seq) / penalty(alpha, k)))
  return sorted(out, key=lambda c: -c[1])


def assert_beams_match(decodes_NxL, scores_N, expected, max_len):
  """Real beams (best last) equal `expected` (best first); the rest are dead-beam filler."""
  real = scores_N > BIG
  assert real.sum() == len(expected), (scores_N, expected)
  got_seqs = decodes_NxL[real][::-1]
  got_scores = scores_N[real][::-1]
  np.testing.assert_array_equal(got_seqs, [pad(s, max_len) for s, _ in expected])
  np.testing.assert_allclose(got_scores, [sc for _, sc in expected], rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(scores_N) >= 0), "scores must be ascending along N (best last)"


# ------------------------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------------------------


def hand_model():
  """V = 3 Markov model: P(.|BOS) = [.1, .4, .5], P(.|2) = [.05, .75, .2] (token 1 is EOS)."""
  probs = np.array([[0.1, 0.4, 0.5], [0.3, 0.3, 0.4], [0.05, 0.75, 0.2]])
  return ToyModel(np.log(probs)[None])


def test_beam_search_hand_worked_two_steps_alpha_flips_preference():
  # Finished candidates: [EOS] with log .4 / penalty(1) = log .4 (the penalty at length 1 is 1),
  # and [2, EOS] with log(.5 * .75) = log .375 / ((5 + 2) / 6) ** alpha.
  model = hand_model()
  decodes, scores = run_beam(model, [0], num_decodes=1, alpha=0.0, max_len=2)
  np.testing.assert_array_equal(decodes, [[[EOS, 0]]])  # Short wins on raw log-prob.
  np.testing.assert_allclose(scores, [[math.log(0.4)]], rtol=1e-6)

  decodes, scores = run_beam(model, [0], num_decodes=1, alpha=0.6, max_len=2)
  np.testing.assert_array_equal(decodes, [[[2, EOS]]])  # Normalisation favours the longer one.
  expected = math.log(0.375) / (7.0 / 6.0) ** 0.6  # -0.8942 > log .4 = -0.9163
  np.testing.assert_allclose(scores, [[expected]], rtol=1e-6)


@pytest.mark.parametrize("vocab,max_len,num_decodes", [(3, 2, 4), (4, 3, 18)])
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_exhaustive_equals_brute_force(vocab, max_len, num_decodes, alpha):
  # Beams wide enough that no prefix is ever pruned: the finished set is every EOS-terminated
  # sequence, ranked exactly as by enumeration.
  model = random_model(seed=vocab, vocab=vocab, examples=1)
  decodes, scores = run_beam(model, [0], num_decodes, alpha, max_len)
  expected = brute_force_finished(model, 0, alpha, max_len)
  assert len(expected) <= num_decodes
  assert_beams_match(decodes[0], scores[0], expected, max_len)


@pytest.mark.parametrize(
    "num_decodes,alpha,seed", [(1, 0.6, 0), (2, 0.0, 1), (3, 0.6, 2), (3, 1.0, 3), (2, 0.6, 4)]
)
def test_beam_search_matches_reference(num_decodes, alpha, seed):
  # V = 7 > 2N keeps dead beams out of the candidates, so every slot is compared.
  model = random_model(seed)
  max_len = 5
  decodes, scores = run_beam(model, [0, 1], num_decodes, alpha, max_len)
  for ex in range(2):
    expected = reference_beam_search(model, ex, num_decodes, alpha, max_len)
    assert_beams_match(decodes[ex], scores[ex], expected, max_len)


def test_beam_search_without_finished_returns_alive_beams_with_raw_log_probs():
  model = random_model(seed=5)
  model.a[:, :, EOS] -= 30.0  # EOS never reaches the top 2N candidates.
  max_len, num_decodes, alpha = 4, 2, 0.6
  decodes, scores = run_beam(model, [0, 1], num_decodes, alpha, max_len)
  assert not np.any(decodes == EOS)
  for ex in range(2):
    expected = reference_beam_search(model, ex, num_decodes, alpha, max_len)
    assert all(len(s) == max_len for s, _ in expected)  # Alive, unnormalised.
    assert_beams_match(decodes[ex], scores[ex], expected, max_len)


def test_beam_search_per_example_independence():
  model = random_model(seed=6)
  decodes, scores = run_beam(model, [0, 1], 3, 0.6, 5)
  for ex in range(2):
    alone_decodes, alone_scores = run_beam(model, [ex], 3, 0.6, 5)
    np.testing.assert_array_equal(decodes[ex], alone_decodes[0])
    np.testing.assert_allclose(scores[ex], alone_scores[0], rtol=1e-6)
  assert not np.array_equal(decodes[0], decodes[1])


def test_beam_search_cache_follows_beams_and_scalar_leaves_are_untouched():
  model = random_model(seed=7)
  model.a[:, :, EOS] -= 30.0  # No early stop: run all max_len steps.
  batch, num_decodes, max_len = 2, 3, 5
  state = run_beam_final_state(model, [0, 1], num_decodes, 0.6, max_len)
  assert int(state.cur_index) == max_len
  cache = state.cache
  assert cache["num_calls"].shape == () and int(cache["num_calls"]) == max_len
  # After the last step the cache has seen positions 0..max_len-1 of its own live sequence.
  fed_BxNxL = np.asarray(decoding.unflatten_beam_dim(cache["fed_tokens"], batch, num_decodes))
  live_BxNxT = np.asarray(state.live_seqs_BxNxT)
  np.testing.assert_array_equal(fed_BxNxL, live_BxNxT[:, :, :max_len])
  np.testing.assert_array_equal(
      np.asarray(cache["token_sum"]).reshape(batch, num_decodes), live_BxNxT[:, :, :max_len].sum(-1)
  )
  np.testing.assert_array_equal(
      np.asarray(cache["example_id"]).reshape(batch, num_decodes),
      [[0] * num_decodes, [1] * num_decodes],
  )


def test_beam_search_stops_early_when_no_alive_beam_can_win():
  probs = np.array([[0.01, 0.98, 0.01]] * 3)
  model = ToyModel(np.log(probs)[None])
  state = run_beam_final_state(model, [0], 1, 0.6, 6)
  # After step 0, [EOS] scores log .98 and the best alive beam is bounded by
  # log .01 / penalty(7): nothing can beat the finished set.
  assert int(state.cur_index) == 1
  assert int(state.cache["num_calls"]) == 1
  decodes, scores = run_beam(model, [0], 1, 0.6, 6)
  np.testing.assert_array_equal(decodes, [[[EOS, 0, 0, 0, 0, 0]]])
  np.testing.assert_allclose(scores, [[math.log(0.98)]], rtol=1e-6)


def test_beam_search_forces_non_zero_inputs():
  model = random_model(seed=8)
  inputs = jnp.array([[0, 3, 0, 0, 0]], jnp.int32)
  decodes, scores = run_beam(model, [0], 2, 0.0, 5, inputs=inputs)
  top = decodes[0, -1]
  assert top[0] == 3
  # The forced token contributes no log-probability.
  end = list(top).index(EOS) + 1 if EOS in top else len(top)
  lp = sum(model.log_probs(0, [0, *top[:t]])[top[t]] for t in range(1, end))
  np.testing.assert_allclose(scores[0, -1], lp, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Greedy and sampling.
# ------------------------------------------------------------------------------------------------


def reference_greedy(model, ex, max_len, prompt=()):
  seq, score, ended = [], 0.0, False
  for t in range(max_len):
    if ended:
      seq.append(0)
      continue
    lp = model.log_probs(ex, [0, *seq])
    tok = prompt[t] if t < len(prompt) and prompt[t] else int(np.argmax(lp))
    if not (t < len(prompt) and prompt[t]):
      score += lp[tok]
    seq.append(tok)
    ended = tok == EOS
  return seq, score


def greedy_model():
  """Example 0 says [3, EOS]; example 1 never says EOS."""
  model = random_model(seed=9)
  model.a[0, 0, 3] += 20.0
  model.a[0, 3, EOS] += 20.0
  model.a[1, :, EOS] -= 30.0
  return model


def test_greedy_equals_stepwise_argmax_and_zeros_after_eos():
  model = greedy_model()
  max_len = 6
  decodes, scores = run_greedy(model, [0, 1], max_len)
  assert decodes.shape == (2, 1, max_len) and scores.shape == (2, 1)
  np.testing.assert_array_equal(decodes[0, 0], [3, EOS, 0, 0, 0, 0])
  for ex in range(2):
    seq, score = reference_greedy(model, ex, max_len)
    np.testing.assert_array_equal(decodes[ex, 0], seq)
    np.testing.assert_allclose(scores[ex, 0], score, rtol=1e-5, atol=1e-6)
  alone, _ = run_greedy(model, [1], max_len)  # Per-example independence.
  np.testing.assert_array_equal(alone[0], decodes[1])


def test_greedy_forces_non_zero_inputs():
  model = greedy_model()
  inputs = jnp.array([[0, 4, 2, 0, 0, 0]], jnp.int32)
  decodes, scores = run_greedy(model, [1], 6, inputs=inputs)
  seq, score = reference_greedy(model, 1, 6, prompt=[4, 2])
  np.testing.assert_array_equal(decodes[0, 0], seq)
  np.testing.assert_allclose(scores[0, 0], score, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=0.0), dict(temperature=1.0, topk=1), dict(temperature=1.0, topp=1e-6)],
)
def test_degenerate_sampling_is_greedy(kwargs):
  model = greedy_model()
  greedy_decodes, _ = run_greedy(model, [0, 1], 6)
  decodes, scores = run_sample(model, [0, 1], 6, num_decodes=3, **kwargs)
  np.testing.assert_array_equal(decodes, np.repeat(greedy_decodes, 3, axis=1))
  # Scored under the distribution sampled from, a point mass (T5X's rescale_log_probs).
  np.testing.assert_allclose(scores, 0.0, atol=1e-6)


def masked_log_probs(logits, temperature, topk, topp):
  z = logits / temperature
  if topk:
    z = np.where(z < np.sort(z)[-topk], -np.inf, z)
  if topp:
    desc = np.sort(z)[::-1]
    cum = np.cumsum(np.exp(desc - np.logaddexp.reduce(desc)))
    z = np.where(z < desc[min(int(np.sum(cum < topp)), len(z) - 1)], -np.inf, z)
  return z - np.logaddexp.reduce(z)


@pytest.mark.parametrize("temperature,topk,topp", [(1.0, 0, 0.0), (0.7, 3, 0.0), (1.3, 0, 0.8)])
def test_sampling_scores_and_padding(temperature, topk, topp):
  model = random_model(seed=10, scale=0.7)
  max_len, num_decodes = 5, 16
  decodes, scores = run_sample(
      model,
      [0, 1],
      max_len,
      seed=3,
      num_decodes=num_decodes,
      temperature=temperature,
      topk=topk,
      topp=topp,
  )
  assert decodes.shape == (2, num_decodes, max_len)
  assert np.all(np.diff(scores, axis=1) >= 0), "sorted ascending, best last"
  for ex in range(2):
    for seq, score in zip(decodes[ex], scores[ex]):
      expected, ended = 0.0, False
      for t, tok in enumerate(seq):
        if ended:
          assert tok == 0
          continue
        lp = masked_log_probs(model.logits(ex, [0, *seq[:t]]), temperature, topk, topp)[tok]
        assert np.isfinite(lp), "sampled a masked token"
        expected += lp
        ended = tok == EOS
      np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-4)
  assert len({tuple(s) for s in decodes[0]}) > 1


def test_sampling_first_token_distribution():
  model = random_model(seed=11, scale=1.0)
  n = 4000
  decodes, _ = run_sample(model, [0], 1, seed=1, num_decodes=n, temperature=1.0)
  counts = np.bincount(decodes[0, :, 0], minlength=model.vocab)
  expected = n * np.exp(model.log_probs(0, [0]))
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 30.0, (counts, expected)  # df = 6; 30 is p ~ 4e-5.


def test_topk_and_topp_together_rejected():
  with pytest.raises(ValueError, match="topk"):
    run_sample(random_model(seed=0), [0], 3, topk=2, topp=0.5)


# ------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------


def test_beam_layout_helpers():
  x = jnp.array([[1, 2], [3, 4]])
  flat = decoding.flat_batch_beam_expand(x, 3)
  np.testing.assert_array_equal(flat, [[1, 2]] * 3 + [[3, 4]] * 3)
  np.testing.assert_array_equal(
      decoding.unflatten_beam_dim(flat, 2, 3), [[[1, 2]] * 3, [[3, 4]] * 3]
  )
  with pytest.raises(ValueError):
    decoding.unflatten_beam_dim(flat, 2, 2)


def test_cache_rule_rejects_unbatched_leaf():
  model = random_model(seed=0)
  cache = ToyModel.init_cache([0, 1], 4)
  cache["bad"] = jnp.zeros((3,))
  with pytest.raises(ValueError, match="bad"):
    jax.jit(
        functools.partial(
            decoding.beam_search, tokens_to_logits=model.tokens_to_logits, eos_id=EOS, num_decodes=2
        )
    )(jnp.zeros((2, 4), jnp.int32), cache)
