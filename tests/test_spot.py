"""SPoT's prompt similarities and source ranking, against loops written from the definitions."""

import math

import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning import spot


def _cos(u, v):
  return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _reference(target, source):
  """The three similarities with plain Python loops over rows."""
  mean = lambda rows: [sum(col) / len(rows) for col in zip(*rows)]
  pairs = [[_cos(t, s) for s in source] for t in target]
  return {
      "average_tokens": _cos(mean(target), mean(source)),
      "per_token_average": sum(map(sum, pairs)) / (len(target) * len(source)),
      "per_token_max": sum(max(row) for row in pairs) / len(target),
  }


TARGET = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
SOURCES = {
    "same_direction": np.array([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]], np.float32),
    "reversed": -TARGET,
    "longer": np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 4.0]], np.float32),
    "skewed": np.array([[1.0, 1.0, 0.0], [0.5, -2.0, 0.3]], np.float32),
}


def test_similarities_match_the_definitions():
  for name, source in SOURCES.items():
    want = _reference(TARGET.tolist(), source.tolist())
    for metric, fn in spot.METRICS.items():
      assert fn(TARGET, source) == pytest.approx(want[metric], abs=1e-6), (name, metric)
  # By hand: each target row has a source row of the same direction; the pairs' cosines are
  # [[1, 0], [0, 1]]; the reversed prompt points the other way.
  assert spot.per_token_max(TARGET, SOURCES["same_direction"]) == pytest.approx(1.0)
  assert spot.average_tokens(TARGET, SOURCES["reversed"]) == pytest.approx(-1.0)
  assert spot.per_token_average(TARGET, SOURCES["same_direction"]) == pytest.approx(0.5)


def test_rank_orders_sources_and_the_command_prints_the_table(tmp_path, capsys):
  rows = spot.rank(TARGET, SOURCES, "per_token_max")
  want = sorted(
      SOURCES, key=lambda n: -_reference(TARGET.tolist(), SOURCES[n].tolist())["per_token_max"]
  )
  assert [r["source"] for r in rows] == want
  for name, source in SOURCES.items():
    np.save(tmp_path / f"{name}.npy", source)
  np.save(tmp_path.parent / "target.npy", TARGET)
  spot.main([f"--target={tmp_path.parent / 'target.npy'}", f"--sources={tmp_path}"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].split() == ["rank", "source", *spot.METRICS]
  by_average = sorted(
      SOURCES, key=lambda n: -_reference(TARGET.tolist(), SOURCES[n].tolist())["average_tokens"]
  )
  assert [line.split()[1] for line in lines[1:]] == by_average
  assert lines[-1].split()[1] == "reversed" and float(lines[-1].split()[2]) == pytest.approx(-1)


def test_bad_sources_are_named(tmp_path):
  np.save(tmp_path / "wide.npy", np.ones((2, 5), np.float32))
  with pytest.raises(ValueError, match="'wide' has width 5, the target 3"):
    spot.rank(TARGET, spot.load_sources(str(tmp_path)))
  np.save(tmp_path / "table.npy", np.ones((2, 2, 3), np.float32))
  with pytest.raises(prompts.PromptInitError, match=r"table\.npy: a prompt is a 2-D"):
    spot.load_sources(str(tmp_path))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no .npy prompts"):
    spot.load_sources(str(tmp_path / "empty"))
