"""Evaluation with `seqio.Evaluator`: generated predictions and rank-classification scores.

Used during training (every `EVAL_PERIOD` steps, see `training.py`) and by the eval command
(`python -m prompt_tuning.eval`, which calls `run`).
"""

import json
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
import seqio

from prompt_tuning import partitioning
from prompt_tuning import restore
from prompt_tuning.data import pipeline


def make_evaluator(
    task_name: str,
    feature_lengths: Mapping[str, int],
    split: str = "validation",
    module=None,
    log_dir: Optional[str] = None,
    use_cached: bool = False,
) -> seqio.Evaluator:
  """A SeqIO evaluator; with `log_dir`, it also writes `<task>-metrics.jsonl` there."""
  pipeline.get_task(task_name, module)
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)  # seqio's JSONLogger does not create it.
  loggers = (seqio.JSONLogger,) if log_dir else ()
  return seqio.Evaluator(
      task_name,
      feature_converter=pipeline.feature_converter(),
      eval_split=split,
      use_cached=use_cached,
      sequence_length=dict(feature_lengths),
      logger_cls=loggers,
      log_dir=log_dir,
      async_compute_metrics=False,
  )


class ModelFns:
  """seqio's `predict_fn` / `score_fn` for given parameters, compiled once and reused.

  seqio hands these functions an enumerated `(index, features)` dataset, the same cached one at
  every evaluation of a run: its batches are read from TensorFlow once and kept on the host, with
  the encoder inputs cut to the longest example of the set (see `trim_encoder_padding`), so the
  model compiles once for that length. Every batch is dispatched before any result is fetched;
  padded rows of the last batch are dropped.
  """

  def __init__(self, model, batch_size: int, partitioner: partitioning.Partitioner):
    # Replicated outputs: every process can read them (multi-host).
    self.predict = partitioner.jit(
        model.predict_batch_with_aux, out_shardings=partitioner.replicated()
    )
    self.score = partitioner.jit(model.score_batch, out_shardings=partitioner.replicated())
    self.batch_size = batch_size
    # id(dataset) -> (dataset, batches); the dataset is kept so its id is never reused.
    self._batches = {}

  def host_batches(self, ds) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """`pipeline.padded_batches` of `ds`, read once per dataset and trimmed."""
    if id(ds) not in self._batches:
      batches = trim_encoder_padding(list(pipeline.padded_batches(ds, self.batch_size)))
      self._batches[id(ds)] = (ds, batches)
    return self._batches[id(ds)][1]

  def _run(self, fn, params, ds):
    """(indices, outputs) of the real rows, in batch order."""
    batches = self.host_batches(ds)
    outs = jax.device_get([fn(params, batch) for _, batch in batches])
    indices = np.concatenate([i for i, _ in batches])
    keep = indices >= 0
    out = jax.tree.map(lambda *xs: np.concatenate(xs)[keep], *outs)
    return indices[keep].tolist(), out

  def for_params(self, params):
    def predict_fn(ds):
      indices, (tokens, _) = self._run(self.predict, params, ds)
      return list(zip(indices, tokens.tolist()))

    def score_fn(ds):
      indices, scores = self._run(self.score, params, ds)
      return list(zip(indices, scores.tolist()))

    return predict_fn, score_fn


def trim_encoder_padding(batches):
  """The batches with `encoder_input_tokens` cut after the last non-padding column of the set.

  SeqIO pads every example to TASK_FEATURE_LENGTHS['inputs']; the encoder masks padding, so the
  columns that are padding in every example change no output and only cost compute (the
  embedded default's dev set is at most 37 tokens long, padded to 64). One length for the whole
  set keeps one compiled shape.
  """
  key = "encoder_input_tokens"
  used = max(
      (int(np.flatnonzero(b[key].any(axis=0)).max(initial=-1)) + 1 for _, b in batches), default=0
  )
  length = max(used, 1)
  return [(i, dict(b, **{key: b[key][:, :length]})) for i, b in batches]


def evaluate(
    evaluator: seqio.Evaluator, fns: ModelFns, params, step: Optional[int] = None
) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} for every task of the evaluator (empty on processes other than 0,
  where SeqIO computes no metrics)."""
  predict_fn, score_fn = fns.for_params(params)
  metrics, _ = evaluator.evaluate(
      compute_metrics=jax.process_index() == 0, step=step, predict_fn=predict_fn, score_fn=score_fn
  )
  metrics = metrics.result() if hasattr(metrics, "result") else metrics
  return {
      task: {k: float(np.asarray(v)) if np.ndim(v) == 0 else v for k, v in m.items()}
      for task, m in (metrics or {}).items()
  }


def run(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    model,
    partitioner: partitioning.Partitioner,
    restore_cfg: restore.RestoreConfig,
    split: str = "validation",
    batch_size: int = 32,
    output_dir: Optional[str] = None,
    mixture_or_task_module=None,
    use_cached: bool = False,
) -> dict[str, Any]:
  """Evaluates the parameters `restore_cfg` names (see `restore.py`) and prints the metrics.

  `output_dir` (default `MODEL_DIR/eval`) receives SeqIO's `<task>-metrics.jsonl`.
  """
  spec = restore.ParamSpec.of(model, partitioner, task_feature_lengths)
  params, step = restore.load_params(restore_cfg, model, spec, jax.random.PRNGKey(0))
  if output_dir is None and restore_cfg.model_dir:
    output_dir = os.path.join(restore_cfg.model_dir, "eval")
  evaluator = make_evaluator(
      mixture_or_task_name,
      task_feature_lengths,
      split,
      mixture_or_task_module,
      output_dir,
      use_cached,
  )
  metrics = evaluate(evaluator, ModelFns(model, batch_size, partitioner), params, step)
  if jax.process_index() == 0:
    print(json.dumps(metrics, indent=2, default=str))
  return metrics
