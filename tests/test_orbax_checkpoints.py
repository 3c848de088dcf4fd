"""T5X's orbax checkpoint format: the tiny T5X checkpoint written again by orbax-checkpoint in
T5X's layout (`checkpoint_<N>/state/`, PyTreeCheckpointHandler with OCDBT), read back through
`prompt_tuning.checkpoints` and compared with the msgpack original."""

import os

import jax
import numpy as np
import pytest

from conftest import TINY_CHECKPOINT, require
from prompt_tuning import checkpoints

ocp = pytest.importorskip("orbax.checkpoint")


def _write_like_t5x(model_dir, step: int, train_state) -> str:
  """What T5X's orbax checkpoint manager writes: item 'state' = the train state dict."""
  manager = ocp.CheckpointManager(
      str(model_dir),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
      options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"),
  )
  manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(train_state)))
  manager.wait_until_finished()
  manager.close()
  return os.path.join(str(model_dir), f"checkpoint_{step}")


@pytest.fixture(scope="module")
def orbax_checkpoint(tmp_path_factory):
  msgpack_dir = require(TINY_CHECKPOINT)
  state = checkpoints.load_state(msgpack_dir)
  target = checkpoints.load_t5x_checkpoint(msgpack_dir)
  model_dir = tmp_path_factory.mktemp("orbax")
  return msgpack_dir, _write_like_t5x(model_dir, 3, {"target": target, "state": state})


def _flat(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flat(v, prefix + (k,))
  else:
    yield "/".join(prefix), tree


def test_orbax_checkpoint_reads_as_the_msgpack_one(orbax_checkpoint):
  msgpack_dir, orbax_dir = orbax_checkpoint
  assert os.path.isfile(os.path.join(orbax_dir, "state", "_METADATA"))  # T5X's layout.
  expected = dict(_flat(checkpoints.load_t5x_checkpoint(msgpack_dir)))
  for path in (orbax_dir, os.path.join(orbax_dir, "state")):
    got = dict(_flat(checkpoints.load_t5x_checkpoint(path)))
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
      np.testing.assert_array_equal(got[name], value, err_msg=name)
      assert got[name].dtype == value.dtype, name
  assert checkpoints.read_step(orbax_dir) == checkpoints.read_step(msgpack_dir) == 3
  assert checkpoints.list_parameters(orbax_dir) == checkpoints.list_parameters(msgpack_dir)
  state, want = dict(_flat(checkpoints.load_state(orbax_dir))), checkpoints.load_state(msgpack_dir)
  for name, value in _flat(want):
    np.testing.assert_array_equal(state[name], value, err_msg=name)
  only = checkpoints.load_t5x_checkpoint(orbax_dir, regex="token_embedder/embedding")
  assert list(_flat(only))[0][0] == "token_embedder/embedding"
  # Placed on devices, as restoring for training and eval does.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  placed = checkpoints.load_t5x_checkpoint(orbax_dir, shardings=sharding)
  for name, value in _flat(placed):
    assert isinstance(value, jax.Array)
    np.testing.assert_array_equal(np.asarray(value), expected[name], err_msg=name)


def test_model_dir_lists_complete_orbax_checkpoints_only(orbax_checkpoint):
  _, orbax_dir = orbax_checkpoint
  model_dir = os.path.dirname(orbax_dir)
  assert checkpoints.all_checkpoint_steps(model_dir) == [3]
  assert checkpoints.latest_checkpoint(model_dir) == orbax_dir
  # A save that did not finish (no _CHECKPOINT_METADATA yet) is not a checkpoint.
  partial = os.path.join(model_dir, "checkpoint_5", "state")
  os.makedirs(partial)
  open(os.path.join(partial, "_METADATA"), "w").close()
  assert checkpoints.all_checkpoint_steps(model_dir) == [3]


def test_not_a_train_state_is_a_clear_error(tmp_path):
  path = _write_like_t5x(tmp_path, 1, {"params": {"w": np.zeros(2, np.float32)}})
  with pytest.raises(checkpoints.CheckpointError, match="not a T5X train state: no 'target'"):
    checkpoints.load_t5x_checkpoint(path)
