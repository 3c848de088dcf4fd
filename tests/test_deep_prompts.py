"""Deep prompts (prompt_tuning/deep_prompts.py): per-layer key/value prefixes on a frozen T5.

References are independent of the module's code path: attention over the concatenated
[prefix; sequence] in numpy, the plain model (zero-length prefixes), decoding by re-running the
whole model without a cache, and parameter counts from the formula in the module's docstring.
"""

import json
import math
import pathlib
import shutil

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import cli_utils
from prompt_tuning import checkpoints
from prompt_tuning import config
from prompt_tuning import deep_prompt_init
from prompt_tuning import deep_prompts
from prompt_tuning import embedded
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.models import t5

# The tiny size with a small vocabulary: every test builds and compiles a few models.
CFG = t5.config_for_size("tiny", dtype="float32", vocab_size=32)
ENCODER_TOKENS = np.array([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0]], np.int32)
BATCH = {
    "encoder_input_tokens": ENCODER_TOKENS,
    "decoder_input_tokens": np.array([[0, 9, 10, 11], [0, 12, 0, 0]], np.int32),
    "decoder_target_tokens": np.array([[9, 10, 11, 1], [12, 1, 0, 0]], np.int32),
}


def _model(factory=None) -> model_lib.EncoderDecoderModel:
  return model_lib.EncoderDecoderModel(t5.EncoderDecoder(CFG, deep_prompt_factory=factory))


PLAIN = _model()
DIRECT = _model(deep_prompts.deep_prompt_factory(3, decoder=True))
MLP = _model(deep_prompts.prefix_tuning_factory(3, decoder=True, hidden_dim=5))


def _with_prompt(model, backbone, seed=0):
  """The backbone plus `model`'s deep prompt, initialised alone (no whole-model compile)."""
  prompt = model.module.deep_prompt_factory(CFG)
  both = lambda m: [m(stack) for stack in deep_prompts.STACKS]
  params = prompt.init(jax.random.PRNGKey(seed), method=both)["params"]
  return {**backbone, "deep_prompt": nn.unbox(params)}


_LOGITS = {}


def _logits(model, params, batch=BATCH):
  if id(model) not in _LOGITS:  # Each model compiles once for the whole file.
    _LOGITS[id(model)] = jax.jit(model.compute_logits)
  return np.asarray(_LOGITS[id(model)](params, batch))


@pytest.fixture(scope="module")
def backbone():
  """Random frozen weights N(0, 0.5^2) in the model's shapes (cheaper than compiling its init)."""
  shapes = jax.eval_shape(
      lambda r: nn.unbox(PLAIN.get_initial_variables(r)["params"]), jax.random.PRNGKey(0)
  )
  rng = np.random.RandomState(1)
  return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)


def test_attention_with_prefix_matches_numpy_reference():
  heads, head_dim, prefix_len, length = 2, 3, 4, 5
  rng = np.random.RandomState(0)
  x = rng.normal(size=(2, length, 6)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
  mask_bias = np.where(valid[:, None, None, :], 0.0, t5.NEG_INF).astype(np.float32)
  relpos_bias = rng.normal(size=(1, heads, length, length)).astype(np.float32)
  bias = mask_bias + relpos_bias
  prefix = rng.normal(size=(2, prefix_len, heads, head_dim)).astype(np.float32)
  attention = t5.MultiHeadAttention(heads, head_dim)
  params = nn.unbox(attention.init(jax.random.PRNGKey(1), x, x, bias)["params"])
  out = jax.jit(lambda p, x, b, kv: attention.apply({"params": p}, x, x, b, prefix_kv=kv))(
      params, x, bias, prefix
  )

  w = {name: np.asarray(p["kernel"]) for name, p in params.items()}
  split = lambda t: t.reshape(t.shape[:-1] + (heads, head_dim))
  q, k, v = (split(x @ w[name]) for name in ("query", "key", "value"))
  batch = x.shape[0]
  k = np.concatenate([np.broadcast_to(prefix[0], (batch,) + prefix[0].shape), k], axis=1)
  v = np.concatenate([np.broadcast_to(prefix[1], (batch,) + prefix[1].shape), v], axis=1)
  # The prefix columns are always visible and get no relative-position bias.
  prefix_bias = np.zeros((batch, heads, length, prefix_len), np.float32)
  full_bias = np.concatenate([prefix_bias, np.broadcast_to(bias, (batch,) + bias.shape[1:])], -1)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) + full_bias
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1) @ w["out"]
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


