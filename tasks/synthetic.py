"""The synthetic SuperGLUE-like tasks of the embedded default (`prompt_tuning.embedded.world`).

Importing this module registers every SuperGLUE task with the prefix `synthetic_`:
`synthetic_super_glue_boolq_v102`, `synthetic_taskless_super_glue_boolq_v102`, ... (BoolQ, RTE
and CB have data). It writes nothing: the tasks' JSONL files are generated from the seed when a
task's data is first read, into `$PROMPT_TUNING_SYNTHETIC_DIR`, or
`~/.cache/prompt_tuning/synthetic`, as set at that moment. They are rebuilt whenever missing, so
deleting them is always safe.

Use it as a task module: `--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.tasks.synthetic'`.

BoolQ-like is formatted as T5 formats BoolQ. RTE- and CB-like are not (`CLAIM_TASKS`): their
inputs ask the hypothesis as the corpus asks claims, `premise: <premise> question: does it follow
that <hypothesis>?`, and their targets are the words the corpus answers such questions with,
`Yes` / `No` (CB's neutral: `Nobody`, as in "Nobody knows, so that is neutral.") instead of
`entailment` / `not_entailment` / `contradiction` / `neutral`. In T5's format
(`rte hypothesis: ... premise: ...` -> `not_entailment`) prompt tuning the embedded model stays
at chance: its frozen decoder never starts an answer with a label name, and a prompt cannot
teach it to (docs/embedded_default.md, "RTE- and CB-like tasks"). The JSONL files keep the
official schemas and label names; the real SuperGLUE tasks keep T5's formats.

This is the one module outside `prompt_tuning.embedded` that uses the embedded default's world,
and only inside functions (tests/test_imports.py checks): importing the task modules never
imports the embedded default.
"""

import dataclasses
import functools
import os
import shutil
import tempfile
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import super_glue_format
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


# Target words of each task, in the order of the official label names
# (super_glue_format.SUPER_GLUE_LABELS): also the class labels to initialise a prompt with.
CLASS_LABELS = {
    "boolq": ("False", "True"),
    "rte": ("Yes", "No"),  # entailment, not_entailment
    "cb": ("Yes", "No", "Nobody"),  # entailment, contradiction, neutral
}
CLAIM_TASKS = ("rte", "cb")


@seqio.map_over_dataset
def claim_question(
    x: Mapping[str, tf.Tensor], task_name: Optional[str], label_words: Sequence[str]
) -> dict[str, tf.Tensor]:
  """`[<task_name>] premise: <premise> question: does it follow that <hypothesis>?` -> the
  label's word. The hypothesis is one sentence; its final period gives way to the "?"."""
  claim = tf.strings.regex_replace(x["hypothesis"], r"\.$", "")
  parts = [task_name] if task_name else []
  parts += [
      "premise:",
      x["premise"],
      "question:",
      tf.strings.join(["does it follow that ", claim, "?"]),
  ]
  return {
      "inputs": preprocessors.join_words(parts),
      "targets": preprocessors.label_text(x["label"], label_words),
      "idx": x["idx"],
  }


def _synthetic_task(t: super_glue.SuperGlueTask) -> super_glue.SuperGlueTask:
  if t.name not in CLAIM_TASKS:
    return t
  words = CLASS_LABELS[t.name]
  if len(words) != len(super_glue_format.SUPER_GLUE_LABELS[t.config]):
    raise ValueError(f"CLASS_LABELS[{t.name!r}] needs one word per label of {t.config}.")
  return dataclasses.replace(
      t,
      text_preprocessor=functools.partial(claim_question, label_words=words),
      postprocess_fn=functools.partial(postprocessors.string_label_to_class_id, label_names=words),
  )


# SuperGLUE's tasks with RTE and CB in their claim format: register_super_glue(tasks=...).
TASKS = tuple(_synthetic_task(t) for t in super_glue.SUPER_GLUE_TASKS)
REGISTERED = super_glue.register_super_glue("jsonl", generated_data_dir, prefix=PREFIX, tasks=TASKS)
