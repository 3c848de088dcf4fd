"""The ablation sweep (`python -m prompt_tuning.ablate`): grids, commands, results, kill/resume.

The fast tests expand the committed grids and collect results from hand-written metrics files;
the slow ones run real sweeps of the embedded default on the small test task of
`tests/cli_utils.py` (8 dev examples), a few steps per run.
"""

import copy
import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys

import gin
import pytest

from prompt_tuning import ablate
from prompt_tuning import checkpoints
from prompt_tuning import config
from prompt_tuning import embedded
from prompt_tuning import released_checkpoints
from tests import cli_utils

PAPER_GRID = "ablations/prompt_length_x_init.gin"
INITS = ("random_uniform", "sampled_vocab", "class_labels")
LENGTHS = (1, 5, 20, 100, 150)


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _expand(path, seeds=None):
  grid = ablate.load_grid(path, "")
  axes = {a: ablate.axis_values(a, vs) for a, vs in grid.axes.items()}
  return grid, ablate.expand(grid, axes, grid.seeds if seeds is None else seeds, [])


def _embedded_step(stage: str) -> int:
  """The committed checkpoint's step, read from the path runs/embedded_default.gin resolves."""
  gin.clear_config()
  config.parse_gin(["runs/embedded_default.gin"], [f"embedded.checkpoint_path.stage = '{stage}'"])
  step = checkpoints.read_step(config.macro("INITIAL_CHECKPOINT_PATH", evaluate=True))
  gin.clear_config()
  return step


# ------------------------------------------------------------------------------ grid expansion


def test_paper_grid_is_45_runs_seeds_outermost_then_axes_in_order():
  grid, runs = _expand(PAPER_GRID)
  expected = [
      f"prompt_length={p},init={i},seed={s}" for s in (0, 1, 2) for p in LENGTHS for i in INITS
  ]
  assert [r.name for r in runs] == expected
  assert len(runs) == 45 and grid.x_axis == "PROMPT_LENGTH"
  run = runs[expected.index("prompt_length=100,init=class_labels,seed=2")]
  assert run.gin_files == ["runs/embedded_base.gin", "prompts/class_labels.gin"]
  bindings = dict(run.bindings)
  assert bindings["PROMPT_LENGTH"] == "100"
  assert bindings["CLASS_LABELS"] == "['Yes', 'No', 'Nobody']"
  assert bindings["MIXTURE_OR_TASK_NAME"] == "'synthetic_taskless_super_glue_cb_v102'"
  assert bindings["trainer.Trainer.seed"] == bindings["SHUFFLE_SEED"] == "2"
  assert "MODEL_DIR" not in bindings and "TRAIN_STEPS" not in bindings


