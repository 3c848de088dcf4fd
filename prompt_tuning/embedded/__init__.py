"""The embedded default: the synthetic world, its pretraining recipe and the committed model.

Everything the embedded default needs beyond the library lives in this package, and the library
core never imports it (tests/test_imports.py checks):
  world.py       the synthetic world: pretraining corpus and SuperGLUE-like tasks from one seed
  objectives.py  T5's pretraining objectives (span corruption, prefix LM) in numpy
  pretrain.py    the pretraining recipe (`python -m prompt_tuning.embedded.pretrain`)
  assets/        what the recipe built: a small T5 1.1 pretrained on the world with span
                 corruption, then LM adaptation, saved as T5X checkpoints beside its
                 SentencePiece vocabulary, `config.json` and `pretrain.log`; and
                 `lm_adapted_intermediate/`, the same LM adaptation after 500, 1,000 and
                 2,000 of its 3,500 steps (the LM-adaptation-length ablation); and
                 `prompts/boolq.npy`, a prompt trained on the BoolQ-like task (the methods
                 comparison's SPoT source, `trained_prompt_path`)
This module says where those files are and how to read them. The gin files
`models/sizes/embedded.gin` and `runs/embedded_default.gin` point at them through
`@embedded.checkpoint_path()` and `@embedded.vocab_path()`, so no path is written by hand.
"""

import json
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import checkpoints
from prompt_tuning.models import t5

ASSETS_DIR = os.path.join(os.path.dirname(__file__), "assets")
STAGES = ("span_corruption", "lm_adapted", "lm_adapted_intermediate")


def _rebuild_hint(directory: str, intermediate: bool = False) -> str:
  if intermediate:  # docs/embedded_default.md, "Intermediate LM-adapted checkpoints".
    return (
        "build them into a copy of spiece.model and span_corruption/ with `python -m "
        "prompt_tuning.embedded.pretrain --gin_file=runs/pretrain_embedded.gin "
        "--gin.OUT_DIR=\"'<copy>'\" --gin.pretrain.pretrain.lm_steps=2000 "
        "--gin.pretrain.pretrain.lm_keep_steps='[500, 1000, 2000]'` and move "
        f"<copy>/lm_adapted_intermediate into {directory}."
    )
  return (
      "build the embedded default with `python -m prompt_tuning.embedded.pretrain "
      f"--gin_file=runs/pretrain_embedded.gin --gin.OUT_DIR=\"'{directory}'\"`."
  )


def vocab_path(directory: str = ASSETS_DIR) -> str:
  path = os.path.join(directory, "spiece.model")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No SentencePiece model at {path}; {_rebuild_hint(directory)}")
  return path


def checkpoint_path(
    stage: str = "lm_adapted", directory: str = ASSETS_DIR, step: Optional[int] = None
) -> str:
  """`<directory>/<stage>/checkpoint_<step>`; the latest one when `step` is None."""
  if stage not in STAGES:
    raise ValueError(f"Unknown pretraining stage {stage!r}; choose one of {STAGES}.")
  folder = os.path.join(directory, stage)
  if step is None:
    path = checkpoints.latest_checkpoint(folder)
  else:
    path = os.path.join(folder, f"checkpoint_{step}")
    path = path if os.path.isdir(path) else None
  if path is None:
    raise FileNotFoundError(
        f"No checkpoint{'' if step is None else f' of step {step}'} under {folder}; "
        f"{_rebuild_hint(directory, stage == 'lm_adapted_intermediate')}"
    )
  return path


# The committed trained prompts and the command that made each (then copy its
# numpy_checkpoints/checkpoint_5600/encoder.prompt.prompt.prompt.npy to assets/prompts/<task>.npy).
TRAINED_PROMPTS = {
    "boolq": "python -m prompt_tuning.train --gin_file=runs/embedded_default.gin "
    "--gin.MODEL_DIR=\"'/tmp/boolq_source'\"",
}


def trained_prompt_path(task: str = "boolq", directory: str = ASSETS_DIR) -> str:
  """`<directory>/prompts/<task>.npy`: a prompt [20, 128] trained on the synthetic `task` (the
  README's main job for BoolQ-like), a source prompt for SPoT that needs no earlier run."""
  if task not in TRAINED_PROMPTS:
    raise ValueError(
        f"No trained prompt for task {task!r} is committed; there is {list(TRAINED_PROMPTS)}."
    )
  path = os.path.join(directory, "prompts", f"{task}.npy")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No trained prompt at {path}; rebuild it with `{TRAINED_PROMPTS[task]}` and copy "
        "/tmp/boolq_source/numpy_checkpoints/checkpoint_5600/encoder.prompt.prompt.prompt.npy "
        f"to {path}."
    )
  return path


def load_config(directory: str = ASSETS_DIR, dtype: str = "float32") -> t5.T5Config:
  """The T5Config saved beside the checkpoints (`config.json`)."""
  with open(os.path.join(directory, "config.json")) as f:
    return t5.T5Config(**json.load(f), dtype=dtype)


def write_random_checkpoint(path: str, cfg: t5.T5Config, step: int = 0, seed: int = 1) -> str:
  """A randomly initialised model of `cfg`'s shape as a T5X checkpoint: the untrained-backbone
  baseline that shows what the pretraining contributes."""
  ones = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(
      t5.EncoderDecoder(cfg).init(jax.random.PRNGKey(seed), ones, ones, ones)["params"]
  )
  return checkpoints.save_t5x_checkpoint(path, jax.device_get(params), step=step, overwrite=True)
