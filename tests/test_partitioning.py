"""Tests for prompt_tuning.partitioning: the same training on 1 device, 8 devices and 2 processes.

XLA's host device count and `jax.distributed` must be set up before jax initialises its backends,
so the work runs in subprocesses executing this file as a script (`python test_partitioning.py
MODE ARGS_JSON`, see `_worker_main`). The workers write what they saw (losses, parameters,
sharding specs) to files; the tests compare them here.

Every configuration trains the same small random T5 1.1 with a 4-token prefix prompt on the same
random batches, from the same initial parameters (`restore.init_params` draws them
with the trainer's seed; threefry is partitionable, so the draw does not depend on the sharding).
"""

import contextlib
import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import T5_VOCAB, require

_HERE = pathlib.Path(__file__).resolve()
_BATCH = 8  # Global batch: divisible by every data-parallel size used below.
_ENCODER_LENGTH = 12
_DECODER_LENGTH = 6
_STEPS = 4
_MULTIHOST_STEPS = 3
_PROMPT = ("encoder/prompt/prompt/prompt",)
_LOGITS_KERNEL = "decoder/logits_dense/kernel"
_RTOL = 1e-5
_ATOL = 2e-5  # Trained parameters: a few float32 roundings of ~0.5-sized updates.
_SUBPROCESS_TIMEOUT = 900  # Generous: CI machines are noisy; a hang still ends.

# --------------------------------------------------------------------------------------------------
# Worker side (runs in the subprocesses; imports jax only there).


def _model():
  from prompt_tuning import model as model_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import prompts  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top
  # Every sharded dimension (vocab 128, mlp 32, heads 4, joined_kv 16) divides model axes 2 and 4.
  cfg = t5.T5Config(
      vocab_size=128,
      emb_dim=16,
      num_heads=4,
      head_dim=4,
      mlp_dim=32,
      num_encoder_layers=2,
      num_decoder_layers=2,
      dtype="float32",
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
  )
  module = t5.EncoderDecoder(
      cfg, prompt_factory=prompts.prefix_prompt_factory(4, prompts.random_uniform())
  )
  return model_lib.EncoderDecoderModel(module)


def _make_trainer(partitioner, model_tuning: bool = False):
  """Prompt tuning (Adafactor, lr 0.3) or model tuning (lr 1e-3, T5X's finetuning default).

  Adafactor's first update is about lr * sign(gradient); at 0.3 on every backbone weight, the
  float noise of a near-zero gradient would flip whole 0.3 steps between shardings.
  """
  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top
  from prompt_tuning import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  return trainer_lib.Trainer(
      _model(),
      functools.partial(
          optim.create_optimizer, "adafactor", learning_rate=1e-3 if model_tuning else 0.3
      ),
      partitioner,
      trainable_patterns=(".*",) if model_tuning else optim.PROMPT_PATTERNS,
      input_shapes={"inputs": _ENCODER_LENGTH, "targets": _DECODER_LENGTH},
      seed=0,
  )


