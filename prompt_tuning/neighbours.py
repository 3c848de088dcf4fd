"""What a prompt "means": nearest vocabulary neighbours of each prompt position (paper section 7).

For every prompt position, the top-k tokens of the model's embedding table by cosine similarity,
decoded with the vocabulary; how many positions have a class label among their neighbours; and the
same for a random prompt of the same shape (U[-0.5, 0.5], the paper's random init) as the control.

  python -m prompt_tuning.neighbours --prompt=PROMPT.npy --checkpoint=CHECKPOINT_DIR_OR_TABLE.npy \
    --vocab=spiece.model --labels=positive,negative --top_k=5

`--checkpoint` is a T5X checkpoint (only `token_embedder/embedding` is read) or a `.npy` table
[V, D]. The report is JSON on stdout.
"""

import argparse
import json
import sys
from typing import Any, Optional, Sequence

import numpy as np

from prompt_tuning import prompts


class NeighboursError(ValueError):
  """Inputs the neighbour analysis cannot use; the message names the setting."""


def nearest_neighbours(
    prompt_PxD: np.ndarray, embeddings_VxD: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
  """(token ids [P, k], cosine similarities [P, k]), most similar first."""
  prompt_PxD = np.asarray(prompt_PxD, np.float64)
  embeddings_VxD = np.asarray(embeddings_VxD, np.float64)
  if prompt_PxD.ndim != 2 or embeddings_VxD.ndim != 2:
    raise NeighboursError(
        f"Need a prompt [P, D] and an embedding table [V, D]; got {prompt_PxD.shape} and "
        f"{embeddings_VxD.shape}."
    )
  if prompt_PxD.shape[1] != embeddings_VxD.shape[1]:
    raise NeighboursError(
        f"Prompt width {prompt_PxD.shape[1]} does not match the embedding table's "
        f"{embeddings_VxD.shape[1]}: the prompt belongs to another model size."
    )
  if not 1 <= top_k <= embeddings_VxD.shape[0]:
    raise NeighboursError(f"top_k={top_k} must be in [1, {embeddings_VxD.shape[0]}].")
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  sims_PxV = unit(prompt_PxD) @ unit(embeddings_VxD).T
  ids = np.argsort(-sims_PxV, axis=-1, kind="stable")[:, :top_k]
  return ids, np.take_along_axis(sims_PxV, ids, axis=-1)


def _normalise(text: str) -> str:
  return text.replace("\u2581", " ").strip().lower()


def label_hits(neighbour_ids_PxK: np.ndarray, decode, labels: Sequence[str]) -> list[list[str]]:
  """Per position, the class labels (case-insensitive, whitespace-stripped) among the decoded
  neighbours."""
  wanted = {_normalise(l): l for l in labels}
  return [
      sorted({wanted[t] for t in (_normalise(decode([int(i)])) for i in row) if t in wanted})
      for row in neighbour_ids_PxK
  ]


def analyse(
    prompt_PxD: np.ndarray,
    embeddings_VxD: np.ndarray,
    decode,
    labels: Sequence[str] = (),
    top_k: int = 5,
) -> dict[str, Any]:
  """Neighbours of every position and how many positions have a class label among them."""
  ids, sims = nearest_neighbours(prompt_PxD, embeddings_VxD, top_k)
  hits = label_hits(ids, decode, labels)
  return {
      "positions": [
          {
              "position": p,
              "neighbours": [
                  {"id": int(i), "token": decode([int(i)]), "cosine": round(float(s), 6)}
                  for i, s in zip(ids[p], sims[p])
              ],
              "labels": hits[p],
          }
          for p in range(ids.shape[0])
      ],
      "positions_with_label": sum(bool(h) for h in hits),
  }


def report(
    prompt_PxD: np.ndarray,
    embeddings_VxD: np.ndarray,
    decode,
    labels: Sequence[str] = (),
    top_k: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
  """`analyse` for the prompt and for a random U[-0.5, 0.5] prompt of the same shape."""
  rng = np.random.default_rng(seed)
  control = rng.uniform(-0.5, 0.5, np.shape(prompt_PxD)).astype(np.float32)
  return {
      "top_k": top_k,
      "labels": list(labels),
      "prompt": analyse(prompt_PxD, embeddings_VxD, decode, labels, top_k),
      "random_control": analyse(control, embeddings_VxD, decode, labels, top_k),
  }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--prompt", required=True, help="the prompt, a .npy [P, D]")
  parser.add_argument(
      "--checkpoint", required=True, help="T5X checkpoint directory or .npy table [V, D]"
  )
  parser.add_argument("--vocab", required=True, help="SentencePiece model file")
  parser.add_argument("--labels", default="", help="comma-separated class labels")
  parser.add_argument("--top_k", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0, help="seed of the random control prompt")
  args = parser.parse_args(argv)

  import seqio  # pylint: disable=g-import-not-at-top  (slow import, only for the command)

  prompt = prompts.load_npy(args.prompt)
  embeddings = prompts.load_embeddings(args.checkpoint)
  vocab = seqio.SentencePieceVocabulary(args.vocab)
  if embeddings.shape[0] > vocab.vocab_size:
    # Rows past the vocabulary are padding of the table (T5 pads 32100 to 32128): never words.
    embeddings = embeddings[: vocab.vocab_size]
  labels = [l for l in args.labels.split(",") if l.strip()]
  result = report(prompt, embeddings, vocab.decode, labels, args.top_k, args.seed)
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write("\n")
  return result


if __name__ == "__main__":
  main()