def test_zero_length_prefixes_are_the_plain_model(backbone):
  deep = _model(lambda cfg: deep_prompts.DeepPrompt(cfg, length=0, in_decoder=True))
  params = _with_prompt(deep, backbone)
  assert params["deep_prompt"]["encoder_prefixes"].shape == (2, 2, 0, 2, 2)
  assert params["deep_prompt"]["decoder_prefixes"].shape == (2, 2, 0, 2, 2)
  np.testing.assert_allclose(_logits(deep, params), _logits(PLAIN, backbone), atol=1e-6)


def test_decoding_with_the_cache_equals_rerunning_without_it(backbone):
  module = DIRECT.module
  params = _with_prompt(DIRECT, backbone)
  tokens = np.array([[0, 9, 10, 11], [0, 12, 13, 14]], np.int32)
  batch = {**BATCH, "decoder_input_tokens": tokens, "decoder_target_tokens": np.ones_like(tokens)}
  full = _logits(DIRECT, params, batch)
  assert not np.allclose(full, _logits(PLAIN, backbone, batch), atol=1e-3)

  @jax.jit
  def stepwise(params):
    encoded = module.apply({"params": params}, ENCODER_TOKENS, method="encode")
    decode = lambda cache, x, **kw: module.apply(
        {"params": params, **cache},
        encoded,
        ENCODER_TOKENS,
        x,
        decode=True,
        mutable=["cache"],
        method="decode",
        **kw,
    )
    _, cache = decode({}, jnp.zeros_like(tokens))
    logits = []
    for t in range(tokens.shape[1]):  # The cache holds the decoder's positions, never a prefix.
      step_logits, cache = decode(
          cache, tokens[:, t : t + 1], decode_position=t, max_decode_length=tokens.shape[1]
      )
      logits.append(step_logits[:, 0])
    return jnp.stack(logits, axis=1)

  np.testing.assert_allclose(np.asarray(stepwise(params)), full, atol=1e-5, rtol=1e-5)


def test_only_the_prefixes_get_gradients_and_optimizer_state(backbone):
  trainer = trainer_lib.Trainer(
      DIRECT,
      optim.create_optimizer,
      partitioning.Partitioner(),
      input_shapes={"inputs": 5, "targets": 4},
  )
  state, frozen = trainer.create_state(_with_prompt(DIRECT, backbone), step=0)
  names = ["deep_prompt/decoder_prefixes", "deep_prompt/encoder_prefixes"]
  assert sorted(optim.flatten(state.params)) == names
  slots = jax.tree_util.tree_leaves_with_path(state.opt_state)
  assert all("'deep_prompt'" in jax.tree_util.keystr(path) for path, _ in slots)
  assert sum(np.size(x) for _, x in slots) == sum(np.size(x) for x in jax.tree.leaves(state.params))
  before = jax.tree.map(np.asarray, state.params)
  new_state, _ = trainer.train_step(state, frozen, {k: np.asarray(v) for k, v in BATCH.items()})
  for name in names:  # Both stacks' prefixes moved: each reaches the loss.
    moved = optim.flatten(new_state.params)[name] - optim.flatten(before)[name]
    assert np.abs(np.asarray(moved)).min() > 0, name
  assert "deep_prompt" not in frozen


def _export(params, tmp_path):
  """train_state.save's numpy export of the deep prompt, then `deep_prompts.export` of it."""
  (tmp_path / "npy").mkdir()
  for name, value in optim.flatten({"deep_prompt": params["deep_prompt"]}).items():
    np.save(tmp_path / "npy" / (name.replace("/", ".") + ".npy"), np.asarray(value))
  written = deep_prompts.export(tmp_path / "npy", tmp_path / "out")
  assert sorted(p.split("/")[-1] for p in written) == [
      "deep_prompt.decoder_prefixes.npy",
      "deep_prompt.encoder_prefixes.npy",
  ]
  return tmp_path / "out"


