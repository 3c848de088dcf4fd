"""Ablation sweeps (the paper's Figure 3): a grid of training runs, their dev scores, a figure.

  python -m prompt_tuning.ablate --grid=ablations/prompt_length_x_init.gin \
    --sweep_dir=/tmp/ablate/length_x_init

A grid (`configs/ablations/*.gin`, an `ablate.Grid`) names base gin files and bindings, ordered
axes and seeds. An axis is a macro or binding name with a list of values (`PROMPT_LENGTH = 20`),
or a label with a list of named choices, each a dict of `gin_files` to include, `bindings`
(name -> value) and an optional `recipe` (how to build what the choice needs). Every run is what
`python -m prompt_tuning.train` with the run's flags does, in a process of its own (a crash
cannot kill the sweep, and each run's memory is freed), in its own MODEL_DIR
`<sweep_dir>/<axis=value,...,seed=S>`, run one after another. The processes are forked from a
server that has imported TensorFlow, SeqIO, JAX and the trainer once (`PRELOAD`): those imports
take about 10 s, against 20-30 s for a whole short miniature run on 2 quiet CPU cores.

`train_steps` and `step_budget` count prompt-tuning steps from each run's initial checkpoint,
whose step is read before the sweep starts: backbones of different pretraining lengths (the
objective and LM-adaptation ablations) then get the same budget although TRAIN_STEPS is the
global step.

What it leaves in the sweep dir:
  sweep.json         the expanded grid; a restart with another grid is refused
  <run>/             the run's MODEL_DIR, its `train.stdout` / `train.stderr`, and
                     `ablate_run.json` once it ended (status, return code, the error and
                     the last lines of its stderr)
  results.csv/.json  per run: best dev score over evaluations (the paper's early stopping) and
                     the score of the last evaluation at or before `step_budget`; results.json
                     also aggregates each cell over seeds (mean, min, max)
  figure.png/.svg    score vs the grid's `x_axis` (log scale), one line per other-axis value with
                     a min-max band over seeds; bars per value for a categorical grid
  jax_cache/         JAX's compilation cache shared by the runs (see `run_env`)

A killed sweep restarted with the same command skips finished runs and resumes the interrupted
one from its checkpoint; failed runs are retried; `--collect_only` writes the results and figure
of the runs finished so far. The exit status is 1 if any run failed (or, with `--collect_only`,
is not finished).
"""

import argparse
import ast
import csv
import dataclasses
import importlib
import itertools
import json
import multiprocessing
import os
import re
import shlex
import statistics
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import gin

from prompt_tuning import best_checkpoint
from prompt_tuning import checkpoints
from prompt_tuning import config
from prompt_tuning import host_memory

SPEC_FILE = "sweep.json"
RUN_FILE = "ablate_run.json"
EVAL_METRICS = os.path.join("eval", "metrics.jsonl")
TRAIN_METRICS = os.path.join("train", "metrics.jsonl")
PARAMETERS = "parameters.json"  # Written by training.run: trainable and frozen counts.
ERROR_TAIL_LINES = 20
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")
# Set by the sweep itself; a grid or `--gin.` flag setting them would be overwritten.
RESERVED = ("MODEL_DIR", "TRAIN_STEPS")
SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")
# What every run imports before its first step, imported once by the runs' fork server.
PRELOAD = ("tensorflow", "seqio", "jax", "prompt_tuning.training")


@dataclasses.dataclass
class Grid:
  """An ablation grid; see the module docstring. Configured by `configs/ablations/*.gin`."""

  name: str
  base_gin_files: Sequence[str]
  axes: Mapping[str, Sequence[Any]]
  train_steps: int
  base_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  seeds: Sequence[int] = (0,)
  # Each seed is bound to these: the prompt initialiser's and the data order's.
  seed_bindings: Sequence[str] = ("trainer.Trainer.seed", "SHUFFLE_SEED")
  step_budget: Optional[int] = None  # Default: train_steps.
  metric: Optional[str] = None  # `task/metric` or a bare name; None: mean of the eval metrics.
  x_axis: Optional[str] = None  # A numeric axis plotted on a log scale; else bars.


