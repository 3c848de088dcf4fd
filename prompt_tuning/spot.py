"""SPoT (Vu et al., 2022): rank trained source prompts for a target task by prompt similarity.

  python -m prompt_tuning.spot --target=TARGET.npy --sources=DIR [--sort_by=average_tokens]

SPoT reads a prompt trained on a task as that task's embedding, and predicts which source
prompt transfers best to a target (initialises the target's prompt best: configs/prompts/spot.gin)
by the similarity of the target's prompt, trained briefly, to each source prompt:

  average_tokens      cosine of the average-pooled prompt tokens (the paper's "cosine similarity
                      of average tokens")
  per_token_average   the average cosine over every (target token, source token) pair (the
                      paper's "per-token average cosine similarity")
  per_token_max       for each target token the cosine of its closest source token, averaged (a
                      variant that ignores how the tokens are ordered or duplicated)

`--sources` is a folder of `.npy` prompts [P, D] (e.g. a multi-task run's
`numpy_checkpoints/checkpoint_<step>/tasks/`, or prompts copied from several runs); each is
named by its file name. Prompts may differ in length but not in width. It prints one row per
source, best first.
"""

import argparse
import os
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

from prompt_tuning import prompts

_EPS = 1e-12


def _unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def average_tokens(target_PxD: np.ndarray, source_QxD: np.ndarray) -> float:
  """Cosine similarity of the two prompts' mean tokens."""
  a, b = _unit_rows(np.mean(target_PxD, axis=0)), _unit_rows(np.mean(source_QxD, axis=0))
  return float(a @ b)


def _pairwise_cosines(target_PxD: np.ndarray, source_QxD: np.ndarray) -> np.ndarray:
  return _unit_rows(target_PxD) @ _unit_rows(source_QxD).T  # [P, Q]


def per_token_average(target_PxD: np.ndarray, source_QxD: np.ndarray) -> float:
  """Mean cosine similarity over all P x Q token pairs."""
  return float(np.mean(_pairwise_cosines(target_PxD, source_QxD)))


def per_token_max(target_PxD: np.ndarray, source_QxD: np.ndarray) -> float:
  """Mean over target tokens of the best cosine with any source token."""
  return float(np.mean(np.max(_pairwise_cosines(target_PxD, source_QxD), axis=1)))


METRICS: Mapping[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "average_tokens": average_tokens,
    "per_token_average": per_token_average,
    "per_token_max": per_token_max,
}


def load_prompt(path: str) -> np.ndarray:
  """A [P, D] prompt from a `.npy` file; anything else is an error naming the file."""
  array = prompts.load_npy(path)
  if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
    raise prompts.PromptInitError(
        f"{path}: a prompt is a 2-D float array [length, embed_dim]; got {array.dtype} "
        f"{array.shape}."
    )
  return array


def load_sources(directory: str) -> dict[str, np.ndarray]:
  """Every `*.npy` prompt directly in `directory`, by file name without `.npy`."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"--sources={directory}: not a folder.")
  names = sorted(f for f in os.listdir(directory) if f.endswith(".npy"))
  if not names:
    raise FileNotFoundError(f"--sources={directory}: no .npy prompts in it.")
  return {n[: -len(".npy")]: load_prompt(os.path.join(directory, n)) for n in names}


def rank(
    target_PxD: np.ndarray, sources: Mapping[str, np.ndarray], sort_by: str = "average_tokens"
) -> list[dict[str, float]]:
  """One row per source ({'source': name, metric: value, ...}), best `sort_by` first."""
  if sort_by not in METRICS:
    raise ValueError(f"--sort_by={sort_by!r}; choose one of {sorted(METRICS)}.")
  rows = []
  for name, source in sources.items():
    if source.shape[1] != target_PxD.shape[1]:
      raise ValueError(
          f"Source prompt {name!r} has width {source.shape[1]}, the target "
          f"{target_PxD.shape[1]}: prompts of different models cannot be compared."
      )
    rows.append({"source": name, **{m: fn(target_PxD, source) for m, fn in METRICS.items()}})
  return sorted(rows, key=lambda r: (-r[sort_by], r["source"]))


def format_table(rows: Sequence[Mapping[str, float]]) -> str:
  width = max(len("source"), *(len(r["source"]) for r in rows))
  header = f"{'rank':>4}  {'source':<{width}}  " + "  ".join(f"{m:>17}" for m in METRICS)
  lines = [header]
  for i, r in enumerate(rows, 1):
    values = "  ".join(f"{r[m]:>17.4f}" for m in METRICS)
    lines.append(f"{i:>4}  {r['source']:<{width}}  {values}")
  return "\n".join(lines)


def main(argv: Sequence[str] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--target", required=True, help="the target task's prompt, .npy [P, D]")
  parser.add_argument("--sources", required=True, help="folder of source prompts (*.npy)")
  parser.add_argument("--sort_by", default="average_tokens", choices=sorted(METRICS))
  args = parser.parse_args(argv)
  rows = rank(load_prompt(args.target), load_sources(args.sources), args.sort_by)
  print(format_table(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
