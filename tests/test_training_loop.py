"""`training.run` in this process: what the loop reads back from the device, and when."""

import functools
import json

import jax

from prompt_tuning import decoding
from prompt_tuning import embedded
from prompt_tuning import metric_writers
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import restore
from prompt_tuning import train_state
from prompt_tuning import trainer as trainer_lib
from prompt_tuning import training
from prompt_tuning.data import pipeline
from prompt_tuning.data import text_tasks
from prompt_tuning.data import vocab
from prompt_tuning.models import t5

LENGTHS = {"inputs": 8, "targets": 4}


def _task(tmp_path) -> str:
  """A JSONL task on the committed embedded vocabulary (the caller restores the default)."""
  vocab.set_default_vocab_path(embedded.vocab_path())
  words = ("great", "dull", "superb", "awful")
  rows = "".join(
      json.dumps({"sentence": f"the film is {w}", "label": label}) + "\n"
      for w, label in zip(words, ("positive", "negative") * 2)
  )
  (tmp_path / "train.jsonl").write_text(rows)
  text_tasks.register_text_task(
      "loop_reads",
      {"train": str(tmp_path / "train.jsonl")},
      input_field="sentence",
      target_field="label",
      label_names=["negative", "positive"],
      metrics=("accuracy",),
      overwrite=True,
  )
  return "loop_reads"


class _Unread:
  """A train step's output, which the loop may hold and pass on but not read: any conversion
  to a host value (a sync with the device) fails. (JAX's transfer guard would say the same on an
  accelerator, but on the CPU backend arrays are host memory and it never fires.)"""

  def __init__(self, value):
    self.value = value

  def block_until_ready(self):  # Waits for the step; reads nothing.
    self.value.block_until_ready()
    return self

  def _read(self, *args, **kwargs):
    raise AssertionError("The training loop read a train step's output outside its log or save.")

  __array__ = __float__ = __int__ = __index__ = __bool__ = __len__ = __iter__ = _read
  __getitem__ = __format__ = item = tolist = _read


def _wrap(tree):
  return jax.tree.map(_Unread, tree)


def _unwrap(tree):
  is_unread = lambda x: isinstance(x, _Unread)
  return jax.tree.map(lambda x: x.value if is_unread(x) else x, tree, is_leaf=is_unread)


def test_between_logs_and_checkpoints_the_loop_reads_nothing_from_the_device(tmp_path, monkeypatch):
  """No host sync per step: the loop reads the steps' outputs (metrics, state) only in the
  period's metric summary and the checkpoint save, so it dispatches each step without waiting
  for the one before."""
  module = t5.EncoderDecoder(
      t5.config_for_size("tiny", dtype="float32"), prompt_factory=prompts.prefix_prompt_factory(2)
  )
  trainer = trainer_lib.Trainer(
      model_lib.EncoderDecoderModel(module, decode_fn=decoding.greedy),
      functools.partial(optim.create_optimizer, "adafactor", learning_rate=0.3),
      partitioning.Partitioner(),
      input_shapes=LENGTHS,
  )
  reads = []

  def reading(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      reads.append(fn.__name__)
      return fn(*_unwrap(args), **_unwrap(kwargs))

    return wrapper

  monkeypatch.setattr(metric_writers, "summarize", reading(metric_writers.summarize))
  monkeypatch.setattr(train_state, "save", reading(train_state.save))
  step_fn = trainer.train_step
  monkeypatch.setattr(
      trainer, "train_step", lambda state, *args: _wrap(step_fn(_unwrap(state), *args))
  )
  try:
    result = training.run(
        model_dir=str(tmp_path / "run"),
        trainer=trainer,
        total_steps=6,
        train_dataset_cfg=pipeline.DatasetConfig(_task(tmp_path), LENGTHS, batch_size=2),
        restore_cfg=restore.RestoreConfig(None),
        checkpoint_cfg=train_state.CheckpointConfig(period=100, keep=1, export_numpy=False),
        log_period=3,
        progress_bar=False,
        tensorboard=False,
    )
  finally:
    vocab.set_default_vocab_path(None)  # Later tests in this process get the default again.
  assert result["step"] == 6 and result["train"]["loss"] > 0
  assert reads == ["summarize", "summarize", "save"]  # Steps 3 and 6; the last step's save.
