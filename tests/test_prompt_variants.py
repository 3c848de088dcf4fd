"""Input-level prompt variants: placement, reparameterisation, multi-task prompts.

References are independent of the code under test: a prompt whose rows are the embeddings of
real tokens must give what the plain model gives on a hand-built token sequence holding those
tokens where the prompt goes; a multi-task batch must give what each example gives alone with
its task's exported prompt; a reparameterised prompt's export is recomputed with numpy.
"""

import functools
import json
import pathlib

import cli_utils
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import embedded
from prompt_tuning import model as model_lib
from prompt_tuning import placement
from prompt_tuning import prompt_variants
from prompt_tuning import prompts
from prompt_tuning.models import t5

CFG = t5.config_for_size("tiny", dtype="float32", vocab_size=64)
TOL = 1e-5
# Two examples, the second one full: the suffix goes after each one's last real token (EOS, 1).
TOKENS = np.array([[5, 6, 7, 1, 0, 0], [8, 9, 10, 11, 12, 1]], np.int32)
DECODER_IN = np.array([[0, 3, 4], [0, 5, 0]], np.int32)
DECODER_TARGETS = np.array([[3, 4, 1], [5, 1, 0]], np.int32)
PROMPT_TOKENS = [20, 21, 22]  # The prompt's rows are these tokens' embeddings.


PLAIN = t5.EncoderDecoder(CFG)


@functools.lru_cache(maxsize=1)
def _plain_params():
  ones = jnp.ones((1, 4), jnp.int32)
  variables = jax.eval_shape(lambda: PLAIN.init(jax.random.PRNGKey(0), ones, ones, ones))
  return _random_like(nn.unbox(variables["params"]), seed=0)


def _with_prompt(params, prompt_params):
  return {**params, "encoder": {**params["encoder"], "prompt": prompt_params}}


@functools.partial(jax.jit, static_argnums=0)
def _run(module, params, tokens, decoder_in, decoder_targets):
  variables = {"params": params}
  encoded = module.apply(variables, tokens, method=module.encode)
  logits = module.apply(variables, tokens, decoder_in, decoder_targets)
  return encoded, logits


def _hand_built(tokens, inserted, where):
  """Each row with `inserted` placed by hand as the docs describe, padding moved to the end."""
  rows = []
  for row in tokens:
    real = [int(t) for t in row if t > 0]
    pad = [0] * (len(row) - len(real))
    if where == "prefix":
      rows.append(inserted + real + pad)
    elif where == "after_first":
      rows.append(real[:1] + inserted + real[1:] + pad)
    else:
      rows.append(real + inserted + pad)
  return np.array(rows, np.int32)


@pytest.mark.parametrize("where", placement.PLACEMENTS)
def test_placement_equals_plain_model_on_hand_built_tokens(where):
  params = _plain_params()
  table = np.asarray(params["token_embedder"]["embedding"])
  prompted = t5.EncoderDecoder(
      CFG,
      prompt_factory=prompts.input_prompt_factory(
          3, prompts.from_array(table[PROMPT_TOKENS]), where
      ),
  )
  prompt_params = {"prompt": {"prompt": table[PROMPT_TOKENS]}}
  encoded, logits = _run(
      prompted, _with_prompt(params, prompt_params), TOKENS, DECODER_IN, DECODER_TARGETS
  )
  reference_tokens = _hand_built(TOKENS, PROMPT_TOKENS, where)
  ref_encoded, ref_logits = _run(PLAIN, params, reference_tokens, DECODER_IN, DECODER_TARGETS)
  assert encoded.shape == (2, 9, CFG.emb_dim)
  np.testing.assert_allclose(encoded, ref_encoded, atol=TOL, rtol=0)  # Padding rows: 0 in both.
  np.testing.assert_allclose(logits, ref_logits, atol=TOL, rtol=0)  # Cross-attention masks.
  valid = jax.jit(lambda t: placement.valid_positions(t, 3, where))(TOKENS)
  np.testing.assert_array_equal(valid, reference_tokens > 0)


