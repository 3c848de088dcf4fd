"""Gin command lines the T5X way: `--gin_file` (repeatable), `--gin.NAME=VALUE`,
`--gin_search_paths`, plus `--tfds_data_dir` and multi-host flags.

The project's `configs/` folder (installed as `prompt_tuning/configs`) is always on the search
path, so `--gin_file=runs/prompt_finetune.gin` and
`--gin_file=prompt_tuning/configs/runs/prompt_finetune.gin` both work.
"""

import argparse
import copy
import importlib

# gin's package-path reader calls `importlib.util.find_spec` without importing `importlib.util`.
import importlib.util  # pylint: disable=unused-import
import logging
import os
import pathlib
import re
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

import gin

from prompt_tuning import compat
from prompt_tuning import host_memory

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent / "configs"
if not CONFIGS_DIR.is_dir():  # Editable install or source checkout: configs/ is at the top.
  CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
  """A configuration problem found before any compute."""


def parse_args(argv: Sequence[str], description: str) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument(
      "--gin_file",
      action="append",
      default=[],
      help="Gin file; repeatable, later files override earlier ones.",
  )
  parser.add_argument(
      "--gin_search_paths",
      default="",
      help="Comma-separated folders where gin files and includes are looked up.",
  )
  parser.add_argument(
      "--gin_bindings",
      action="append",
      default=[],
      help="A gin binding; `--gin.NAME=VALUE` is the short form.",
  )
  parser.add_argument("--tfds_data_dir", default=None, help="TFDS data directory.")
  parser.add_argument(
      "--coordinator_address",
      default=None,
      help="Multi-host: address of process 0 (host:port) for jax.distributed.",
  )
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  gin_args, rest = [], []
  for arg in argv:  # `--gin.NAME=VALUE` becomes the binding `NAME = VALUE`.
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin.") :].split("=", 1)
      gin_args.append(f"{name} = {value}")
    else:
      rest.append(arg)
  args = parser.parse_args(rest)
  args.gin_bindings = list(args.gin_bindings) + gin_args
  return args


def setup_logging():
  """INFO logs for the run, without gin's noise about each search path it tried."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  for handler in logging.getLogger().handlers:
    handler.addFilter(lambda r: f"{os.sep}gin{os.sep}" not in r.pathname)
  logging.getLogger("absl").setLevel(logging.WARNING)
  # JAX reports at INFO each accelerator backend it could not find (e.g. "Failed to open libtpu").
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def search_paths(extra: str = "") -> list[str]:
  paths = (
      [str(CONFIGS_DIR)]
      + [p for p in extra.split(",") if p]
      + [os.getcwd(), str(CONFIGS_DIR.parent.parent)]
  )
  return list(dict.fromkeys(paths))


_PACKAGE_PREFIX = "prompt_tuning/configs/"


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
  """The file a `--gin_file` names, looked up as gin would: as given, then in each search path.

  `prompt_tuning/configs/X` also means `CONFIGS_DIR/X`: in a source checkout or an editable
  install, `configs/` is not inside the `prompt_tuning` folder.
  """
  candidates = [name] + [os.path.join(p, name) for p in paths]
  if name.startswith(_PACKAGE_PREFIX):
    candidates.append(str(CONFIGS_DIR / name[len(_PACKAGE_PREFIX) :]))
  for c in candidates:
    if os.path.isfile(c):
      return os.path.abspath(c)
  raise ConfigError(
      f"Gin file {name!r} not found in {paths}. Available run configs: "
      f"{sorted(x.name for x in (CONFIGS_DIR / 'runs').glob('*.gin'))}."
  )


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], extra_search_paths: str = ""):
  """Parses files then bindings; an unknown file fails with the places that were searched."""
  paths = search_paths(extra_search_paths)
  for p in paths:
    gin.add_config_file_search_path(p)
  gin_files = _with_prompt_file(gin_files, bindings)
  # Absolute paths, so gin opens exactly the file found here; includes inside the files still
  # use gin's search (the paths above).
  files = [resolve_gin_file(f, paths) for f in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
  except ValueError as e:
    hint = compat.hint(str(e))
    if hint is None:
      raise
    raise ConfigError(f"{e}\n{hint}") from None
  try:
    compat.forward()
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _with_prompt_file(gin_files: Sequence[str], bindings: Sequence[str]) -> list[str]:
  """The files, plus prompts/from_file.gin for eval or infer given a PROMPT_FILE.

  The original's runs/prompt_eval.gin and prompt_infer.gin include prompts/from_file.gin, so its
  users pass only --gin.PROMPT_FILE; here those run files also evaluate trained checkpoints
  without one, so the prompt file's config is added only when PROMPT_FILE is set.
  """
  names = [os.path.basename(f) for f in gin_files]
  sets_prompt_file = any(re.match(r"\s*PROMPT_FILE\s*=", b) for b in bindings)
  inference_run = any(
      n in ("prompt_eval.gin", "prompt_infer.gin", "prompt_transfer.gin") for n in names
  )
  if sets_prompt_file and inference_run and "from_file.gin" not in names:
    logging.info("PROMPT_FILE is set: reading the prompt with prompts/from_file.gin.")
    return list(gin_files) + ["prompts/from_file.gin"]
  return list(gin_files)


def require_macros(names: Sequence[str], run_file: str) -> None:
  """Fails before any compute if a required macro is unset."""
  missing = []
  for name in names:
    try:
      value = gin.query_parameter(f"%{name}")
    except ValueError:
      missing.append(name)
      continue
    if value is gin.REQUIRED or repr(value) == "%gin.REQUIRED":
      missing.append(name)
  if missing:
    raise ConfigError(
        f"{run_file} needs these macros, which are not set: {missing}. Set each with "
        f"--gin.NAME=VALUE, e.g. --gin.{missing[0]}=..."
    )


def check_task_feature_lengths(lengths) -> None:
  """Fails before any compute (and before gin builds the trainer) on malformed lengths."""
  from prompt_tuning.data import pipeline  # pylint: disable=g-import-not-at-top

  try:
    pipeline.check_feature_lengths(lengths)
  except ValueError as e:
    raise ConfigError(
        f"{e} Set it with e.g. " "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 8}\"."
    ) from None


def macro(name: str, default=None, evaluate: bool = False):
  """A macro's value; an `@fn()` reference is called if `evaluate`, else gives `default`."""
  try:
    value = gin.query_parameter(f"%{name}")
  except ValueError:
    return default
  if isinstance(value, gin.config.ConfigurableReference):
    # gin calls an evaluated reference when deep-copying it (its documented way to resolve).
    return copy.deepcopy(value) if evaluate and value.evaluate else default
  return value


