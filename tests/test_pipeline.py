"""`pipeline.build`: tf.data pipelines traced without AutoGraph where no function needs it."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning import embedded
from prompt_tuning import evaluation
from prompt_tuning.data import pipeline
from prompt_tuning.data import vocab
from prompt_tuning.tasks import synthetic  # pylint: disable=unused-import  (and every other task)

EMBEDDED_TASK = "synthetic_taskless_super_glue_boolq_v102"
LENGTHS = {"inputs": 64, "targets": 4}


def _dataset_fn(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices(
      {"inputs": ["a b c", "", "d e"], "targets": ["yes", "no", "yes"]}
  )


def _fill_empty_inputs(ds):
  """A user's preprocessor that branches on a tensor in Python: only AutoGraph can trace it."""

  def fill(ex):
    if tf.strings.length(ex["inputs"]) == 0:
      inputs = tf.constant("empty")
    else:
      inputs = ex["inputs"]
    return {**ex, "inputs": inputs}

  return ds.map(fill)


@pytest.fixture(name="user_task")
def _user_task():
  vocabulary = seqio.SentencePieceVocabulary(embedded.vocab_path())
  features = {k: seqio.Feature(vocabulary) for k in ("inputs", "targets")}
  seqio.TaskRegistry.add(
      "pipeline_user_preprocessor",
      source=seqio.FunctionDataSource(_dataset_fn, splits=["train"]),
      preprocessors=[
          _fill_empty_inputs,
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=features,
  )
  yield "pipeline_user_preprocessor"
  seqio.TaskRegistry.remove("pipeline_user_preprocessor")


def _batches(name, n=2):
  cfg = pipeline.DatasetConfig(name, {"inputs": 8, "targets": 4}, batch_size=3, shuffle=False)
  it = pipeline.train_batches(cfg)
  return [next(it) for _ in range(n)]


def test_registered_tasks_need_no_autograph():
  names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  assert EMBEDDED_TASK in names and "super_glue_boolq_v102" in names
  assert [n for n in names if n.startswith("pipeline_")] == []  # Nothing of this file's.
  assert [n for n in names if pipeline.needs_autograph(n)] == []


def test_a_users_preprocessor_keeps_autograph_and_the_switch_takes_effect(user_task, monkeypatch):
  assert pipeline.needs_autograph(user_task)
  batch = _batches(user_task, n=1)[0]
  vocabulary = seqio.get_mixture_or_task(user_task).output_features["inputs"].vocabulary
  assert vocabulary.decode(batch["encoder_input_tokens"][1].tolist()) == "empty"
  # The same functions, were they this package's, are traced as written, and fail to.
  for fn in (_fill_empty_inputs, _dataset_fn):
    monkeypatch.setattr(fn, "__module__", "prompt_tuning.user")
  assert not pipeline.needs_autograph(user_task)
  with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
    _batches(user_task, n=1)


def test_a_function_held_by_the_source_counts(user_task, monkeypatch):
  monkeypatch.setattr(_fill_empty_inputs, "__module__", "prompt_tuning.user")
  assert pipeline.needs_autograph(user_task)  # For the source's `dataset_fn`, from this file.
  monkeypatch.setattr(_dataset_fn, "__module__", "prompt_tuning.user")
  assert not pipeline.needs_autograph(user_task)


def test_a_function_bound_to_a_partial_counts(monkeypatch):
  is_graph_code = pipeline._is_graph_code  # pylint: disable=protected-access
  monkeypatch.setattr(_fill_empty_inputs, "__module__", "prompt_tuning.user")
  plain = functools.partial(seqio.preprocessors.rekey, key_map={"inputs": "text"})
  assert is_graph_code(plain)
  assert is_graph_code(functools.partial(plain, fn=_fill_empty_inputs))
  monkeypatch.setattr(_fill_empty_inputs, "__module__", "user_tasks")
  assert not is_graph_code(functools.partial(plain, fn=_fill_empty_inputs))
  assert not is_graph_code(functools.partial(plain, _fill_empty_inputs))


def test_without_autograph_the_embedded_task_reads_the_same(monkeypatch):
  """Train batches and the evaluator's examples equal what the AutoGraph-traced pipeline gives."""
  monkeypatch.setenv(vocab.VOCAB_ENV_VAR, embedded.vocab_path())
  assert not pipeline.needs_autograph(EMBEDDED_TASK)
  plain = _batches(EMBEDDED_TASK)
  evaluator = evaluation.make_evaluator(EMBEDDED_TASK, LENGTHS)
  monkeypatch.setattr(pipeline, "needs_autograph", lambda name: True)
  converted = _batches(EMBEDDED_TASK)
  converted_evaluator = evaluation.make_evaluator(EMBEDDED_TASK, LENGTHS)
  _assert_same(plain, converted)
  a, b = (
      list(e.cached_model_datasets[EMBEDDED_TASK].as_numpy_iterator())
      for e in (evaluator, converted_evaluator)
  )
  assert len(a) == len(b) == 400  # (index, features) pairs.
  _assert_same(a, b)


def _assert_same(a, b):
  tf.nest.assert_same_structure(a, b)
  for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
    np.testing.assert_array_equal(x, y)
