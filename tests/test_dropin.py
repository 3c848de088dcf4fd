"""The original prompt-tuning's users: their gin names, command lines, checkpoints and prompts.

References are the original's own artefacts: its demo scripts' command lines (sst2-demo.sh,
sst2-demo-eval.sh; only the entry point, the model size and the paths changed), the layout of the
checkpoint its T5X training writes (golden/original/param_tree.txt) and its released prompts.
"""

import ast
import json
import pathlib

import gin
import jax
import numpy as np
import pytest

import cli_utils
from cli_utils import TASK_MODULE, TASK_NAME, Cli, read_jsonl
from conftest import FIXTURES, GOLDEN, T5_VOCAB, TINY_CHECKPOINT, require
from prompt_tuning import checkpoints
from prompt_tuning import config

PROMPT = "encoder/prompt/prompt/prompt"
# The original's numpy export of the prompt: np.save to a file handle, so no `.npy` suffix.
ORIGINAL_PROMPT_NPY = "encoder.prompt.prompt.prompt"
PREFIX = "prompt_tuning/configs/"
TINY_MODEL = [f"--gin_file={PREFIX}models/t5_1_1_prompt.gin", "--gin_file=models/sizes/tiny.gin"]
LENGTHS = "{'inputs': 12, 'targets': 4}"
FINETUNE = [
    f"{PREFIX}models/t5_1_1_base_prompt.gin",
    f"{PREFIX}prompts/from_class_labels.gin",
    f"{PREFIX}runs/prompt_finetune.gin",
]
EVAL = [f"{PREFIX}models/t5_1_1_base_prompt.gin", f"{PREFIX}runs/prompt_eval.gin"]


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(files, bindings):
  config.parse_gin(files, bindings)
  config.check_macros_are_read()


def _value(selector: str):
  """A binding's value, through any macros it refers to."""
  value = gin.query_parameter(selector)
  while isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
    value = gin.query_parameter(f"%{value.scoped_selector.split('/')[0]}")
  return value


# ------------------------------------------------------------------------------------------------
# Gin names: each T5X / original name has the effect of the project's own.


@pytest.mark.parametrize(
    "files, alias, canonical, value",
    [
        (FINETUNE, "utils.SaveCheckpointConfig.period", "train_state.CheckpointConfig.period", 7),
        (FINETUNE, "utils.SaveCheckpointConfig.keep", "train_state.CheckpointConfig.keep", 20),
        (FINETUNE, "train/utils.DatasetConfig.batch_size", "pipeline.DatasetConfig.batch_size", 8),
        (FINETUNE, "train/utils.DatasetConfig.seed", "pipeline.DatasetConfig.seed", 5),
        (FINETUNE, "train/utils.DatasetConfig.shuffle", "pipeline.DatasetConfig.shuffle", False),
        (
            FINETUNE,
            "train/utils.DatasetConfig.use_cached",
            "pipeline.DatasetConfig.use_cached",
            True,
        ),
        (FINETUNE, "train_eval/utils.DatasetConfig.split", "training.run.eval_split", "test"),
        (FINETUNE, "infer_eval/utils.DatasetConfig.batch_size", "training.run.eval_batch_size", 3),
        (
            FINETUNE,
            "partitioning.PjitPartitioner.num_partitions",
            "partitioning.Partitioner.num_partitions",
            2,
        ),
        (
            FINETUNE,
            "partitioning.PjitPartitioner.model_parallel_submesh",
            "partitioning.Partitioner.num_partitions",
            ((2, 1, 1, 2), 4),
        ),
        (
            FINETUNE,
            "prompt_init/prompts.from_sample_of_embeddings.population_size",
            "prompts.sampled_vocab.population_size",
            1000,
        ),
        (
            FINETUNE,
            "utils.create_learning_rate_scheduler.base_learning_rate",
            "optim.create_optimizer.learning_rate",
            0.5,
        ),
        (
            FINETUNE,
            "utils.create_learning_rate_scheduler.base_learning_rate",
            "training.run.learning_rate",
            0.5,
        ),
        (
            [f"{PREFIX}models/t5_1_1_base_prompt.gin", f"{PREFIX}runs/prompt_finetune.gin"],
            "prompt_init/linen.initializers.uniform.scale",
            "prompts.random_uniform.scale",
            0.1,
        ),
        (EVAL, "utils.DatasetConfig.split", "evaluation.run.split", "test"),
        (EVAL, "utils.DatasetConfig.batch_size", "evaluation.run.batch_size", 128),
        (EVAL, "utils.DatasetConfig.use_cached", "evaluation.run.use_cached", True),
        (EVAL, "utils.DatasetConfig.module", "evaluation.run.mixture_or_task_module", "my.tasks"),
    ],
)
def test_t5x_alias_sets_the_projects_setting(files, alias, canonical, value):
  given, expected = value if isinstance(value, tuple) else (value, value)
  _parse(files, [f"{alias} = {given!r}"])
  assert _value(canonical) == expected
  # The alias binding is gone: nothing but the project's names remains in the configuration.
  assert not [s for _, s in gin.config._CONFIG if s.startswith(("utils.", "linen."))]