@dataclasses.dataclass(frozen=True)
class Value:
  """One value of an axis: its label (in run names), what it adds to the run's configuration."""

  label: str
  value: Any  # The literal of a plain axis; the choice's name for a choice axis.
  gin_files: tuple[str, ...] = ()
  bindings: tuple[tuple[str, str], ...] = ()  # (name, gin text)
  recipe: Optional[str] = None
  is_choice: bool = False


@dataclasses.dataclass
class Run:
  name: str
  seed: int
  labels: dict[str, str]  # axis -> value label
  values: dict[str, Any]  # axis -> Value.value
  gin_files: list[str]
  bindings: list[tuple[str, str]]  # Without MODEL_DIR and TRAIN_STEPS (set per sweep dir).
  recipes: list[str]
  start_step: Optional[int] = None  # The initial checkpoint's step, read by `resolve_steps`.


# ------------------------------------------------------------------------------ grid expansion


def gin_text(value: Any, where: str) -> str:
  """`value` as a gin literal; only Python literals (no `@references`) survive the round trip."""
  text = repr(value)
  try:
    ok = ast.literal_eval(text) == value
  except (ValueError, SyntaxError):
    ok = False
  if not ok:
    raise config.ConfigError(
        f"{where}: {value!r} is not a literal; put references such as "
        "@fn() into a gin file that the choice includes (`gin_files`)."
    )
  return text


def label_of(value: Any) -> str:
  """A file-name-safe label: `20`, `class_labels`, `inputs_64_targets_4`."""
  text = value if isinstance(value, str) else repr(value)
  return SAFE_CHARS.sub("_", text).strip("_") or "_"


def _choice(axis: str, item: Mapping[str, Any]) -> Value:
  unknown = set(item) - {"name", "gin_files", "bindings", "recipe"}
  if "name" not in item or unknown:
    raise config.ConfigError(
        f"Axis {axis!r}: a choice is a dict with 'name' and optional 'gin_files', 'bindings', "
        f"'recipe'; got keys {sorted(item)}."
    )
  bindings = tuple(
      (k, gin_text(v, f"Axis {axis!r}, choice {item['name']!r}, binding {k}"))
      for k, v in dict(item.get("bindings", {})).items()
  )
  return Value(
      label_of(item["name"]),
      item["name"],
      tuple(item.get("gin_files", ())),
      bindings,
      item.get("recipe"),
      is_choice=True,
  )


def axis_values(axis: str, items: Sequence[Any], plain: bool = False) -> list[Value]:
  """The values of a grid's axis: named choices (dicts) or literals; `plain`: literals only (the
  command line's, where a dict is a value such as TASK_FEATURE_LENGTHS)."""
  if isinstance(items, (str, bytes)) or not items:
    raise config.ConfigError(f"Axis {axis!r} needs a non-empty list of values, got {items!r}.")
  if not plain and all(isinstance(i, Mapping) for i in items):
    values = [_choice(axis, i) for i in items]
  elif not plain and any(isinstance(i, Mapping) for i in items):
    raise config.ConfigError(f"Axis {axis!r} mixes named choices (dicts) and plain values.")
  else:
    values = [
        Value(label_of(i), i, bindings=((axis, gin_text(i, f"Axis {axis!r}")),)) for i in items
    ]
  labels = [v.label for v in values]
  if len(set(labels)) != len(labels):
    raise config.ConfigError(
        f"Axis {axis!r}: values {labels} do not have distinct labels; use " "named choices."
    )
  return values


def split_values(text: str) -> list[str]:
  """Splits `v1,v2,...` at the commas outside brackets and quotes."""
  parts, depth, quote, current = [], 0, None, ""
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(current.strip())
      current = ""
      continue
    current += ch
  parts.append(current.strip())
  return parts


def parse_axis_flag(flag: str, grid_axes: Mapping[str, list[Value]]) -> tuple[str, list[Value]]:
  """`--axis NAME=v1,v2`: choice names of a choice axis, else gin literals."""
  if "=" not in flag:
    raise config.ConfigError(f"--axis {flag!r}: write NAME=v1,v2,...")
  name, text = (s.strip() for s in flag.split("=", 1))
  items = split_values(text)
  existing = grid_axes.get(name)
  if existing and existing[0].is_choice:
    by_label = {v.label: v for v in existing}
    unknown = [i for i in items if i not in by_label]
    if unknown:
      raise config.ConfigError(
          f"--axis {name}: unknown choices {unknown}; the grid's are " f"{list(by_label)}."
      )
    return name, [by_label[i] for i in items]
  values = []
  for item in items:
    try:
      values.append(ast.literal_eval(item))
    except (ValueError, SyntaxError):
      raise config.ConfigError(
          f"--axis {name}: {item!r} is not a literal (quote strings: "
          f"--axis {name}=\"'a','b'\")."
      ) from None
  return name, axis_values(name, values, plain=True)