def test_methods_grid_builds_each_method_with_its_trainable_parameters():
  """Each method's run parses and builds (jax.eval_shape) with the trainable count its formula
  gives on the embedded default: input prompt P*D, P-tuning v2 layers*2*P*H*K."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top

  _, runs = _expand("ablations/methods.gin", seeds=[0])
  assert [r.name for r in runs] == [
      f"method={m},task={t},seed=0"
      for m in (
          "prompt_tuning",
          "prompt_suffix",
          "residual_reparam",
          "p_tuning_v2",
          "prefix_tuning",
          "multitask",
          "spot",
          "p_tuning_v2_frozen_kv",
      )
      for t in ("cb", "rte")
  ]
  cfg = embedded.load_config()
  p = 20
  expected = {
      "prompt_tuning": p * cfg.emb_dim,
      "prompt_suffix": p * cfg.emb_dim,
      "p_tuning_v2": cfg.num_encoder_layers * 2 * p * cfg.num_heads * cfg.head_dim,
      "multitask": (p + 2 * 5) * cfg.emb_dim,  # Shared, plus 5 rows for each of RTE and CB.
      "spot": p * cfg.emb_dim,
      "p_tuning_v2_frozen_kv": cfg.num_encoder_layers * 2 * p * cfg.num_heads * cfg.head_dim,
  }
  for run in runs[::2]:  # One task each.
    gin.clear_config()
    config.parse_gin(run.gin_files, [f"{k} = {v}" for k, v in run.bindings])
    model = config.macro("MODEL", evaluate=True)
    shapes = jax.eval_shape(
        lambda: nn.unbox(model.get_initial_variables(jax.random.PRNGKey(0))["params"])
    )
    trainable, _ = optim.split_params(shapes, optim.PROMPT_PATTERNS)
    count = sum(math.prod(x.shape) for x in optim.flatten(trainable).values())
    method = run.labels["method"]
    if method in expected:
      assert count == expected[method], method
    else:  # The reparameterisations train more than the prompt they produce.
      assert count > p * cfg.emb_dim, method
    assert (config.macro("LEARNING_RATE"), method) in {
        (0.3, "prompt_tuning"),
        (0.3, "prompt_suffix"),
        (0.3, "residual_reparam"),
        (0.03, "p_tuning_v2"),
        (0.0003, "prefix_tuning"),
        (0.3, "multitask"),
        (0.3, "spot"),
        (0.03, "p_tuning_v2_frozen_kv"),
    }


def test_methods_grid_multitask_trains_on_the_mixture_and_scores_the_run_task_only():
  from prompt_tuning.tasks import multitask  # pylint: disable=g-import-not-at-top

  _, runs = _expand("ablations/methods.gin", seeds=[0])
  for run in runs:
    if run.labels["method"] != "multitask":
      continue
    gin.clear_config()
    config.parse_gin(run.gin_files, [f"{k} = {v}" for k, v in run.bindings])
    # gin calls an evaluated reference when deep-copying it.
    dataset = copy.deepcopy(gin.query_parameter("pipeline.DatasetConfig.mixture_or_task_name"))
    assert dataset == "synthetic_multitask_super_glue_rte_cb_v102"
    target = copy.deepcopy(gin.query_parameter("training.run.eval_mixture_or_task_name"))
    assert target == f"synthetic_multitask_super_glue_{run.labels['task']}_v102"
    # The prompt's task prompts are the mixture's, indexed by the tasks' own tokens.
    factory = config.macro("MODEL", evaluate=True).module.prompt_factory
    names, first_token = factory.args[1:3]
    vocab = multitask.vocab.get_vocabulary()
    assert names == ("rte", "cb")
    assert first_token == vocab.vocab_size - 1 - multitask.TASKS.index("rte")


def test_lm100k_grid_runs_parse_with_the_paper_recipe():
  """Parsed only: reading the lm100k checkpoints' steps needs gs://t5-data."""
  grid, runs = _expand("ablations/prompt_length_x_init_lm100k.gin")
  assert [r.name for r in runs] == [
      f"prompt_length={p},init={i},seed={s}" for s in (0, 1, 2) for p in LENGTHS for i in INITS
  ]
  assert grid.train_steps == 30000
  for run in runs[9:12]:  # PROMPT_LENGTH 100, each initialisation.
    gin.clear_config()
    config.parse_gin(
        run.gin_files,
        [f"{k} = {v}" for k, v in run.bindings] + ["MODEL_DIR = '/tmp/x'", "TRAIN_STEPS = 1130000"],
    )
    config.check_macros_are_read()
    assert config.macro("PROMPT_LENGTH") == 100 and config.macro("BATCH_SIZE") == 32
    assert config.macro("LEARNING_RATE") == 0.3
    assert config.macro("INITIAL_CHECKPOINT_PATH").endswith("t5_1_1_lm100k_base/checkpoint_1100000")
    if run.labels["init"] != "random_uniform":
      assert gin.query_parameter("prompts.sampled_vocab.population_size") == 5000


