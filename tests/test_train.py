"""End-to-end tests of `python -m prompt_tuning.train` / `.eval` / `.infer` on the tiny T5X model.

Every run is a real subprocess on the tiny T5 1.1 checkpoint (global step 3) and the real T5
vocabulary, with a JSONL task registered by a module written to a temporary folder. Runs that
can go at the same time (the uninterrupted and the killed run, eval and the two inferences, the
config errors) do, to keep the file's wall time down.
"""

import json
import os
import pathlib
import re
import shutil
import signal

import numpy as np
import pytest

import cli_utils
from cli_utils import TASK_MODULE, TASK_NAME, Cli, gin_flags, read_jsonl, wait_for
from conftest import T5_VOCAB, TINY_CHECKPOINT, require
from prompt_tuning import checkpoints

PROMPT = "encoder/prompt/prompt/prompt"
PROMPT_NPY = "encoder.prompt.prompt.prompt.npy"
PROMPT_LENGTH = 3
D_MODEL = 4  # Of the tiny checkpoint.
INITIAL_STEP = 3  # Global step of the tiny checkpoint.
TRAIN_STEPS = 9  # Global: six steps from the checkpoint's.
LENGTHS = {"inputs": 12, "targets": 4}
# A prompt checkpoint is a few hundred bytes; the tiny backbone's embedding alone is 514 KB.
MAX_PROMPT_CHECKPOINT_BYTES = 64 * 1024
PROMPT_MODEL = ["--gin_file=models/t5_1_1_prompt.gin", "--gin_file=models/sizes/tiny.gin"]


class _Background:
  """A CLI run started on first use, so tests can overlap it with their own runs."""

  def __init__(self, start):
    self._start = start
    self._cli = None

  def start(self) -> Cli:
    if self._cli is None:
      self._cli = self._start()
    return self._cli

  def result(self) -> Cli:
    return self.start().check()

  def close(self):
    if self._cli is not None and self._cli.proc.poll() is None:
      self._cli.proc.kill()
      self._cli.proc.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("train_cli")
  cli_utils.write_task(root / "tasks")
  return root


@pytest.fixture(scope="module")
def env(workdir):
  return cli_utils.make_env(workdir / "tasks", require(T5_VOCAB))


@pytest.fixture(scope="module")
def initial_checkpoint():
  return require(TINY_CHECKPOINT)


def _prompt_train_args(model_dir, initial_checkpoint, **overrides) -> list[str]:
  bindings = dict(
      MODEL_DIR=model_dir,
      MIXTURE_OR_TASK_NAME=TASK_NAME,
      MIXTURE_OR_TASK_MODULE=TASK_MODULE,
      TASK_FEATURE_LENGTHS=LENGTHS,
      TRAIN_STEPS=TRAIN_STEPS,
      INITIAL_CHECKPOINT_PATH=initial_checkpoint,
      BATCH_SIZE=4,
      EVAL_PERIOD=None,
      CHECKPOINT_PERIOD=2,
      LOG_PERIOD=1,
      PROMPT_LENGTH=PROMPT_LENGTH,
      ACTIVATION_DTYPE="float32",
  )
  bindings.update(overrides)
  return PROMPT_MODEL + ["--gin_file=runs/prompt_finetune.gin"] + gin_flags(bindings)


def _inference_args(run_file, model_dir, initial_checkpoint, **overrides) -> list[str]:
  bindings = dict(
      MODEL_DIR=model_dir,
      MIXTURE_OR_TASK_NAME=TASK_NAME,
      MIXTURE_OR_TASK_MODULE=TASK_MODULE,
      TASK_FEATURE_LENGTHS=LENGTHS,
      INITIAL_CHECKPOINT_PATH=initial_checkpoint,
      BATCH_SIZE=4,
      PROMPT_LENGTH=PROMPT_LENGTH,
      ACTIVATION_DTYPE="float32",
  )
  bindings.update(overrides)
  return PROMPT_MODEL + [f"--gin_file={run_file}"] + gin_flags(bindings)


