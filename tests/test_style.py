"""Every tracked Python file is formatted by the project's formatter (pyink, pyproject.toml)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _python_files() -> list[str]:
  if not (_REPO / ".git").exists():
    pytest.skip("Not a git checkout: the tracked files are unknown.")
  out = subprocess.run(
      ["git", "ls-files", "*.py"], cwd=_REPO, capture_output=True, text=True, check=True
  ).stdout
  return out.split()


def test_every_python_file_is_formatted():
  pyink = shutil.which("pyink") or shutil.which("pyink", path=os.path.dirname(sys.executable))
  if pyink is None:
    msg = "pyink is not installed (pip install -e '.[test]' installs it)."
    if os.environ.get("CI"):
      pytest.fail(msg)
    pytest.skip(msg)
  result = subprocess.run(
      [pyink, "--check", "--diff", "--quiet", *_python_files()],
      cwd=_REPO,
      capture_output=True,
      text=True,
  )
  assert result.returncode == 0, (
      "Some files are not formatted; run `pyink .` at the repository root.\n" + result.stdout[:5000]
  )