def test_placement_rejects_unknown_name():
  with pytest.raises(ValueError, match="PROMPT_PLACEMENT='middle'.*suffix"):
    prompts.input_prompt_factory(3, prompts.random_uniform(), "middle")


# ------------------------------------------------------------------------------------------------
# Reparameterised prompt.


def _random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape) * 0.3 for k, x in zip(keys, leaves)])


def _prompt_params(factory, seed):
  """The prompt module's parameters, randomised (so no term of the computation is zero)."""
  ones = jnp.ones((1, 4), jnp.int32)
  module = t5.EncoderDecoder(CFG, prompt_factory=factory)
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ones, ones, ones))
  return _random_like(nn.unbox(variables["params"])["encoder"]["prompt"], seed)


def test_reparam_export_is_the_computed_prompt_and_serves_as_a_plain_one():
  factory = prompt_variants.reparam_prompt_factory(3, prompts.random_uniform(), 5, "suffix")
  prompt_params = _prompt_params(factory, seed=1)
  params = _with_prompt(_plain_params(), prompt_params)
  reparam = t5.EncoderDecoder(CFG, prompt_factory=factory)
  exported = jax.jit(model_lib.EncoderDecoderModel(reparam).numpy_exports)(params)
  assert list(exported) == ["encoder.prompt.prompt.prompt"]
  e = np.asarray(prompt_params["embedding"]["prompt"], np.float64)
  mlp = {k: np.asarray(v, np.float64) for k, v in prompt_params["mlp"].items()}
  hidden = np.maximum(e @ mlp["down_kernel"] + mlp["down_bias"], 0)
  expected = e + hidden @ mlp["up_kernel"] + mlp["up_bias"]
  np.testing.assert_allclose(exported["encoder.prompt.prompt.prompt"], expected, atol=1e-5)
  # The plain prompt module with the exported file gives what the reparameterised model gives.
  plain = t5.EncoderDecoder(
      CFG, prompt_factory=prompts.input_prompt_factory(3, prompts.random_uniform(), "suffix")
  )
  plain_params = _with_prompt(
      _plain_params(), {"prompt": {"prompt": exported["encoder.prompt.prompt.prompt"]}}
  )
  got = _run(reparam, params, TOKENS, DECODER_IN, DECODER_TARGETS)
  want = _run(plain, plain_params, TOKENS, DECODER_IN, DECODER_TARGETS)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=TOL, rtol=0)


def test_reparam_starts_at_its_initialiser():
  init = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
  module = prompt_variants.ReparamPrompt(3, prompts.from_array(init), 6)
  embedded, tokens = jnp.zeros((1, 2, 4)), jnp.ones((1, 2), jnp.int32)
  # `init` is the initialiser field (as in `prompts.InputPrompt`): Flax's init_with_output.
  _, variables = module.init_with_output(jax.random.PRNGKey(0), embedded, tokens)
  exported = module.apply(variables, 4, method=module.exports)
  np.testing.assert_allclose(exported["encoder.prompt.prompt.prompt"], init, atol=1e-6)
  assert np.abs(nn.unbox(variables)["params"]["mlp"]["down_kernel"]).max() > 0


# ------------------------------------------------------------------------------------------------
# Multi-task prompts.

TASKS = ("alpha", "beta", "gamma")
FIRST_TASK_TOKEN = CFG.vocab_size - 1  # Task i's token is FIRST_TASK_TOKEN - i.