# Macros that choose an optional gin file: set without it, nothing reads them.
_MACRO_FILES = {
    "PROMPT_FILE": "prompts/from_file.gin",
    "CLASS_LABELS": "prompts/class_labels.gin",
    "PROMPT_TEXT": "prompts/from_string.gin",
    "EMBEDDING_FILE": "prompts/from_sampled_vocab_numpy.gin or prompts/from_class_labels_numpy.gin",
    "TEMPERATURE": "models/decoding/temperature_sample.gin",
    "TOPK": "models/decoding/temperature_sample.gin",
    "TOPP": "models/decoding/temperature_sample.gin",
}
# Macros the code reads itself (with `macro()`), not through a binding: the vocabulary and the
# local data folders of the transfer tasks (tasks/qa.py, tasks/glue_transfer.py).
_READ_BY_CODE = ("VOCAB_PATH", "SQUAD_DATA_DIR", "MRQA_DATA_DIR", "GLUE_DATA_DIR")


def _macro_refs(value) -> Iterator[str]:
  """Names of the macros a binding's value refers to (`%NAME`), however deeply nested."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro":
      yield value.scoped_selector.split("/")[0]
  elif isinstance(value, dict):
    for v in value.values():
      yield from _macro_refs(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _macro_refs(v)


def check_macros_are_read() -> None:
  """Fails on a macro that no binding reads: a setting that would be silently ignored.

  A macro counts as read when a configurable's binding refers to it, directly or through other
  macros (`A = %B`), or when the code reads it itself (`VOCAB_PATH`).
  """
  config = gin.config._CONFIG  # pylint: disable=protected-access
  defined, edges, read = set(), {}, set(_READ_BY_CODE)
  for (scope, selector), params in config.items():
    refs = {r for v in params.values() for r in _macro_refs(v)}
    if selector == "gin.macro":
      defined.add(scope)
      edges[scope] = refs
    else:
      read |= refs
  todo = list(read)
  while todo:
    for name in edges.get(todo.pop(), ()):
      if name not in read:
        read.add(name)
        todo.append(name)
  unread = sorted(defined - read)
  if unread:
    hints = [
        f"{m} is read by {_MACRO_FILES[m]} (add --gin_file={_MACRO_FILES[m]})"
        for m in unread
        if m in _MACRO_FILES
    ]
    raise ConfigError(
        f"These macros are set but nothing in the configuration reads them, so they would be "
        f"ignored: {unread}. {'; '.join(hints) + '. ' if hints else ''}Remove them, include the "
        "gin file that uses them, or check their spelling."
    )


def init_distributed(args: argparse.Namespace) -> None:
  """Multi-controller SPMD: every host runs the same program (jax.distributed)."""
  if args.coordinator_address:
    import jax  # pylint: disable=g-import-not-at-top

    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)


def setup(
    argv: Sequence[str], description: str, required: Sequence[str] = ()
) -> argparse.Namespace:
  """Parses flags and gin files, then checks the configuration before any compute."""
  args = parse_args(argv, description)
  if not args.gin_file:
    raise ConfigError(
        f"Give at least one --gin_file (e.g. runs/prompt_finetune.gin); configs are "
        f"in {CONFIGS_DIR}."
    )
  if args.tfds_data_dir:
    import seqio  # pylint: disable=g-import-not-at-top

    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
  # Name the run config (runs/*.gin) in messages, not the model file that usually comes first.
  run_file = next((f for f in reversed(args.gin_file) if "runs/" in f), args.gin_file[-1])
  require_macros(required, run_file)
  check_macros_are_read()
  lengths = macro("TASK_FEATURE_LENGTHS") if "TASK_FEATURE_LENGTHS" in required else None
  if lengths is not None:  # None: not required, or a reference that gin resolves later.
    check_task_feature_lengths(lengths)
  init_distributed(args)
  return args


def entry_point(
    module_name: str, required: Sequence[str] = (), description: str = "", fn_name: str = "run"
) -> Callable[[Optional[Sequence[str]]], Any]:
  """The `main(argv=None)` of a command: parse the command line, call gin's `module.fn_name`.

  The function is looked up in the importable module, where gin registered it (under
  `python -m`, the command's own file runs as `__main__`).
  """

  def main(argv: Optional[Sequence[str]] = None):
    setup_logging()
    host_memory.configure()  # Before JAX starts its threads.
    setup(sys.argv[1:] if argv is None else argv, description, required)
    module = importlib.import_module(module_name)
    return gin.get_configurable(getattr(module, fn_name))()

  return main
