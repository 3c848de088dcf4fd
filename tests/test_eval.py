"""Evaluation through `seqio.Evaluator`: generated predictions and target scores.

Both paths are checked against a second code path: the model's own `predict_batch` /
`score_batch` run directly over the same examples.
"""

import functools
import json

import jax
import numpy as np
import pytest
import seqio

from conftest import GOLDEN, T5_VOCAB, TINY_CHECKPOINT, count_compilations, require
from prompt_tuning import checkpoints
from prompt_tuning import decoding
from prompt_tuning import evaluation
from prompt_tuning import model as model_lib
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning.data import pipeline
from prompt_tuning.data import text_tasks
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.models import t5

LENGTHS = {"inputs": 12, "targets": 4}


def _mean_target_score(targets, scores):
  del targets
  return {"mean_score": float(np.mean(scores))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  vocab_lib.set_default_vocab_path(require(T5_VOCAB))
  root = tmp_path_factory.mktemp("eval_task")
  rows = [
      {"sentence": f"the film was {w}", "label": lab}
      for w, lab in [
          ("great", "positive"),
          ("dull", "negative"),
          ("superb", "positive"),
          ("awful", "negative"),
          ("fun", "positive"),
      ]
  ]
  (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  task = text_tasks.register_text_task(
      "eval_test_task",
      {"train": str(root / "train.jsonl"), "validation": str(root / "validation.jsonl")},
      input_field="sentence",
      target_field="label",
      label_names=["negative", "positive"],
      metrics=("accuracy",),
      overwrite=True,
  )
  # The same task with a score metric too, so seqio also asks for `score_fn`.
  seqio.TaskRegistry.remove("eval_test_task_scored")
  seqio.TaskRegistry.add(
      "eval_test_task_scored",
      source=task.source,
      output_features=task.output_features,
      preprocessors=task.preprocessors,
      postprocess_fn=task.postprocessor,
      metric_fns=list(task.metric_fns) + [_mean_target_score],
  )
  params = checkpoints.load_t5x_checkpoint(require(TINY_CHECKPOINT))
  prompt = np.load(require(GOLDEN / "prompt_5x4.npy"))
  params = dict(params, encoder=dict(params["encoder"], prompt={"prompt": {"prompt": prompt}}))
  module = t5.EncoderDecoder(
      t5.config_for_size("tiny", dtype="float32"),
      prompt_factory=functools.partial(prompts.PrefixPrompt, 5, prompts.from_array(prompt)),
  )
  model = model_lib.EncoderDecoderModel(
      module, decode_fn=decoding.greedy, decode_kwargs={"num_decodes": 1}
  )
  yield model, params, rows
  vocab_lib.set_default_vocab_path(None)


def _converted(task_name):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(LENGTHS, split="validation", shuffle=False)
  batch = next(pipeline.feature_converter()(ds, LENGTHS).batch(100).as_numpy_iterator())
  return batch


def test_predictions_and_scores_match_the_model(setup):
  model, params, rows = setup
  evaluator = evaluation.make_evaluator("eval_test_task_scored", LENGTHS)
  # Batch 2 over 5 examples: the last batch is padded, and the padding must be dropped.
  fns = evaluation.ModelFns(model, 2, partitioning.Partitioner())
  metrics = evaluation.evaluate(evaluator, fns, params)
  # The reference runs at the full padded length; the evaluation cut the encoder inputs to the
  # longest example (shorter, or the comparison below would not check the cut).
  batch = _converted("eval_test_task_scored")
  longest = int((batch["encoder_input_tokens"] > 0).sum(axis=1).max())
  assert longest < LENGTHS["inputs"]
  [ds] = evaluator.cached_model_datasets.values()
  batches = fns.host_batches(ds)
  assert [i.tolist() for i, _ in batches] == [[0, 1], [2, 3], [4, -1]]
  assert {b["encoder_input_tokens"].shape for _, b in batches} == {(2, longest)}
  scores = np.asarray(jax.jit(model.score_batch)(params, batch))
  np.testing.assert_allclose(
      metrics["eval_test_task_scored"]["mean_score"], scores.mean(), rtol=1e-5
  )
  decodes = np.asarray(jax.jit(model.predict_batch)(params, batch))
  vocab = vocab_lib.get_vocabulary()
  labels = {"negative": 0, "positive": 1}
  predicted = [labels.get(vocab.decode(d.tolist()).strip(), -1) for d in decodes]
  expected = 100.0 * np.mean([p == labels[r["label"]] for p, r in zip(predicted, rows)])
  assert metrics["eval_test_task_scored"]["accuracy"] == pytest.approx(expected)
  # A second evaluation reuses the batches read from TensorFlow the first time.
  assert evaluation.evaluate(evaluator, fns, params) == metrics
  assert fns.host_batches(ds) is batches


def test_trim_encoder_padding_keeps_every_real_column():
  tokens = np.array([[5, 6, 0, 0, 0], [7, 0, 8, 0, 0]])  # A 0 inside the inputs is kept.
  batches = [(np.arange(2), {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens})]
  [(indices, trimmed)] = evaluation.trim_encoder_padding(batches)
  np.testing.assert_array_equal(trimmed["encoder_input_tokens"], tokens[:, :3])
  assert trimmed["decoder_input_tokens"] is tokens
  np.testing.assert_array_equal(indices, [0, 1])


def test_padded_batches_mark_padding():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  data = tf.data.Dataset.from_tensor_slices({"x": np.arange(5)}).enumerate()
  batches = list(pipeline.padded_batches(data, 2))
  assert [b[0].tolist() for b in batches] == [[0, 1], [2, 3], [4, -1]]
  assert batches[-1][1]["x"].tolist() == [4, 4]


def test_rank_classification_and_ensembles_against_score_batch(setup):
  """Rank classification and prompt ensembles as eval modes, checked by hand with the model's
  own `score_batch` / `predict_batch` on every (example, label, member)."""
  model, params, rows = setup
  vocab = vocab_lib.get_vocabulary()
  names = ["negative", "positive"]
  label_ids = evaluation.label_token_ids("eval_test_task", names)
  assert label_ids == [list(vocab.encode(n)) + [1] for n in names]
  prompt = params["encoder"]["prompt"]["prompt"]["prompt"]
  members = [
      params,
      evaluation.with_prompt_array(params, -np.asarray(prompt)),
      evaluation.with_prompt_array(params, np.asarray(prompt)[::-1]),
  ]
  batch = _converted("eval_test_task")
  score = jax.jit(model.score_batch)
  by_hand = np.zeros((len(members), len(rows), len(names)))
  for m, p in enumerate(members):
    for c, t in enumerate(label_ids):
      targets = np.zeros_like(batch["decoder_target_tokens"])
      targets[:, : len(t)] = t
      by_hand[m, :, c] = score(
          p,
          dict(
              batch,
              decoder_target_tokens=targets,
              decoder_input_tokens=np.pad(targets[:, :-1], ((0, 0), (1, 0))),
              decoder_loss_weights=(targets > 0).astype(np.float32),
          ),
      )
  truth = np.asarray([names.index(r["label"]) for r in rows])
  evaluator = evaluation.make_evaluator("eval_test_task", LENGTHS)
  fns = evaluation.ModelFns(model, 2, partitioning.Partitioner())

  def accuracy(members_, labels=None):
    metrics = evaluation.evaluate(
        evaluator, fns, members_[0], predict_fn=fns.ensemble_predict_fn(members_, labels)
    )
    return metrics["eval_test_task"]["accuracy"]

  for m in range(len(members)):
    want = 100.0 * np.mean(by_hand[m].argmax(-1) == truth)
    assert accuracy([members[m]], label_ids) == pytest.approx(want)
  want = 100.0 * np.mean(by_hand.sum(0).argmax(-1) == truth)
  assert accuracy(members, label_ids) == pytest.approx(want)

  # Generation: the majority of the members' greedy decodes (ties: the first member's).
  decodes = [np.asarray(jax.jit(model.predict_batch)(p, batch)).tolist() for p in members]
  voted = []
  for b in range(len(rows)):
    cands = [d[b] for d in decodes]
    voted.append(max(cands, key=lambda c: (cands.count(c), -cands.index(c))))
  predicted = [vocab.decode(v).strip() for v in voted]
  want = 100.0 * np.mean([p == r["label"] for p, r in zip(predicted, rows)])
  assert accuracy(members) == pytest.approx(want)


def test_compile_ahead_builds_the_programs_of_the_first_evaluation(setup):
  """`ModelFns.compile_ahead` (training.run's overlap of the first evaluation's compilation with
  training) compiles `predict` and `score` at the shapes the evaluation calls them with, so the
  evaluation neither traces nor compiles; without it, the same evaluation does both."""
  model, params, _ = setup
  evaluator = evaluation.make_evaluator("eval_test_task_scored", LENGTHS)
  # Batch sizes no other test uses, so JAX's cache holds none of these programs yet.
  control = evaluation.ModelFns(model, 3, partitioning.Partitioner())
  expected, counts = count_compilations(lambda: evaluation.evaluate(evaluator, control, params))
  assert counts["compile"] >= 2 and counts["trace"] >= 2  # predict and score.
  fns = evaluation.ModelFns(model, 4, partitioning.Partitioner())
  _, counts = count_compilations(lambda: fns.compile_ahead(evaluator, params).result())
  assert counts["compile"] >= 2
  metrics, counts = count_compilations(lambda: evaluation.evaluate(evaluator, fns, params))
  assert counts == {"trace": 0, "lower": 0, "compile": 0}
  assert (
      metrics["eval_test_task_scored"]["accuracy"] == expected["eval_test_task_scored"]["accuracy"]
  )
  np.testing.assert_allclose(
      metrics["eval_test_task_scored"]["mean_score"],
      expected["eval_test_task_scored"]["mean_score"],
      rtol=1e-5,
  )
