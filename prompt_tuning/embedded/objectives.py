"""T5's pretraining objectives as pure numpy functions over token arrays.

* Span corruption (T5): ~15% of the tokens, in spans of mean length 3, are cut out; the
  inputs keep the rest with one sentinel per cut span, the targets list each sentinel followed
  by the tokens it replaced. Sentinels are the extra ids counting down from the end of the
  vocabulary (`<extra_id_0>` = vocab_size - 1), as in T5 and seqio.
* Prefix LM (T5 1.1 "LM adaptation"): the text is split at a random point (optionally only
  at sentence or clause ends); the inputs are the prefix, the targets the rest.

Inputs and targets carry no EOS; `data.batches.encoder_decoder_batch` appends it and pads, giving the
batch the model's `loss_fn` takes (what seqio's EncDecFeatureConverter would produce).
"""

from typing import Optional, Sequence

import numpy as np

from prompt_tuning.data import batches

EOS_ID = batches.EOS_ID


def _random_segmentation(rng: np.random.Generator, num_items: int, num_segments: int) -> np.ndarray:
  """Lengths of `num_segments` non-empty segments of `num_items` items, uniformly at random."""
  first = np.zeros(num_items, bool)
  first[1 + rng.permutation(num_items - 1)[: num_segments - 1]] = True
  segment_id = np.cumsum(first)
  return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> np.ndarray:
  """T5's noise mask: True where a token is noise; starts with a non-noise span."""
  num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
  num_spans = max(1, int(round(num_noise / mean_noise_span_length)))
  num_spans = min(num_spans, num_noise, length - num_noise)
  noise_lengths = _random_segmentation(rng, num_noise, num_spans)
  keep_lengths = _random_segmentation(rng, length - num_noise, num_spans)
  mask = np.zeros(length, bool)
  start = 0
  for keep, noise in zip(keep_lengths, noise_lengths):
    start += keep
    mask[start : start + noise] = True
    start += noise
  return mask


def sentinel_id(vocab_size: int, index: int) -> int:
  """`<extra_id_{index}>`: extra ids count down from the end of the vocabulary."""
  return vocab_size - 1 - index


def _spans_to_sentinels(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """Each run of masked tokens becomes one sentinel, numbered in order of appearance."""
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  sentinels = vocab_size - np.cumsum(starts)  # First span: vocab_size - 1.
  out = np.where(starts, sentinels, tokens)
  return out[~mask | starts]


def span_corruption(
    tokens: Sequence[int],
    rng: np.random.Generator,
    vocab_size: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of T5's span corruption of `tokens` (needs at least 2 tokens).

  `vocab_size` is the vocabulary's size including its extra ids (seqio's `vocab_size`), not
  the model's padded embedding size.
  """
  tokens = np.asarray(tokens, np.int32)
  mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
  return (
      _spans_to_sentinels(tokens, mask, vocab_size),
      _spans_to_sentinels(tokens, ~mask, vocab_size),
  )


def uncorrupt(
    inputs: Sequence[int], targets: Sequence[int], vocab_size: int, num_extra_ids: int = 100
) -> np.ndarray:
  """The original tokens from span corruption's (inputs, targets): each sentinel in the
  inputs is replaced by what follows the same sentinel in the targets."""
  first_sentinel = vocab_size - num_extra_ids
  spans, current = {}, None
  for t in targets:
    if t >= first_sentinel:
      current = int(t)
      spans[current] = []
    elif current is not None:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans.get(int(t), []) if t >= first_sentinel else [int(t)])
  return np.asarray(out, np.int32)


def prefix_lm(
    tokens: Sequence[int], rng: np.random.Generator, split_after: Optional[Sequence[int]] = None
) -> tuple[np.ndarray, np.ndarray]:
  """(prefix, suffix) split at a uniformly random point; both non-empty (needs 2 tokens).

  With `split_after` (token ids, e.g. of "." "?" ":"), the split is uniform over the points
  right after one of those tokens (any point if there is none), so that a question ends the
  prefix as often as anything else instead of rarely.
  """
  tokens = np.asarray(tokens, np.int32)
  points = np.arange(1, len(tokens))
  if split_after is not None:
    at_boundary = points[np.isin(tokens[:-1], split_after)]
    points = at_boundary if len(at_boundary) else points
  split = int(rng.choice(points))
  return tokens[:split], tokens[split:]