def _reload(directory, backbone):
  """The backbone with a `DeepPrompt` started from exported prefixes."""
  prompt = deep_prompts.DeepPrompt(CFG, length=3, in_decoder=True, directory=str(directory))
  loaded = nn.unbox(prompt.init(jax.random.PRNGKey(3), "encoder")["params"])
  return {**backbone, "deep_prompt": loaded}


def test_export_of_a_deep_prompt_reloads_to_identical_logits(backbone, tmp_path):
  params = _with_prompt(DIRECT, backbone, seed=2)
  reloaded = _reload(_export(params, tmp_path), backbone)
  np.testing.assert_array_equal(_logits(DIRECT, reloaded), _logits(DIRECT, params))


def test_export_of_prefix_tuning_drops_the_mlp(backbone, tmp_path):
  params = _with_prompt(MLP, backbone, seed=2)
  reloaded = _reload(_export(params, tmp_path), backbone)
  assert sorted(reloaded["deep_prompt"]) == ["decoder_prefixes", "encoder_prefixes"]
  np.testing.assert_allclose(_logits(DIRECT, reloaded), _logits(MLP, params), atol=1e-5)


def test_training_numpy_export_of_prefix_tuning_is_a_deep_prompt(backbone, tmp_path):
  """What train_state.save writes beside the MLP's parameters (model.numpy_exports) loads as a
  plain deep prompt with the MLP model's logits; a direct deep prompt exports nothing extra."""
  params = _with_prompt(MLP, backbone, seed=4)
  exports = MLP.numpy_exports(params)
  assert sorted(exports) == ["deep_prompt.decoder_prefixes", "deep_prompt.encoder_prefixes"]
  (tmp_path / "npy").mkdir()
  for name, value in exports.items():
    np.save(tmp_path / "npy" / (name + ".npy"), np.asarray(value))
  reloaded = _reload(tmp_path / "npy", backbone)
  np.testing.assert_allclose(_logits(DIRECT, reloaded), _logits(MLP, params), atol=1e-5)
  assert DIRECT.numpy_exports(_with_prompt(DIRECT, backbone)) == {}


def test_eval_ensemble_members_from_deep_prompt_folders(backbone, tmp_path):
  """`evaluation.with_saved_prompt` (the eval command's EVAL_ENSEMBLE_PROMPTS) on a folder: the
  member's parameters are that folder's prefixes, with the logits of a model started from it."""
  from prompt_tuning import evaluation  # pylint: disable=g-import-not-at-top

  model_params = _with_prompt(DIRECT, backbone, seed=5)  # What the eval command restored.
  (tmp_path / "member").mkdir()
  folder = _export(_with_prompt(DIRECT, backbone, seed=6), tmp_path / "member")
  member = evaluation.with_saved_prompt(model_params, str(folder))
  for stack in deep_prompts.STACKS:
    np.testing.assert_array_equal(
        member["deep_prompt"][f"{stack}_prefixes"],
        np.load(folder / deep_prompts.export_name(stack)),
    )
  np.testing.assert_array_equal(_logits(DIRECT, member), _logits(DIRECT, _reload(folder, backbone)))
  assert np.abs(_logits(DIRECT, member) - _logits(DIRECT, model_params)).max() > 1e-3

  # Mismatches name the file and what the model has.
  short = tmp_path / "short"
  short.mkdir()
  for stack in deep_prompts.STACKS:
    name = deep_prompts.export_name(stack)
    np.save(short / name, np.load(folder / name)[:, :, :2])
  with pytest.raises(
      ValueError, match=r"short/deep_prompt.encoder_prefixes.npy: prefixes of shape"
  ):
    evaluation.with_saved_prompt(model_params, str(short))
  encoder_only = {
      **backbone,
      "deep_prompt": {"encoder_prefixes": model_params["deep_prompt"]["encoder_prefixes"]},
  }
  with pytest.raises(ValueError, match="decoder_prefixes.npy holds decoder prefixes but the deep"):
    evaluation.with_saved_prompt(encoder_only, str(folder))
  with pytest.raises(ValueError, match="prompts/deep_prompt_from_export.gin"):
    evaluation.with_saved_prompt(_with_prompt(MLP, backbone), str(folder))