def expand(
    grid: Grid,
    axes: Mapping[str, list[Value]],
    seeds: Sequence[int],
    user_bindings: Sequence[tuple[str, str]],
) -> list[Run]:
  """Every run: seeds outermost (a partial sweep has every cell once), then the axes in order."""
  runs = []
  # An axis over a name the grid binds in base_bindings replaces that binding.
  owned = {n for vs in axes.values() for v in vs for n, _ in v.bindings}
  base = [
      (k, gin_text(v, f"Grid {grid.name!r}, base binding {k}"))
      for k, v in grid.base_bindings.items()
      if k not in owned
  ]
  for seed in seeds:
    for combo in itertools.product(*axes.values()):
      labels = dict(zip(axes, (v.label for v in combo)))
      name = ",".join([f"{a.lower()}={l}" for a, l in labels.items()] + [f"seed={seed}"])
      files = list(grid.base_gin_files) + [f for v in combo for f in v.gin_files]
      bindings = (
          base
          + [b for v in combo for b in v.bindings]
          + [(s, str(seed)) for s in grid.seed_bindings]
          + list(user_bindings)
      )
      runs.append(
          Run(
              name,
              seed,
              labels,
              dict(zip(axes, (v.value for v in combo))),
              files,
              bindings,
              [v.recipe for v in combo if v.recipe],
          )
      )
  return runs


def check_bindings(
    grid: Grid, axes: Mapping[str, list[Value]], user_bindings: Sequence[tuple[str, str]]
) -> None:
  """The sweep sets MODEL_DIR, TRAIN_STEPS, the axes and seeds: a flag must not fight them.

  A base binding may name an axis's name (the axis replaces it, see `expand`), not the rest.
  """
  owned = {s: "the seed (--seeds)" for s in grid.seed_bindings}
  owned.update({r: "the sweep" for r in RESERVED})
  for name in grid.base_bindings:
    if name in owned:
      raise config.ConfigError(
          f"{name} is set by {owned[name]}; do not bind it in the grid's base_bindings."
      )
  owned.update({n: f"the axis {a!r}" for a, vs in axes.items() for v in vs for n, _ in v.bindings})
  for name in [n for n, _ in user_bindings]:
    if name in owned:
      hint = (
          " (each run's is set from --train_steps, counted from its initial checkpoint)"
          if name == "TRAIN_STEPS"
          else ""
      )
      raise config.ConfigError(
          f"{name} is set by {owned[name]}{hint}; do not bind it with "
          "--gin. or the grid's base_bindings."
      )


# ------------------------------------------------------------------ steps and missing backbones


def resolve_steps(runs: Sequence[Run], search_paths: str) -> None:
  """Reads each run's initial checkpoint step (parsing its gin configuration here, which also
  checks it before any training); fails naming every missing checkpoint and its recipe."""
  cache, missing = {}, {}
  try:
    for run in runs:
      gin.clear_config()
      try:
        config.parse_gin(
            run.gin_files,
            [f"{k} = {v}" for k, v in run.bindings] + ["MODEL_DIR = 'unused'", "TRAIN_STEPS = 0"],
            search_paths,
        )
        config.check_macros_are_read()
        path = config.macro("INITIAL_CHECKPOINT_PATH", evaluate=True)
      except FileNotFoundError as e:  # E.g. @embedded.checkpoint_path() of a missing stage.
        missing.setdefault(str(e), run.recipes)
        continue
      except config.ConfigError as e:
        raise config.ConfigError(f"Run {run.name}: {e}") from None
      except (ValueError, TypeError, KeyError, AttributeError, ImportError, SyntaxError) as e:
        # What gin raises for a bad binding, value or configurable; re-raised naming the run.
        raise config.ConfigError(
            f"Run {run.name}: its gin configuration does not parse: " f"{type(e).__name__}: {e}"
        ) from None
      if path is None:
        run.start_step = 0
        continue
      if path not in cache:
        try:
          cache[path] = checkpoints.read_step(path)
        except (OSError, checkpoints.CheckpointError, ValueError) as e:
          cache[path] = None
          missing.setdefault(
              f"No readable checkpoint at {os.path.abspath(path)} " f"({type(e).__name__}: {e})",
              run.recipes,
          )
      run.start_step = cache[path]
  finally:
    gin.clear_config()
  if missing:
    lines = []
    for problem, recipes in missing.items():
      lines.append(f"  {problem}" + "".join(f"\n    build it with: {r}" for r in recipes))
    raise config.ConfigError(
        "Initial checkpoints of this grid are missing (nothing was "
        "trained):\n" + "\n".join(lines)
    )


