"""TensorFlow runs only the data pipeline (through SeqIO): keep it quiet and off the accelerators.

`install()` (called by `prompt_tuning/__init__.py`) acts when `tensorflow` is first imported, by
this package or by SeqIO:
- Unless the user set `TF_CPP_MIN_LOG_LEVEL`, it is set to 3 and the import runs with stderr
  closed: TF prints its CUDA probing ("Could not find cuda drivers", "failed call to cuInit") and
  oneDNN notices while loading, before it reads any log level. Set `TF_CPP_MIN_LOG_LEVEL=0` to
  see them.
- TF sees no GPU, so it neither probes one nor reserves its memory: JAX owns the accelerator.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def _stderr_closed() -> Iterator[None]:
  """Sends file descriptor 2 (where C++ code writes) to /dev/null for the block."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(devnull)
    os.close(saved)


def hide_gpus(tf) -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF already started its devices (user code imported it earlier).
    logging.warning("TensorFlow may use the GPU alongside JAX: could not hide it (%s).", e)


class _QuietLoader(importlib.abc.Loader):
  """Runs `tensorflow`'s own loader, quietly, then hides the GPUs from it."""

  def __init__(self, loader: importlib.abc.Loader, quiet: bool):
    self._loader = loader
    self._quiet = quiet

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    module.__loader__ = module.__spec__.loader = self._loader  # TF may ask its loader for files.
    with _stderr_closed() if self._quiet else contextlib.nullcontext():
      self._loader.exec_module(module)
      hide_gpus(module)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
  """Wraps the loader of the first `import tensorflow`, then steps aside."""

  def __init__(self, quiet: bool):
    self._quiet = quiet

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader, self._quiet)
    return spec


def install() -> None:
  quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ  # Never override the user's choice.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if "tensorflow" in sys.modules:
    hide_gpus(sys.modules["tensorflow"])
  elif not any(isinstance(f, _TensorFlowFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _TensorFlowFinder(quiet))