def test_released_objective_grid_points_each_objective_at_its_released_checkpoint():
  """Figure 3 (c) on the released checkpoints, parsed only (their steps are on gs://t5-data)."""
  _, runs = _expand("ablations/pretraining_objective_t5_1_1.gin")
  root = "gs://t5-data/pretrained_models/t5x"
  expected = {
      "span_corruption": f"{root}/t5_1_1_base/checkpoint_1000000",
      "span_corruption_sentinel": f"{root}/t5_1_1_base/checkpoint_1000000",
      "lm_adapted": f"{root}/t5_1_1_lm100k_base/checkpoint_1100000",
  }
  assert [r.labels["objective"] for r in runs[:3]] == list(expected)
  for run in runs[:3]:
    for size_file, size in (("models/sizes/base.gin", "base"), ("models/sizes/xl.gin", "xl")):
      files = [size_file if f == "models/sizes/base.gin" else f for f in run.gin_files]
      gin.clear_config()
      config.parse_gin(
          files,
          [f"{k} = {v}" for k, v in run.bindings] + ["MODEL_DIR = '/tmp/x'", "TRAIN_STEPS = 1"],
      )
      config.check_macros_are_read()
      path = config.macro("INITIAL_CHECKPOINT_PATH", evaluate=True)
      assert path == expected[run.labels["objective"]].replace("_base/", f"_{size}/"), path
      assert config.macro("PROMPT_LENGTH") == 100 and config.macro("LEARNING_RATE") == 0.3
    sentinel = run.labels["objective"] == "span_corruption_sentinel"
    assert config.macro("MIXTURE_OR_TASK_NAME", evaluate=True) == (
        "taskless_super_glue_boolq_v102" + ("_sentinel_targets" if sentinel else "")
    )
  with pytest.raises(ValueError, match="objective 'prefix_lm'.*span_corruption"):
    released_checkpoints.checkpoint_path("base", "prefix_lm")
  with pytest.raises(ValueError, match="size 'tiny'"):
    released_checkpoints.checkpoint_path("tiny")


@pytest.mark.parametrize(
    "path,axis,labels",
    [
        (
            "ablations/pretraining_objective.gin",
            "objective",
            ["span_corruption", "span_corruption_sentinel", "lm_adapted"],
        ),
        (
            "ablations/lm_adaptation_steps.gin",
            "lm_adaptation_steps",
            ["0", "500", "1000", "2000", "3500"],
        ),
    ],
)
def test_categorical_grids(path, axis, labels):
  _, runs = _expand(path)
  assert [r.name for r in runs] == [f"{axis}={v},seed={s}" for s in (0, 1, 2) for v in labels]


def test_axis_flags_pick_choices_replace_values_and_add_axes():
  grid = ablate.load_grid(PAPER_GRID, "")
  axes = {a: ablate.axis_values(a, vs) for a, vs in grid.axes.items()}
  name, values = ablate.parse_axis_flag("init=class_labels,random_uniform", axes)
  assert (name, [v.label for v in values]) == ("init", ["class_labels", "random_uniform"])
  assert values[0].gin_files == ("prompts/class_labels.gin",)
  with pytest.raises(config.ConfigError, match="unknown choices.*'uniform'"):
    ablate.parse_axis_flag("init=uniform", axes)
  _, values = ablate.parse_axis_flag("PROMPT_LENGTH=2, 3", axes)
  assert [v.bindings for v in values] == [(("PROMPT_LENGTH", "2"),), (("PROMPT_LENGTH", "3"),)]
  name, values = ablate.parse_axis_flag(
      "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4},{'inputs': 16, 'targets': 4}", axes
  )
  assert [v.label for v in values] == ["inputs_8_targets_4", "inputs_16_targets_4"]
  assert values[1].bindings == (("TASK_FEATURE_LENGTHS", "{'inputs': 16, 'targets': 4}"),)
  # The grid binds TASK_FEATURE_LENGTHS in base_bindings: the axis replaces that binding.
  assert "TASK_FEATURE_LENGTHS" in grid.base_bindings
  ablate.check_bindings(grid, {**axes, name: values}, [])
  runs = ablate.expand(grid, {name: values}, [0], [])
  assert [[v for k, v in r.bindings if k == name] for r in runs] == [
      ["{'inputs': 8, 'targets': 4}"],
      ["{'inputs': 16, 'targets': 4}"],
  ]
  with pytest.raises(config.ConfigError, match="not a literal"):
    ablate.parse_axis_flag("MODEL_NAME=small", axes)