def _last_by_step(rows) -> dict[int, dict]:
  """The last logged line of each step (a resumed run logs some steps twice)."""
  return {int(r["step"]): r for r in rows}


def _assert_prompt_only(checkpoint_dir: pathlib.Path):
  assert checkpoints.list_parameters(checkpoint_dir) == {
      PROMPT: ((PROMPT_LENGTH, D_MODEL), "float32")
  }, checkpoint_dir
  size = cli_utils.dir_size(checkpoint_dir)
  assert size < MAX_PROMPT_CHECKPOINT_BYTES, f"{checkpoint_dir} holds {size} bytes"


@pytest.fixture(scope="module")
def run_a(workdir, env, initial_checkpoint):
  """Uninterrupted prompt tuning from step 3 to 9, logging every step, no eval."""
  run = _Background(
      lambda: Cli(
          "train",
          _prompt_train_args(workdir / "run_a", initial_checkpoint),
          env,
          workdir / "logs",
          "run_a",
      )
  )
  yield run
  run.close()


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_losses(workdir, env, initial_checkpoint, run_a):
  run_a.start()  # Runs alongside run B.
  dir_b = workdir / "run_b"
  args_b = _prompt_train_args(dir_b, initial_checkpoint)
  # Without the pause the steps after checkpoint_6 take milliseconds and the kill would race the
  # end of the run: the task module (imported by the run) blocks before the step to global step
  # 8, after step 7 was logged but not checkpointed, so that work is lost and must be redone.
  marker = workdir / "run_b_paused"
  b1 = Cli(
      "train",
      args_b,
      {**env, cli_utils.PAUSE_AT_STEP_ENV: "8", cli_utils.PAUSE_MARKER_ENV: str(marker)},
      workdir / "logs",
      "run_b1",
  )
  try:
    wait_for(marker.exists, 540, "run B to reach step 7", b1)
    steps = checkpoints.all_checkpoint_steps(dir_b)
    assert 6 in steps and max(steps) < TRAIN_STEPS, steps
    os.kill(b1.pid, signal.SIGKILL)
  finally:
    if b1.proc.poll() is None:
      b1.proc.kill()
  assert b1.wait() == -signal.SIGKILL
  before = read_jsonl(dir_b / "train" / "metrics.jsonl")
  assert [r["step"] for r in before] == [4, 5, 6, 7]

  b2 = Cli("train", args_b, env, workdir / "logs", "run_b2").check()
  assert re.search(r"Resuming from \S*checkpoint_6 \(input position 3\)", b2.stderr), b2.describe()
  after = read_jsonl(dir_b / "train" / "metrics.jsonl")[len(before) :]
  assert [r["step"] for r in after] == [7, 8, 9], "the restart did not resume at checkpoint_6"

  run_a.result()
  dir_a = workdir / "run_a"
  losses_a = _last_by_step(read_jsonl(dir_a / "train" / "metrics.jsonl"))
  losses_b = _last_by_step(before + after)
  assert sorted(losses_a) == sorted(losses_b) == list(range(INITIAL_STEP + 1, TRAIN_STEPS + 1))
  for step in losses_a:
    for key in ("loss", "z_loss", "accuracy"):
      np.testing.assert_allclose(
          losses_b[step][key], losses_a[step][key], rtol=1e-6, err_msg=f"{key} at step {step}"
      )
  # The redone step 7 matches what the killed process had logged.
  np.testing.assert_allclose(after[0]["loss"], before[-1]["loss"], rtol=1e-6)

  final = f"numpy_checkpoints/checkpoint_{TRAIN_STEPS}/{PROMPT_NPY}"
  np.testing.assert_array_equal(np.load(dir_b / final), np.load(dir_a / final))
  for model_dir in (dir_a, dir_b):
    assert checkpoints.all_checkpoint_steps(model_dir) == [4, 6, 8, 9]
    for step in checkpoints.all_checkpoint_steps(model_dir):
      _assert_prompt_only(model_dir / f"checkpoint_{step}")


