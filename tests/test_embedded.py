"""The embedded default: committed assets, its gin files, and the thresholds of issue #6.

The end-to-end tests run the README's first command (`runs/embedded_default.gin`) through the
real train CLI at a reduced budget, next to the same prompt tuning on a randomly initialised
frozen backbone and model tuning of the pretrained one (benchmarks/embedded_default.py prints
the full-budget figures).
"""

import json
import os
import pathlib

import gin
import numpy as np
import pytest

from prompt_tuning import checkpoints
from prompt_tuning import config
from prompt_tuning import embedded
from prompt_tuning.models import t5
from tests import cli_utils

ASSETS = pathlib.Path(embedded.ASSETS_DIR)
STEPS = 100  # Reduced budget of the threshold tests (the main job trains 600 steps).
# What model tuning takes from runs/embedded_default.gin, so both train on the same data.
MODEL_TUNING_MACROS = (
    "MIXTURE_OR_TASK_MODULE",
    "MIXTURE_OR_TASK_NAME",
    "TASK_FEATURE_LENGTHS",
    "ACTIVATION_DTYPE",
    "BATCH_SIZE",
    "BEST_METRIC",
)


def _lm_step() -> int:
  return checkpoints.read_step(embedded.checkpoint_path("lm_adapted"))


def test_assets_are_committed_and_small():
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  cfg = embedded.load_config()
  sp = spm.SentencePieceProcessor(model_file=embedded.vocab_path())
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
  assert cfg.vocab_size == 128 * -(-(sp.get_piece_size() + 100) // 128)
  # models/sizes/embedded.gin builds t5.SIZES['embedded']: it must be the saved architecture.
  with open(ASSETS / "config.json") as f:
    assert json.load(f) == t5.SIZES["embedded"]
  for stage in embedded.STAGES:
    params = checkpoints.load_t5x_checkpoint(embedded.checkpoint_path(stage))
    assert params["token_embedder"]["embedding"].shape == (cfg.vocab_size, cfg.emb_dim)
  assert _lm_step() > checkpoints.read_step(embedded.checkpoint_path("span_corruption"))
  # The LM-adaptation-length ablation's checkpoints: after 500, 1,000, 2,000 LM steps.
  intermediate = ASSETS / "lm_adapted_intermediate"
  assert sorted(os.listdir(intermediate)) == [f"checkpoint_{s}" for s in (2000, 2500, 3500)]
  for step in (2000, 2500, 3500):
    assert checkpoints.read_step(str(intermediate / f"checkpoint_{step}")) == step
  total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
  assert total < 25 * 10**6, total  # The issue's limit for committed assets (#14).


def test_the_vocabulary_keeps_the_world_s_words_whole():
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from prompt_tuning.embedded import world  # pylint: disable=g-import-not-at-top

  sp = spm.SentencePieceProcessor(model_file=embedded.vocab_path())
  words = set(world.NAMES) | {v for vs in world.VALUES.values() for v in vs}
  statements = [t[0] for t in world.TEMPLATES.values()]  # Wh-questions start capitalised.
  words |= {
      w
      for s in statements + [s for t in world.TRAITS.values() for s in t]
      for w in s.split()
      if "{" not in w
  }
  words |= {"What", "Where", "Which", "Question", "Answer"}  # Capitalised in the corpus.
  words |= {"True", "False", "entailment", "contradiction", "neutral"}
  words |= {"boolq", "passage", "question", "rte", "cb", "hypothesis", "premise"}  # Formats.
  for word in sorted(words):
    assert sp.encode(word, out_type=str) == ["▁" + word], word


def test_gin_files_resolve_the_committed_paths():
  gin.clear_config()
  try:
    config.parse_gin(["runs/embedded_default.gin"], [])
    assert config.macro("INITIAL_CHECKPOINT_PATH", evaluate=True) == embedded.checkpoint_path()
    assert config.macro("VOCAB_PATH", evaluate=True) == embedded.vocab_path()
    # Without evaluate, a reference is left for gin to resolve when the function is called.
    assert config.macro("VOCAB_PATH") is None
    gin.parse_config(["embedded.checkpoint_path.stage = 'span_corruption'"])
    assert config.macro("INITIAL_CHECKPOINT_PATH", evaluate=True) == (
        embedded.checkpoint_path("span_corruption")
    )
    # TRAIN_STEPS counts on from the checkpoint's global step, T5X-style.
    assert config.macro("TRAIN_STEPS") - _lm_step() == 600
  finally:
    gin.clear_config()


def test_missing_assets_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="prompt_tuning.embedded.pretrain"):
    embedded.checkpoint_path(directory=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    embedded.vocab_path(str(tmp_path))
  with pytest.raises(ValueError, match="span_corruption"):
    embedded.checkpoint_path("lm100k")


# ----------------------------------------------------------------------- thresholds (issue 6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The main job at a reduced budget, and the two comparisons, run one after the other."""
  root = tmp_path_factory.mktemp("embedded")
  # Same global step as the pretrained checkpoint, so TRAIN_STEPS means the same budget.
  random_ckpt = embedded.write_random_checkpoint(
      str(root / "random_backbone" / f"checkpoint_{_lm_step()}"),
      embedded.load_config(),
      step=_lm_step(),
  )
  env = cli_utils.make_env(
      root,
      pathlib.Path(embedded.vocab_path()),
      {"PROMPT_TUNING_SYNTHETIC_DIR": str(root / "synthetic")},
  )
  gin.clear_config()
  config.parse_gin(["runs/embedded_default.gin"], [])
  config_macros = {k: config.macro(k) for k in MODEL_TUNING_MACROS}
  gin.clear_config()
  common = {"TRAIN_STEPS": _lm_step() + STEPS, "EVAL_PERIOD": STEPS, "CHECKPOINT_PERIOD": STEPS}
  variants = {
      # The main job, saving every parameter so that the frozen backbone can be compared.
      "prompt": ["--gin_file=runs/embedded_default.gin"]
      + cli_utils.gin_flags({"SAVE_MODE": "full"}),
      "random": ["--gin_file=runs/embedded_default.gin"]
      + cli_utils.gin_flags({"INITIAL_CHECKPOINT_PATH": random_ckpt}),
      # Model tuning: no prompt, every parameter trains (runs/finetune.gin, lr 1e-3).
      "model": [
          "--gin_file=models/t5_1_1.gin",
          "--gin_file=models/sizes/embedded.gin",
          "--gin_file=models/decoding/greedy.gin",
          "--gin_file=runs/finetune.gin",
      ]
      + cli_utils.gin_flags({k: config_macros[k] for k in MODEL_TUNING_MACROS}),
  }
  out = {}
  for name, args in variants.items():
    model_dir = root / name
    cli_utils.Cli(
        "train",
        args + cli_utils.gin_flags({**common, "MODEL_DIR": model_dir}),
        env,
        root / "logs",
        name,
    ).check(timeout=900)
    evals = cli_utils.read_jsonl(model_dir / "eval" / "metrics.jsonl")
    out[name] = (model_dir, evals[-1])
  return out


def _accuracy(metrics) -> float:
  return metrics["synthetic_taskless_super_glue_boolq_v102/accuracy"]


def _tensorboard_scalars(log_dir: pathlib.Path, tag: str) -> dict[int, float]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  out = {}
  for path in log_dir.glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      out.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
  return out


def _flat_params(path) -> dict[str, np.ndarray]:
  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top

  return optim.flatten(checkpoints.load_t5x_checkpoint(str(path)))


@pytest.mark.slow
def test_main_job_leaves_prompt_logs_and_metrics(runs):
  model_dir, metrics = runs["prompt"]
  final_step = _lm_step() + STEPS
  assert metrics["step"] == final_step
  # A percentage of the 400 dev examples (labels balanced, chance 50), well above chance
  # (99.75 measured; test_issue_6_thresholds holds the issue's target).
  assert _accuracy(metrics) * 4 == pytest.approx(round(_accuracy(metrics) * 4)), metrics
  assert _accuracy(metrics) > 75.0, metrics
  # TensorBoard holds the same value as metrics.jsonl.
  tag = "synthetic_taskless_super_glue_boolq_v102/accuracy"
  assert _tensorboard_scalars(model_dir / "eval", tag)[final_step] == pytest.approx(
      _accuracy(metrics), rel=1e-6
  )
  assert list((model_dir / "train").glob("events.out.tfevents.*"))
  (npy,) = (model_dir / "numpy_checkpoints").glob(f"checkpoint_{final_step}/*.npy")
  assert npy.name == "encoder.prompt.prompt.prompt.npy"
  prompt = np.load(npy)
  assert prompt.shape == (20, embedded.load_config().emb_dim)
  # Only the prompt trained: every backbone parameter is bit for bit the initial checkpoint's.
  trained = _flat_params(model_dir / f"checkpoint_{final_step}")
  initial = _flat_params(embedded.checkpoint_path())
  assert set(trained) == set(initial) | {"encoder/prompt/prompt/prompt"}
  for name, value in initial.items():
    np.testing.assert_array_equal(trained[name], value, err_msg=name)
  np.testing.assert_array_equal(trained["encoder/prompt/prompt/prompt"], prompt)


@pytest.mark.slow
def test_model_tuning_trains_every_parameter(runs):
  model_dir = runs["model"][0]
  initial = _flat_params(embedded.checkpoint_path())
  (ckpt,) = (model_dir / "numpy_checkpoints").glob(f"checkpoint_{_lm_step() + STEPS}")
  exported = {p.name[: -len(".npy")].replace(".", "/"): np.load(p) for p in ckpt.glob("*.npy")}
  assert set(exported) == set(initial)  # No prompt; every parameter trainable.
  unchanged = [name for name, value in initial.items() if np.array_equal(exported[name], value)]
  assert not unchanged, unchanged


@pytest.mark.slow
def test_issue_6_thresholds(runs):
  prompt = _accuracy(runs["prompt"][1])
  model = _accuracy(runs["model"][1])
  random = _accuracy(runs["random"][1])
  # Issue #6's targets, met here at a sixth of the main job's 600 steps.
  assert prompt >= 85.0, (prompt, model, random)
  assert prompt >= 0.9 * model, (prompt, model, random)
  assert prompt - random >= 20.0, (prompt, model, random)
