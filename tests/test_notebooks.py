"""Executes the notebooks (percent-format scripts) headless, as a user would run them."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import SHARED, T5_VOCAB, TINY_CHECKPOINT, require

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
  require(TINY_CHECKPOINT)
  require(T5_VOCAB)
  env = {**os.environ, "PROMPT_TUNING_SHARED": str(SHARED), "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
      [sys.executable, str(path)],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert "rank classification:" in result.stdout
  losses = [line for line in result.stdout.splitlines() if line.startswith("loss")]
  assert losses, result.stdout
