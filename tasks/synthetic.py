"""The synthetic SuperGLUE-like tasks of the embedded default (`prompt_tuning.embedded.world`).

Importing this module registers every SuperGLUE task with the prefix `synthetic_`:
`synthetic_super_glue_boolq_v102`, `synthetic_taskless_super_glue_boolq_v102`, ... (BoolQ, RTE
and CB have data). It writes nothing: the tasks' JSONL files are generated from the seed when a
task's data is first read, into `$PROMPT_TUNING_SYNTHETIC_DIR`, or
`~/.cache/prompt_tuning/synthetic`, as set at that moment. They are rebuilt whenever missing, so
deleting them is always safe.

Use it as a task module: `--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.tasks.synthetic'`.

This is the one module outside `prompt_tuning.embedded` that uses the embedded default's world,
and only inside functions (tests/test_imports.py checks): importing the task modules never
imports the embedded default.
"""

import os
import shutil
import tempfile

from prompt_tuning.tasks import super_glue

DATA_DIR_ENV_VAR = "PROMPT_TUNING_SYNTHETIC_DIR"
SEED = 0
PREFIX = "synthetic_"


def data_dir() -> str:
  """The cache folder of this world's files, from the environment as it is now."""
  from prompt_tuning.embedded import world  # pylint: disable=g-import-not-at-top

  root = os.environ.get(DATA_DIR_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "prompt_tuning", "synthetic"
  )
  # The version names the generator: world.py changes it whenever its output changes.
  return os.path.join(root, f"{world.VERSION}_seed{SEED}")


def ensure_data(path: str) -> str:
  """Writes the files under `path` unless complete; atomic, so concurrent runs are safe."""
  if os.path.exists(os.path.join(path, "COMPLETE")):
    return path
  from prompt_tuning.embedded import world  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(path))
  world.write_super_glue(tmp, SEED)
  open(os.path.join(tmp, "COMPLETE"), "w").close()
  try:
    os.rename(tmp, path)
  except OSError:  # Another process got there first.
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def generated_data_dir() -> str:
  """The folder the tasks read, its files written first if they are not there yet."""
  return ensure_data(data_dir())


REGISTERED = super_glue.register_super_glue("jsonl", generated_data_dir, prefix=PREFIX)
