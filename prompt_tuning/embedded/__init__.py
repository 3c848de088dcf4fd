"""The embedded default: the synthetic world, its pretraining recipe and the committed model.

Everything the embedded default needs beyond the library lives in this package, and the library
core never imports it (tests/test_imports.py checks):
  world.py       the synthetic world: pretraining corpus and SuperGLUE-like tasks from one seed
  objectives.py  T5's pretraining objectives (span corruption, prefix LM) in numpy
  pretrain.py    the pretraining recipe (`python -m prompt_tuning.embedded.pretrain`)
  assets/        what the recipe built: a small T5 1.1 pretrained on the world with span
                 corruption, then LM adaptation, saved as T5X checkpoints beside its
                 SentencePiece vocabulary, `config.json` and `pretrain.log`
This module says where those files are and how to read them. The gin files
`models/sizes/embedded.gin` and `runs/embedded_default.gin` point at them through
`@embedded.checkpoint_path()` and `@embedded.vocab_path()`, so no path is written by hand.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import checkpoints
from prompt_tuning.models import t5

ASSETS_DIR = os.path.join(os.path.dirname(__file__), "assets")
STAGES = ("span_corruption", "lm_adapted")


def _rebuild_hint(directory: str) -> str:
  return (
      "build the embedded default with `python -m prompt_tuning.embedded.pretrain "
      f"--gin_file=runs/pretrain_embedded.gin --gin.OUT_DIR=\"'{directory}'\"`."
  )


def vocab_path(directory: str = ASSETS_DIR) -> str:
  path = os.path.join(directory, "spiece.model")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No SentencePiece model at {path}; {_rebuild_hint(directory)}")
  return path


def checkpoint_path(stage: str = "lm_adapted", directory: str = ASSETS_DIR) -> str:
  """`<directory>/<stage>/checkpoint_<step>`, the latest one."""
  if stage not in STAGES:
    raise ValueError(f"Unknown pretraining stage {stage!r}; choose one of {STAGES}.")
  path = checkpoints.latest_checkpoint(os.path.join(directory, stage))
  if path is None:
    raise FileNotFoundError(
        f"No checkpoint under {os.path.join(directory, stage)}; " f"{_rebuild_hint(directory)}"
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