# ---------------------------------------------------------------------------- the sweep itself


def train_args(run: Run, model_dir: str, train_steps: int) -> list[str]:
  return (
      [f"--gin_file={f}" for f in run.gin_files]
      + [f"--gin.{k}={v}" for k, v in run.bindings]
      + [f"--gin.MODEL_DIR={model_dir!r}", f"--gin.TRAIN_STEPS={run.start_step + train_steps}"]
  )


def spec_of(
    grid: Grid,
    axes,
    seeds,
    runs: Sequence[Run],
    train_steps: int,
    step_budget: int,
    metric: Optional[str],
) -> dict[str, Any]:
  return {
      "grid": grid.name,
      "axes": {a: [v.label for v in vs] for a, vs in axes.items()},
      "seeds": list(seeds),
      "train_steps": train_steps,
      "step_budget": step_budget,
      "metric": metric,
      "x_axis": grid.x_axis,
      "runs": [
          {
              "name": r.name,
              "seed": r.seed,
              "labels": r.labels,
              "values": r.values,
              "gin_files": r.gin_files,
              "bindings": [list(b) for b in r.bindings],
              "start_step": r.start_step,
          }
          for r in runs
      ],
  }


def claim_sweep_dir(sweep_dir: str, spec: Mapping[str, Any]) -> None:
  """Writes the spec, or checks that the dir holds this very grid."""
  path = os.path.join(sweep_dir, SPEC_FILE)
  canonical = json.loads(json.dumps(spec, default=str))
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored != canonical:
      diffs = [k for k in sorted(set(stored) | set(canonical)) if stored.get(k) != canonical.get(k)]
      raise config.ConfigError(
          f"{sweep_dir} holds another sweep ({path} differs in {diffs}; stored grid "
          f"{stored.get('grid')!r}, axes {stored.get('axes')}). Use another --sweep_dir, or "
          "delete that one to start over."
      )
    return
  os.makedirs(sweep_dir, exist_ok=True)
  _write_json(path, canonical)


def _write_json(path: str, obj: Any) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(path + ".tmp", path)


def read_record(run_dir: str) -> Optional[dict[str, Any]]:
  path = os.path.join(run_dir, RUN_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _progress(msg: str) -> None:
  print(f"[ablate] {msg}", file=sys.stderr, flush=True)


def run_env(sweep_dir: str) -> dict[str, str]:
  """The runs' environment: one JAX compilation cache for the whole sweep.

  Runs of a sweep compile the same programs (the shapes differ only across a prompt-length
  axis), so from the second run on the train step and the decoder are read from
  `<sweep_dir>/jax_cache` instead of compiled (about 5 s of CPU per run of the embedded
  default). A JAX_COMPILATION_CACHE_DIR set by the user is kept.
  """
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(sweep_dir), "jax_cache"))
  return env


def _train_child(args: list[str], out_path: str, err_path: str, env: Mapping[str, str]) -> None:
  """One run's process: `python -m prompt_tuning.train ARGS`, its output appended to the files.

  Forked from the fork server after `PRELOAD`, before any JAX computation: the run starts from
  imported modules and an empty gin configuration, as a fresh interpreter would.
  """
  for fd, path in ((1, out_path), (2, err_path)):
    f = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(f, fd)
    os.close(f)
  os.environ.clear()
  os.environ.update(env)
  import atexit  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train  # pylint: disable=g-import-not-at-top

  # JAX read its environment when the server imported it.
  jax.config.update("jax_compilation_cache_dir", env.get("JAX_COMPILATION_CACHE_DIR"))
  sys.argv = ["prompt_tuning.train", *args]
  try:
    train.main(args)
  finally:
    # multiprocessing ends the child with os._exit, which skips exit handlers (e.g. writers).
    atexit._run_exitfuncs()  # pylint: disable=protected-access