@pytest.mark.parametrize("how,task_length,where", [("concat", 2, "prefix"), ("add", 0, "suffix")])
def test_multitask_batch_equals_each_example_alone_with_its_exported_prompt(
    how, task_length, where
):
  factory = prompt_variants.multitask_prompt_factory(
      3, TASKS, FIRST_TASK_TOKEN, how, task_length, placement=where
  )
  params = _with_prompt(_plain_params(), _prompt_params(factory, seed=2))
  module = t5.EncoderDecoder(CFG, prompt_factory=factory)
  tasks = [2, 0, 1, 2]
  rows = [[5, 6, 7, 1, 0], [8, 9, 1, 0, 0], [10, 11, 12, 13, 1], [14, 1, 0, 0, 0]]
  tokens = np.array([[FIRST_TASK_TOKEN - t] + r for t, r in zip(tasks, rows)], np.int32)
  decoder_in = np.array([[0, 3, 4], [0, 5, 0], [0, 6, 7], [0, 8, 9]], np.int32)
  targets = np.array([[3, 4, 1], [5, 1, 0], [6, 7, 1], [8, 9, 1]], np.int32)
  encoded, logits = _run(module, params, tokens, decoder_in, targets)
  exported = jax.jit(model_lib.EncoderDecoderModel(module).numpy_exports)(params)
  assert sorted(exported) == [f"tasks/{n}" for n in sorted(TASKS)]
  length = 3 + task_length
  assert encoded.shape == (4, length + 5, CFG.emb_dim)
  alone = t5.EncoderDecoder(  # One module for every example: one compilation.
      CFG, prompt_factory=prompts.input_prompt_factory(length, prompts.random_uniform(), where)
  )
  for i, task in enumerate(tasks):
    prompt = exported[f"tasks/{TASKS[task]}"]
    assert prompt.shape == (length, CFG.emb_dim)
    alone_params = _with_prompt(_plain_params(), {"prompt": {"prompt": prompt}})
    want_encoded, want_logits = _run(
        alone, alone_params, tokens[i : i + 1, 1:], decoder_in[i : i + 1], targets[i : i + 1]
    )
    np.testing.assert_allclose(encoded[i : i + 1], want_encoded, atol=TOL, rtol=0)
    np.testing.assert_allclose(logits[i : i + 1], want_logits, atol=TOL, rtol=0)


def test_multitask_exports_combine_shared_and_task_prompts():
  factory = prompt_variants.multitask_prompt_factory(2, TASKS, FIRST_TASK_TOKEN, "add")
  prompt_params = _prompt_params(factory, seed=3)
  module = t5.EncoderDecoder(CFG, prompt_factory=factory)
  exported = model_lib.EncoderDecoderModel(module).numpy_exports(
      _with_prompt(_plain_params(), prompt_params)
  )
  shared = np.asarray(prompt_params["shared"]["prompt"])
  task_parts = np.asarray(prompt_params["tasks"]["prompt"])
  assert task_parts.shape == (3, 2, CFG.emb_dim)
  for i, name in enumerate(TASKS):
    np.testing.assert_allclose(exported[f"tasks/{name}"], shared + task_parts[i], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(how="mean"), "MULTITASK_COMBINE='mean'"),
        (dict(how="concat", task_length=0), "positive TASK_PROMPT_LENGTH"),
        (dict(how="add", task_length=4), "TASK_PROMPT_LENGTH=4 would be ignored"),
        (dict(task_names=("a", "a")), "distinct"),
        (dict(task_names=("a/b",)), "file names"),
    ],
)
def test_multitask_settings_are_checked(kwargs, match):
  args = dict(shared_length=3, task_names=TASKS, first_task_token=FIRST_TASK_TOKEN, how="add")
  with pytest.raises(ValueError, match=match):
    prompt_variants.multitask_prompt_factory(**{**args, **kwargs})


