"""The command-line configuration: settings nothing reads are errors, T5X macros are honoured,
the run's vocabulary follows its gin configuration, and bad settings of checkpoints, restore and
early stopping fail with the setting's name. All in-process: parsing only, no training."""

import json

import gin
import pytest

from prompt_tuning import best_checkpoint
from prompt_tuning import config
from prompt_tuning import restore
from prompt_tuning import train_state
from prompt_tuning.data import vocab as vocab_lib

REQUIRED_TRAIN = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")
PROMPT_RUN = [
    "--gin_file=models/t5_1_1_prompt.gin",
    "--gin_file=models/sizes/tiny.gin",
    "--gin_file=runs/prompt_finetune.gin",
]
TRAIN_MACROS = [
    "--gin.MODEL_DIR='/tmp/x'",
    "--gin.MIXTURE_OR_TASK_NAME='t'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
    "--gin.TRAIN_STEPS=5",
    "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'",
]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()
  vocab_lib.set_default_vocab_path(None)


def _setup(files, extra=(), required=REQUIRED_TRAIN):
  return config.setup(list(files) + TRAIN_MACROS + list(extra), "test", required)


def test_prompt_file_without_its_gin_file_is_an_error():
  # Without prompts/from_file.gin nothing reads PROMPT_FILE: the run would train a random prompt.
  with pytest.raises(config.ConfigError, match=r"\['PROMPT_FILE'\].*prompts/from_file\.gin"):
    _setup(PROMPT_RUN, ["--gin.PROMPT_FILE='/tmp/prompt.npy'"])
  gin.clear_config()
  _setup(
      PROMPT_RUN[:2] + ["--gin_file=prompts/from_file.gin"] + PROMPT_RUN[2:],
      ["--gin.PROMPT_FILE='/tmp/prompt.npy'"],
  )


@pytest.mark.parametrize(
    "flag,name",
    [
        ("--gin.LEARNIN_RATE=0.1", "LEARNIN_RATE"),
        ("--gin.EVAL_OUTPUT_DIR='/tmp/e'", "EVAL_OUTPUT_DIR"),
    ],
)
def test_macros_nothing_reads_are_errors(flag, name):
  # A misspelling, or a T5X eval macro given to a training run.
  with pytest.raises(config.ConfigError, match=rf"\['{name}'\]"):
    _setup(PROMPT_RUN, [flag])


def test_t5x_macros_are_honoured():
  _setup(PROMPT_RUN, ["--gin.USE_CACHED_TASKS=True"])
  from prompt_tuning.data import pipeline  # pylint: disable=g-import-not-at-top

  dataset_cfg = gin.get_configurable(pipeline.DatasetConfig)()
  assert dataset_cfg.use_cached is True
  gin.clear_config()
  files = [
      "--gin_file=models/t5_1_1_prompt.gin",
      "--gin_file=models/sizes/tiny.gin",
      "--gin_file=runs/prompt_eval.gin",
  ]
  config.setup(
      files
      + [
          "--gin.MIXTURE_OR_TASK_NAME='t'",
          "--gin.EVAL_OUTPUT_DIR='/tmp/e'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
          "--gin.INITIAL_CHECKPOINT_PATH='/tmp/c'",
      ],
      "test",
      (),
  )
  assert gin.query_parameter("%EVAL_OUTPUT_DIR") == "/tmp/e"


@pytest.mark.parametrize(
    "files",
    [
        ["runs/embedded_default.gin"],
        [
            "models/t5_1_1_prompt.gin",
            "models/sizes/base.gin",
            "prompts/class_labels.gin",
            "runs/prompt_finetune.gin",
        ],
        [
            "models/t5_1_1_prompt.gin",
            "models/sizes/base.gin",
            "prompts/sampled_vocab.gin",
            "models/decoding/temperature_sample.gin",
            "runs/prompt_finetune.gin",
        ],
        ["models/t5_1_1.gin", "models/sizes/small.gin", "runs/finetune.gin"],
    ],
)
def test_the_project_s_own_training_configurations_pass(files):
  extra = ["--gin.CLASS_LABELS=['a', 'b']"] if "prompts/class_labels.gin" in files else []
  _setup([f"--gin_file={f}" for f in files], extra)


@pytest.mark.parametrize(
    "run_file,extra",
    [
        ("runs/prompt_eval.gin", []),
        ("runs/prompt_infer.gin", ["--gin.INFER_OUTPUT_FILE='/tmp/o.jsonl'"]),
    ],
)
def test_the_project_s_own_inference_configurations_pass(run_file, extra):
  files = ["models/t5_1_1_prompt.gin", "models/sizes/base.gin", "prompts/from_file.gin", run_file]
  config.setup(
      [f"--gin_file={f}" for f in files]
      + extra
      + [
          "--gin.MIXTURE_OR_TASK_NAME='t'",
          "--gin.PROMPT_FILE='/tmp/p.npy'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
      ],
      "test",
      (),
  )


def test_the_vocabulary_follows_the_gin_configuration_from_python(tmp_path):
  # A user calling the library from Python after parsing gin gets the run's vocabulary, not T5's.
  vocab_lib.set_default_vocab_path(None)
  gin.parse_config([f"VOCAB_PATH = '{tmp_path / 'spiece.model'}'"])
  assert vocab_lib.get_vocab_path() == str(tmp_path / "spiece.model")
  gin.clear_config()
  assert vocab_lib.get_vocab_path() != str(tmp_path / "spiece.model")


def test_checkpoint_config_rejects_unknown_save_modes():
  with pytest.raises(ValueError, match=r"save_mode \(SAVE_MODE\) must be one of"):
    train_state.CheckpointConfig(save_mode="ful")
  assert train_state.CheckpointConfig(save_mode="full").save_mode == "full"


def test_restore_config_rejects_bad_patterns():
  with pytest.raises(ValueError, match="INIT_FROM_SCRATCH_PATTERNS"):
    restore.RestoreConfig(None, scratch_patterns=["(prompt"])


def test_best_checkpoint_picks_and_persists(tmp_path):
  metrics = {"task": {"accuracy": 50.0, "f1": 40.0}}
  best = best_checkpoint.BestCheckpoint(str(tmp_path), "accuracy")
  assert best.update(2, metrics)
  assert not best.update(4, {"task": {"accuracy": 50.0}})  # Ties keep the first.
  assert best.update(6, {"task": {"accuracy": 75.0}})
  saved = json.loads((tmp_path / best_checkpoint.FILE_NAME).read_text())
  assert saved == {"step": 6, "metric": "accuracy", "value": 75.0}
  assert best_checkpoint.BestCheckpoint(str(tmp_path), "accuracy").step == 6  # Resumed.
  assert best_checkpoint.pick(metrics, "task/f1") == 40.0


def test_an_unknown_best_metric_names_the_available_ones(tmp_path):
  best = best_checkpoint.BestCheckpoint(str(tmp_path), "acuracy")
  with pytest.raises(
      best_checkpoint.MetricNotFoundError,
      match=r"BEST_METRIC='acuracy' is not among .*\['task/accuracy'\]",
  ):
    best.update(2, {"task": {"accuracy": 1.0}})