def run_one(
    args: list[str], run_dir: str, env: Optional[Mapping[str, str]] = None
) -> dict[str, Any]:
  """Trains one run in a process forked from the fork server (same process group: killing the
  sweep's group kills it too)."""
  os.makedirs(run_dir, exist_ok=True)
  out_path, err_path = (os.path.join(run_dir, f"train.{s}") for s in ("stdout", "stderr"))
  command = shlex.join([sys.executable, "-m", "prompt_tuning.train", *args])
  t0 = time.time()
  with open(out_path, "a") as out, open(err_path, "a") as err:
    start = err.tell()
    out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(list(PRELOAD))
  process = context.Process(
      target=_train_child, args=(args, out_path, err_path, dict(env or os.environ))
  )
  process.start()
  process.join()
  rc = process.exitcode
  record = {
      "status": "finished" if rc == 0 else "failed",
      "returncode": rc,
      "seconds": round(time.time() - t0, 1),
      "command": command,
  }
  if rc != 0:
    with open(err_path) as f:
      f.seek(start)
      lines = f.read().splitlines()
    record["stderr_tail"] = "\n".join(lines[-ERROR_TAIL_LINES:])
    # The exception's own line (`module.SomeError: message`), else the last line, for the CSV.
    raised = [l for l in lines if EXCEPTION_LINE.match(l)]
    record["error"] = (raised or [l for l in lines if l.strip()] or [f"exit status {rc}"])[-1]
  _write_json(os.path.join(run_dir, RUN_FILE), record)
  return record


def sweep(runs: Sequence[Run], sweep_dir: str, train_steps: int) -> None:
  todo = []
  for run in runs:
    record = read_record(os.path.join(sweep_dir, run.name))
    if record and record["status"] == "finished":
      _progress(f"skipped {run.name}: finished ({RUN_FILE})")
    else:
      todo.append(run)
  done, failed, times = len(runs) - len(todo), 0, []
  _progress(f"{len(runs)} runs: {done} already finished, {len(todo)} to run")
  for i, run in enumerate(todo):
    run_dir = os.path.join(sweep_dir, run.name)
    if os.path.exists(os.path.join(run_dir, RUN_FILE)):
      os.remove(os.path.join(run_dir, RUN_FILE))  # A failed run, tried again.
    resumed = " (resuming)" if checkpoints.latest_checkpoint(run_dir) else ""
    _progress(f"run {done + 1}/{len(runs)}: {run.name}{resumed}")
    args = train_args(run, os.path.abspath(run_dir), train_steps)
    record = run_one(args, run_dir, run_env(sweep_dir))
    times.append(record["seconds"])
    done += 1
    if record["status"] == "failed":
      failed += 1
      _progress(f"FAILED {run.name} (exit {record['returncode']}): {record['error']}")
    left = len(todo) - i - 1
    mean = sum(times) / len(times)
    _progress(
        f"{done}/{len(runs)} done ({failed} failed), {left} left; this run "
        f"{_duration(record['seconds'])}, mean {_duration(mean)}/run; ETA "
        f"{_duration(mean * left)}"
    )


# ---------------------------------------------------------------------------- results


def read_evals(path: str) -> list[tuple[int, dict[str, float]]]:
  """(step, {task/metric: value}) per evaluation; a step evaluated again (a resumed or finished
  run restarted) keeps its last line."""
  by_step = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          row = json.loads(line)
          by_step[int(row.pop("step"))] = row
  return sorted(by_step.items())


def score(metrics: Mapping[str, float], metric: Optional[str]) -> float:
  """The grid's metric (as BEST_METRIC names it), or the mean of every metric."""
  if metric is None:
    return statistics.fmean(metrics.values())
  nested = {}
  for key, value in metrics.items():
    task, name = key.split("/", 1)
    nested.setdefault(task, {})[name] = value
  return best_checkpoint.pick(nested, metric)