@pytest.mark.parametrize(
    "flag,match",
    [
        ("--gin.TRAIN_STEPS=10", "TRAIN_STEPS is set by the sweep.*--train_steps"),
        ("--gin.PROMPT_LENGTH=3", "PROMPT_LENGTH is set by the axis 'PROMPT_LENGTH'"),
        ("--gin.SHUFFLE_SEED=3", "SHUFFLE_SEED is set by the seed"),
    ],
)
def test_bindings_that_fight_the_sweep_are_refused(flag, match, tmp_path):
  with pytest.raises(config.ConfigError, match=match):
    ablate.main([f"--grid={PAPER_GRID}", f"--sweep_dir={tmp_path}", "--print_commands", flag])


def test_print_commands_parse_back_and_train_nothing(tmp_path, capsys):
  sweep_dir = tmp_path / "sweep"
  assert (
      ablate.main(
          [
              f"--grid={PAPER_GRID}",
              f"--sweep_dir={sweep_dir}",
              "--print_commands",
              "--seeds=4",
              "--axis",
              "PROMPT_LENGTH=1,20",
              "--train_steps=30",
              "--gin.BATCH_SIZE=8",
          ]
      )
      == 0
  )
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 * 3
  start = _embedded_step("lm_adapted")
  for line, (length, init) in zip(lines, [(p, i) for p in (1, 20) for i in INITS]):
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "prompt_tuning.train"]
    args = config.parse_args(argv[3:], "")
    assert args.gin_file == ["runs/embedded_base.gin", f"prompts/{init}.gin"]
    gin.clear_config()
    config.parse_gin(args.gin_file, args.gin_bindings)
    assert config.macro("PROMPT_LENGTH") == length
    assert config.macro("TRAIN_STEPS") == start + 30
    assert config.macro("BATCH_SIZE") == 8 and config.macro("SHUFFLE_SEED") == 4
    assert config.macro("MODEL_DIR") == os.path.join(
        os.path.abspath(sweep_dir), f"prompt_length={length},init={init},seed=4"
    )
    assert gin.query_parameter("%PROMPT").configurable.name == init
    if init != "random_uniform":  # The choice's binding beats its prompts/*.gin file's 5000.
      assert gin.query_parameter("prompts.sampled_vocab.population_size") is None
  assert not sweep_dir.exists()
  assert ablate.main([f"--grid={PAPER_GRID}", f"--sweep_dir={sweep_dir}", "--dry_run"]) == 0
  assert "45 runs" in capsys.readouterr().out and not sweep_dir.exists()


def test_span_corruption_runs_get_the_same_prompt_tuning_steps(capsys):
  assert (
      ablate.main(
          [
              "--grid=ablations/pretraining_objective.gin",
              "--seeds=0",
              "--print_commands",
              "--train_steps=40",
          ]
      )
      == 0
  )
  steps = [
      config.parse_args(shlex.split(line)[3:], "").gin_bindings[-1]
      for line in capsys.readouterr().out.splitlines()
  ]
  assert steps == [
      f"TRAIN_STEPS = {_embedded_step(s) + 40}"
      for s in ("span_corruption", "span_corruption", "lm_adapted")
  ]
  assert _embedded_step("span_corruption") != _embedded_step("lm_adapted")