def test_export_mismatches_are_named(tmp_path):
  with pytest.raises(deep_prompts.DeepPromptError, match="holds no deep prompt"):
    deep_prompts.export(tmp_path, tmp_path / "out")
  np.save(tmp_path / "deep_prompt.encoder_prefixes.npy", np.zeros((2, 2, 4, 2, 2), np.float32))
  np.save(tmp_path / "deep_prompt.decoder_prefixes.npy", np.zeros((2, 2, 4, 2, 2), np.float32))
  with pytest.raises(deep_prompts.DeepPromptError, match="DEEP_PROMPT_DECODER"):
    deep_prompts.deep_prompt_factory(4, decoder=False, directory=str(tmp_path))
  wrong_length = _model(deep_prompts.deep_prompt_factory(3, decoder=True, directory=str(tmp_path)))
  with pytest.raises(
      deep_prompts.DeepPromptError, match=r"deep_prompt.encoder_prefixes.npy.*\(2, 2, 3, 2, 2\)"
  ):
    _with_prompt(wrong_length, {})
  with pytest.raises(deep_prompts.DeepPromptError, match="must be positive"):
    deep_prompts.deep_prompt_factory(0)


def test_frozen_kv_prefixes_are_the_frozen_layers_keys_and_values_of_the_prompt(backbone, tmp_path):
  """Each layer's prefix is its pre-attention norm of the layer input times the frozen key/value
  kernels, the inputs computed here layer by layer on the prompt alone (no padding position)."""
  length = 3
  checkpoints.save_t5x_checkpoint(tmp_path / "ckpt", backbone, step=1)
  prompt_PxD = np.random.RandomState(2).normal(size=(length, CFG.emb_dim)).astype(np.float32)
  init = deep_prompt_init.frozen_kv(prompts.from_array(prompt_PxD), str(tmp_path / "ckpt"))
  module = deep_prompts.deep_prompt_factory(length, init=init)(CFG)
  params = jax.jit(lambda r: module.init(r, "encoder"))(jax.random.PRNGKey(0))["params"]
  got = np.asarray(nn.unbox(params)["encoder_prefixes"])

  @jax.jit
  def reference(encoder):
    relpos = t5.RelativePositionBias(
        CFG.relative_attention_num_buckets,
        CFG.relative_attention_max_distance,
        CFG.num_heads,
        bidirectional=True,
    )
    bias = relpos.apply({"params": encoder["relpos_bias"]}, length, length)
    x, out = jnp.asarray(prompt_PxD)[None], []
    for i in range(CFG.num_encoder_layers):
      layer = encoder[f"layers_{i}"]
      h = x / jnp.sqrt(jnp.mean(x**2, -1, keepdims=True) + CFG.layer_norm_epsilon)
      h = h * layer["pre_attention_layer_norm"]["scale"][None, None]
      kv = [h[0] @ layer["attention"][n]["kernel"] for n in ("key", "value")]
      out.append(jnp.stack(kv).reshape(2, length, CFG.num_heads, CFG.head_dim))
      x = t5.EncoderLayer(CFG).apply({"params": layer}, x, bias, jnp.ones((1, length, 1)))
    return jnp.stack(out)

  want = np.asarray(reference(backbone["encoder"]))
  assert got.shape == deep_prompts.prefix_shape(CFG, "encoder", length)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  assert not np.allclose(got[0], got[1], atol=1e-2)  # Layers differ: each has its own input.
  with_decoder = deep_prompts.deep_prompt_factory(length, decoder=True, init=init)(CFG)
  with pytest.raises(deep_prompts.DeepPromptError, match="encoder prefixes only"):
    jax.eval_shape(lambda r: with_decoder.init(r, "decoder"), jax.random.PRNGKey(0))


def _trainable_count(files, bindings=()):
  gin.clear_config()
  try:
    config.parse_gin(files, list(bindings))
    model = config.macro("MODEL", evaluate=True)
    shapes = jax.eval_shape(
        lambda r: model.get_initial_variables(r)["params"], jax.random.PRNGKey(0)
    )
    flat = optim.flatten(nn.unbox(shapes))
  finally:
    gin.clear_config()
  trainable = {k: v for k, v in flat.items() if optim.is_trainable(k, optim.PROMPT_PATTERNS)}
  assert all(k.startswith("deep_prompt/") for k in trainable), sorted(trainable)
  return sum(math.prod(v.shape) for v in trainable.values())


