"""Tests for prompt_tuning.checkpoints: T5X msgpack + zarr checkpoints."""

import ast
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest

from conftest import GOLDEN, TINY_CHECKPOINT, require
from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import CheckpointError

_REPO = pathlib.Path(__file__).resolve().parents[1]
_EMBEDDING = "token_embedder/embedding"


def _flat(tree, prefix=""):
  """'/'-path -> leaf of a nested dict."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flat(value, name + "/"))
    else:
      out[name] = value
  return out


def _assert_bit_identical(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for name in fa:
    if fa[name] is None:
      assert fb[name] is None, name
      continue
    x, y = np.asarray(fa[name]), np.asarray(fb[name])
    assert (x.dtype, x.shape) == (y.dtype, y.shape), name
    assert x.tobytes() == y.tobytes(), name


def _golden_shapes():
  """Checkpoint parameter shapes from param_tree.txt's prompt_tuned_fp32."""
  lines = (require(GOLDEN / "param_tree.txt")).read_text().splitlines()
  start = lines.index(next(l for l in lines if l.startswith("## prompt_tuned_fp32")))
  shapes = {}
  for line in lines[start + 1 :]:
    if line.startswith("##"):
      break
    if not line.startswith("params/"):
      continue
    path, shape, _, source = line.split("\t")[:4]
    if "not in checkpoint" in source:  # the freshly initialised prompt
      continue
    shapes[path[len("params/") :]] = tuple(ast.literal_eval(shape))
  return shapes


def _random_tree(seed=0):
  """A T5-like tree mixing inline and zarr leaves of several dtypes."""
  rng = np.random.default_rng(seed)
  normal = lambda *s: rng.standard_normal(s).astype(np.float32)
  return {
      "token_embedder": {"embedding": normal(300, 64)},  # 75 KiB: zarr
      "encoder": {
          "encoder_norm": {"scale": normal(4).astype(ml_dtypes.bfloat16)},
          "layers_0": {
              "attention": {"query": {"kernel": normal(4, 4)}},
              "mlp": {
                  "wi_0": {"kernel": normal(128, 96).astype(ml_dtypes.bfloat16)}
              },  # 24 KiB bf16: zarr
          },
      },
      "decoder": {
          "logits_dense": {"kernel": jnp.asarray(normal(64, 300))},
          "counts": rng.integers(-(2**31), 2**31 - 1, 5000, dtype=np.int32),
          "small_counts": np.arange(3, dtype=np.int32),
          "scalar": np.array(1.5, np.float32),
      },
  }


# ----------------------------------------------------------------------------
# The real tiny T5X checkpoint (old "optimizer/..." layout, gfile specs).
# ----------------------------------------------------------------------------


def test_tiny_checkpoint_parameters_match_golden_shapes():
  path = require(TINY_CHECKPOINT)
  golden = _golden_shapes()
  listed = checkpoints.list_parameters(path)
  assert len(listed) == 52
  assert {n: s for n, (s, _) in listed.items()} == golden
  assert {d for _, d in listed.values()} == {"float32"}
  loaded = _flat(checkpoints.load_t5x_checkpoint(path))
  assert {n: a.shape for n, a in loaded.items()} == golden
  assert all(isinstance(a, np.ndarray) for a in loaded.values())


def test_tiny_checkpoint_step_and_embedding_hash():
  path = require(TINY_CHECKPOINT)
  assert checkpoints.read_step(path) == 3
  assert checkpoints.read_step(path / "checkpoint") == 3
  info = json.loads(require(GOLDEN / "initializers.json").read_text())
  embedding = checkpoints.load_t5x_checkpoint(path, regex=_EMBEDDING)["token_embedder"]["embedding"]
  raw = np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
  assert hashlib.sha256(raw).hexdigest() == info["embedding_sha256_float32_c_order"]


def test_tiny_checkpoint_state():
  state = checkpoints.load_state(require(TINY_CHECKPOINT))
  assert int(state["step"]) == 3
  v = state["param_states"]["token_embedder"]["embedding"]["v"]
  assert v.shape == (32128, 4) and v.dtype == np.float32


def test_regex_reads_only_selected(monkeypatch):
  path = require(TINY_CHECKPOINT)
  opened = []
  real_open = checkpoints._open_ts
  monkeypatch.setattr(
      checkpoints,
      "_open_ts",
      lambda spec, d: opened.append(spec["kvstore"]["path"]) or real_open(spec, d),
  )
  tree = checkpoints.load_t5x_checkpoint(path, regex=_EMBEDDING)
  assert list(_flat(tree)) == [_EMBEDDING]
  assert opened == ["target.token_embedder.embedding"]


