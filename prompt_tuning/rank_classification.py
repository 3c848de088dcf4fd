"""Rank classification and prompt ensembles (paper section 6).

Rank classification scores every label string as the target (the sum of its tokens'
log-likelihoods, `EncoderDecoderModel.score_batch`) and picks the most likely, so a classifier
never depends on free generation producing a valid label.

  rank_classify(score_fn, params, encoder_input_tokens, label_targets)  any model (eval mode)
  mixed_rank_classify(runner, examples, labels)                          a mixed-prompt batch
  ensemble_rank_classify(runner, prompts, inputs, labels)                summed log-likelihood
  ensemble_generate(runner, prompts, inputs, max_len)                    majority vote

The mixed and ensemble forms use `prompt_library.MixedPromptRunner`: every (example, prompt,
label) row goes into one mixed batch.
"""

import collections
from typing import Any, Callable, Sequence

import numpy as np

from prompt_tuning import prompt_library as lib


class RankClassificationError(ValueError):
  """Labels or inputs rank classification cannot use; the message names the problem."""


def label_targets(vocab, labels: Sequence[str], eos_id: int = 1) -> list[list[int]]:
  """Each label's token ids followed by EOS, as the targets the model was trained on."""
  if not labels:
    raise RankClassificationError("The label list is empty: give at least one label string.")
  out = []
  for label in labels:
    ids = list(vocab.encode(label))
    if not ids:
      raise RankClassificationError(f"Label {label!r} tokenises to no tokens.")
    out.append(ids + [eos_id])
  return out


def _check_labels(labels: Sequence[Sequence[int]]) -> None:
  if len(labels) == 0:
    raise RankClassificationError("The label list is empty: give at least one label.")
  for i, t in enumerate(labels):
    if len(t) == 0:
      raise RankClassificationError(f"Label {i} has no tokens.")


def rank_classify(
    score_fn: Callable[[Any, dict[str, np.ndarray]], Any],
    params: Any,
    encoder_input_tokens: np.ndarray,
    labels: Sequence[Sequence[int]],
) -> tuple[np.ndarray, np.ndarray]:
  """(predicted label index [B], log-likelihoods [B, C]) for one model, e.g. `model.score_batch`.

  Every example is scored against every label in one call of `score_fn` on B * C rows.
  """
  _check_labels(labels)
  inputs = np.asarray(encoder_input_tokens)
  num_examples, num_labels = inputs.shape[0], len(labels)
  width = max(len(t) for t in labels)
  targets = np.zeros((num_labels, width), np.int32)
  for i, t in enumerate(labels):
    targets[i, : len(t)] = t
  targets = np.tile(targets, (num_examples, 1))  # Row b * C + c: example b, label c.
  batch = {
      "encoder_input_tokens": np.repeat(inputs, num_labels, axis=0),
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets > 0).astype(np.float32),
  }
  scores = np.asarray(score_fn(params, batch)).reshape(num_examples, num_labels)
  return scores.argmax(-1), scores


def mixed_rank_classify(
    runner: lib.MixedPromptRunner,
    examples: Sequence[lib.Example],
    labels: Sequence[Sequence[Sequence[int]]],
) -> list[tuple[int, np.ndarray]]:
  """Per example (its own prompt, its own label set): (best label index, scores [C_i])."""
  if len(labels) != len(examples):
    raise RankClassificationError(
        f"{len(examples)} examples but {len(labels)} label lists: give one list per example."
    )
  rows, owners = [], []
  for i, (e, ls) in enumerate(zip(examples, labels)):
    _check_labels(ls)
    for t in ls:
      rows.append(lib.Example(e.prompt, e.inputs, t))
      owners.append(i)
  scores = runner.score(rows)
  owners = np.asarray(owners)
  out = []
  for i in range(len(examples)):
    s = scores[owners == i]
    out.append((int(s.argmax()), s))
  return out


def ensemble_rank_classify(
    runner: lib.MixedPromptRunner,
    prompt_names: Sequence[str],
    inputs: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
) -> tuple[np.ndarray, np.ndarray]:
  """(ensemble prediction [B], member scores [N, B, C]): the label with the highest log-likelihood
  summed over the N prompts, all scored in one mixed batch."""
  if not prompt_names:
    raise RankClassificationError("An ensemble needs at least one prompt.")
  examples = [lib.Example(p, x) for p in prompt_names for x in inputs]
  results = mixed_rank_classify(runner, examples, [labels] * len(examples))
  member = np.stack([s for _, s in results]).reshape(len(prompt_names), len(inputs), len(labels))
  return member.sum(0).argmax(-1), member


def majority_vote(candidates: Sequence[Sequence[int]]) -> list[int]:
  """The most frequent sequence; ties go to the one that came first (the earlier prompt)."""
  counts = collections.Counter(tuple(c) for c in candidates)
  best = max(counts.values())
  return next(list(c) for c in candidates if counts[tuple(c)] == best)


def ensemble_generate(
    runner: lib.MixedPromptRunner,
    prompt_names: Sequence[str],
    inputs: Sequence[Sequence[int]],
    max_decode_length: int,
) -> tuple[list[list[int]], list[list[list[int]]]]:
  """(majority-vote decode per example, member decodes [N][B]) from one mixed batch."""
  if not prompt_names:
    raise RankClassificationError("An ensemble needs at least one prompt.")
  examples = [lib.Example(p, x) for p in prompt_names for x in inputs]
  decodes = runner.generate(examples, max_decode_length)
  n = len(inputs)
  members = [decodes[k * n : (k + 1) * n] for k in range(len(prompt_names))]
  votes = [majority_vote([m[b] for m in members]) for b in range(n)]
  return votes, members