def test_gin_files_build_the_counted_parameters():
  """The embedded size (layers 3 + 2, heads 4 x 32, width 128), PROMPT_LENGTH 20 as its runs."""
  size = ["models/t5_1_1_prompt.gin", "models/sizes/embedded.gin"]
  p, hk, enc, dec, width, mlp = 20, 4 * 32, 3, 2, 128, 512
  assert (
      _trainable_count(size + ["prompts/deep_prompt.gin"], ["PROMPT_LENGTH = 20"])
      == enc * 2 * p * hk
  )
  with_decoder = ["PROMPT_LENGTH = 20", "DEEP_PROMPT_DECODER = True"]
  assert (
      _trainable_count(size + ["prompts/deep_prompt.gin"], with_decoder) == (enc + dec) * 2 * p * hk
  )
  per_stack = lambda n: p * width + width * mlp + mlp + (mlp + 1) * n * 2 * hk
  assert _trainable_count(size + ["prompts/prefix_tuning.gin"], ["PROMPT_LENGTH = 20"]) == (
      per_stack(enc) + per_stack(dec)
  )


@pytest.mark.slow
def test_prefix_tuning_trains_exports_and_evaluates_through_the_cli(tmp_path):
  """Two steps of prefix tuning on the embedded default, its MLP dropped by the export, and the
  exported prefixes evaluated by the eval command, as a member of an ensemble of deep prompts:
  alone they score what the training loop's evaluation logged. Then the serve command."""
  env = cli_utils.make_env(
      tmp_path,
      pathlib.Path(embedded.vocab_path()),
      {"PROMPT_TUNING_SYNTHETIC_DIR": str(tmp_path / "synthetic")},
  )
  step = checkpoints.read_step(embedded.checkpoint_path()) + 2
  model_dir, export_dir = tmp_path / "run", tmp_path / "prefixes"
  run = ["--gin_file=runs/embedded_base.gin", "--gin_file=prompts/prefix_tuning.gin"]
  small = {"BATCH_SIZE": 4, "DEEP_PROMPT_MLP_DIM": 16}
  train_flags = {"TRAIN_STEPS": step, "EVAL_PERIOD": 2, "CHECKPOINT_PERIOD": 2, "LOG_PERIOD": 1}
  cli_utils.Cli(
      "train",
      run + cli_utils.gin_flags({**small, **train_flags, "MODEL_DIR": model_dir}),
      env,
      tmp_path / "logs",
      "train",
  ).check(timeout=900)
  saved = checkpoints.list_parameters(model_dir / f"checkpoint_{step}")
  assert saved and all(name.startswith("deep_prompt/") for name in saved), saved
  logged = cli_utils.read_jsonl(model_dir / "eval" / "metrics.jsonl")[-1]
  assert logged["step"] == step

  numpy_dir = model_dir / "numpy_checkpoints" / f"checkpoint_{step}"
  deep_prompts.main(["export", str(numpy_dir), str(export_dir)])
  encoder = np.load(export_dir / deep_prompts.export_name("encoder"))
  cfg = embedded.load_config()
  assert encoder.shape == (cfg.num_encoder_layers, 2, 20, cfg.num_heads, cfg.head_dim)
  # More members: the same prefixes negated (first, so that a vote that took the first member
  # would show), and a copy of them, so the majority is always the trained prefixes'.
  negated_dir, copy_dir = tmp_path / "negated", tmp_path / "copy"
  negated_dir.mkdir()
  shutil.copytree(export_dir, copy_dir)
  for stack in deep_prompts.STACKS:
    name = deep_prompts.export_name(stack)
    np.save(negated_dir / name, -np.load(export_dir / name))

  evaluation = cli_utils.Cli(
      "eval",
      [
          "--gin_file=runs/embedded_base.gin",
          "--gin_file=runs/prompt_eval.gin",
          "--gin_file=prompts/deep_prompt_from_export.gin",
      ]
      + cli_utils.gin_flags(
          {
              "DEEP_PROMPT_DIR": export_dir,
              "DEEP_PROMPT_DECODER": True,
              "EVAL_ENSEMBLE_PROMPTS": [str(negated_dir), str(export_dir), str(copy_dir)],
              "MODEL_DIR": tmp_path / "eval",
              "MIXTURE_OR_TASK_MODULE": "prompt_tuning.tasks.synthetic",
          }
      ),
      env,
      tmp_path / "logs",
      "eval",
  ).check(timeout=900)
  metrics = json.loads(evaluation.stdout)
  task = "synthetic_taskless_super_glue_boolq_v102"
  assert sorted(metrics) == ["copy", "ensemble", "negated", "prefixes"]
  assert metrics["prefixes"][task]["accuracy"] == pytest.approx(logged[f"{task}/accuracy"])
  assert metrics["copy"][task] == metrics["prefixes"][task]
  # Two of the three members are the trained prefixes, so the vote is theirs on every example:
  # the ensemble's predictions file, below, holds what the served prefixes decode, and differs
  # from what the negated ones (the first member) decode.
  assert metrics["ensemble"][task] == metrics["prefixes"][task]

  # The serve command, the deep prompt's requests in the same mixed batches as an input
  # prompt's: every dev example decoded as the eval command predicted it, and the label scores of
  # some (which greedy outputs alone may not show: the prefixes of two steps rarely flip a label)
  # as the model the eval command builds from the export gives them.
  (predictions,) = (tmp_path / "eval" / "eval").glob(f"{task}-*[0-9].jsonl")
  examples = cli_utils.read_jsonl(predictions)
  texts = [e["input"]["inputs_pretokenized"] for e in examples]  # (Ids are logged as summaries.)
  prompt_dir = tmp_path / "serve_prompts"
  shutil.copytree(export_dir, prompt_dir / "boolq_prefixes")
  shutil.copytree(negated_dir, prompt_dir / "boolq_negated")
  np.save(prompt_dir / "plain.npy", np.full((5, cfg.emb_dim), 0.1, np.float32))
  labels, scored = ["False", "True"], 16
  requests = []
  for i, text in enumerate(texts):
    for name in ("boolq_prefixes", "boolq_negated", "plain"):
      requests.append(
          {"endpoint": "/generate", "prompt": name, "text": text, "max_decode_length": 4}
      )
    if i < scored:
      requests.append(
          {"endpoint": "/rank_classify", "prompt": "boolq_prefixes", "text": text, "labels": labels}
      )
  (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
  flags = [f"--prompt_dir={prompt_dir}"] + [
      f"--jsonl_{io}={tmp_path / f'{name}.jsonl'}"
      for io, name in (("in", "requests"), ("out", "answers"))
  ]
  cli_utils.Cli("serve", flags, env, tmp_path / "logs", "serve").check(timeout=900)
  answers = cli_utils.read_jsonl(tmp_path / "answers.jsonl")
  assert [a["status"] for a in answers] == [200] * len(requests)
  answers = {
      (r["endpoint"], r["prompt"], r["text"]): a["answer"] for r, a in zip(requests, answers)
  }
  served = [answers["/generate", "boolq_prefixes", text]["text"] for text in texts]
  assert served == [e["output"] for e in examples]
  negated = [answers["/generate", "boolq_negated", text]["text"] for text in texts]
  differ = sum(a != b for a, b in zip(served, negated))
  assert differ > 0, "the negated member decodes as the trained one: the vote is not tested"

  vocab = seqio.SentencePieceVocabulary(embedded.vocab_path())
  factory = deep_prompts.deep_prompt_factory(20, decoder=True, directory=str(export_dir))
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg, deep_prompt_factory=factory))
  params = checkpoints.load_t5x_checkpoint(embedded.checkpoint_path())
  params["deep_prompt"] = {
      f"{stack}_prefixes": np.load(export_dir / deep_prompts.export_name(stack))
      for stack in deep_prompts.STACKS
  }
  encode = lambda t: vocab.encode(t) + [1]
  rows = [(encode(text), encode(label)) for text in texts[:scored] for label in labels]
  pad = lambda seqs: np.asarray([s + [0] * (max(map(len, seqs)) - len(s)) for s in seqs], np.int32)
  targets = pad([t for _, t in rows])
  batch = {
      "encoder_input_tokens": pad([x for x, _ in rows]),
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets > 0).astype(np.float32),
  }
  want = np.asarray(jax.jit(model.score_batch)(params, batch)).reshape(scored, len(labels))
  got = [answers["/rank_classify", "boolq_prefixes", text]["scores"] for text in texts[:scored]]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