def collect_run(
    run_dir: str, start_step: int, step_budget: int, metric: Optional[str]
) -> dict[str, Any]:
  """Best dev score over the evaluations, and the score of the last one within the budget."""
  out = {
      "best_score": None,
      "best_step": None,
      "budget_score": None,
      "budget_step": None,
      "num_evals": 0,
  }
  evals = read_evals(os.path.join(run_dir, EVAL_METRICS))
  if not evals:
    return out
  scores = [(step, score(m, metric)) for step, m in evals]
  best_step, best = max(scores, key=lambda s: (s[1], -s[0]))  # The earliest of equal bests.
  within = [s for s in scores if s[0] <= start_step + step_budget]
  out.update(best_score=best, best_step=best_step - start_step, num_evals=len(scores))
  if within:
    out.update(budget_score=within[-1][1], budget_step=within[-1][0] - start_step)
  return out


def cost(run_dir: str) -> dict[str, Any]:
  """Trainable parameters and the median train step time of a run (what a method costs).

  The first logging period holds the compilation, so it only counts when it is the only one.
  """
  out = {"trainable_params": None, "seconds_per_step": None}
  path = os.path.join(run_dir, PARAMETERS)
  if os.path.exists(path):
    with open(path) as f:
      out["trainable_params"] = json.load(f)["trainable_parameters"]
  rates = [m["steps_per_second"] for _, m in read_evals(os.path.join(run_dir, TRAIN_METRICS))]
  if rates:
    out["seconds_per_step"] = 1.0 / statistics.median(rates[1:] or rates)
  return out


def collect(spec: Mapping[str, Any], sweep_dir: str) -> tuple[list[dict], list[dict]]:
  """Rows per run and per cell (the runs of a cell differ only in the seed)."""
  rows = []
  for run in spec["runs"]:
    run_dir = os.path.join(sweep_dir, run["name"])
    record = read_record(run_dir) or {"status": "not run"}
    row = {
        "run": run["name"],
        **run["labels"],
        "seed": run["seed"],
        "status": record["status"],
        "start_step": run["start_step"],
        "returncode": record.get("returncode"),
        "seconds": record.get("seconds"),
        "error": record.get("error"),
        "stderr_tail": record.get("stderr_tail"),
    }
    row.update(cost(run_dir))
    try:
      row.update(collect_run(run_dir, run["start_step"], spec["step_budget"], spec["metric"]))
    except best_checkpoint.MetricNotFoundError as e:
      row.update(status="failed", error=f"{row['error'] or ''}\n{e}".strip())
    rows.append(row)
  cells = {}
  for run, row in zip(spec["runs"], rows):
    cells.setdefault(tuple(run["labels"].items()), []).append((run, row))
  cell_rows = []
  for key, members in cells.items():
    cell = {
        **dict(key),
        "values": members[0][0]["values"],
        "seeds": len(members),
        "finished": sum(r["status"] == "finished" for _, r in members),
        "trainable_params": members[0][1]["trainable_params"],
    }
    for what in ("best_score", "budget_score", "seconds_per_step"):
      values = [r[what] for _, r in members if r["status"] == "finished" and r[what] is not None]
      cell[what] = (
          {
              "mean": statistics.fmean(values),
              "min": min(values),
              "max": max(values),
              "n": len(values),
          }
          if values
          else None
      )
    cell_rows.append(cell)
  return rows, cell_rows