def test_dtype_cast():
  tree = checkpoints.load_t5x_checkpoint(
      require(TINY_CHECKPOINT), regex=r"encoder/.*", dtype=jnp.bfloat16
  )
  assert {a.dtype for a in _flat(tree).values()} == {np.dtype(jnp.bfloat16)}


def test_single_sharding_places_on_device():
  device = jax.devices()[0]
  tree = checkpoints.load_t5x_checkpoint(
      require(TINY_CHECKPOINT),
      regex=r"encoder/encoder_norm/scale",
      shardings=jax.sharding.SingleDeviceSharding(device),
  )
  scale = tree["encoder"]["encoder_norm"]["scale"]
  assert isinstance(scale, jax.Array) and scale.devices() == {device}


_SHARDED_CHECK = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from prompt_tuning import checkpoints
    path = {path!r}
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((4, 2), ('data', 'model'))
    emb_s = NamedSharding(mesh, P('model', None))
    logit_s = NamedSharding(mesh, P(None, 'model'))
    shardings = {{'token_embedder': {{'embedding': emb_s}},
                  'decoder': {{'logits_dense': {{'kernel': logit_s}}}}}}
    regex = 'token_embedder/embedding|decoder/logits_dense/kernel'
    want = checkpoints.load_t5x_checkpoint(path, regex=regex)
    got = checkpoints.load_t5x_checkpoint(path, regex=regex,
                                          shardings=shardings)
    for name, s in [('token_embedder/embedding', emb_s),
                    ('decoder/logits_dense/kernel', logit_s)]:
      a, b = name.split('/', 1)
      w = want[a]
      g = got[a]
      for k in b.split('/'):
        w, g = w[k], g[k]
      assert isinstance(g, jax.Array) and g.sharding == s, (name, g.sharding)
      assert g.dtype == w.dtype and np.array_equal(np.asarray(g), w), name
    shard = got['token_embedder']['embedding'].addressable_shards[0]
    assert shard.data.shape == (32128 // 2, 4), shard.data.shape
    # A callable picks shardings by name; the cast happens per slice.
    fn = lambda name, shape, dtype: logit_s if 'logits' in name else None
    got = checkpoints.load_t5x_checkpoint(
        path, regex=regex, shardings=fn, dtype='bfloat16')
    kernel = got['decoder']['logits_dense']['kernel']
    assert kernel.sharding == logit_s and kernel.dtype == jax.numpy.bfloat16
    assert isinstance(got['token_embedder']['embedding'], np.ndarray)
    print('OK')
""")


def test_sharded_read_on_8_fake_devices():
  path = require(TINY_CHECKPOINT)
  # The device count is fixed when jax starts, hence a fresh interpreter.
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
      PYTHONPATH=os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")]),
  )
  result = subprocess.run(
      [sys.executable, "-c", _SHARDED_CHECK.format(path=str(path))],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_tiny_checkpoint_write_read_bit_identical(tmp_path):
  path = require(TINY_CHECKPOINT)
  original = checkpoints.load_t5x_checkpoint(path)
  state = checkpoints.load_state(path)
  out = checkpoints.save_t5x_checkpoint(
      tmp_path / "checkpoint_3", original, step=3, state=state["param_states"]
  )
  _assert_bit_identical(checkpoints.load_t5x_checkpoint(out), original)
  _assert_bit_identical(checkpoints.load_state(out), state)
  assert checkpoints.list_parameters(out) == checkpoints.list_parameters(path)
  assert checkpoints.read_step(out) == 3


# ----------------------------------------------------------------------------
# Self-contained round trips (need nothing from ../shared).
# ----------------------------------------------------------------------------


def test_round_trip_mixed_tree(tmp_path):
  tree = _random_tree()
  out = checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_7", tree, step=7)
  assert out == str(tmp_path / "checkpoint_7")
  loaded = checkpoints.load_t5x_checkpoint(out)
  _assert_bit_identical(loaded, jax.tree.map(np.asarray, tree))
  assert checkpoints.read_step(out) == 7
  # Large leaves are zarr dirs named like T5X's; small ones are inline.
  zarrs = sorted(n for n in os.listdir(out) if n != "checkpoint")
  assert zarrs == [
      "target.decoder.counts",
      "target.decoder.logits_dense.kernel",
      "target.encoder.layers_0.mlp.wi_0.kernel",
      "target.token_embedder.embedding",
  ]
  listed = checkpoints.list_parameters(out)
  assert listed["encoder/layers_0/mlp/wi_0/kernel"] == ((128, 96), "bfloat16")
  assert listed["encoder/encoder_norm/scale"] == ((4,), "bfloat16")
  assert listed["decoder/scalar"] == ((), "float32")


def test_written_file_is_new_t5x_layout(tmp_path):
  out = checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_2", _random_tree(), step=2)
  raw = msgpack.unpackb((pathlib.Path(out) / "checkpoint").read_bytes(), raw=False)
  assert raw["version"] == 3 and set(raw) == {"version", "target", "state"}
  spec = raw["target"]["token_embedder"]["embedding"]
  assert spec["driver"] == "zarr"
  assert spec["kvstore"]["path"] == "target.token_embedder.embedding"
  assert spec["metadata"]["shape"] == [300, 64]
  assert spec["metadata"]["compressor"]["id"] == "gzip"
  # Inline leaves use flax.serialization's ext encoding.
  from flax import serialization  # pylint: disable=g-import-not-at-top

  restored = serialization.msgpack_restore((pathlib.Path(out) / "checkpoint").read_bytes())
  np.testing.assert_array_equal(restored["target"]["decoder"]["small_counts"], np.arange(3))
  assert int(restored["state"]["step"]) == 2


def test_state_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  state = {
      "encoder": {
          "prompt": {
              "prompt": {
                  "m": np.zeros((1,), np.float32),
                  "v": rng.standard_normal((64, 128)).astype(np.float32),  # zarr
                  "v_row": rng.standard_normal((5,)).astype(ml_dtypes.bfloat16),
              }
          }
      },
      "token_embedder": {"embedding": None},
  }
  out = checkpoints.save_t5x_checkpoint(
      tmp_path / "checkpoint_5", _random_tree(), step=5, state=state
  )
  loaded = checkpoints.load_state(out)
  assert int(loaded["step"]) == 5
  _assert_bit_identical(loaded["param_states"], state)
  zarr_dir = pathlib.Path(out) / "state.param_states.encoder.prompt.prompt.v"
  assert zarr_dir.is_dir()


def test_overwrite(tmp_path):
  target = tmp_path / "checkpoint_1"
  checkpoints.save_t5x_checkpoint(target, {"a": np.ones(3)}, step=1)
  with pytest.raises(CheckpointError, match="already exists"):
    checkpoints.save_t5x_checkpoint(target, {"a": np.zeros(3)}, step=1)
  checkpoints.save_t5x_checkpoint(target, {"b": np.zeros(3)}, step=1, overwrite=True)
  assert list(checkpoints.load_t5x_checkpoint(target)) == ["b"]
  assert os.listdir(tmp_path) == ["checkpoint_1"]


def test_other_processes_follow_process_0s_view_of_the_directory(tmp_path, monkeypatch):
  """Multi-host: process 0 may have written the checkpoint before another process looks (a
  replicated prompt needs no gather); that process must not then see "already exists"."""
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top

  target = tmp_path / "checkpoint_3"
  checkpoints.save_t5x_checkpoint(target, {"a": np.ones(3)}, step=3)  # Process 0's write.
  written = sorted(os.listdir(target))
  seen_by_process_0 = []
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def broadcast(value):
    seen_by_process_0.append(value)  # This process's own view, replaced by process 0's.
    return False  # Process 0 looked before it wrote.

  monkeypatch.setattr(partitioning, "broadcast_from_process_0", broadcast)
  assert checkpoints.save_t5x_checkpoint(target, {"a": np.zeros(3)}, step=3) == str(target)
  assert seen_by_process_0 == [True]
  assert sorted(os.listdir(target)) == written  # Only process 0 writes.
  np.testing.assert_array_equal(checkpoints.load_t5x_checkpoint(target)["a"], np.ones(3))
  # Where process 0 saw the directory, every process raises.
  monkeypatch.setattr(partitioning, "broadcast_from_process_0", lambda value: True)
  with pytest.raises(CheckpointError, match="already exists"):
    checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_4", {"a": np.ones(3)}, step=4)


def test_gcs_paths_map_to_gcs_kvstore():
  spec = {
      "driver": "zarr",
      "metadata": {"shape": [2]},
      "kvstore": {"driver": "gfile", "path": "target.a.kernel"},
  }
  full = checkpoints._ts_spec(spec, "gs://bucket/run/checkpoint_3")
  assert full == {
      "driver": "zarr",
      "kvstore": {"driver": "gcs", "bucket": "bucket", "path": "run/checkpoint_3/target.a.kernel"},
  }
  full = checkpoints._ts_spec(spec, "/ckpts/checkpoint_3")
  assert full["kvstore"] == {"driver": "file", "path": "/ckpts/checkpoint_3/target.a.kernel"}


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_error_nonexistent_path(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    checkpoints.load_t5x_checkpoint(tmp_path / "nope")


def test_error_directory_without_checkpoint_file(tmp_path):
  checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_4", {"a": np.ones(2)}, step=4)
  with pytest.raises(CheckpointError, match="no 'checkpoint' file") as e:
    checkpoints.list_parameters(tmp_path)
  assert str(tmp_path) in str(e.value) and "checkpoint_4" in str(e.value)


@pytest.mark.parametrize(
    "content",
    [b"\xc1\xc1 not msgpack", b"hello world", msgpack.packb([1, 2]), msgpack.packb({"params": {}})],
)
def test_error_not_a_t5x_file(tmp_path, content):
  file = tmp_path / "checkpoint"
  file.write_bytes(content)
  with pytest.raises(CheckpointError, match="not a") as e:
    checkpoints.load_t5x_checkpoint(file)
  assert str(file) in str(e.value)


def test_error_regex_selects_nothing(tmp_path):
  out = checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_1", _random_tree(), step=1)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_t5x_checkpoint(out, regex="nothing/here")
  assert "nothing/here" in str(e.value) and _EMBEDDING in str(e.value)


def test_check_against():
  loaded = jax.tree.map(np.asarray, _random_tree())
  expected = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), loaded)
  checkpoints.check_against(expected, loaded)

  bad = jax.tree.map(lambda x: x, expected)
  bad["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"] = jax.ShapeDtypeStruct(
      (128, 16), jnp.bfloat16
  )
  with pytest.raises(CheckpointError) as e:
    checkpoints.check_against(bad, loaded)
  assert (
      "encoder/layers_0/mlp/wi_0/kernel: checkpoint has shape (128, 96) "
      "but the model expects (128, 16)"
  ) in str(e.value)

  model = jax.tree.map(lambda x: x, expected)
  model["encoder"]["prompt"] = {"prompt": jax.ShapeDtypeStruct((5, 4), jnp.float32)}
  del model["decoder"]["counts"]
  with pytest.raises(CheckpointError) as e:
    checkpoints.check_against(model, loaded)
  assert "missing from the checkpoint: ['encoder/prompt/prompt']" in str(e.value)
  assert "not in the model: ['decoder/counts']" in str(e.value)

  model["decoder"]["counts"] = loaded["decoder"]["counts"]  # arrays work too
  checkpoints.check_against(model, loaded, allow_missing_regex=".*prompt.*")
  with pytest.raises(CheckpointError, match="missing"):
    checkpoints.check_against(model, loaded, allow_missing_regex="prompt")


# ----------------------------------------------------------------------------
# Atomicity and checkpoint discovery.
# ----------------------------------------------------------------------------


def _boom(*args, **kwargs):
  raise RuntimeError("simulated crash")


@pytest.mark.parametrize("victim", ["_write_zarr", "_write_synced"])
def test_failed_save_leaves_no_checkpoint(tmp_path, monkeypatch, victim):
  tree = _random_tree()
  checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_1", tree, step=1)
  monkeypatch.setattr(checkpoints, victim, _boom)
  with pytest.raises(RuntimeError, match="simulated crash"):
    checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_2", tree, step=2)
  assert os.listdir(tmp_path) == ["checkpoint_1"]  # temp dir cleaned up
  assert checkpoints.latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_1")


def test_killed_save_leftovers_are_ignored(tmp_path, monkeypatch):
  tree = _random_tree()
  checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_1", tree, step=1)
  # A kill just before the rename: no cleanup runs, the temp dir stays.
  monkeypatch.setattr(checkpoints, "_commit", _boom)
  monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda *a, **k: None)
  with pytest.raises(RuntimeError):
    checkpoints.save_t5x_checkpoint(tmp_path / "checkpoint_2", tree, step=2)
  monkeypatch.undo()
  leftovers = [n for n in os.listdir(tmp_path) if ".tmp-" in n]
  assert len(leftovers) == 1 and leftovers[0].startswith("checkpoint_2.tmp-")
  assert not (tmp_path / "checkpoint_2").exists()
  assert checkpoints.all_checkpoint_steps(tmp_path) == [1]
  assert checkpoints.latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_1")


def test_latest_checkpoint(tmp_path):
  assert checkpoints.latest_checkpoint(tmp_path / "missing") is None
  assert checkpoints.latest_checkpoint(tmp_path) is None
  for step in (2, 10, 9):
    checkpoints.save_t5x_checkpoint(tmp_path / f"checkpoint_{step}", {"a": np.ones(2)}, step=step)
  (tmp_path / "checkpoint_11").mkdir()  # incomplete: no msgpack file
  (tmp_path / "checkpoint_x").mkdir()
  assert checkpoints.all_checkpoint_steps(tmp_path) == [2, 9, 10]
  assert checkpoints.latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_10")
