"""glibc malloc settings for runs on XLA:CPU: keep freed pages mapped from one step to the next.

XLA:CPU allocates every execution's temporary buffer afresh: 616 MB for a prompt-tuning step of
T5 1.1 small at batch 8 and 228 encoder positions, 89 MB for the embedded default's step. glibc
serves blocks over 32 MB (the most `M_MMAP_THRESHOLD` allows) with `mmap` and returns them with
`munmap`, and XLA's worker threads each have an arena that is shrunk when blocks are freed, so
every step page-faults its buffers in again (1.7 M minor faults in a 9-step run of
`benchmarks/train_step.py --mode=prompt`; a third of the embedded default's CPU time is spent in
the kernel).

`configure()` puts every thread on the one main arena, serves large blocks from it instead of
`mmap` and never trims it, so a step reuses the pages of the step before. Measured on a 2-core VM
(benchmarks/README.md): minor faults 0.3-0.5 M in that run, the prompt step 10-20% faster, the
README's main job 87 s instead of 100 s. The price is memory: freed blocks stay with the process,
and when the freed temporary buffer has not merged into the heap's top, glibc (before 2.38) cannot
reuse it for the next step's aligned request of the same size and places a second buffer beside it
(the prompt benchmark's peak is 1.3-1.4 GB in most runs, 1.84-1.95 GB in some; model tuning's 2.9
GB instead of 2.1 GB; benchmarks/README.md traces it).

The command-line entry points and benchmarks call it before JAX starts its threads (a thread
picks its arena at its first allocation). It applies only on Linux with glibc and for runs on the
CPU (`JAX_PLATFORMS=cpu`, or no accelerator plugin installed), and it exports the same settings as
glibc's environment variables, so processes started from this one (an ablation sweep's runs) get
them from their first allocation. It leaves malloc alone, and logs why, when the environment
already tunes it (`MALLOC_*`, `GLIBC_TUNABLES`, a preloaded allocator) or when
`PROMPT_TUNING_HOST_MALLOC=system`; `PROMPT_TUNING_HOST_MALLOC=reuse` applies it on any platform.
"""

import ctypes
import importlib.util
import logging
import os
import pkgutil
import platform
import sys
from typing import Optional

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
# The same, as glibc reads them from the environment at a process's start.
_ENV_NAMES = {
    M_ARENA_MAX: "MALLOC_ARENA_MAX",
    M_MMAP_MAX: "MALLOC_MMAP_MAX_",
    M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
}
ENV = {_ENV_NAMES[param]: str(value) for param, value in SETTINGS.items()}

# Unset or "auto": apply where it helps (below); "reuse": apply, or fail saying why it cannot;
# "system": leave glibc's defaults.
ENV_SWITCH = "PROMPT_TUNING_HOST_MALLOC"
CHOICES = ("auto", "reuse", "system")

_applied: Optional[bool] = None


def accelerator_plugin_installed() -> bool:
  """Whether JAX may find a GPU or TPU: a `jax_plugins` package or libtpu is installed."""
  if importlib.util.find_spec("libtpu") is not None:
    return True
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def reason_to_skip(environ=os.environ) -> Optional[str]:
  """Why `configure` leaves malloc alone in this environment, or None when it applies."""
  choice = environ.get(ENV_SWITCH) or "auto"
  if choice not in CHOICES:
    raise ValueError(f"{ENV_SWITCH}={choice!r}: expected one of {CHOICES}.")
  if choice == "system":
    return f"{ENV_SWITCH}=system"
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    if choice == "reuse":
      raise OSError(f"{ENV_SWITCH}=reuse needs Linux with glibc; this is {sys.platform}.")
    return "not Linux with glibc"
  if choice == "reuse":
    return None
  tuned = [k for k in environ if k.startswith("MALLOC_")]
  if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
    tuned.append("GLIBC_TUNABLES")
  if "malloc" in environ.get("LD_PRELOAD", ""):
    tuned.append("LD_PRELOAD")
  if tuned:
    return f"the environment sets it ({', '.join(sorted(tuned))})"
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    if platforms.split(",")[0].strip() != "cpu":
      return f"JAX_PLATFORMS={platforms}"
  elif accelerator_plugin_installed():
    return "an accelerator plugin is installed (JAX_PLATFORMS=cpu applies it on the CPU)"
  return None


def configure() -> bool:
  """Applies `SETTINGS` once per process, before JAX's threads start. Returns whether it did."""
  global _applied
  if _applied is not None:
    return _applied
  reason = reason_to_skip()
  _applied = False
  if reason is not None:
    logging.info("Host malloc left as it is: %s.", reason)
    return False
  if "jax" in sys.modules and _backend_started():
    # Too late: XLA's threads already have arenas of their own.
    message = "Host malloc not configured: JAX's backend started before the call."
    if os.environ.get(ENV_SWITCH) == "reuse":
      raise RuntimeError(f"{ENV_SWITCH}=reuse: {message}")
    logging.warning(message)
    return False
  libc = ctypes.CDLL(None)
  for param, value in SETTINGS.items():
    if libc.mallopt(param, value) != 1:
      raise OSError(f"mallopt({param}, {value}) failed.")
  os.environ.update(ENV)
  _applied = True
  logging.info(
      "Host malloc: one arena, no mmap, no trimming (%s=system keeps glibc's defaults).",
      ENV_SWITCH,
  )
  return True


def release_freed() -> None:
  """Hands the heap pages that are free back to the OS (glibc's `malloc_trim`); a no-op where
  the C library has none.

  `Trainer.compile_ahead` calls it once the train step is compiled: the compiler frees ~135 MB at
  T5 1.1 small, which glibc's defaults would keep resident under every step (benchmarks/README.md).
  """
  if not sys.platform.startswith("linux"):
    return
  trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
  if trim is not None:
    trim(0)


def _backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  return xla_bridge.backends_are_initialized()
