"""What a short run pays besides training: start-up, compilation and evaluation, through the CLI.

Runs the embedded default (configs/runs/embedded_default.gin) for `--steps` prompt-tuning steps
with `--evals` evaluations of the dev split, as a user (or an ablation sweep) does:

  python -m prompt_tuning.train --gin_file=runs/embedded_default.gin \
    --gin.TRAIN_STEPS=<5000 + steps> --gin.EVAL_PERIOD=<steps / evals> --gin.MODEL_DIR=<fresh>

(the embedded checkpoint is at step 5000 and TRAIN_STEPS is a global step), reads the run's log
lines as they arrive, and prints one JSON line: seconds from process start to the end of the first
train step (imports, data pipeline, checkpoint read and compilation included), each evaluation
(as the run logs it), and the whole run.

  python benchmarks/run_overhead.py               # 100 steps, 2 evaluations
  python benchmarks/run_overhead.py --compilation_cache   # the same run twice, one JAX cache

With `--compilation_cache` the run is repeated with one fresh JAX compilation cache
(JAX_COMPILATION_CACHE_DIR), as `prompt_tuning.ablate` gives the runs of a sweep: the second run is
what each run after the first of a sweep pays. One JSON line per run.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

CHECKPOINT_STEP = 5000  # The embedded checkpoint's step (tests/test_embedded.py checks it).
EVAL_RE = re.compile(r"Evaluation at step (\d+) took ([0-9.]+) s")
FIRST_RE = re.compile(r"First train step \(step (\d+)\) done")


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--evals", type=int, default=2)
  parser.add_argument("--gin", action="append", default=[], help="Extra --gin.X=Y overrides.")
  parser.add_argument(
      "--log", action="store_true", help="Echo the run's output on stderr, with elapsed seconds."
  )
  parser.add_argument(
      "--compilation_cache",
      action="store_true",
      help="Run twice with one fresh JAX compilation cache (cold, then warm).",
  )
  args = parser.parse_args()
  if args.steps < 1 or args.evals < 1 or args.steps % args.evals:
    parser.error("--steps and --evals must be >= 1 and --evals must divide --steps.")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # A cold run, unless --compilation_cache.
  if not args.compilation_cache:
    print(json.dumps(run(args, env)))
    return
  with tempfile.TemporaryDirectory() as cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    for state in ("cold", "warm"):
      print(json.dumps(dict(run(args, env), compilation_cache=state)), flush=True)


def run(args, env) -> dict:
  """One run of the CLI in a fresh MODEL_DIR: its timings."""
  with tempfile.TemporaryDirectory() as model_dir:
    cmd = [
        sys.executable,
        "-m",
        "prompt_tuning.train",
        "--gin_file=runs/embedded_default.gin",
        f"--gin.TRAIN_STEPS={CHECKPOINT_STEP + args.steps}",
        f"--gin.EVAL_PERIOD={args.steps // args.evals}",
        f"--gin.MODEL_DIR='{model_dir}'",
        *[f"--gin.{g}" for g in args.gin],
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1
    )
    first_step_s, evals, lines = None, [], []
    for line in proc.stdout:
      lines.append(line)
      if args.log:
        sys.stderr.write(f"[{time.perf_counter() - start:6.2f}] {line}")
      if first_step_s is None and FIRST_RE.search(line):
        first_step_s = time.perf_counter() - start
      m = EVAL_RE.search(line)
      if m:
        evals.append({"step": int(m.group(1)), "seconds": float(m.group(2))})
    output_end_s = time.perf_counter() - start
    rc = proc.wait()
    total = time.perf_counter() - start
  if rc:
    sys.stderr.write("".join(lines[-40:]))
    sys.exit(f"The run failed (exit {rc}): {' '.join(cmd)}")
  return {
      "steps": args.steps,
      "process_start_to_first_step_s": first_step_s,
      "evaluations": evals,
      "whole_run_s": total,
      # From the run's last output line to its exit (interpreter and library teardown).
      "exit_s": total - output_end_s,
      "command": " ".join(cmd[1:]),
      "load_average": os.getloadavg(),
  }


if __name__ == "__main__":
  main()
