"""Prompt nearest neighbours on tables where the answer is known, and on a released prompt."""

import numpy as np
import pytest

from conftest import FIXTURES, T5_VOCAB, require
from prompt_tuning import neighbours

WORDS = ["<pad>", "good", "bad", "cat", "dog", "Great"]


def decode(ids):
  return " ".join(WORDS[i] for i in ids)


def test_neighbours_on_a_hand_made_table():
  table = np.eye(6, 4) * np.arange(1, 7)[:, None]  # Rows 0-3: scaled unit vectors.
  table[4] = [1, 1, 0, 0]
  table[5] = [-1, 0, 0, 0]
  # Position 0 points at "good" (row 1 direction) scaled: cosine ignores the scale.
  prompt = np.asarray([[0, 10, 0, 0], [-3, 0, 0.1, 0], [0, 0, 0, 5]], np.float32)
  ids, sims = neighbours.nearest_neighbours(prompt, table, top_k=2)
  assert ids[0].tolist()[0] == 1 and sims[0, 0] == pytest.approx(1.0)
  assert ids[1].tolist()[0] == 5  # "Great" = -x, nearest to a mostly -x prompt.
  assert ids[2].tolist()[0] == 3
  got = neighbours.report(prompt, table, decode, labels=["great", "good"], top_k=1)
  assert [p["labels"] for p in got["prompt"]["positions"]] == [["good"], ["great"], []]
  assert got["prompt"]["positions_with_label"] == 2
  assert got["prompt"]["positions"][0]["neighbours"][0]["token"] == "good"
  assert len(got["random_control"]["positions"]) == 3
  with pytest.raises(neighbours.NeighboursError, match="width 3"):
    neighbours.nearest_neighbours(prompt[:, :3], table, 1)


def test_released_prompt_against_a_base_shaped_table(tmp_path):
  prompt_path = require(FIXTURES / "pretrained_prompts" / "t5_1_1_lm100k_base" / "rte.npy")
  vocab_path = require(T5_VOCAB)
  table = np.random.default_rng(0).normal(size=(2000, 768)).astype(np.float32)
  np.save(tmp_path / "table.npy", table)
  got = neighbours.main(
      [
          f"--prompt={prompt_path}",
          f"--checkpoint={tmp_path / 'table.npy'}",
          f"--vocab={vocab_path}",
          "--labels=entailment,not_entailment",
          "--top_k=3",
      ]
  )
  assert len(got["prompt"]["positions"]) == 100
  assert all(len(p["neighbours"]) == 3 for p in got["prompt"]["positions"])
  assert all(0 <= n["id"] < 2000 for p in got["prompt"]["positions"] for n in p["neighbours"])
  assert len(got["random_control"]["positions"]) == 100