def write_results(spec, sweep_dir: str, rows: list[dict], cells: list[dict]) -> None:
  columns = (
      ["run"]
      + list(spec["axes"])
      + [
          "seed",
          "status",
          "best_score",
          "best_step",
          "budget_score",
          "budget_step",
          "num_evals",
          "trainable_params",
          "seconds_per_step",
          "start_step",
          "seconds",
          "returncode",
          "error",
      ]
  )
  with open(os.path.join(sweep_dir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  _write_json(
      os.path.join(sweep_dir, "results.json"),
      {
          "grid": spec["grid"],
          "metric": spec["metric"] or "mean of the evaluation's metrics",
          "train_steps": spec["train_steps"],
          "step_budget": spec["step_budget"],
          "runs": rows,
          "cells": cells,
      },
  )


# ---------------------------------------------------------------------------- figure


def require_matplotlib():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise config.ConfigError(
        "Plotting needs matplotlib: pip install -e '.[plots]' (or pass --no_plot)."
    ) from None
  matplotlib.use("Agg")  # No display: files only.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def plot(spec, cells: list[dict], sweep_dir: str) -> list[str]:
  """figure.png and figure.svg: best dev score and score at the step budget, side by side."""
  plt = require_matplotlib()
  axes = list(spec["axes"])
  x_axis = spec["x_axis"]
  numeric = x_axis in axes and all(
      isinstance(c["values"][x_axis], (int, float)) and c["values"][x_axis] > 0 for c in cells
  )
  x_name = x_axis if numeric else axes[0] if axes else "seed"
  others = [a for a in axes if a != x_name]
  fig, panels = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
  titles = {
      "best_score": "best dev score (early stopping)",
      "budget_score": f"dev score at step {spec['step_budget']}",
  }
  for ax, what in zip(panels[0], titles):
    groups = {}
    for cell in cells:
      groups.setdefault(
          ", ".join(f"{a}={cell[a]}" if len(others) > 1 else cell[a] for a in others), []
      ).append(cell)
    x_labels = spec["axes"].get(x_name, ["all"])
    for g, (group, members) in enumerate(groups.items()):
      pts = [
          (c["values"][x_name] if numeric else x_labels.index(c[x_name]) if axes else 0, c[what])
          for c in members
          if c[what]
      ]
      pts.sort(key=lambda p: p[0])
      if not pts:
        continue
      xs = [p[0] for p in pts]
      mean, lo, hi = ([p[1][k] for p in pts] for k in ("mean", "min", "max"))
      if numeric:
        (line,) = ax.plot(xs, mean, marker="o", label=group or None)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
      else:
        width = 0.8 / len(groups)
        pos = [x - 0.4 + width * (g + 0.5) for x in xs]
        ax.bar(
            pos,
            mean,
            width,
            label=group or None,
            yerr=[[m - l for m, l in zip(mean, lo)], [h - m for m, h in zip(mean, hi)]],
            capsize=3,
        )
    if numeric:
      ax.set_xscale("log")
      ticks = sorted({c["values"][x_name] for c in cells})
      ax.set_xticks(ticks, [str(t) for t in ticks])
      ax.minorticks_off()
    else:
      ax.set_xticks(range(len(x_labels)), x_labels, rotation=20, ha="right")
    ax.set_xlabel(x_name)
    ax.set_ylabel(spec["metric"] or "mean of dev metrics")
    ax.set_title(titles[what])
    ax.grid(alpha=0.3)
    if any(groups) and ax.get_legend_handles_labels()[0]:
      ax.legend(title=", ".join(others) if len(others) == 1 else None)
  seeds = len(spec["seeds"])
  fig.suptitle(
      f"{spec['grid']}: mean over {seeds} seed{'s' * (seeds > 1)}"
      + (", band/bars min-max" if seeds > 1 else "")
  )
  fig.tight_layout()
  paths = [os.path.join(sweep_dir, f"figure.{ext}") for ext in ("png", "svg")]
  for path in paths:
    fig.savefig(path, dpi=150)
  plt.close(fig)
  return paths


# ---------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--grid", required=True, help="Grid gin file, e.g. ablations/x.gin.")
  parser.add_argument(
      "--sweep_dir",
      default=None,
      help="Where runs and results go (default /tmp/prompt_tuning_ablate/<grid>).",
  )
  parser.add_argument(
      "--axis",
      action="append",
      default=[],
      help="NAME=v1,v2,...: replaces that axis's values (choice names for a "
      "choice axis) or adds an axis; values are gin literals. Repeatable.",
  )
  parser.add_argument("--seeds", default=None, help="Comma-separated seeds (default: the grid's).")
  parser.add_argument(
      "--base_gin_file",
      action="append",
      default=[],
      help="Replaces the grid's base gin files (repeatable).",
  )
  parser.add_argument(
      "--train_steps",
      type=int,
      default=None,
      help="Prompt-tuning steps per run, from its initial checkpoint's step.",
  )
  parser.add_argument(
      "--step_budget",
      type=int,
      default=None,
      help="Steps at which the fixed-budget score is read (default train steps).",
  )
  parser.add_argument("--metric", default=None, help="Score: task/metric or a bare metric name.")
  parser.add_argument("--gin_search_paths", default="")
  parser.add_argument(
      "--print_commands",
      action="store_true",
      help="Print one train command per run (for a cluster) and exit.",
  )
  parser.add_argument(
      "--dry_run", action="store_true", help="List the runs and their state; train nothing."
  )
  parser.add_argument(
      "--collect_only",
      action="store_true",
      help="Write results and the figure from the runs that finished; train nothing (a sweep "
      "stopped part-way; the other runs count as not run).",
  )
  parser.add_argument("--no_plot", action="store_true", help="Skip figure.png / figure.svg.")
  user, rest = [], []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin.") :].split("=", 1)
      user.append((name.strip(), value))
    else:
      rest.append(arg)
  return parser.parse_args(rest), user


def load_grid(path: str, search_paths: str) -> Grid:
  gin.clear_config()
  try:
    config.parse_gin([path], [], search_paths)
    # Under `python -m`, this file runs as __main__; the gin file registered the module's Grid.
    cls = importlib.import_module("prompt_tuning.ablate").Grid
    try:
      return gin.get_configurable(cls)()
    except TypeError as e:
      raise config.ConfigError(f"{path}: the grid is incomplete ({e}); it binds ablate.Grid.")
  finally:
    gin.clear_config()


def main(argv: Optional[Sequence[str]] = None) -> int:
  config.setup_logging()
  host_memory.configure()  # Exported to the runs' processes through the environment.
  args, user_bindings = parse_args(sys.argv[1:] if argv is None else argv)
  grid = load_grid(args.grid, args.gin_search_paths)
  if args.base_gin_file:
    grid.base_gin_files = list(args.base_gin_file)
  axes = {a: axis_values(a, vs) for a, vs in grid.axes.items()}
  for flag in args.axis:
    name, values = parse_axis_flag(flag, axes)
    axes[name] = values
  if grid.x_axis is not None and grid.x_axis not in axes:
    raise config.ConfigError(f"x_axis={grid.x_axis!r} is not an axis of the grid {list(axes)}.")
  try:
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds is not None else list(grid.seeds)
  except ValueError:
    raise config.ConfigError(f"--seeds={args.seeds}: write integers, e.g. --seeds=0,1,2.") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise config.ConfigError(f"--seeds: need distinct seeds, got {seeds}.")
  train_steps = grid.train_steps if args.train_steps is None else args.train_steps
  step_budget = next(s for s in (args.step_budget, grid.step_budget, train_steps) if s is not None)
  if train_steps <= 0 or not 0 < step_budget <= train_steps:
    raise config.ConfigError(
        f"Need 0 < step_budget ({step_budget}) <= train_steps " f"({train_steps})."
    )
  metric = args.metric or grid.metric
  check_bindings(grid, axes, user_bindings)
  runs = expand(grid, axes, seeds, user_bindings)
  if len({r.name for r in runs}) != len(runs):
    raise config.ConfigError("Two runs get the same name: give the axes' values distinct labels.")
  sweep_dir = args.sweep_dir or os.path.join("/tmp/prompt_tuning_ablate", grid.name)
  if not (args.print_commands or args.dry_run or args.no_plot):
    require_matplotlib()  # Before hours of training, not after.
  resolve_steps(runs, args.gin_search_paths)

  if args.print_commands:
    for run in runs:
      print(
          shlex.join(
              [
                  "python",
                  "-m",
                  "prompt_tuning.train",
                  *train_args(run, os.path.join(os.path.abspath(sweep_dir), run.name), train_steps),
              ]
          )
      )
    return 0
  if args.dry_run:
    for run in runs:
      record = read_record(os.path.join(sweep_dir, run.name))
      print(f"{run.name}\t{record['status'] if record else 'pending'}")
    print(f"{len(runs)} runs of {train_steps} steps each into {sweep_dir}")
    return 0

  spec = spec_of(grid, axes, seeds, runs, train_steps, step_budget, metric)
  claim_sweep_dir(sweep_dir, spec)
  if not args.collect_only:
    sweep(runs, sweep_dir, train_steps)
  rows, cells = collect(spec, sweep_dir)
  write_results(spec, sweep_dir, rows, cells)
  written = ["results.csv", "results.json"]
  if not args.no_plot:
    written += [os.path.basename(p) for p in plot(spec, cells, sweep_dir)]
  failed = [r["run"] for r in rows if r["status"] != "finished"]
  _progress(f"wrote {', '.join(written)} in {sweep_dir}")
  if failed:
    _progress(f"{len(failed)} of {len(rows)} runs failed or were not run: {failed}")
  return 1 if failed else 0


def console_main():
  try:
    sys.exit(main())
  except config.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  importlib.import_module("prompt_tuning.ablate").console_main()
