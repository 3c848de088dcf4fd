"""The training loop: from a SeqIO task to trained-prompt checkpoints, T5X style.

One batch's path: `pipeline.train_batches` (SeqIO task -> host numpy batch) ->
`partitioner.shard_batch` (global arrays split over `data`) -> `trainer.train_step` ->
`train_state.save` every `CHECKPOINT_PERIOD` steps; every `EVAL_PERIOD` steps `evaluation`
scores the dev split and `best_checkpoint` keeps the best one.

`TRAIN_STEPS` (`total_steps`) is the global step to stop at, counted from the initial
checkpoint's step (as in T5X: the lm100k checkpoints are at step 1,100,000). A run killed at any
point and restarted with the same command resumes from the last checkpoint in `MODEL_DIR` with
the same data order; a finished run restarted evaluates its last checkpoint again.
"""

import json
import math
import logging
import os
import time
from typing import Any, Optional

import jax
import tqdm

from prompt_tuning import best_checkpoint
from prompt_tuning import checkpoints
from prompt_tuning import evaluation
from prompt_tuning import metric_writers
from prompt_tuning import optim
from prompt_tuning import restore
from prompt_tuning import train_state
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.data import pipeline


def run(
    *,
    model_dir: str,
    trainer: trainer_lib.Trainer,
    train_dataset_cfg: pipeline.DatasetConfig,
    total_steps: int,
    restore_cfg: restore.RestoreConfig,
    checkpoint_cfg: train_state.CheckpointConfig = train_state.CheckpointConfig(),
    log_period: int = 100,
    eval_period: Optional[int] = None,
    eval_split: str = "validation",
    eval_mixture_or_task_name: Optional[str] = None,
    eval_batch_size: Optional[int] = None,
    best_metric: Optional[str] = None,
    learning_rate=None,
    progress_bar: bool = True,
    tensorboard: bool = True,
) -> dict[str, Any]:
  """Trains until the global step reaches `total_steps`; returns the last metrics.

  The evaluation scores `eval_mixture_or_task_name` (default: the training mixture or task),
  e.g. one task of the mixture trained on.
  """
  cfg = train_dataset_cfg
  pipeline.check_feature_lengths(cfg.task_feature_lengths)
  pipeline.get_task(cfg.mixture_or_task_name, cfg.module)
  eval_name = eval_mixture_or_task_name or cfg.mixture_or_task_name
  pipeline.get_task(eval_name, cfg.module)
  if best_metric and not eval_period:
    raise ValueError(f"BEST_METRIC={best_metric!r} needs evaluations: set EVAL_PERIOD.")
  os.makedirs(model_dir, exist_ok=True)

  params, step = restore.initial_params(restore_cfg, trainer.model, trainer.spec, trainer.rng)
  state, frozen = trainer.create_state(params, step)
  del params
  input_position = 0
  latest = checkpoints.latest_checkpoint(model_dir)
  if latest:
    state, frozen, input_position = train_state.restore(
        latest, state, frozen, trainer.spec.shardings, trainer.partitioner.replicated()
    )
    logging.info("Resuming from %s (input position %d).", latest, input_position)
  step = int(state.step)
  if jax.process_index() == 0:
    _write_parameter_counts(model_dir, state.params, frozen)
  compiled = None
  if step < total_steps:
    # Overlaps the step's compilation with building the evaluator and the input pipeline.
    compiled = trainer.compile_ahead(state, frozen, cfg.batch_size, cfg.task_feature_lengths)

  writer = metric_writers.MetricWriter(os.path.join(model_dir, "train"), tensorboard)
  eval_writer = metric_writers.MetricWriter(os.path.join(model_dir, "eval"), tensorboard)
  evaluator = eval_compiled = None
  if eval_period:
    evaluator = evaluation.make_evaluator(
        eval_name, cfg.task_feature_lengths, eval_split, cfg.module
    )
    eval_fns = evaluation.ModelFns(
        trainer.model, eval_batch_size or cfg.batch_size, trainer.partitioner
    )
    if step < total_steps:  # The first evaluation's programs compile while training starts.
      eval_compiled = eval_fns.compile_ahead(evaluator, optim.merge_params(state.params, frozen))
  best = best_checkpoint.BestCheckpoint(model_dir, best_metric) if best_metric else None
  bar = tqdm.tqdm(
      total=total_steps,
      initial=step,
      disable=not progress_bar or jax.process_index() != 0,
      dynamic_ncols=True,
      desc="train",
  )

  def save():
    protected = [best.step] if best and best.step is not None else []
    exports = sidecars = None
    if checkpoint_cfg.export_numpy:
      params = optim.merge_params(state.params, frozen)
      exports = trainer.model.numpy_exports(params)
      sidecars = trainer.model.numpy_sidecars(params)
    train_state.save(
        model_dir,
        state,
        frozen,
        input_position,
        checkpoint_cfg,
        protected,
        exports=exports,
        sidecars=sidecars,
    )

  def run_eval():
    nonlocal eval_compiled
    start = time.perf_counter()
    if eval_compiled is not None:
      eval_compiled.result()  # Raises what the compilation raised.
      eval_compiled = None
    metrics = evaluation.evaluate(
        evaluator, eval_fns, optim.merge_params(state.params, frozen), step
    )
    logging.info("Evaluation at step %d took %.2f s.", step, time.perf_counter() - start)
    eval_writer.write(step, metrics)
    bar.write(f"step {step} eval: {json.dumps(metrics, default=float)}")
    if best:
      try:
        improved = best.update(step, metrics)
      except best_checkpoint.MetricNotFoundError:
        save()  # Keep the steps trained so far, then stop on the configuration error.
        raise
      if improved:
        save()
    return metrics

  last_train, last_eval = {}, {}
  if step >= total_steps:
    logging.info("Already at step %d >= TRAIN_STEPS=%d: nothing to train.", step, total_steps)
    if evaluator:
      last_eval = run_eval()
  else:
    shard = trainer.partitioner.data_shard_info()
    batches = pipeline.train_batches(cfg, skip_batches=input_position, shard=shard)
    pending, t0, examples, tokens = [], time.time(), 0, 0
    first_step = step
    while step < total_steps:
      host_batch = next(batches)
      if compiled is not None:
        compiled.result()  # Raises what the compilation raised; the step reuses its program.
        compiled = None
      examples += host_batch["encoder_input_tokens"].shape[0] * shard[1]
      tokens += (
          int(
              (host_batch["encoder_input_tokens"] > 0).sum()
              + (host_batch["decoder_target_tokens"] > 0).sum()
          )
          * shard[1]
      )
      state, metrics = trainer.train_step(
          state, frozen, trainer.partitioner.shard_batch(host_batch)
      )
      if step == first_step:
        # Waits once, so the log tells when compilation and the first step are done.
        jax.block_until_ready(metrics)
        logging.info("First train step (step %d) done.", step + 1)
      pending.append(metrics)
      input_position += 1
      step += 1
      bar.update(1)
      if step % log_period == 0 or step == total_steps:
        lr = learning_rate(step) if callable(learning_rate) else learning_rate
        last_train = metric_writers.summarize(pending, time.time() - t0, examples, tokens, lr)
        writer.write(step, last_train)
        bar.set_postfix(loss=f"{last_train['loss']:.4g}", acc=f"{last_train['accuracy']:.1f}")
        pending, t0, examples, tokens = [], time.time(), 0, 0
      if step % checkpoint_cfg.period == 0 or step == total_steps:
        save()
      if evaluator and (step % eval_period == 0 or step == total_steps):
        last_eval = run_eval()
  bar.close()
  result = {
      "step": step,
      "train": last_train,
      "eval": last_eval,
      "best": best.best if best else None,
  }
  if jax.process_index() == 0:
    print(json.dumps(result, indent=2, default=float))
  return result


PARAMETERS_FILE = "parameters.json"


def _write_parameter_counts(model_dir: str, trainable, frozen) -> None:
  """MODEL_DIR/parameters.json: what trains and what stays frozen (shapes and totals).

  Read by `ablate` to put each method's trainable-parameter count beside its score.
  """
  shapes = lambda params: {k: list(v.shape) for k, v in optim.flatten(params).items()}
  count = lambda params: sum(math.prod(v.shape) for v in optim.flatten(params).values())
  with open(os.path.join(model_dir, PARAMETERS_FILE), "w") as f:
    json.dump(
        {
            "trainable_parameters": count(trainable),
            "frozen_parameters": count(frozen),
            "trainable": shapes(trainable),
        },
        f,
        indent=1,
    )