@pytest.mark.slow
def test_train_checkpoint_holds_only_the_prompt(workdir, run_a, initial_checkpoint):
  run_a.result()
  model_dir = workdir / "run_a"
  checkpoint = model_dir / f"checkpoint_{TRAIN_STEPS}"
  _assert_prompt_only(checkpoint)
  assert checkpoints.read_step(checkpoint) == TRAIN_STEPS
  prompt = checkpoints.load_t5x_checkpoint(checkpoint)["encoder"]["prompt"]["prompt"]["prompt"]
  exported = np.load(model_dir / "numpy_checkpoints" / f"checkpoint_{TRAIN_STEPS}" / PROMPT_NPY)
  np.testing.assert_array_equal(exported, np.asarray(prompt))
  first = np.load(model_dir / "numpy_checkpoints" / "checkpoint_4" / PROMPT_NPY)
  assert not np.array_equal(first, exported), "the prompt did not train"
  # Only the prompt is trainable: the numpy export has no other parameter, and the backbone the
  # trainer reads (the initial checkpoint) holds no prompt to overwrite it.
  sidecar = PROMPT_NPY.replace(".npy", ".json")  # Where the prompt goes, for serving it.
  assert sorted(os.listdir(model_dir / "numpy_checkpoints" / "checkpoint_4")) == sorted(
      [PROMPT_NPY, sidecar]
  )
  assert json.loads((model_dir / "numpy_checkpoints" / "checkpoint_4" / sidecar).read_text()) == {
      "placement": "prefix"
  }
  assert PROMPT not in checkpoints.list_parameters(initial_checkpoint)


@pytest.fixture(scope="module")
def run_with_eval(workdir, env, initial_checkpoint):
  """Prompt tuning with eval every 2 steps, keeping the best (accuracy) and one more checkpoint."""
  model_dir = workdir / "run_eval"
  Cli(
      "train",
      _prompt_train_args(
          model_dir,
          initial_checkpoint,
          EVAL_PERIOD=2,
          BEST_METRIC="accuracy",
          CHECKPOINTS_TO_KEEP=1,
      ),
      env,
      workdir / "logs",
      "run_eval",
  ).check()
  return model_dir


@pytest.mark.slow
def test_eval_during_training_keeps_the_best_checkpoint(run_with_eval):
  model_dir = run_with_eval
  evals = read_jsonl(model_dir / "eval" / "metrics.jsonl")
  assert [r["step"] for r in evals] == [4, 6, 8, 9]
  key = f"{TASK_NAME}/accuracy"
  assert all(key in r for r in evals), evals
  best = json.loads((model_dir / "best_checkpoint.json").read_text())
  values = [r[key] for r in evals]
  assert best["metric"] == "accuracy" and best["value"] == max(values)
  assert best["step"] == evals[values.index(max(values))]["step"]  # The first of the best.
  # CHECKPOINTS_TO_KEEP=1 prunes everything but the latest, except the best.
  assert best["step"] < TRAIN_STEPS, "pick a setup where the best checkpoint is not the last"
  assert checkpoints.all_checkpoint_steps(model_dir) == [best["step"], TRAIN_STEPS]
  assert sorted(os.listdir(model_dir / "numpy_checkpoints")) == sorted(
      [f"checkpoint_{best['step']}", f"checkpoint_{TRAIN_STEPS}"]
  )
  _assert_prompt_only(model_dir / f"checkpoint_{best['step']}")


