"""Shared test set-up: where the ../shared fixtures live, strict numerics, one compilation cache."""

import os
import pathlib
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = "PROMPT_TUNING_TEST_OWN_CACHE"  # Set where this session made the folder.


def pytest_configure(config):
  """One JAX compilation cache for the session: the pytest process, its xdist workers (which
  inherit the environment) and every command a test starts. Many tests compile the same programs
  (the tiny model's train step, score and decode at the same shapes, in-process and in CLI
  runs); from the second time on they are read back, not compiled (about an eighth of the suite's
  time on 2 cores). A hit is the executable XLA built from the same program and options, so
  nothing a test checks changes; compilation events still fire (`count_compilations`). The folder
  is new for each session and removed at its end; a JAX_COMPILATION_CACHE_DIR of your own is used
  (and kept) instead."""
  del config
  if _CACHE_ENV not in os.environ:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="prompt_tuning_tests_jax_cache_")
    os.environ[_OWN_CACHE] = str(os.getpid())
  # JAX's default skips programs that compile in under a second: most of the tiny model's.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
  jax.config.update(
      "jax_persistent_cache_min_compile_time_secs",
      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
  )


def pytest_unconfigure(config):
  del config
  if os.environ.get(_OWN_CACHE) == str(os.getpid()):  # The process that made it (not a worker).
    shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)


_REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("PROMPT_TUNING_SHARED", _REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
GOLDEN = SHARED / "golden" / "original"
TINY_CHECKPOINT = FIXTURES / "t5x_checkpoints" / "t5_1_1_tiny" / "checkpoint_3"
T5_VOCAB = FIXTURES / "t5_vocab" / "spiece.model"


def require(path: pathlib.Path):
  """Skips (or, under CI, fails) when a ../shared artefact is missing."""
  if path.exists():
    return path
  msg = (
      f"{path} not found: set PROMPT_TUNING_SHARED to the folder holding fixtures/ and "
      "golden/ (the project's ../shared) to run this test."
  )
  if os.environ.get("CI"):
    pytest.fail(msg)
  pytest.skip(msg)


def golden(name: str):
  """Arrays of one golden file from the original implementation (`no_prompt_fp32`, ...)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  return dict(np.load(require(GOLDEN / f"{name}.npz")))


def golden_batch():
  """The exact inputs the goldens were computed on (README section 4)."""
  import json  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  spec = json.loads(require(GOLDEN / "inputs.json").read_text())
  batch = {
      k: np.asarray(spec[k])
      for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
  }
  batch["decoder_loss_weights"] = np.asarray(spec["decoder_loss_weights"], np.float32)
  return batch


def count_compilations(fn):
  """fn's result and how many times it made JAX trace, lower and compile a program:
  {"trace": n, "lower": n, "compile": n}."""
  names = {
      "/jax/core/compile/jaxpr_trace_duration": "trace",
      "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
      "/jax/core/compile/backend_compile_duration": "compile",
  }
  counts = dict.fromkeys(names.values(), 0)

  def listener(event, duration, **kw):
    if event in names:
      counts[names[event]] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return result, counts