def test_lm_adaptation_grid_reads_the_committed_intermediate_checkpoints(capsys):
  """Each length's checkpoint is found, and every run gets 100 steps from its own step:
  span corruption's 1,500 plus the LM-adaptation steps the choice is named after."""
  grid = "--grid=ablations/lm_adaptation_steps.gin"
  assert ablate.main([grid, "--seeds=0", "--print_commands"]) == 0
  for line, lm_steps in zip(capsys.readouterr().out.splitlines(), (0, 500, 1000, 2000, 3500)):
    args = config.parse_args(shlex.split(line)[3:], "")
    assert args.gin_bindings[-1] == f"TRAIN_STEPS = {1500 + lm_steps + 100}"
    gin.clear_config()
    config.parse_gin(args.gin_file, args.gin_bindings)
    path = config.macro("INITIAL_CHECKPOINT_PATH", evaluate=True)
    assert checkpoints.read_step(path) == 1500 + lm_steps
    assert os.path.basename(path) == f"checkpoint_{1500 + lm_steps}"


def test_collect_only_writes_the_finished_runs_and_trains_nothing(tmp_path):
  """A sweep stopped part-way: its finished run is collected, the others are `not run`."""
  grid = "--grid=ablations/pretraining_objective.gin"
  assert ablate.main([grid, f"--sweep_dir={tmp_path}", "--seeds=0", "--dry_run"]) == 0
  _write_run(
      tmp_path,
      "objective=lm_adapted,seed=0",
      "finished",
      [{"step": 5025, "t/accuracy": 70.0}, {"step": 5100, "t/accuracy": 80.0}],
  )
  args = [grid, f"--sweep_dir={tmp_path}", "--seeds=0", "--collect_only", "--no_plot"]
  assert ablate.main(args) == 1  # Two runs are not finished.
  with open(tmp_path / "results.csv") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert rows["objective=lm_adapted,seed=0"]["best_score"] == "80.0"
  assert rows["objective=span_corruption,seed=0"]["status"] == "not run"
  assert sorted(os.listdir(tmp_path)) == [
      "objective=lm_adapted,seed=0",
      "results.csv",
      "results.json",
      "sweep.json",
  ]


def test_sweep_dir_of_another_grid_is_refused(tmp_path):
  grid, runs = _expand(PAPER_GRID, seeds=[0])
  axes = {a: ablate.axis_values(a, vs) for a, vs in grid.axes.items()}
  spec = ablate.spec_of(grid, axes, [0], runs, 300, 300, None)
  ablate.claim_sweep_dir(str(tmp_path), spec)
  ablate.claim_sweep_dir(str(tmp_path), spec)  # The same grid again: fine.
  with pytest.raises(config.ConfigError, match=r"another sweep.*\['runs', 'seeds'\]"):
    ablate.claim_sweep_dir(
        str(tmp_path), ablate.spec_of(grid, axes, [0, 1], runs + runs, 300, 300, None)
    )


# ------------------------------------------------------------------------------ results