@pytest.mark.slow
def test_eval_and_infer_through_the_cli(workdir, env, initial_checkpoint, run_with_eval):
  model_dir = run_with_eval
  logs = workdir / "logs"
  validation = read_jsonl(workdir / "tasks" / "data" / "validation.jsonl")
  texts = [r["sentence"] for r in validation[:3]]
  text_file = workdir / "questions.txt"
  text_file.write_text("\n".join(texts) + "\n")
  task_out, file_out = workdir / "infer_task.jsonl", workdir / "infer_file.jsonl"

  evaluation = Cli(
      "eval",
      _inference_args(
          "runs/prompt_eval.gin",
          model_dir,
          initial_checkpoint,
          EVAL_RANK_LABELS=["negative", "positive"],
      ),
      env,
      logs,
      "eval",
  )
  infer_task = Cli(
      "infer",
      _inference_args(
          "runs/prompt_infer.gin", model_dir, initial_checkpoint, INFER_OUTPUT_FILE=task_out
      ),
      env,
      logs,
      "infer_task",
  )
  infer_file = Cli(
      "infer",
      _inference_args(
          "runs/prompt_infer.gin",
          model_dir,
          initial_checkpoint,
          INFER_OUTPUT_FILE=file_out,
          INFER_INPUT_FILE=text_file,
          MIXTURE_OR_TASK_NAME=None,
      ),
      env,
      logs,
      "infer_file",
  )

  evaluation.check()
  metrics = json.loads(evaluation.stdout)
  assert TASK_NAME in metrics and "accuracy" in metrics[TASK_NAME], metrics
  # Rank classification beside generation; only generation goes to the metrics file (below).
  assert 0 <= metrics[TASK_NAME]["rank_classification/accuracy"] <= 100, metrics
  # The latest checkpoint, evaluated by the CLI, scores what the training loop's eval logged.
  logged = _last_by_step(read_jsonl(model_dir / "eval" / "metrics.jsonl"))[TRAIN_STEPS]
  assert metrics[TASK_NAME]["accuracy"] == pytest.approx(logged[f"{TASK_NAME}/accuracy"])

  infer_task.check()
  rows = read_jsonl(task_out)
  assert len(rows) == len(validation)
  for row, example in zip(rows, validation):
    assert set(row) == {"inputs", "prediction", "score", "targets"}, row
    assert row["inputs"] == example["sentence"] and row["targets"] == example["label"]
    assert isinstance(row["prediction"], str) and np.isfinite(row["score"])

  infer_file.check()
  file_rows = read_jsonl(file_out)
  assert [r["inputs"] for r in file_rows] == texts
  assert all(set(r) == {"inputs", "prediction", "score"} for r in file_rows), file_rows
  # The same text decodes the same whether it comes from the task or from a file.
  for file_row, task_row in zip(file_rows, rows):
    assert file_row["prediction"] == task_row["prediction"]
    assert file_row["score"] == pytest.approx(task_row["score"], rel=1e-5)