@pytest.mark.parametrize(
    "files, binding, message",
    [
        (FINETUNE, "train/utils.DatasetConfig.pack = True", r"pack=True is not supported"),
        (FINETUNE, "utils.SaveCheckpointConfig.dtype = 'bfloat16'", r"dtype='bfloat16'"),
        # T5X's finetune.gin binds every field of its scoped datasets: unscoped, it does nothing.
        (FINETUNE, "utils.DatasetConfig.batch_size = 8", r"has no effect in this configuration"),
        (EVAL, "utils.DatasetConfig.shuffle = True", r"has no effect in this configuration"),
        (FINETUNE, "utils.RestoreCheckpointConfig.path = 'x'", r"INITIAL_CHECKPOINT_PATH"),
        (FINETUNE, "trainer.Trainer.num_microbatches = 2", r"num_microbatches\) is not supported"),
        (FINETUNE, "utils.SaveCheckpointConfig.save_dataset = True", r"supported: period, keep"),
    ],
)
def test_unsupported_t5x_settings_fail_with_the_projects_equivalent(files, binding, message):
  with pytest.raises(config.ConfigError, match=message):
    _parse(files, [binding])


def test_the_originals_gin_files_resolve_to_the_projects():
  _parse(
      [
          f"{PREFIX}models/t5_1_1_base_prompt.gin",
          f"{PREFIX}prompts/from_sampled_vocab_numpy.gin",
          f"{PREFIX}models/decoding/nucleus_sampling.gin",
          f"{PREFIX}runs/prompt_infer.gin",
      ],
      ["EMBEDDING_FILE = '/e.npy'", "INFER_OUTPUT_DIR = '/tmp/o'"],
  )
  assert _value("prompts.load_embeddings.path") == "/e.npy"
  assert _value("%PROMPT").selector.endswith("prompts.sampled_vocab")
  kwargs = gin.query_parameter("model.EncoderDecoderModel.decode_kwargs")
  assert gin.query_parameter("model.EncoderDecoderModel.decode_fn").selector.endswith(
      "temperature_sample"
  )
  assert [
      _value(f"%{kwargs[k].scoped_selector.split('/')[0]}") for k in ("temperature", "topk", "topp")
  ] == [
      1.0,
      0,
      0.9,
  ]
  gin.clear_config()
  _parse(
      [
          f"{PREFIX}models/t5_1_1_base_prompt.gin",
          f"{PREFIX}prompts/from_class_labels_numpy.gin",
          f"{PREFIX}runs/prompt_finetune.gin",
      ],
      ["EMBEDDING_FILE = '/e.npy'"],
  )
  assert _value("%PROMPT").selector.endswith("prompts.class_labels")
  assert _value("prompts.load_embeddings.path") == "/e.npy"