def test_multitask_mixture_of_some_tasks_indexes_them_by_their_own_tokens():
  """The RTE+CB mixture's tasks prepend their own tokens (the registered tasks' preprocessor
  run on a stand-in example), which the prompt maps to its task prompts in `task_names` order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from prompt_tuning.data import pipeline  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import vocab  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tasks import multitask  # pylint: disable=g-import-not-at-top

  tasks = ("rte", "cb")
  vocab.set_default_vocab_path(embedded.vocab_path())  # The synthetic tasks' vocabulary.
  try:
    first = multitask.first_task_token(tasks=tasks)
  finally:
    vocab.set_default_vocab_path(None)
  assert multitask.task_names(tasks) == tasks
  mixture = pipeline.get_task(multitask.mixture_name(tasks))
  assert sorted(t.name for t in mixture.tasks) == sorted(map(multitask.task_name, tasks))
  for index, name in enumerate(tasks):
    prepend = pipeline.get_task(multitask.task_name(name)).preprocessors[-2]
    vocab.set_default_vocab_path(embedded.vocab_path())
    try:
      (example,) = prepend(tf.data.Dataset.from_tensors({"inputs": tf.constant([5, 6])}))
    finally:
      vocab.set_default_vocab_path(None)
    token = int(example["inputs"][0])
    assert int(prompt_variants.task_index(jnp.array([token]), first, len(tasks))[0]) == index
  assert multitask.target_task("synthetic_taskless_super_glue_cb_v102", tasks) == (
      "synthetic_multitask_super_glue_cb_v102"
  )
  with pytest.raises(ValueError, match="consecutive"):
    multitask.task_names(("boolq", "cb"))
  with pytest.raises(ValueError, match="the target must be one of"):
    multitask.target_task("synthetic_taskless_super_glue_boolq_v102", tasks)
  with pytest.raises(ValueError, match="no such mixture"):
    multitask.mixture_name(("boolq", "rte"))


# ------------------------------------------------------------------------------------------------
# End to end: the reparameterised prompt through the command line.


def _printed_metrics(stdout: str) -> dict:
  """The metrics JSON `prompt_tuning.eval` prints last."""
  lines = stdout.splitlines()
  start = max(i for i, line in enumerate(lines) if line == "{")
  return json.loads("\n".join(lines[start:]))


@pytest.mark.slow
def test_reparam_trains_saves_reloads_and_its_export_evaluates_as_a_plain_prompt(tmp_path):
  env = cli_utils.make_env(tmp_path, pathlib.Path(embedded.vocab_path()))
  model_dir = tmp_path / "reparam"
  task = {
      "MIXTURE_OR_TASK_MODULE": "prompt_tuning.tasks.synthetic",
      "MIXTURE_OR_TASK_NAME": "synthetic_taskless_super_glue_boolq_v102",
      "TASK_FEATURE_LENGTHS": {"inputs": 64, "targets": 4},
      "PROMPT_LENGTH": 20,
      "ACTIVATION_DTYPE": "float32",
  }
  steps = {"TRAIN_STEPS": 5002, "EVAL_PERIOD": 2, "CHECKPOINT_PERIOD": 2, "LOG_PERIOD": 1}
  cli_utils.Cli(
      "train",
      ["--gin_file=runs/embedded_default.gin", "--gin_file=prompts/residual_reparam.gin"]
      + cli_utils.gin_flags({**steps, "MODEL_DIR": model_dir}),
      env,
      tmp_path / "logs",
      "train",
  ).check(timeout=600)
  trained = cli_utils.read_jsonl(model_dir / "eval" / "metrics.jsonl")[-1]
  accuracy = trained["synthetic_taskless_super_glue_boolq_v102/accuracy"]
  exported = (
      model_dir / "numpy_checkpoints" / "checkpoint_5002" / "encoder.prompt.prompt.prompt.npy"
  )
  assert np.load(exported).shape == (20, 128)
  model_files = [
      "--gin_file=models/t5_1_1_prompt.gin",
      "--gin_file=models/sizes/embedded.gin",
      "--gin_file=models/decoding/greedy.gin",
  ]
  evals = {
      # The checkpoint (matrix + MLP) restored into the reparameterised model.
      "reload": model_files
      + ["--gin_file=prompts/residual_reparam.gin", "--gin_file=runs/prompt_eval.gin"]
      + cli_utils.gin_flags({**task, "MODEL_DIR": model_dir}),
      # The export alone, read by the plain prompt model as any saved prompt.
      "plain": model_files
      + ["--gin_file=runs/prompt_eval.gin"]
      + cli_utils.gin_flags({**task, "PROMPT_FILE": exported}),
  }
  runs = {
      name: cli_utils.Cli("eval", args, env, tmp_path / "logs", name)
      for name, args in evals.items()
  }
  for name, run in runs.items():
    metrics = _printed_metrics(run.check(timeout=600).stdout)
    assert metrics["synthetic_taskless_super_glue_boolq_v102"]["accuracy"] == accuracy, name
