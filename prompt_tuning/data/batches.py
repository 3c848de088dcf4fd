"""Model batches built from token lists outside SeqIO (pretraining, serving, benchmarks).

The layout is the one SeqIO's `EncDecFeatureConverter` produces: zero padding at the end,
decoder inputs = targets shifted right with BOS 0, loss weights 1 on real target tokens.
"""

from typing import Sequence

import numpy as np

EOS_ID = 1  # T5's (and the embedded vocabulary's) end-of-sequence id.


def pad_rows(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  """Token lists -> int32 [len(rows), length], zero-padded at the end (rows must fit)."""
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


def shift_right(targets: np.ndarray) -> np.ndarray:
  """Decoder inputs for teacher forcing: [B, T] targets shifted right, BOS 0 first."""
  return np.pad(targets[:, :-1], ((0, 0), (1, 0)))


def encoder_decoder_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    input_length: int,
    target_length: int,
    eos_id: int = EOS_ID,
) -> dict[str, np.ndarray]:
  """(inputs, targets) pairs -> a padded model batch; EOS appended, overlong ones truncated."""
  enc = pad_rows([list(x)[: input_length - 1] + [eos_id] for x, _ in pairs], input_length)
  dec = pad_rows([list(y)[: target_length - 1] + [eos_id] for _, y in pairs], target_length)
  return {
      "encoder_input_tokens": enc,
      "decoder_target_tokens": dec,
      "decoder_input_tokens": shift_right(dec),
      "decoder_loss_weights": (dec > 0).astype(np.float32),
  }
