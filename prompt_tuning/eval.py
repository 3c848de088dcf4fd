"""Evaluation with `seqio.Evaluator`: generated predictions and rank-classification scores.

Used during training (every `EVAL_PERIOD` steps) and as an entry point:

  python -m prompt_tuning.eval --gin_file=runs/prompt_eval.gin \
    --gin.MIXTURE_OR_TASK_NAME=... --gin.CHECKPOINT_PATH=MODEL_DIR/checkpoint_N ...
"""
import json
import os
import sys
from typing import Any, Mapping, Optional

import jax
import numpy as np
import seqio

from prompt_tuning import config
from prompt_tuning.data import pipeline

REQUIRED = ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "INITIAL_CHECKPOINT_PATH",
            "MODEL_DIR")


def make_evaluator(task_name: str, feature_lengths: Mapping[str, int], split: str = "validation",
                   module=None, log_dir: Optional[str] = None) -> seqio.Evaluator:
  pipeline.get_task(task_name, module)
  loggers = (seqio.JSONLogger,) if log_dir else ()
  return seqio.Evaluator(task_name, feature_converter=pipeline.feature_converter(),
                         eval_split=split, sequence_length=dict(feature_lengths),
                         logger_cls=loggers, log_dir=log_dir, async_compute_metrics=False)


class ModelFns:
  """seqio's `predict_fn` / `score_fn` for given parameters, jitted once and reused.

  seqio hands these functions an enumerated `(index, features)` dataset; padded rows of the last
  batch are dropped.
  """

  def __init__(self, model, batch_size: int, partitioner):
    self.predict = jax.jit(model.predict_batch_with_aux)
    self.score = jax.jit(model.score_batch)
    self.batch_size = batch_size
    self.partitioner = partitioner

  def _run(self, fn, params, ds):
    results = []
    for indices, batch in pipeline.padded_batches(ds, self.batch_size):
      with self.partitioner.activation_rules():
        out = jax.device_get(fn(params, batch))
      for i, index in enumerate(indices):
        if index >= 0:
          results.append((int(index), jax.tree.map(lambda x: x[i], out)))
    return results

  def for_params(self, params):
    def predict_fn(ds):
      return [(i, tokens.tolist()) for i, (tokens, _) in self._run(self.predict, params, ds)]

    def score_fn(ds):
      return [(i, float(s)) for i, s in self._run(self.score, params, ds)]
    return predict_fn, score_fn


def evaluate(evaluator: seqio.Evaluator, fns: ModelFns, params,
             step: Optional[int] = None) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} for every task of the evaluator."""
  predict_fn, score_fn = fns.for_params(params)
  metrics, _ = evaluator.evaluate(compute_metrics=jax.process_index() == 0, step=step,
                                  predict_fn=predict_fn, score_fn=score_fn)
  metrics = metrics.result() if hasattr(metrics, "result") else metrics
  return {task: {k: float(np.asarray(v)) if np.ndim(v) == 0 else v for k, v in m.items()}
          for task, m in (metrics or {}).items()}


def run(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], model, trainer,
        checkpoint_path: Optional[str] = None, initial_checkpoint_path: Optional[str] = None,
        split: str = "validation", batch_size: int = 32, model_dir: Optional[str] = None,
        mixture_or_task_module=None) -> dict[str, Any]:
  """Evaluates the backbone + the trainable state of `checkpoint_path` (default: latest)."""
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  params = train_lib.load_params_for_inference(trainer, initial_checkpoint_path, checkpoint_path,
                                               model_dir)
  log_dir = os.path.join(model_dir, "eval") if model_dir else None
  evaluator = make_evaluator(mixture_or_task_name, task_feature_lengths, split,
                             mixture_or_task_module, log_dir)
  metrics = evaluate(evaluator, ModelFns(model, batch_size, trainer.partitioner), params)
  print(json.dumps(metrics, indent=2, default=str))
  return metrics


def main(argv=None):
  return config.run("prompt_tuning.eval", "run", sys.argv[1:] if argv is None else argv,
                    __doc__, REQUIRED)


def console_main():
  config.setup_logging()
  main()


if __name__ == "__main__":
  console_main()
