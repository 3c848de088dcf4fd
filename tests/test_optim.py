"""Trainable/frozen split and T5X-style Adafactor: golden optimizer step and hand references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from conftest import GOLDEN, TINY_CHECKPOINT, count_compilations, golden, golden_batch, require
from prompt_tuning import checkpoints
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import restore
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.models import t5

PROMPT_PATH = "encoder/prompt/prompt/prompt"
V_KEY = "adafactor_state_after_step/param_states/encoder/prompt/prompt/prompt/v"
CHECKPOINT_STEP = 3  # README note 6: the global step comes from the checkpoint.


def _prompt(tree):
  return optim.flatten(tree)[PROMPT_PATH]


def _close_to_max(actual, expected, tol):
  """Within `tol` times the largest magnitude of `expected` (README section 8)."""
  np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * np.abs(expected).max())


@pytest.fixture(scope="module")
def setup():
  """The prompted tiny model, checkpoint parameters plus the fixed prompt, and logical axes."""
  prompt = np.load(require(GOLDEN / "prompt_5x4.npy"))
  module = t5.EncoderDecoder(
      t5.config_for_size("tiny", dtype="float32"),
      prompt_factory=functools.partial(prompts.PrefixPrompt, 5, prompts.from_array(prompt)),
  )
  model = model_lib.EncoderDecoderModel(module)
  abstract = jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0))
  specs = nn.get_partition_spec(abstract["params"])
  axes = jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  ckpt = checkpoints.load_t5x_checkpoint(require(TINY_CHECKPOINT))
  assert checkpoints.read_step(TINY_CHECKPOINT) == CHECKPOINT_STEP
  params = optim.merge_params({"encoder": {"prompt": {"prompt": {"prompt": prompt}}}}, ckpt)
  return dict(model=model, prompt=prompt, ckpt=ckpt, params=params, axes=axes)


def _grad_fn(model):
  """d loss / d trainable only: the frozen half enters as a constant argument."""

  def fn(trainable, frozen, batch):
    loss_fn = lambda t: model.loss_fn(optim.merge_params(t, frozen), batch)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return loss, grads

  return fn


def _trainer(setup, patterns):
  """(optimizer, jitted train step) training the parameters that match `patterns`.

  The step takes and returns the full parameters, so the frozen ones make the round trip through
  the compiled computation as they would in a trainer.
  """
  axes, _ = optim.split_params(setup["axes"], patterns)
  opt = optim.adafactor(0.3, param_axes=axes)
  grad_fn = _grad_fn(setup["model"])

  @jax.jit
  def step_fn(params, opt_state, step, batch):
    trainable, frozen = optim.split_params(params, patterns)
    loss, grads = grad_fn(trainable, frozen, batch)
    deltas, opt_state = opt.update(grads, opt_state, trainable, step=step)
    new_params = optim.merge_params(optax.apply_updates(trainable, deltas), frozen)
    return new_params, opt_state, loss, grads

  init = lambda params: opt.init(optim.split_params(params, patterns)[0])
  return init, step_fn


@pytest.fixture(scope="module")
def prompt_trainer(setup):
  return _trainer(setup, optim.PROMPT_PATTERNS)


# ------------------------------------------------------------------------------------------------
# The original's optimizer step (golden item g), through the production trainer.


def _golden_trainer(prompt):
  """The trainer `runs/prompt_finetune.gin` builds, on the tiny model with the golden prompt."""
  module = t5.EncoderDecoder(
      t5.config_for_size("tiny", dtype="float32"),
      prompt_factory=prompts.prefix_prompt_factory(5, prompts.from_array(prompt)),
  )
  adafactor = functools.partial(  # As runs/finetune.gin binds optim.create_optimizer.
      optim.create_optimizer,
      "adafactor",
      learning_rate=0.3,
      decay_rate=0.8,
      step_offset=0,
      multiply_by_parameter_scale=False,
      clipping_threshold=1.0,
      weight_decay_rate=1e-5,
  )
  return trainer_lib.Trainer(
      model_lib.EncoderDecoderModel(module),
      adafactor,
      partitioning.Partitioner(num_partitions=1),
      trainable_patterns=[".*prompt.*"],
      input_shapes={"inputs": 8, "targets": 4},
  )


def test_golden_optimizer_step():
  g, prompt = golden("prompt_tuned_fp32"), np.load(require(GOLDEN / "prompt_5x4.npy"))
  trainer = _golden_trainer(prompt)
  # As runs/prompt_finetune.gin restores: backbone from the checkpoint, the prompt from scratch.
  restore_cfg = restore.RestoreConfig(
      str(require(TINY_CHECKPOINT)), scratch_patterns=[".*prompt.*"]
  )
  params, step = restore.initial_params(restore_cfg, trainer.model, trainer.spec, trainer.rng)
  assert step == CHECKPOINT_STEP
  np.testing.assert_array_equal(_prompt(params), prompt)
  batch = trainer.partitioner.shard_batch(golden_batch())
  # The original's train state had step 0 in a second run (README note 6): same compiled step.
  # That run gets a copy, since `train_step` donates the state (the prompt's buffer).
  results = {}
  for start in (0, CHECKPOINT_STEP):
    state, frozen = trainer.create_state(
        jax.tree.map(jnp.copy, params) if start == 0 else params, start
    )
    assert list(optim.flatten(state.params)) == [PROMPT_PATH]
    assert len(optim.flatten(frozen)) == 52
    new_state, metrics = trainer.train_step(state, frozen, batch)  # Jitted; `state` is donated.
    assert int(new_state.step) == start + 1
    results[start] = (new_state, metrics, frozen)
  new_state, metrics, frozen = results[CHECKPOINT_STEP]
  np.testing.assert_allclose(metrics["loss"], g["total_loss"], rtol=1e-5)
  updated = _prompt(new_state.params)
  np.testing.assert_allclose(updated, g["updated_prompt"], rtol=0, atol=1e-6)
  # v after one step from zero is (1 - decay) (g^2 + eps): it checks the gradient's magnitude,
  # the signed step above its sign. It carries the float32 gradient's rounding (the gradient
  # matches to ~2e-5 relative), hence README section 8's tolerance rather than 1e-6.
  _close_to_max(_prompt(new_state.opt_state.v), g[V_KEY], 1e-4)
  assert new_state.opt_state.m is None  # No momentum (beta1 None).
  np.testing.assert_allclose(
      _prompt(results[0][0].params), g["updated_prompt_if_step0"], rtol=0, atol=1e-6
  )
  # README note 7: the first step is a signed step of size lr plus decoupled weight decay.
  np.testing.assert_allclose(
      updated, (1 - 1e-5) * prompt - 0.3 * np.sign(g["prompt_grad"]), rtol=0, atol=1.2e-7
  )
  # The frozen backbone is the checkpoint's, bit for bit, before and after the step.
  ckpt = optim.flatten(checkpoints.load_t5x_checkpoint(require(TINY_CHECKPOINT)))
  flat = optim.flatten(frozen)
  assert set(flat) == set(ckpt)
  for name, value in ckpt.items():
    new = np.asarray(flat[name])
    assert new.dtype == value.dtype and new.tobytes() == np.asarray(value).tobytes(), name


def test_compile_ahead_builds_the_program_of_the_first_step():
  """`Trainer.compile_ahead` (training.run's overlap of compilation and data loading) compiles
  for SeqIO's batch shapes, dtypes and sharding, so the first real step compiles nothing; a
  mismatch would compile the step twice."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from prompt_tuning.data import pipeline  # pylint: disable=g-import-not-at-top

  trainer = _golden_trainer(np.load(require(GOLDEN / "prompt_5x4.npy")))
  restore_cfg = restore.RestoreConfig(
      str(require(TINY_CHECKPOINT)), scratch_patterns=[".*prompt.*"]
  )
  params, step = restore.initial_params(restore_cfg, trainer.model, trainer.spec, trainer.rng)
  state, frozen = trainer.create_state(params, step)
  lengths = {"inputs": 8, "targets": 4}
  examples = tf.data.Dataset.from_tensor_slices(
      {"inputs": [[5, 6, 7, 1], [8, 9, 1, 0]], "targets": [[3, 1], [4, 1]]}
  ).map(lambda ex: {k: v[v > 0] for k, v in ex.items()})
  host_batch = next(pipeline.feature_converter()(examples, lengths).batch(2).as_numpy_iterator())
  trainer.compile_ahead(state, frozen, 2, lengths).result()
  (new_state, _), compiles = count_compilations(
      lambda: trainer.train_step(state, frozen, trainer.partitioner.shard_batch(host_batch))
  )
  assert int(new_state.step) == step + 1
  assert compiles["compile"] == 0


# ------------------------------------------------------------------------------------------------
# Adafactor against numpy references.


def _decay(step):
  # In float32, as T5X computes it: at step ~1e6, 1 - (step+1)^-0.8 loses ~0.4% of its mixing
  # weight to rounding, which a float64 reference would not reproduce.
  return np.float32(1) - np.power(np.float32(step + 1), np.float32(-0.8))


def _np_adafactor_step(g, p, v, step, lr=0.3, wd=1e-5, eps=1e-30, factored_dims=None):
  """One standard Adafactor step in float64 (unfactored or row/column factored).

  Factored: the row and column dimensions are moved last, so every other dimension indexes an
  independent [R, C] matrix; `v` is then (v_row [..., R], v_col [..., C]).
  """
  g, p = g.astype(np.float64), p.astype(np.float64)
  decay = np.float64(_decay(step))
  g_sqr = g * g + eps
  if factored_dims is None:
    v = decay * v + (1 - decay) * g_sqr
    y = g / np.sqrt(v)
  else:
    row, col = factored_dims
    g_sqr = np.moveaxis(g_sqr, (row, col), (-2, -1))
    v_row = decay * v[0] + (1 - decay) * g_sqr.mean(axis=-1)
    v_col = decay * v[1] + (1 - decay) * g_sqr.mean(axis=-2)
    # The rank-1 estimate of each [R, C] second moment: v_row v_col^T / mean(v_row).
    v_hat = v_row[..., :, None] * v_col[..., None, :] / v_row.mean(axis=-1)[..., None, None]
    y = g / np.sqrt(np.moveaxis(v_hat, (-2, -1), (row, col)))
    v = (v_row, v_col)
  y = y / max(1.0, np.sqrt(np.mean(y * y)) / 1.0)
  return -lr * y - wd * p, v


def test_decay_counts_from_the_global_step():
  rng = np.random.RandomState(0)
  p = rng.randn(3, 4).astype(np.float32)
  grads = [rng.randn(3, 4).astype(np.float32) for _ in range(2)]
  opt = optim.adafactor(0.3)
  update = jax.jit(lambda gr, s, pr, step: opt.update(gr, s, pr, step=step))
  results = {}
  for start in (0, 1_100_000):
    params, state = jnp.asarray(p), opt.init(jnp.asarray(p))
    ref_p, ref_v = p.astype(np.float64), np.zeros((3, 4))
    deltas = []
    for i, gr in enumerate(grads):
      delta, state = update(jnp.asarray(gr), state, params, start + i)
      ref_delta, ref_v = _np_adafactor_step(gr, ref_p, ref_v, start + i)
      np.testing.assert_allclose(delta, ref_delta, rtol=2e-6, atol=1e-7)
      np.testing.assert_allclose(state.v, ref_v, rtol=2e-5)
      params = optax.apply_updates(params, delta)
      ref_p = ref_p + ref_delta
      deltas.append(np.asarray(delta))
    results[start] = deltas
  # The first step is a clipped sign step either way; the second depends on the step.
  np.testing.assert_allclose(results[0][0], results[1_100_000][0], atol=1e-6)
  assert np.abs(results[0][1] - results[1_100_000][1]).max() > 1e-2


def _state_for(shape, axes):
  """The state's shapes only (eval_shape: nothing to compile)."""
  opt = optim.adafactor(0.3, param_axes={"w": axes} if axes != "none" else None)
  return opt, jax.eval_shape(opt.init, {"w": jax.ShapeDtypeStruct(shape, jnp.float32)})


def test_factoring_decisions():
  _, s = _state_for((256, 512), ("embed", "mlp"))
  assert isinstance(s.v["w"], optim.FactoredState)
  assert s.v["w"].v_row.shape == (256,) and s.v["w"].v_col.shape == (512,)
  _, s = _state_for((512, 256), ("mlp", "embed"))  # The row axis is the second one here.
  assert s.v["w"].v_row.shape == (256,) and s.v["w"].v_col.shape == (512,)
  _, s = _state_for((256, 512), ("prompt", "prompt_embed"))  # The prompt is never factored.
  assert s.v["w"].shape == (256, 512)
  _, s = _state_for((256, 512), "none")  # No axes: the two largest dimensions.
  assert s.v["w"].v_row.shape == (256,) and s.v["w"].v_col.shape == (512,)
  _, s = _state_for((130, 3, 256), "none")
  assert s.v["w"].v_row.shape == (130, 3) and s.v["w"].v_col.shape == (3, 256)
  _, s = _state_for((256, 64), "none")  # 64 < min_dim_size_to_factor.
  assert s.v["w"].shape == (256, 64)
  _, s = _state_for((1024,), "none")
  assert s.v["w"].shape == (1024,)
  opt = optim.adafactor(0.3, factored=False, param_axes={"w": ("embed", "mlp")})
  state = jax.eval_shape(opt.init, {"w": jax.ShapeDtypeStruct((256, 512), jnp.float32)})
  assert state.v["w"].shape == (256, 512)


def test_factored_update_matches_numpy():
  # In one tree: 'embed' (the row axis) first in `a`, second in `b`; `c` has no axes, so its
  # second-largest dimension (2) is the row and its largest (0) the column.
  rng = np.random.RandomState(1)
  shapes = {"a": (256, 512), "b": (512, 256), "c": (256, 3, 130)}
  dims = {"a": (0, 1), "b": (1, 0), "c": (2, 0)}
  opt = optim.adafactor(0.3, param_axes={"a": ("embed", "mlp"), "b": ("mlp", "embed"), "c": None})
  p = {k: rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
  # Rows and columns of very different scales, so a wrong factoring would show.
  scale = {
      k: np.exp(rng.randn(*s[:-1], 1)) * np.exp(rng.randn(1, s[-1])) for k, s in shapes.items()
  }
  grads = [
      {k: (rng.randn(*s) * scale[k]).astype(np.float32) for k, s in shapes.items()}
      for _ in range(2)
  ]
  update = jax.jit(lambda gr, s, pr, step: opt.update(gr, s, pr, step=step))
  params, state = p, opt.init(p)
  ref_p = {k: v.astype(np.float64) for k, v in p.items()}
  other = {k: tuple(n for i, n in enumerate(s) if i not in dims[k]) for k, s in shapes.items()}
  ref_v = {
      k: (np.zeros(other[k] + (s[dims[k][0]],)), np.zeros(other[k] + (s[dims[k][1]],)))
      for k, s in shapes.items()
  }
  for step, gr in enumerate(grads):
    delta, state = update(gr, state, params, step)
    for k in shapes:
      ref_delta, ref_v[k] = _np_adafactor_step(
          gr[k], ref_p[k], ref_v[k], step, factored_dims=dims[k]
      )
      assert isinstance(state.v[k], optim.FactoredState)
      np.testing.assert_allclose(delta[k], ref_delta, rtol=2e-5, atol=1e-6, err_msg=k)
      # The module keeps the remaining dimensions in order; the reference puts row/column last.
      row, col = dims[k]
      v_row = np.moveaxis(state.v[k].v_row, row - (col < row), -1)
      v_col = np.moveaxis(state.v[k].v_col, col - (row < col), -1)
      np.testing.assert_allclose(v_row, ref_v[k][0], rtol=2e-5, err_msg=k)
      np.testing.assert_allclose(v_col, ref_v[k][1], rtol=2e-5, err_msg=k)
      ref_p[k] = ref_p[k] + ref_delta
    params = optax.apply_updates(params, delta)


# ------------------------------------------------------------------------------------------------
# Prompt tuning freezes the backbone; model tuning is the same code.


def _train(setup, trainer, steps):
  init, step_fn = trainer
  params, batch = setup["params"], golden_batch()
  opt_state = init(params)
  for i in range(steps):
    params, opt_state, _, grads = step_fn(params, opt_state, CHECKPOINT_STEP + i, batch)
  return params, opt_state, grads


def test_prompt_tuning_leaves_the_backbone_bit_identical(setup, prompt_trainer):
  params, opt_state, grads = _train(setup, prompt_trainer, steps=3)
  flat, ckpt = optim.flatten(params), optim.flatten(setup["ckpt"])
  assert set(flat) == set(ckpt) | {PROMPT_PATH} and len(ckpt) == 52
  for name, value in ckpt.items():
    new = np.asarray(flat[name])
    assert new.dtype == value.dtype and new.tobytes() == np.asarray(value).tobytes(), name
  assert np.abs(flat[PROMPT_PATH] - setup["prompt"]).max() > 0.2  # Steps of ~lr = 0.3.
  # Optimizer state and gradients exist for the prompt only.
  state_leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
  assert len(state_leaves) == 1
  assert all("prompt" in jax.tree_util.keystr(path) for path, _ in state_leaves)
  assert list(optim.flatten(grads)) == [PROMPT_PATH]
  # The traced computation itself returns one gradient array, so none is ever computed for the
  # backbone (unlike the original, which differentiates w.r.t. all 53 parameters).
  trainable, frozen = optim.split_params(setup["params"])
  grad_fn, batch = _grad_fn(setup["model"]), golden_batch()
  jaxpr = jax.make_jaxpr(lambda t: grad_fn(t, frozen, batch)[1])(trainable)
  assert [tuple(a.shape) for a in jaxpr.out_avals] == [(5, 4)]


def _original_plain_adafactor_v_shapes():
  """{param path: shape of `v`} of the original's plain-model Adafactor (param_tree.txt)."""
  lines = require(GOLDEN / "param_tree.txt").read_text().split("## ")
  section = next(l for l in lines if l.startswith("no_prompt_fp32: optimizer state (Adafactor)"))
  shapes = {}
  for line in section.splitlines()[1:]:
    if not line.startswith("state/param_states/"):  # state/step, blank lines.
      continue
    path, shape = line.split("\t")[:2]
    name, slot = path[len("state/param_states/") :].rsplit("/", 1)
    if slot in ("v", "v_row", "v_col") and shape != "(1,)":  # (1,) is an unused placeholder.
      assert slot == "v", f"{name} is factored in the original"
      shapes[name] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
  return shapes


def test_model_tuning_is_the_same_code(setup):
  trainable, frozen = optim.split_params(setup["params"], (".*",))
  assert len(optim.flatten(trainable)) == 53 and not frozen
  params, opt_state, grads = _train(setup, _trainer(setup, (".*",)), steps=1)
  assert len(optim.flatten(grads)) == 53 and len(jax.tree.leaves(opt_state)) == 53
  # Second-moment slots shaped as the original's Adafactor on the same parameters (all
  # unfactored: every dimension of the tiny model is < 128, even with logical factor rules).
  v_shapes = {k: v.shape for k, v in optim.flatten(opt_state.v).items() if k != PROMPT_PATH}
  assert v_shapes == _original_plain_adafactor_v_shapes()
  name = "encoder/layers_0/attention/query/kernel"
  assert np.any(optim.flatten(params)[name] != optim.flatten(setup["ckpt"])[name])
  assert np.any(_prompt(params) != setup["prompt"])


# ------------------------------------------------------------------------------------------------
# Errors and other optimizers.


def test_split_params_with_no_match_raises():
  params = {"encoder": {"layers_0": {"kernel": np.zeros(2)}}, "decoder": {"bias": np.zeros(2)}}
  with pytest.raises(
      ValueError,
      match=r"No parameter matches the trainable patterns "
      r"\['\.\*prompt\.\*'\]; parameter names look like \['decoder/bias', "
      r"'encoder/layers_0/kernel'\]",
  ):
    optim.split_params(params)


def test_create_optimizer():
  with pytest.raises(ValueError, match="Unknown optimizer 'nope'"):
    optim.create_optimizer("nope")
  assert isinstance(optim.create_optimizer("adafactor", 0.3), optax.GradientTransformation)
  opt = optim.create_optimizer("adam", 1e-3)
  params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  grads = {"w": jnp.asarray([0.5, -4.0, 0.0])}
  state = opt.init(params)
  deltas, _ = jax.jit(lambda g, s, p: opt.update(g, s, p, step=7))(grads, state, params)
  # Adam's first step is -lr * g / (|g| + eps).
  # (float32 bias corrections 1 - 0.9 and 1 - 0.999 are off by ~1e-6 relative.)
  np.testing.assert_allclose(deltas["w"], [-1e-3, 1e-3, 0.0], rtol=2e-5, atol=1e-9)


def _adamw_first_step(lr, g, p, wd, eps=1e-8):
  """AdamW's first update by hand: bias-corrected moments give g / (|g| + eps)."""
  return -lr * (g / (np.abs(g) + eps) + wd * p)


def test_optax_schedule_follows_the_global_step():
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 200, 5000, 1e-4)
  opt = optim.create_optimizer("adamw", schedule, weight_decay=0.1)
  params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  grads = {"w": jnp.asarray([0.5, -4.0, 0.25])}
  update = jax.jit(lambda g, s, p, step: opt.update(g, s, p, step=step))
  # A fresh optimizer state at global step 1000 (e.g. a second pretraining stage): the rate is
  # schedule(1000), not schedule(0) = 0 as optax's own restarted counter would give.
  deltas, state = update(grads, opt.init(params), params, jnp.int32(1000))
  lr = float(schedule(1000))
  assert lr > 5e-4
  np.testing.assert_allclose(
      deltas["w"],
      _adamw_first_step(lr, np.asarray(grads["w"]), np.asarray(params["w"]), 0.1),
      rtol=1e-5,
  )
  reference = optax.adamw(lr, weight_decay=0.1)
  expected, _ = reference.update(grads, reference.init(params), params)
  np.testing.assert_allclose(deltas["w"], expected["w"], rtol=1e-6)
  # The rate used is in the state (within 1 ulp: the compiled cosine may round differently).
  np.testing.assert_allclose(state.hyperparams["learning_rate"], lr, rtol=1e-6)
  # The next update continues the schedule from the global step, not from the state's count.
  params = optax.apply_updates(params, deltas)
  _, state = update(grads, state, params, jnp.int32(1001))
  np.testing.assert_allclose(state.hyperparams["learning_rate"], schedule(1001), rtol=1e-6)
  assert float(schedule(1)) < 1e-5
  with pytest.raises(ValueError, match="needs the global step"):
    opt.update(grads, state, params)


def test_optax_optimizer_without_learning_rate_rejects_a_schedule():
  with pytest.raises(ValueError, match="takes no learning_rate"):
    optim.create_optimizer("identity", lambda step: 0.1)