def _write_run(sweep_dir, name, status, evals):
  run_dir = sweep_dir / name
  (run_dir / "eval").mkdir(parents=True)
  (run_dir / "eval" / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
  (run_dir / ablate.RUN_FILE).write_text(json.dumps({"status": status, "returncode": 0}))


def test_cost_is_trainable_count_and_median_step_time_after_the_compiling_period(tmp_path):
  run_dir = tmp_path / "run"
  (run_dir / "train").mkdir(parents=True)
  (run_dir / ablate.PARAMETERS).write_text(json.dumps({"trainable_parameters": 2560}))
  rates = [0.5, 2.0, 4.0, 2.5]  # The first period compiles; the median of the rest is 2.5.
  (run_dir / ablate.TRAIN_METRICS).write_text(
      "".join(
          json.dumps({"step": 25 * (i + 1), "steps_per_second": r}) + "\n"
          for i, r in enumerate(rates)
      )
  )
  assert ablate.cost(str(run_dir)) == {"trainable_params": 2560, "seconds_per_step": 0.4}
  assert ablate.cost(str(tmp_path / "not_run")) == {
      "trainable_params": None,
      "seconds_per_step": None,
  }


def test_runs_share_one_compilation_cache_unless_the_user_set_one(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  env = ablate.run_env(str(tmp_path / "sweep"))
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "sweep" / "jax_cache")
  assert env["PATH"] == os.environ["PATH"]  # The rest of the environment is passed on.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/mine")
  assert ablate.run_env(str(tmp_path / "sweep"))["JAX_COMPILATION_CACHE_DIR"] == "/mine"


def test_results_best_and_at_budget_from_metrics_files(tmp_path):
  t = "task"
  spec = {
      "grid": "g",
      "axes": {"L": ["1", "4"]},
      "seeds": [0, 1],
      "train_steps": 40,
      "step_budget": 25,
      "metric": None,
      "x_axis": "L",
      "runs": [
          {
              "name": f"l={l},seed={s}",
              "seed": s,
              "labels": {"L": str(l)},
              "values": {"L": l},
              "start_step": 100,
          }
          for s in (0, 1)
          for l in (1, 4)
      ],
  }
  _write_run(
      tmp_path,
      "l=1,seed=0",
      "finished",
      [
          {"step": 110, f"{t}/accuracy": 60.0, f"{t}/f1": 50.0},  # mean 55
          {"step": 120, f"{t}/accuracy": 80.0, f"{t}/f1": 70.0},  # mean 75 (best)
          {"step": 130, f"{t}/accuracy": 70.0, f"{t}/f1": 60.0},  # mean 65
          {"step": 140, f"{t}/accuracy": 72.0, f"{t}/f1": 60.0},  # 66
          {"step": 140, f"{t}/accuracy": 74.0, f"{t}/f1": 60.0},  # 67: re-evaluated, kept
      ],
  )
  _write_run(
      tmp_path,
      "l=4,seed=0",
      "finished",
      [
          {"step": 120, f"{t}/accuracy": 90.0, f"{t}/f1": 90.0},
          {"step": 125, f"{t}/accuracy": 40.0, f"{t}/f1": 20.0},  # At the budget exactly: 30.
          {"step": 140, f"{t}/accuracy": 95.0, f"{t}/f1": 95.0},  # best 95
      ],
  )
  _write_run(
      tmp_path,
      "l=1,seed=1",
      "finished",
      [
          {"step": 130, f"{t}/accuracy": 65.0, f"{t}/f1": 45.0},  # After the budget: none there.
      ],
  )
  _write_run(
      tmp_path,
      "l=4,seed=1",
      "failed",
      [
          {"step": 120, f"{t}/accuracy": 99.0, f"{t}/f1": 99.0},
      ],
  )
  rows, cells = ablate.collect(spec, str(tmp_path))
  got = {
      r["run"]: (
          r["best_score"],
          r["best_step"],
          r["budget_score"],
          r["budget_step"],
          r["num_evals"],
      )
      for r in rows
  }
  assert got == {
      "l=1,seed=0": (75.0, 20, 75.0, 20, 4),
      "l=4,seed=0": (95.0, 40, 30.0, 25, 3),
      "l=1,seed=1": (55.0, 30, None, None, 1),
      "l=4,seed=1": (99.0, 20, 99.0, 20, 1),
  }
  by_cell = {c["L"]: c for c in cells}
  assert by_cell["1"]["best_score"] == {"mean": 65.0, "min": 55.0, "max": 75.0, "n": 2}
  assert by_cell["1"]["budget_score"] == {"mean": 75.0, "min": 75.0, "max": 75.0, "n": 1}
  # The failed run's numbers stay in its row but not in its cell.
  assert by_cell["4"]["best_score"] == {"mean": 95.0, "min": 95.0, "max": 95.0, "n": 1}
  assert by_cell["4"]["finished"] == 1 and by_cell["4"]["seeds"] == 2

  spec["metric"] = "f1"
  rows, _ = ablate.collect(spec, str(tmp_path))
  assert rows[0]["best_score"] == 70.0 and rows[0]["budget_score"] == 70.0
  spec["metric"] = "task/accuracy"
  rows, _ = ablate.collect(spec, str(tmp_path))
  assert rows[0]["best_score"] == 80.0
  spec["metric"] = "rouge"
  rows, _ = ablate.collect(spec, str(tmp_path))
  assert rows[0]["status"] == "failed" and "rouge" in rows[0]["error"]

  spec["metric"] = None
  rows, cells = ablate.collect(spec, str(tmp_path))
  ablate.write_results(spec, str(tmp_path), rows, cells)
  with open(tmp_path / "results.csv", newline="") as f:
    table = list(csv.reader(f))
  assert table[0][:12] == [
      "run",
      "L",
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
  ]
  assert table[2][:12] == [
      "l=4,seed=0",
      "4",
      "0",
      "finished",
      "95.0",
      "40",
      "30.0",
      "25",
      "3",
      "",  # No parameters.json or train metrics written for these runs.
      "",
      "100",
  ]
  assert json.loads((tmp_path / "results.json").read_text())["cells"][0]["L"] == "1"
  paths = ablate.plot(spec, cells, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["figure.png", "figure.svg"]
  assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "<svg" in (tmp_path / "figure.svg").read_text()


# ------------------------------------------------------------------------------ real sweeps


def _sweep_args(sweep_dir, *extra):
  """A reduced grid on the embedded default: the tiny test task, a few steps per run."""
  return [
      f"--grid={PAPER_GRID}",
      f"--sweep_dir={sweep_dir}",
      "--seeds=0",
      "--axis",
      "init=random_uniform",
      *extra,
  ] + cli_utils.gin_flags(
      {
          "MIXTURE_OR_TASK_MODULE": cli_utils.TASK_MODULE,
          "MIXTURE_OR_TASK_NAME": cli_utils.TASK_NAME,
          "TASK_FEATURE_LENGTHS": {"inputs": 16, "targets": 4},
          "BATCH_SIZE": 8,
          "EVAL_PERIOD": 4,
          "CHECKPOINT_PERIOD": 4,
          "LOG_PERIOD": 4,
      }
  )


def _env(root):
  cli_utils.write_task(root)
  # The vocabulary is the embedded default's (its gin VOCAB_PATH); the variable is a fallback.
  return cli_utils.make_env(root, root / "unused_vocab.model")


class _Sweep(cli_utils.Cli):
  """The sweep in its own process group, so that the test can kill it with its training run."""

  def __init__(self, args, env, log_dir, name):
    log_dir.mkdir(parents=True, exist_ok=True)
    self.stdout_path, self.stderr_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    self.command = [sys.executable, "-m", "prompt_tuning.ablate", *args]
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      self.proc = subprocess.Popen(
          self.command, stdout=out, stderr=err, env=env, cwd=str(log_dir), start_new_session=True
      )


@pytest.mark.slow
def test_failing_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
  sweep_dir = tmp_path / "sweep"
  # Both values fail fast, in train's checks of TASK_FEATURE_LENGTHS: the second still runs.
  args = _sweep_args(
      sweep_dir,
      "--axis",
      "PROMPT_LENGTH=2",
      "--axis",
      "TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 4},{'inputs': 8}",
      "--no_plot",
  )
  args = [a for a in args if not a.startswith("--gin.TASK_FEATURE_LENGTHS")]
  sweep = _Sweep(args, _env(tmp_path), tmp_path / "logs", "fail")
  assert sweep.wait(300) == 1, sweep.describe()
  results = json.loads((sweep_dir / "results.json").read_text())
  assert [r["run"] for r in results["runs"]] == [
      "prompt_length=2,init=random_uniform,task_feature_lengths=inputs_0_targets_4,seed=0",
      "prompt_length=2,init=random_uniform,task_feature_lengths=inputs_8,seed=0",
  ]
  for row, needle in zip(results["runs"], ("inputs", "targets")):
    assert row["status"] == "failed" and row["returncode"] not in (0, None)
    assert row["error"].startswith("prompt_tuning.config.ConfigError: "), row["stderr_tail"]
    assert "TASK_FEATURE_LENGTHS" in row["error"] and needle in row["error"], row["error"]
    assert "Traceback" in row["stderr_tail"]
  assert "2/2 done (2 failed)" in sweep.stderr
  assert "2 of 2 runs failed" in sweep.stderr


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
  sweep_dir = tmp_path / "sweep"
  env = _env(tmp_path)
  start = _embedded_step("lm_adapted")
  args = _sweep_args(
      sweep_dir, "--axis", "PROMPT_LENGTH=1,4", "--train_steps=12", "--step_budget=8"
  )
  first, second = (sweep_dir / f"prompt_length={p},init=random_uniform,seed=0" for p in (1, 4))
  sweep = _Sweep(args, env, tmp_path / "logs", "first")
  # Killed once run 1 is recorded and run 2 has evaluated (after its first checkpoint), so that
  # run 2 resumes and still has all its evaluations.
  cli_utils.wait_for(
      lambda: (first / ablate.RUN_FILE).exists() and (second / ablate.EVAL_METRICS).exists(),
      400,
      "run 1 finished and run 2 evaluated",
      sweep,
      interval=0.02,
  )
  os.killpg(sweep.proc.pid, signal.SIGKILL)
  sweep.proc.wait()
  assert not (second / ablate.RUN_FILE).exists(), "run 2 ended before the kill"
  record = (first / ablate.RUN_FILE).read_bytes()
  mtimes = {p: p.stat().st_mtime_ns for p in (first / ablate.RUN_FILE, first / ablate.EVAL_METRICS)}

  again = _Sweep(args, env, tmp_path / "logs", "second").check(400)
  assert f"skipped {first.name}: finished" in again.stderr
  assert f"run 2/2: {second.name} (resuming)" in again.stderr
  assert "Resuming from" in (second / "train.stderr").read_text()
  assert (first / ablate.RUN_FILE).read_bytes() == record
  assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
  with open(sweep_dir / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["run"], r["status"]) for r in rows] == [
      (first.name, "finished"),
      (second.name, "finished"),
  ]
  results = json.loads((sweep_dir / "results.json").read_text())
  width = embedded.load_config().emb_dim
  for row, length in zip(results["runs"], (1, 4)):
    assert row["start_step"] == start
    assert row["num_evals"] == 3 and row["budget_step"] == 8  # Evaluations at 4, 8, 12.
    assert row["trainable_params"] == length * width  # Only the prompt trains.
    assert row["seconds_per_step"] > 0
  assert (sweep_dir / "figure.png").stat().st_size > 0
  assert json.loads((sweep_dir / ablate.SPEC_FILE).read_text())["axes"]["PROMPT_LENGTH"] == [
      "1",
      "4",
  ]


# ------------------------------------------------------------ the committed miniature results

DOCS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "ablations"
)