def _global_batches(steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Random seqio-style batches with padding: the same on every process."""
  rng = np.random.RandomState(seed)
  batches = []
  for _ in range(steps):
    enc = rng.randint(2, 128, size=(_BATCH, _ENCODER_LENGTH)).astype(np.int32)
    enc_len = rng.randint(3, _ENCODER_LENGTH + 1, size=(_BATCH, 1))
    enc = np.where(np.arange(_ENCODER_LENGTH)[None] < enc_len, enc, 0)
    targets = rng.randint(2, 128, size=(_BATCH, _DECODER_LENGTH)).astype(np.int32)
    dec_len = rng.randint(2, _DECODER_LENGTH + 1, size=(_BATCH, 1))
    targets = np.where(np.arange(_DECODER_LENGTH)[None] < dec_len, targets, 0).astype(np.int32)
    inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    batches.append(
        {
            "encoder_input_tokens": enc.astype(np.int32),
            "decoder_input_tokens": inputs.astype(np.int32),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(np.float32),
        }
    )
  return batches


def _to_numpy(tree) -> dict[str, np.ndarray]:
  """Flat '/'-keyed numpy copy; gathers arrays other processes hold parts of (collective)."""
  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top

  return {k: partitioning.to_host(v) for k, v in optim.flatten(tree).items()}


def _local_rows(partitioner) -> slice:
  """The rows of the global batch this process's devices hold: what its pipeline must read.

  With the data axis split over processes, process i of n reads rows [i B/n, (i+1) B/n), as
  `seqio.ShardInfo(i, n)` gives; processes sharing a data shard read the same rows.
  """
  index = partitioner.data_sharding().addressable_devices_indices_map((_BATCH,))
  bounds = [s[0].indices(_BATCH)[:2] for s in index.values()]
  return slice(min(b[0] for b in bounds), max(b[1] for b in bounds))


def _train(trainer, batches, rows: slice = slice(None)):
  """Initialises and trains; returns (initial params, losses, final trainable params, state)."""
  from prompt_tuning import restore  # pylint: disable=g-import-not-at-top

  params, step = restore.init_params(trainer.model, trainer.spec, trainer.rng), 0
  initial = _to_numpy(params)
  state, frozen = trainer.create_state(params, step)
  losses = []
  for batch in batches:
    host_batch = {k: v[rows] for k, v in batch.items()}
    state, metrics = trainer.train_step(state, frozen, trainer.partitioner.shard_batch(host_batch))
    losses.append(float(metrics["loss"]))  # A replicated scalar: readable on every process.
  return initial, losses, state, frozen


def _spec(x) -> list:
  return [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]


def _run_mesh8(out: pathlib.Path):
  """Tests 1-3 on 8 forced host devices; writes facts.json and one .npz per configuration."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import restore  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  facts = {"num_devices": len(devices), "runs": {}}
  batches = _global_batches(_STEPS)
  runs = {  # name: (devices, num_partitions, model tuning)
      "one_device": (devices[:1], 1, False),
      "data8": (devices, 1, False),
      "data4_model2": (devices, 2, False),
      "data2_model4": (devices, 4, False),
      "model_tuning_one_device": (devices[:1], 1, True),
      "model_tuning_data4_model2": (devices, 2, True),
  }
  for name, (devs, num_partitions, model_tuning) in runs.items():
    partitioner = partitioning.Partitioner(num_partitions=num_partitions, devices=devs)
    trainer = _make_trainer(partitioner, model_tuning)
    params = restore.init_params(trainer.model, trainer.spec, trainer.rng)
    flat = optim.flatten(params)
    sharded_batch = partitioner.shard_batch(batches[0])
    run_facts = {
        "mesh": dict(partitioner.mesh.shape),
        "param_specs": {k: _spec(v) for k, v in flat.items()},
        "param_shard_shapes": {
            k: list(v.addressable_shards[0].data.shape) for k, v in flat.items()
        },
        "batch_spec": {k: _spec(v) for k, v in sharded_batch.items()},
        "batch_shard_shape": {
            k: list(v.addressable_shards[0].data.shape) for k, v in sharded_batch.items()
        },
    }
    if num_partitions > 1 and not model_tuning:
      # partitioner.jit applies the model's logical constraints.
      logits = partitioner.jit(trainer.model.compute_logits)(params, sharded_batch)
      run_facts["logits_spec"] = _spec(logits)
      run_facts["logits_shard_shape"] = list(logits.addressable_shards[0].data.shape)
    del params, flat
    initial, losses, state, _ = _train(trainer, batches)
    final = _to_numpy(state.params)
    run_facts["losses"] = losses
    run_facts["trainable"] = sorted(final)
    facts["runs"][name] = run_facts
    np.savez(
        out / f"{name}.npz",
        **{f"initial/{k}": v for k, v in initial.items()},
        **{f"final/{k}": v for k, v in final.items()},
    )

  try:
    partitioning.Partitioner(num_partitions=3, devices=devices)
    facts["num_partitions_3_error"] = None
  except ValueError as e:
    facts["num_partitions_3_error"] = str(e)

  # Test 3: a backbone checkpoint (no prompt) read straight into the 4 x 2 shardings.
  partitioner = partitioning.Partitioner(num_partitions=2, devices=devices)
  trainer = _make_trainer(partitioner)
  rng = np.random.RandomState(42)
  backbone = {
      k: rng.normal(size=v.shape).astype(np.float32)
      for k, v in optim.flatten(trainer.spec.shapes).items()
      if not optim.is_trainable(k, optim.PROMPT_PATTERNS)
  }
  path = checkpoints.save_t5x_checkpoint(
      out / "backbone" / "checkpoint_7",
      optim.unflatten(backbone),
      step=7,
      inline_threshold_bytes=1024,
  )  # Big ones go to zarr.
  loaded, step = restore.initial_params(
      restore.RestoreConfig(path), trainer.model, trainer.spec, trainer.rng
  )
  flat_loaded = optim.flatten(loaded)
  flat_shardings = optim.flatten(trainer.spec.shardings)
  facts["checkpoint"] = {
      "step": step,
      "keys": sorted(flat_loaded),
      "backbone_keys": sorted(backbone),
      "is_jax_array": {k: isinstance(v, jax.Array) for k, v in flat_loaded.items()},
      "sharding_equal": {
          k: v.sharding == flat_shardings[k]
          for k, v in flat_loaded.items()
          if isinstance(v, jax.Array)
      },
      "specs": {k: _spec(v) for k, v in flat_loaded.items() if isinstance(v, jax.Array)},
  }
  np.savez(
      out / "checkpoint.npz",
      **{f"saved/{k}": v for k, v in backbone.items()},
      **{f"loaded/{k}": np.asarray(v) for k, v in flat_loaded.items()},
  )
  (out / "facts.json").write_text(json.dumps(facts))


def _run_multihost(
    out: pathlib.Path, coordinator: str, num_processes: int, process_id: int, vocab_path: str
):
  """Test 4: one process of a `jax.distributed` job (or the single-process reference)."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train_state  # pylint: disable=g-import-not-at-top

  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=coordinator,
        initialization_timeout=120,
        shutdown_timeout_seconds=30,
    )
  facts = {
      "process_count": jax.process_count(),
      "num_devices": jax.device_count(),
      "num_local_devices": jax.local_device_count(),
  }
  batches = _global_batches(_MULTIHOST_STEPS)
  runs = (  # name, model tuning, num_partitions on the 4 devices of the 2-process job.
      ("prompt", False, 2),  # 2 data (one per process) x 2 model (inside each process).
      ("model", True, 2),
      ("model_across", True, 4),  # 1 data x 4 model: every weight split over both processes.
  )
  for name, model_tuning, num_partitions in runs:
    if num_processes == 1 and name == "model_across":
      continue  # The reference for it is "model".
    partitioner = partitioning.Partitioner(
        num_partitions=num_partitions if num_processes > 1 else 1
    )
    trainer = _make_trainer(partitioner, model_tuning)
    rows = _local_rows(partitioner)
    _, losses, state, frozen = _train(trainer, batches, rows)
    final = _to_numpy(state.params)
    # Every process calls save and restore (gathers are collectives); process 0 writes.
    cfg = train_state.CheckpointConfig(save_mode="full" if model_tuning else "trainable")
    path = train_state.save(str(out / name), state, frozen, _MULTIHOST_STEPS, cfg)
    restored, _, position = train_state.restore(
        path, state, frozen, trainer.spec.shardings, partitioner.replicated()
    )
    restored_params = _to_numpy(restored.params)
    facts[name] = {
        "losses": losses,
        "mesh": dict(partitioner.mesh.shape),
        "rows": [rows.start, rows.stop],
        "restored_position": position,
        "restored_step": int(restored.step),
        "restored_max_diff": max(
            float(np.abs(restored_params[k] - v).max()) for k, v in final.items()
        ),
    }
    if process_id == 0:
      np.savez(out / f"{name}_final.npz", **final)
  facts["best_metric"] = _train_loop_with_best_metric(out, vocab_path)
  if process_id == 0:
    (out / "facts.json").write_text(json.dumps(facts))
  if num_processes > 1:
    jax.distributed.shutdown()


def _train_loop_with_best_metric(out: pathlib.Path, vocab_path: str) -> dict:
  """Test 4b: the real training loop, evaluating twice with BEST_METRIC, in every process.

  SeqIO computes metrics on process 0 only; the best-checkpoint decision must reach every
  process, or process 0 alone enters the checkpoint save (collectives) and the job hangs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning import decoding  # pylint: disable=g-import-not-at-top
  from prompt_tuning import model as model_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import prompts  # pylint: disable=g-import-not-at-top
  from prompt_tuning import restore  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train_state  # pylint: disable=g-import-not-at-top
  from prompt_tuning import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import training  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import pipeline  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import text_tasks  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import vocab  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top

  vocab.set_default_vocab_path(vocab_path)
  data = out / f"task_data_{jax.process_index()}"
  data.mkdir(parents=True, exist_ok=True)
  words = ("great", "dull", "superb", "awful", "moving", "bland", "charming", "tedious")
  rows = "".join(
      json.dumps({"sentence": f"the film is {w}", "label": label}) + "\n"
      for w, label in zip(words, ("positive", "negative") * 4)
  )
  for split in ("train", "validation"):
    (data / f"{split}.jsonl").write_text(rows)
  text_tasks.register_text_task(
      "multihost_best_metric",
      {s: str(data / f"{s}.jsonl") for s in ("train", "validation")},
      input_field="sentence",
      target_field="label",
      label_names=["negative", "positive"],
      metrics=("accuracy",),
      overwrite=True,
  )
  lengths = {"inputs": 8, "targets": 4}
  module = t5.EncoderDecoder(
      t5.config_for_size("tiny", dtype="float32"), prompt_factory=prompts.prefix_prompt_factory(2)
  )
  partitioner = partitioning.Partitioner(num_partitions=2 if jax.process_count() > 1 else 1)
  trainer = trainer_lib.Trainer(
      model_lib.EncoderDecoderModel(module, decode_fn=decoding.greedy),
      functools.partial(optim.create_optimizer, "adafactor", learning_rate=0.3),
      partitioner,
      input_shapes=lengths,
  )
  model_dir = out / "best_metric"
  result = training.run(
      model_dir=str(model_dir),
      trainer=trainer,
      total_steps=4,
      train_dataset_cfg=pipeline.DatasetConfig("multihost_best_metric", lengths, batch_size=_BATCH),
      restore_cfg=restore.RestoreConfig(None),
      checkpoint_cfg=train_state.CheckpointConfig(period=100, keep=1),
      log_period=2,
      eval_period=2,
      best_metric="accuracy",
      progress_bar=False,
      tensorboard=False,
  )
  return {
      "best": result["best"],
      "checkpoints": checkpoints.all_checkpoint_steps(model_dir),
      "evals": [
          json.loads(line)["step"]
          for line in (model_dir / "eval" / "metrics.jsonl").read_text().splitlines()
      ],
  }


def _worker_main(argv):
  mode, args = argv[0], json.loads(argv[1])
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_numpy_rank_promotion", "raise")  # As conftest sets for the tests.
  out = pathlib.Path(args["out"])
  if mode == "mesh8":
    _run_mesh8(out)
  elif mode == "multihost":
    _run_multihost(
        out, args["coordinator"], args["num_processes"], args["process_id"], args["vocab_path"]
    )
  else:
    raise ValueError(f"Unknown worker mode {mode!r}.")


# --------------------------------------------------------------------------------------------------
# Test side.


# Tiny models: LLVM's optimisations cost more compile time than they save (the same for every
# configuration compared, so they cannot make two configurations differ).
_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def _env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  flags = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(
      flags + list(_FAST_COMPILE) + [f"--xla_force_host_platform_device_count={num_devices}"]
  )
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _worker_command(mode: str, **args) -> list[str]:
  return [sys.executable, str(_HERE), mode, json.dumps(args)]


def _excerpt(log: str, size: int = 6000) -> str:
  """The first Python traceback of a worker's log (what went wrong first), else its end."""
  start = log.find("Traceback (most recent call last)")
  return log[start : start + size] if start >= 0 else log[-size:]


def _run_worker(mode: str, num_devices: int, **args):
  proc = subprocess.run(
      _worker_command(mode, **args),
      env=_env(num_devices),
      cwd=_HERE.parent,
      capture_output=True,
      text=True,
      timeout=_SUBPROCESS_TIMEOUT,
      check=False,
  )
  assert proc.returncode == 0, f"{mode} worker failed:\n{_excerpt(proc.stdout + proc.stderr)}"


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return dict(f)


def _assert_trees_close(actual: dict, expected: dict, what: str, rtol=_RTOL, atol=_ATOL):
  assert actual.keys() == expected.keys(), what
  for k in expected:
    np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def mesh8(tmp_path_factory):
  """Runs every 8-device configuration once in one subprocess (compiles dominate the time)."""
  out = tmp_path_factory.mktemp("mesh8")
  _run_worker("mesh8", 8, out=str(out))
  facts = json.loads((out / "facts.json").read_text())
  assert facts["num_devices"] == 8
  return out, facts


def _sub(arrays: dict, prefix: str) -> dict:
  return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


@pytest.mark.parametrize("name", ["data8", "data4_model2", "data2_model4"])
def test_prompt_tuning_matches_one_device(mesh8, name):
  out, facts = mesh8
  ref, run = facts["runs"]["one_device"], facts["runs"][name]
  ref_arrays, arrays = _load(out / "one_device.npz"), _load(out / f"{name}.npz")
  assert run["trainable"] == list(_PROMPT)
  # Same seed, same initial parameters, whatever the sharding.
  _assert_trees_close(
      _sub(arrays, "initial"), _sub(ref_arrays, "initial"), "initial params", rtol=0, atol=0
  )
  np.testing.assert_allclose(run["losses"], ref["losses"], rtol=_RTOL)
  assert len(set(ref["losses"])) == _STEPS  # The prompt does move.
  _assert_trees_close(_sub(arrays, "final"), _sub(ref_arrays, "final"), "final prompt")
  assert not np.allclose(arrays["final/" + _PROMPT[0]], arrays["initial/" + _PROMPT[0]])


def test_parameters_and_batch_are_split(mesh8):
  _, facts = mesh8
  runs = facts["runs"]
  assert runs["one_device"]["mesh"] == {"data": 1, "model": 1}
  assert runs["data8"]["mesh"] == {"data": 8, "model": 1}
  c, d = runs["data4_model2"], runs["data2_model4"]
  assert c["mesh"] == {"data": 4, "model": 2}
  assert d["mesh"] == {"data": 2, "model": 4}
  # Vocab axis over `model`: each device holds 1/2 (1/4) of the output projection's columns.
  assert c["param_specs"][_LOGITS_KERNEL] == [None, "model"]
  assert c["param_shard_shapes"][_LOGITS_KERNEL] == [16, 64]
  assert d["param_shard_shapes"][_LOGITS_KERNEL] == [16, 32]
  assert c["param_specs"]["token_embedder/embedding"] == ["model", None]
  assert c["param_shard_shapes"]["token_embedder/embedding"] == [64, 16]
  assert c["param_specs"]["encoder/layers_0/mlp/wi_0/kernel"] == [None, "model"]
  assert c["param_shard_shapes"]["encoder/layers_0/mlp/wi_0/kernel"] == [16, 16]
  assert d["param_shard_shapes"]["encoder/layers_0/attention/query/kernel"] == [16, 4]
  assert d["param_shard_shapes"]["encoder/relpos_bias/rel_embedding"] == [1, 8]
  # The prompt is replicated.
  assert not any(c["param_specs"][_PROMPT[0]])
  assert c["param_shard_shapes"][_PROMPT[0]] == [4, 16]
  # The batch is split over `data`.
  for run, data in ((runs["data8"], 8), (c, 4), (d, 2)):
    for k, spec in run["batch_spec"].items():
      assert spec == ["data"], k
    assert run["batch_shard_shape"]["encoder_input_tokens"] == [_BATCH // data, _ENCODER_LENGTH]


def test_logical_constraints_take_effect(mesh8):
  """The model's final constraint (batch, length, vocab) decides the logits' sharding."""
  _, facts = mesh8
  for name, data, model in (("data4_model2", 4, 2), ("data2_model4", 2, 4)):
    run = facts["runs"][name]
    assert run["logits_spec"] == ["data", None, "model"], name
    assert run["logits_shard_shape"] == [_BATCH // data, _DECODER_LENGTH, 128 // model], name


def test_num_partitions_must_divide_devices(mesh8):
  _, facts = mesh8
  message = facts["num_partitions_3_error"]
  assert message is not None, "num_partitions=3 on 8 devices did not raise"
  assert "num_partitions=3" in message and "8 devices" in message


def test_num_partitions_error_in_process():
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top

  n = len(jax.devices())
  with pytest.raises(ValueError, match=f"num_partitions={n + 1} does not divide"):
    partitioning.Partitioner(num_partitions=n + 1)


def test_model_tuning_matches_one_device(mesh8):
  out, facts = mesh8
  ref = facts["runs"]["model_tuning_one_device"]
  run = facts["runs"]["model_tuning_data4_model2"]
  ref_arrays = _load(out / "model_tuning_one_device.npz")
  arrays = _load(out / "model_tuning_data4_model2.npz")
  assert _LOGITS_KERNEL in run["trainable"] and _PROMPT[0] in run["trainable"]
  assert run["param_specs"][_LOGITS_KERNEL] == [None, "model"]
  _assert_trees_close(
      _sub(arrays, "initial"), _sub(ref_arrays, "initial"), "initial params", rtol=0, atol=0
  )
  np.testing.assert_allclose(run["losses"], ref["losses"], rtol=_RTOL)
  _assert_trees_close(_sub(arrays, "final"), _sub(ref_arrays, "final"), "final params")
  # The backbone did train.
  initial, final = arrays["initial/" + _LOGITS_KERNEL], arrays["final/" + _LOGITS_KERNEL]
  assert np.abs(final - initial).max() > 1e-4


def test_checkpoint_loads_into_shardings(mesh8):
  out, facts = mesh8
  ckpt = facts["checkpoint"]
  assert ckpt["step"] == 7
  assert ckpt["keys"] == sorted(ckpt["backbone_keys"] + list(_PROMPT))
  assert all(ckpt["is_jax_array"].values()), ckpt["is_jax_array"]
  for k in ckpt["backbone_keys"]:
    assert ckpt["sharding_equal"][k], (k, ckpt["specs"][k])
  assert ckpt["specs"][_LOGITS_KERNEL] == [None, "model"]
  arrays = _load(out / "checkpoint.npz")
  saved, loaded = _sub(arrays, "saved"), _sub(arrays, "loaded")
  for k, v in saved.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  # The prompt is initialised from scratch (the trainer's seed), not read.
  ref = _sub(_load(out / "one_device.npz"), "initial")
  np.testing.assert_array_equal(loaded[_PROMPT[0]], ref[_PROMPT[0]])
  assert not np.array_equal(loaded[_LOGITS_KERNEL], ref[_LOGITS_KERNEL])


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _killing(procs):
  """Kills (by pid) whatever is still running when the block exits, on failure too."""
  try:
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        pass


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  """Two `jax.distributed` CPU processes (2 devices each, gloo collectives) train together.

  Each process feeds the rows of the global batch its devices hold; losses, trained parameters
  and the checkpoint both processes save (and restore) match a 1-device, 1-process run. Three
  layouts: prompt tuning and model tuning on 2 data (one per process) x 2 model, and model tuning
  on 1 data x 4 model, where every weight is split over both processes.
  """
  ref_out, multi_out = tmp_path / "reference", tmp_path / "multihost"
  vocab_path = str(require(T5_VOCAB))
  ref_out.mkdir()
  multi_out.mkdir()
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = []
  with contextlib.ExitStack() as stack:
    logs = [stack.enter_context(open(tmp_path / f"process_{i}.log", "w")) for i in range(2)]
    stack.enter_context(_killing(procs))  # Exits first: no process outlives the test.
    for i in range(2):
      procs.append(
          subprocess.Popen(
              _worker_command(
                  "multihost",
                  out=str(multi_out),
                  coordinator=coordinator,
                  num_processes=2,
                  process_id=i,
                  vocab_path=vocab_path,
              ),
              env=_env(2),
              cwd=_HERE.parent,
              stdout=logs[i],
              stderr=subprocess.STDOUT,
          )
      )
    # The single-process reference (1 device, the whole global batch) runs meanwhile.
    _run_worker(
        "multihost",
        1,
        out=str(ref_out),
        coordinator="",
        num_processes=1,
        process_id=0,
        vocab_path=vocab_path,
    )
    deadline = time.monotonic() + _SUBPROCESS_TIMEOUT
    for p in procs:
      try:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass
  for i, p in enumerate(procs):
    log = (tmp_path / f"process_{i}.log").read_text()
    assert p.returncode == 0, f"process {i} failed ({p.returncode}):\n{_excerpt(log)}"

  ref = json.loads((ref_out / "facts.json").read_text())
  multi = json.loads((multi_out / "facts.json").read_text())
  assert multi["process_count"] == 2
  assert multi["num_devices"] == 4 and multi["num_local_devices"] == 2
  assert multi["prompt"]["mesh"] == {"data": 2, "model": 2}
  assert multi["model_across"]["mesh"] == {"data": 1, "model": 4}
  assert ref["process_count"] == 1 and ref["num_devices"] == 1
  # Process 0 read the first half of each global batch, or all of it without data parallelism.
  assert multi["prompt"]["rows"] == [0, _BATCH // 2]
  assert multi["model_across"]["rows"] == [0, _BATCH]
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top

  path = f"checkpoint_{_MULTIHOST_STEPS}"
  for name, ref_name in (("prompt", "prompt"), ("model", "model"), ("model_across", "model")):
    np.testing.assert_allclose(
        multi[name]["losses"], ref[ref_name]["losses"], rtol=_RTOL, err_msg=name
    )
    _assert_trees_close(
        _load(multi_out / f"{name}_final.npz"),
        _load(ref_out / f"{ref_name}_final.npz"),
        f"{name} final params",
    )
    # Saved by both processes together, restored by both: the same values.
    assert multi[name]["restored_step"] == _MULTIHOST_STEPS
    assert multi[name]["restored_position"] == _MULTIHOST_STEPS
    assert multi[name]["restored_max_diff"] == 0.0, name
    got = optim.flatten(checkpoints.load_t5x_checkpoint(multi_out / name / path))
    want = optim.flatten(checkpoints.load_t5x_checkpoint(ref_out / ref_name / path))
    _assert_trees_close(got, want, f"{name} checkpoint")
    assert (_LOGITS_KERNEL in got) == (name != "prompt")
  # The training loop with BEST_METRIC: both processes evaluated twice, agreed on the best
  # checkpoint, saved it together and kept it; the same as one process.
  assert multi["best_metric"]["evals"] == [2, 4]
  assert multi["best_metric"]["checkpoints"] == ref["best_metric"]["checkpoints"]
  assert multi["best_metric"]["best"]["step"] == ref["best_metric"]["best"]["step"]
  assert multi["best_metric"]["best"]["value"] == pytest.approx(ref["best_metric"]["best"]["value"])
  assert multi["best_metric"]["best"]["step"] in multi["best_metric"]["checkpoints"]


if __name__ == "__main__":
  _worker_main(sys.argv[1:])


class _FakeDevice:

  def __init__(self, process_index):
    self.process_index = process_index


def _shard_info(process_of_device, process_index, monkeypatch):
  """`data_shard_info` of a (data, model) mesh whose devices belong to the given processes."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top

  partitioner = partitioning.Partitioner.__new__(partitioning.Partitioner)
  devices = np.vectorize(_FakeDevice, otypes=[object])(np.asarray(process_of_device))
  partitioner.mesh = types.SimpleNamespace(devices=devices)
  monkeypatch.setattr(jax, "process_index", lambda: process_index)
  return partitioner.data_shard_info()


def test_data_shard_info_follows_the_data_axis(monkeypatch):
  # One host: one block of rows.
  assert _shard_info([[0, 0], [0, 0]], 0, monkeypatch) == (0, 1)
  # Two hosts, each holding whole data rows: each reads its own half.
  assert _shard_info([[0, 0], [1, 1]], 1, monkeypatch) == (1, 2)
  assert _shard_info([[0, 0], [0, 0], [1, 1], [1, 1]], 0, monkeypatch) == (0, 2)
  # The model axis spans the two hosts: both hold every row, so both read the same data.
  assert _shard_info([[0, 1], [0, 1]], 0, monkeypatch) == (0, 1)
  assert _shard_info([[0, 1], [0, 1]], 1, monkeypatch) == (0, 1)
  # Hosts holding interleaved rows cannot be fed contiguous slices.
  with pytest.raises(ValueError, match="overlapping or uneven"):
    _shard_info([[0, 0], [1, 1], [0, 0], [1, 1]], 0, monkeypatch)


def _attention_in_one_ynn_call(hlo_text: str) -> bool:
  """Whether some YNNPACK fusion of the compiled program contains a softmax's exponential."""
  ynn_computations = set()
  for line in hlo_text.splitlines():
    if "__ynn_fusion" in line and "calls=%" in line:
      ynn_computations.add(line.split("calls=%")[1].split(",")[0].split()[0])
  body = None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" "):
      name = line.lstrip("%").split(" ")[0]
      body = name if name in ynn_computations else None
    elif body and " exponential(" in line:
      return True
  return False


def test_cpu_compiles_attention_matmuls_apart_and_computes_the_same(monkeypatch):
  """The CPU default keeps each attention's matmuls and softmax out of one YNNPACK call (slow:
  benchmarks/README.md) and changes the scores by no more than float32 rounding; a user's own
  XLA_FLAGS setting of the option wins over the default."""
  import jax  # pylint: disable=g-import-not-at-top

  from prompt_tuning import model as model_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import prompts  # pylint: disable=g-import-not-at-top
  from prompt_tuning import restore  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu":
    pytest.skip("The option is XLA:CPU's.")
  cfg = t5.config_for_size("small", num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
  factory = prompts.prefix_prompt_factory(16, prompts.random_uniform())
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg, prompt_factory=factory))
  rng = np.random.RandomState(0)
  targets = rng.randint(2, 1000, (4, 4)).astype(np.int32)
  batch = {
      "encoder_input_tokens": rng.randint(2, 1000, (4, 48)).astype(np.int32),
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": np.ones_like(targets),
  }
  results = {}
  for name, options in (("default", None), ("xla", {})):
    partitioner = partitioning.Partitioner(compiler_options=options)
    spec = restore.ParamSpec.of(model, partitioner, {"inputs": 48, "targets": 4})
    params = restore.init_params(model, spec, jax.random.PRNGKey(0))
    score = partitioner.jit(model.score_batch)
    hlo = score.lower(params, batch).compile().as_text()
    results[name] = (_attention_in_one_ynn_call(hlo), np.asarray(score(params, batch)))
  assert partitioning.Partitioner().compiler_options == partitioning.CPU_COMPILER_OPTIONS
  assert not results["default"][0], "the default still fuses attention into one YNNPACK call"
  assert results["xla"][0], "XLA no longer fuses attention by itself: CPU_COMPILER_OPTIONS may go"
  np.testing.assert_allclose(results["default"][1], results["xla"][1], rtol=1e-5, atol=1e-4)

  option = next(iter(partitioning.CPU_COMPILER_OPTIONS))
  monkeypatch.setenv("XLA_FLAGS", f"--{option}=individual_dot,eltwise")
  assert partitioning.default_compiler_options("cpu") == {}
  assert partitioning.default_compiler_options("gpu") == {}