def test_config_errors_fail_fast_with_a_helpful_message(workdir, env, initial_checkpoint):
  logs = workdir / "logs"
  model_dirs = {
      name: workdir / f"config_error_{name}"
      for name in ("unknown_task", "unknown_gin_file", "no_targets_length")
  }

  def args(name, run_file="runs/prompt_finetune.gin", **overrides):
    bindings = dict(
        MODEL_DIR=model_dirs.get(name),
        MIXTURE_OR_TASK_NAME=TASK_NAME,
        MIXTURE_OR_TASK_MODULE=TASK_MODULE,
        TASK_FEATURE_LENGTHS=LENGTHS,
        TRAIN_STEPS=TRAIN_STEPS,
        INITIAL_CHECKPOINT_PATH=initial_checkpoint,
        PROMPT_LENGTH=PROMPT_LENGTH,
    )
    bindings.update(overrides)
    bindings = {k: v for k, v in bindings.items() if v is not None}
    return PROMPT_MODEL + [f"--gin_file={run_file}"] + gin_flags(bindings)

  runs = {
      "no_model_dir": args("no_model_dir"),
      "unknown_task": args("unknown_task", MIXTURE_OR_TASK_NAME="tiny_sentimnt"),
      "unknown_gin_file": args("unknown_gin_file", run_file="runs/prompt_finetun.gin"),
      "no_targets_length": args("no_targets_length", TASK_FEATURE_LENGTHS={"inputs": 12}),
  }
  procs = {name: Cli("train", a, env, logs, f"config_error_{name}") for name, a in runs.items()}
  for proc in procs.values():
    assert proc.wait(300) != 0, proc.describe()
  err = {name: proc.stderr for name, proc in procs.items()}

  assert "ConfigError" in err["no_model_dir"], procs["no_model_dir"].describe()
  assert re.search(r"runs/prompt_finetune\.gin needs .*'MODEL_DIR'", err["no_model_dir"])
  assert "--gin.MODEL_DIR=" in err["no_model_dir"]

  assert "Unknown task or mixture 'tiny_sentimnt'" in err["unknown_task"], procs[
      "unknown_task"
  ].describe()
  assert "Closest registered names: ['tiny_sentiment']" in err["unknown_task"]

  assert "ConfigError: Gin file 'runs/prompt_finetun.gin' not found" in (
      err["unknown_gin_file"]
  ), procs["unknown_gin_file"].describe()
  assert re.search(r"Available run configs: \[.*'prompt_finetune\.gin'", err["unknown_gin_file"])

  assert "ConfigError: TASK_FEATURE_LENGTHS must be {'inputs': N, 'targets': M}; got " in (
      err["no_targets_length"]
  ), procs["no_targets_length"].describe()
  assert "KeyError" not in err["no_targets_length"]

  # Each failed before any compute: nothing was written to its MODEL_DIR (not even created).
  for name, model_dir in model_dirs.items():
    assert not model_dir.exists(), name


@pytest.mark.slow
def test_model_tuning_trains_and_saves_every_parameter(workdir, env, initial_checkpoint):
  model_dir = workdir / "run_model_tuning"
  args = [
      "--gin_file=models/t5_1_1.gin",
      "--gin_file=models/sizes/tiny.gin",
      "--gin_file=runs/finetune.gin",
  ] + gin_flags(
      dict(
          MODEL_DIR=model_dir,
          MIXTURE_OR_TASK_NAME=TASK_NAME,
          MIXTURE_OR_TASK_MODULE=TASK_MODULE,
          TASK_FEATURE_LENGTHS=LENGTHS,
          TRAIN_STEPS=5,
          INITIAL_CHECKPOINT_PATH=initial_checkpoint,
          BATCH_SIZE=4,
          EVAL_PERIOD=None,
          CHECKPOINT_PERIOD=2,
          LOG_PERIOD=1,
          ACTIVATION_DTYPE="float32",
      )
  )
  Cli("train", args, env, workdir / "logs", "run_model_tuning").check()

  checkpoint = model_dir / "checkpoint_5"
  saved = checkpoints.list_parameters(checkpoint)
  initial = checkpoints.list_parameters(initial_checkpoint)
  assert len(saved) == 52 and saved == initial
  losses = [r["loss"] for r in read_jsonl(model_dir / "train" / "metrics.jsonl")]
  assert len(losses) == 2 and np.all(np.isfinite(losses)) and losses[1] != losses[0], losses
  before = checkpoints.load_t5x_checkpoint(initial_checkpoint)
  after = checkpoints.load_t5x_checkpoint(checkpoint)
  flat_before = dict(_flatten(before))
  changed = [k for k, v in _flatten(after) if not np.array_equal(v, flat_before[k])]
  assert len(changed) > len(saved) // 2, f"only {changed} changed"


def _flatten(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}/")
    else:
      yield f"{prefix}{k}", np.asarray(v)


def _printed_evals(stdout: str) -> dict[int, dict]:
  """{step: metrics} of the `step N eval: {...}` lines a training run prints."""
  found = re.findall(r"^step (\d+) eval: (\{.*\})$", stdout, flags=re.M)
  return {int(step): json.loads(metrics) for step, metrics in found}


