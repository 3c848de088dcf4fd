"""The synthetic SuperGLUE-like tasks of the embedded default (see `prompt_tuning.synthetic`).

Importing this module writes the tasks' JSONL files, once, and registers every SuperGLUE task
over them with the prefix `synthetic_`: `synthetic_super_glue_boolq_v102`,
`synthetic_taskless_super_glue_boolq_v102`, ... (BoolQ, RTE and CB have data). The files go to
`$PROMPT_TUNING_SYNTHETIC_DIR`, or `~/.cache/prompt_tuning/synthetic`; they are rebuilt from the
seed whenever missing, so deleting them is always safe.

Use it as a task module: `--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.tasks.synthetic'`.
"""
import os
import shutil
import tempfile

from prompt_tuning import synthetic

DATA_DIR_ENV_VAR = "PROMPT_TUNING_SYNTHETIC_DIR"
SEED = 0
PREFIX = "synthetic_"


def data_dir() -> str:
  root = os.environ.get(DATA_DIR_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "prompt_tuning", "synthetic")
  # The version names the generator: change it whenever synthetic.py's output changes.
  return os.path.join(root, f"{synthetic.VERSION}_seed{SEED}")


def ensure_data(path: str) -> str:
  """Writes the files under `path` unless complete; atomic, so concurrent runs are safe."""
  if os.path.exists(os.path.join(path, "COMPLETE")):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(path))
  synthetic.write_super_glue(tmp, SEED)
  open(os.path.join(tmp, "COMPLETE"), "w").close()
  try:
    os.rename(tmp, path)
  except OSError:  # Another process got there first.
    shutil.rmtree(tmp, ignore_errors=True)
  return path


DATA_DIR = ensure_data(data_dir())
REGISTERED = synthetic.register_tasks(DATA_DIR, PREFIX)