def test_embeddings_load_from_an_npy_without_suffix(tmp_path):
  from prompt_tuning import prompts  # pylint: disable=g-import-not-at-top

  table = np.arange(12, dtype=np.float32).reshape(6, 2)
  with open(tmp_path / "table", "wb") as f:  # As the original's np_save writes it.
    np.save(f, table)
  np.testing.assert_array_equal(prompts.load_embeddings(str(tmp_path / "table")), table)


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte"])
def test_released_prompts_load_through_from_file_gin(task):
  """The released base-size prompts fit the base prompt model read through the eval config."""
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import restore  # pylint: disable=g-import-not-at-top

  path = require(FIXTURES / "pretrained_prompts" / "t5_1_1_lm100k_base" / f"{task}.npy")
  config.parse_gin(EVAL, [f"PROMPT_FILE = {str(path)!r}"])  # prompt_eval.gin adds from_file.gin.
  model = config.macro("MODEL", evaluate=True)
  spec = restore.ParamSpec.of(model, partitioning.Partitioner())  # Shapes only: nothing allocated.
  shape = spec.shapes["encoder"]["prompt"]["prompt"]["prompt"].shape
  init = config.macro("PROMPT", evaluate=True)
  np.testing.assert_array_equal(init(jax.random.PRNGKey(0), shape), np.load(path))


# ------------------------------------------------------------------------------------------------
# The demo command lines, and checkpoints in the original's layout, through the CLI.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("dropin")
  cli_utils.write_task(root / "tasks")
  return root


@pytest.fixture(scope="module")
def env(workdir):
  return cli_utils.make_env(workdir / "tasks", require(T5_VOCAB))


def _demo_train_args(model_dir, train_steps, extra=()) -> list[str]:
  """sst2-demo.sh's arguments; the model is the tiny one, the task a local SST-2-like one."""
  return [
      f"--gin_search_paths={pathlib.Path(config.__file__).parents[1]}",
      *TINY_MODEL,
      f"--gin_file={PREFIX}prompts/from_class_labels.gin",
      f"--gin_file={PREFIX}runs/prompt_finetune.gin",
      "--gin.CLASS_LABELS=['positive', 'negative']",
      f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{TASK_NAME}'",
      f"--gin.MIXTURE_OR_TASK_MODULE='{TASK_MODULE}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      f"--gin.INITIAL_CHECKPOINT_PATH='{require(TINY_CHECKPOINT)}'",
      f"--gin.TRAIN_STEPS={train_steps}",
      "--gin.USE_CACHED_TASKS=False",
      "--gin.BATCH_SIZE=4",
      *extra,
      f"--tfds_data_dir={model_dir}/tfds",
  ]


def _demo_eval_args(out_dir, checkpoint, prompt_file, extra=()) -> list[str]:
  """sst2-demo-eval.sh's arguments: the backbone as CHECKPOINT_PATH, the prompt as PROMPT_FILE."""
  args = [
      *TINY_MODEL,
      f"--gin_file={PREFIX}runs/prompt_eval.gin",
      f"--gin.MIXTURE_OR_TASK_NAME='{TASK_NAME}'",
      f"--gin.MIXTURE_OR_TASK_MODULE='{TASK_MODULE}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      f"--gin.CHECKPOINT_PATH='{checkpoint}'",
      f"--gin.EVAL_OUTPUT_DIR='{out_dir}'",
      "--gin.utils.DatasetConfig.split='validation'",
      "--gin.utils.DatasetConfig.batch_size=4",
      "--gin.USE_CACHED_TASKS=False",
      *extra,
      f"--tfds_data_dir={out_dir}/tfds",
  ]
  if prompt_file:
    args.append(f"--gin.PROMPT_FILE='{prompt_file}'")
  return args