@pytest.mark.slow
def test_a_finished_run_restarted_evaluates_again(workdir, env, initial_checkpoint, run_with_eval):
  model_dir = workdir / "run_eval_restarted"
  shutil.copytree(run_with_eval, model_dir)  # Leaves the fixture's logs as they were.
  before = checkpoints.all_checkpoint_steps(model_dir)
  again = Cli(
      "train",
      _prompt_train_args(
          model_dir,
          initial_checkpoint,
          EVAL_PERIOD=2,
          BEST_METRIC="accuracy",
          CHECKPOINTS_TO_KEEP=1,
      ),
      env,
      workdir / "logs",
      "run_eval_restarted",
  ).check()
  printed = _printed_evals(again.stdout)
  assert list(printed) == [TRAIN_STEPS], again.stdout
  logged = read_jsonl(model_dir / "eval" / "metrics.jsonl")
  assert [r["step"] for r in logged] == [4, 6, 8, 9, TRAIN_STEPS]  # One more evaluation.
  key = f"{TASK_NAME}/accuracy"
  assert printed[TRAIN_STEPS][TASK_NAME]["accuracy"] == pytest.approx(logged[-2][key])
  assert checkpoints.all_checkpoint_steps(model_dir) == before  # Nothing trained or saved.


@pytest.mark.slow
def test_eval_of_a_saved_prompt_into_a_fresh_model_dir(
    workdir, env, initial_checkpoint, run_with_eval
):
  prompt = run_with_eval / "numpy_checkpoints" / f"checkpoint_{TRAIN_STEPS}" / PROMPT_NPY
  fresh = workdir / "fresh_eval_dir"  # Does not exist yet: no eval/ folder either.
  args = (
      PROMPT_MODEL
      + ["--gin_file=prompts/from_file.gin", "--gin_file=runs/prompt_eval.gin"]
      + gin_flags(
          dict(
              MODEL_DIR=fresh,
              PROMPT_FILE=prompt,
              MIXTURE_OR_TASK_NAME=TASK_NAME,
              MIXTURE_OR_TASK_MODULE=TASK_MODULE,
              TASK_FEATURE_LENGTHS=LENGTHS,
              INITIAL_CHECKPOINT_PATH=initial_checkpoint,
              BATCH_SIZE=4,
              PROMPT_LENGTH=PROMPT_LENGTH,
              ACTIVATION_DTYPE="float32",
          )
      )
  )
  cli = Cli("eval", args, env, workdir / "logs", "eval_fresh_dir").check()
  metrics = json.loads(cli.stdout)
  logged = _last_by_step(read_jsonl(run_with_eval / "eval" / "metrics.jsonl"))[TRAIN_STEPS]
  assert metrics[TASK_NAME]["accuracy"] == pytest.approx(logged[f"{TASK_NAME}/accuracy"])
  assert (fresh / "eval" / f"{TASK_NAME}-metrics.jsonl").exists()


@pytest.mark.slow
def test_an_unknown_best_metric_stops_the_run_and_keeps_its_steps(workdir, env, initial_checkpoint):
  model_dir = workdir / "run_unknown_best_metric"
  cli = Cli(
      "train",
      _prompt_train_args(
          model_dir, initial_checkpoint, EVAL_PERIOD=2, BEST_METRIC="acuracy", CHECKPOINT_PERIOD=100
      ),
      env,
      workdir / "logs",
      "run_unknown_best_metric",
  )
  assert cli.wait() != 0, cli.describe()
  assert (
      f"BEST_METRIC='acuracy' is not among the evaluation's metrics " f"['{TASK_NAME}/accuracy']"
  ) in cli.stderr, cli.describe()
  # The first evaluation (step 4) found the problem; the step trained so far was saved.
  assert checkpoints.all_checkpoint_steps(model_dir) == [INITIAL_STEP + 1]