def _committed(grid):
  with open(os.path.join(DOCS, grid, "results.json")) as f:
    results = json.load(f)
  assert all(r["status"] == "finished" for r in results["runs"]), grid
  return {tuple(c["values"].values()): c["best_score"] for c in results["cells"]}


def test_committed_miniature_grids_are_complete_and_have_headroom():
  """What docs/ablations.md shows: one sweep of each grid, every run finished, the length x init
  grid not flat (best - worst cell >= 15 points, best < 98%, means over 3 seeds), and the
  LM-adapted backbone ahead of span corruption, with and without the sentinel."""
  grid = _committed("prompt_length_x_init")
  assert sorted(grid) == sorted((l, i) for l in LENGTHS for i in INITS)
  assert all(s["n"] == 3 for s in grid.values())
  means = [s["mean"] for s in grid.values()]
  assert max(means) - min(means) >= 15 and max(means) < 98, means
  objective = {k[0]: s for k, s in _committed("pretraining_objective").items()}
  assert set(objective) == {"span_corruption", "span_corruption_sentinel", "lm_adapted"}
  for other in ("span_corruption", "span_corruption_sentinel"):
    assert objective["lm_adapted"]["min"] > objective[other]["max"], objective
  steps = {k[0]: s for k, s in _committed("lm_adaptation_steps").items()}
  assert (
      set(steps) == {"0", "500", "1000", "2000", "3500"}
      and steps["3500"] == objective["lm_adapted"]
  ), steps