def _infer_args(out_dir, prompt_length, checkpoint=None, prompt_file=None, initial=None):
  args = [
      *TINY_MODEL,
      f"--gin_file={PREFIX}runs/prompt_infer.gin",
      f"--gin.MIXTURE_OR_TASK_NAME='{TASK_NAME}'",
      f"--gin.MIXTURE_OR_TASK_MODULE='{TASK_MODULE}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      f"--gin.INFER_OUTPUT_DIR='{out_dir}'",
      "--gin.utils.DatasetConfig.split='validation'",
      "--gin.utils.DatasetConfig.batch_size=4",
      f"--gin.PROMPT_LENGTH={prompt_length}",
      "--gin.ACTIVATION_DTYPE='float32'",
  ]
  if checkpoint:
    args.append(f"--gin.CHECKPOINT_PATH='{checkpoint}'")
  if prompt_file:
    args.append(f"--gin.PROMPT_FILE='{prompt_file}'")
  if initial:
    args.append(f"--gin.INITIAL_CHECKPOINT_PATH='{initial}'")
  return args


def _infer_scores(out_dir) -> list[float]:
  return [r["score"] for r in read_jsonl(out_dir / f"{TASK_NAME}-predict.jsonl-00000-of-00001")]


@pytest.mark.slow
def test_sst2_demo_command_lines_train_eval_and_infer(workdir, env):
  model_dir = workdir / "demo"
  train = Cli(
      "train",
      _demo_train_args(
          model_dir,
          6,  # The tiny checkpoint is at step 3: three prompt-tuning steps.
          ["--gin.utils.SaveCheckpointConfig.period=2", "--gin.utils.SaveCheckpointConfig.keep=1"],
      ),
      env,
      workdir / "logs",
      "demo_train",
  ).check()
  del train
  # keep=1, period=2: only the last checkpoint (of steps 4 and 6) stays, with its numpy prompt.
  assert checkpoints.all_checkpoint_steps(model_dir) == [6]
  prompts = sorted((model_dir / "numpy_checkpoints").iterdir())
  assert [p.name for p in prompts] == ["checkpoint_6"]
  prompt_file = prompts[-1] / f"{ORIGINAL_PROMPT_NPY}.npy"
  assert np.load(prompt_file).shape == (100, 4)  # The original's PROMPT_LENGTH default.

  eval_dir = workdir / "demo_eval"
  ev = Cli(
      "eval",
      _demo_eval_args(eval_dir, require(TINY_CHECKPOINT), prompt_file),
      env,
      workdir / "logs",
      "demo_eval",
  )
  infer_dir = workdir / "demo_infer"
  inf = Cli(
      "infer",
      _infer_args(infer_dir, 100, require(TINY_CHECKPOINT), prompt_file),
      env,
      workdir / "logs",
      "demo_infer",
  )
  ev.check()
  inf.check()
  metrics = json.loads(ev.stdout[ev.stdout.index("{") :])
  assert set(metrics[TASK_NAME]) >= {"accuracy"}
  assert (eval_dir / f"{TASK_NAME}-metrics.jsonl").exists()
  assert len(_infer_scores(infer_dir)) == 8


def _original_checkpoint(directory: pathlib.Path, prompt: np.ndarray, step: int) -> pathlib.Path:
  """A checkpoint laid out as the original's training writes it (param_tree.txt): the backbone and
  the prompt in `target`, Adafactor slots for the prompt only, None for every frozen parameter."""
  target = checkpoints.load_t5x_checkpoint(require(TINY_CHECKPOINT))
  target["encoder"]["prompt"] = {"prompt": {"prompt": prompt}}
  states = {"/".join(k): None for k in _paths(target) if "/".join(k) != PROMPT}
  placeholder = np.zeros((1,), np.float32)
  states[PROMPT] = {
      "v": np.full(prompt.shape, 0.01, np.float32),
      "v_row": placeholder,
      "v_col": placeholder,
      "m": placeholder,
  }
  nested = {}
  for path, value in states.items():
    node = nested
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  path = directory / f"checkpoint_{step}"
  checkpoints.save_t5x_checkpoint(path, target, step=step, state=nested)
  return path


