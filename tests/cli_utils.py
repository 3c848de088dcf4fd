"""Helpers for end-to-end tests of the command-line entry points (train, eval, infer).

Each entry point runs as `python -m prompt_tuning.<name>` in a subprocess, exactly as a user runs
it, with a small JSONL task registered by a module written into a temporary folder.
"""

import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Mapping, Optional, Sequence

TASK_NAME = "tiny_sentiment"
TASK_MODULE = "pt_cli_test_tasks"
# Set in a training process's environment to make it stop (sleep) right before the train step
# that produces this global step, after touching the file named by PAUSE_MARKER_ENV.
PAUSE_AT_STEP_ENV = "PT_TEST_PAUSE_AT_STEP"
PAUSE_MARKER_ENV = "PT_TEST_PAUSE_MARKER"

_POSITIVE = (
    "lovely",
    "wonderful",
    "superb",
    "delightful",
    "great",
    "charming",
    "moving",
    "brilliant",
)
_NEGATIVE = ("awful", "dull", "boring", "terrible", "bland", "clumsy", "tedious", "dreadful")

_MODULE_TEMPLATE = '''\
"""Registers the test task `{task}`; optionally pauses training (see tests/cli_utils.py)."""
import os
import pathlib
import time

from prompt_tuning.data import text_tasks

_DATA = pathlib.Path(__file__).resolve().parent / "data"
text_tasks.register_text_task(
    "{task}",
    {{"train": str(_DATA / "train.jsonl"), "validation": str(_DATA / "validation.jsonl")}},
    input_field="sentence", target_field="label", label_names=["negative", "positive"],
    metrics=("accuracy",), overwrite=True)

_PAUSE_AT = os.environ.get("{pause_env}")
if _PAUSE_AT:
  from prompt_tuning import trainer as _trainer_lib

  _original_train_step = _trainer_lib.Trainer.train_step

  def _train_step(self, state, frozen, batch):
    if int(state.step) + 1 == int(_PAUSE_AT):
      pathlib.Path(os.environ["{marker_env}"]).write_text(str(int(state.step)))
      time.sleep(3600)  # Until the test kills this process.
    return _original_train_step(self, state, frozen, batch)

  _trainer_lib.Trainer.train_step = _train_step
'''


def write_task(root: pathlib.Path) -> pathlib.Path:
  """Writes the task module and its JSONL data under `root`; returns `root` (for PYTHONPATH)."""
  data = root / "data"
  data.mkdir(parents=True, exist_ok=True)
  train = []
  for i in range(64):
    words = _POSITIVE if i % 2 == 0 else _NEGATIVE
    train.append(
        {
            "sentence": f"the movie was {words[(i // 2) % len(words)]}",
            "label": "positive" if i % 2 == 0 else "negative",
        }
    )
  validation = [
      {"sentence": f"the film is {w}", "label": label}
      for w, label in zip(
          ("great", "dull", "superb", "awful", "moving", "bland", "charming", "tedious"),
          ("positive", "negative") * 4,
      )
  ]
  for name, rows in (("train", train), ("validation", validation)):
    (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (root / f"{TASK_MODULE}.py").write_text(
      _MODULE_TEMPLATE.format(
          task=TASK_NAME, pause_env=PAUSE_AT_STEP_ENV, marker_env=PAUSE_MARKER_ENV
      )
  )
  return root


def read_jsonl(path: os.PathLike) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def gin_flags(bindings: Mapping[str, Any]) -> list[str]:
  """`--gin.NAME=VALUE` flags, each value written as a Python literal (paths as strings)."""
  return [
      f"--gin.{k}={(os.fspath(v) if isinstance(v, os.PathLike) else v)!r}"
      for k, v in bindings.items()
  ]


def make_env(
    task_dir: pathlib.Path, vocab: pathlib.Path, extra: Optional[Mapping[str, str]] = None
) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(task_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
  )
  env["PROMPT_TUNING_VOCAB"] = str(vocab)
  env.setdefault("JAX_PLATFORMS", "cpu")  # Tiny model: CPU keeps the runs cheap and exact.
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env.pop(PAUSE_AT_STEP_ENV, None)
  env.pop(PAUSE_MARKER_ENV, None)
  env.update(extra or {})
  return env


class Cli:
  """One `python -m prompt_tuning.<entry>` process, its output captured in files."""

  def __init__(
      self,
      entry: str,
      args: Sequence[str],
      env: Mapping[str, str],
      log_dir: pathlib.Path,
      name: str,
      cwd: Optional[pathlib.Path] = None,
  ):
    log_dir.mkdir(parents=True, exist_ok=True)
    self.stdout_path = log_dir / f"{name}.stdout"
    self.stderr_path = log_dir / f"{name}.stderr"
    self.command = [sys.executable, "-m", f"prompt_tuning.{entry}", *args]
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      self.proc = subprocess.Popen(
          self.command, stdout=out, stderr=err, env=dict(env), cwd=str(cwd or log_dir)
      )
    self.pid = self.proc.pid

  @property
  def stdout(self) -> str:
    return self.stdout_path.read_text()

  @property
  def stderr(self) -> str:
    return self.stderr_path.read_text()

  def wait(self, timeout: float = 600) -> int:
    try:
      return self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      raise AssertionError(f"Timed out after {timeout}s: {self.describe()}") from None

  def describe(self, tail: int = 4000) -> str:
    return (
        f"{' '.join(self.command)}\n--- exit {self.proc.returncode}; stderr tail:\n"
        f"{self.stderr[-tail:]}"
    )

  def check(self, timeout: float = 600) -> "Cli":
    """Waits; fails the test with the stderr tail unless the process exited 0."""
    rc = self.wait(timeout)
    assert rc == 0, self.describe()
    return self


def wait_for(
    predicate, timeout: float, what: str, proc: Optional[Cli] = None, interval: float = 0.05
) -> None:
  """Polls `predicate` until true; fails early if `proc` exits first."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc is not None and proc.proc.poll() is not None:
      raise AssertionError(f"Process exited before {what}: {proc.describe()}")
    if time.monotonic() > deadline:
      raise AssertionError(f"Timed out after {timeout}s waiting for {what}.")
    time.sleep(interval)


def dir_size(path: os.PathLike) -> int:
  return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())