def _paths(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _paths(v, prefix + (k,))
    else:
      yield prefix + (k,)


def _state_listing(path) -> dict[str, object]:
  """`state/...` path -> shape (None for None), as param_tree.txt lists the original's."""
  state = checkpoints.load_state(path)
  out = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, prefix + [k])
    else:
      out["/".join(["state"] + prefix)] = None if node is None else tuple(np.shape(node))

  walk(state, [])
  return out


def _golden_state_listing() -> dict[str, object]:
  lines = require(GOLDEN / "param_tree.txt").read_text().splitlines()
  start = lines.index("## prompt_tuned_fp32: optimizer state (MultiOptimizer); step=3") + 1
  out = {}
  for line in lines[start:]:
    if line.startswith("#") or not line.strip():
      break
    path, shape, dtype = line.split("\t")
    out[path] = None if dtype == "NoneType" else ast.literal_eval(shape)
  return out


@pytest.mark.slow
def test_original_full_checkpoint_evaluates_like_its_prompt_npy_and_resumes(workdir, env):
  length = 5
  rng = np.random.RandomState(0)
  prompt = (5.0 + rng.uniform(-0.5, 0.5, (length, 4))).astype(np.float32)
  original_dir = workdir / "original_model_dir"
  ckpt = _original_checkpoint(original_dir, prompt, step=3)
  npy_dir = original_dir / "numpy_checkpoints" / "checkpoint_3"
  npy_dir.mkdir(parents=True)
  with open(npy_dir / ORIGINAL_PROMPT_NPY, "wb") as f:  # No suffix, as the original saves it.
    np.save(f, prompt)
  other = npy_dir.parent / "other"
  np.save(other, -prompt)

  logs = workdir / "logs"
  from_checkpoint = Cli(
      "infer", _infer_args(workdir / "inf_ckpt", length, checkpoint=ckpt), env, logs, "inf_ckpt"
  )
  from_npy = Cli(
      "infer",
      _infer_args(
          workdir / "inf_npy",
          length,
          prompt_file=npy_dir / ORIGINAL_PROMPT_NPY,
          initial=require(TINY_CHECKPOINT),
      ),
      env,
      logs,
      "inf_npy",
  )
  # Given both, the file's prompt wins, as with the original's prompt_infer.gin.
  file_wins = Cli(
      "infer",
      _infer_args(workdir / "inf_other", length, checkpoint=ckpt, prompt_file=f"{other}.npy"),
      env,
      logs,
      "inf_other",
  )
  for cli in (from_checkpoint, from_npy, file_wins):
    cli.check()
  by_checkpoint = _infer_scores(workdir / "inf_ckpt")
  np.testing.assert_allclose(by_checkpoint, _infer_scores(workdir / "inf_npy"), rtol=1e-6)
  assert np.abs(np.subtract(by_checkpoint, _infer_scores(workdir / "inf_other"))).max() > 1e-3

  # Continued training in the original's MODEL_DIR: its step, prompt and slots are resumed, and
  # the full checkpoint written has the original's state layout.
  Cli(
      "train",
      _demo_train_args(
          original_dir,
          5,
          [
              f"--gin.PROMPT_LENGTH={length}",
              "--gin.SAVE_MODE='full'",
              "--gin.ACTIVATION_DTYPE='float32'",
              "--gin.EVAL_PERIOD=None",
          ],
      ),
      env,
      logs,
      "resume_original",
  ).check()
  assert checkpoints.all_checkpoint_steps(original_dir) == [3, 5]
  new = original_dir / "checkpoint_5"
  trained = checkpoints.load_t5x_checkpoint(new, regex=PROMPT)["encoder"]["prompt"]["prompt"]
  # Two Adafactor steps of at most lr 0.3 each (clipped): it started from the saved prompt.
  assert np.abs(trained["prompt"] - prompt).max() <= 0.6 + 1e-3
  assert checkpoints.list_parameters(new) == checkpoints.list_parameters(ckpt)
  listing = _state_listing(new)
  listing.pop("state/input_position")
  assert listing == _golden_state_listing()
