"""Train a prompt (or a whole model) from a gin command line, T5X style.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_prompt.gin --gin_file=models/sizes/base.gin \
    --gin_file=prompts/class_labels.gin --gin_file=runs/prompt_finetune.gin \
    --gin.MIXTURE_OR_TASK_NAME="'taskless_super_glue_rte_v102'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
    --gin.TRAIN_STEPS=1130000 --gin.MODEL_DIR="'/tmp/rte'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://.../checkpoint_1100000'"

`TRAIN_STEPS` is the global step to stop at, counted from the initial checkpoint's step (as in
T5X: the lm100k checkpoints are at step 1,100,000). A run killed at any point and restarted with
the same command resumes from the last checkpoint in `MODEL_DIR` with the same data order.
"""
import json
import logging
import os
import sys
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np
import tqdm

from prompt_tuning import checkpoints
from prompt_tuning import config
from prompt_tuning import eval as eval_lib
from prompt_tuning import optim
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.data import pipeline

REQUIRED = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")


class MetricWriter:
  """TensorBoard event files and a JSON-lines copy, written by process 0 only."""

  def __init__(self, log_dir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(log_dir, "metrics.jsonl")
    self.tb = None
    if self.active:
      os.makedirs(log_dir, exist_ok=True)
      if tensorboard:
        import tensorboardX  # pylint: disable=g-import-not-at-top
        self.tb = tensorboardX.SummaryWriter(log_dir)

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.active:
      return
    flat = {}
    for k, v in metrics.items():
      if isinstance(v, dict):
        flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
      else:
        flat[k] = v
    scalars = {k: float(v) for k, v in flat.items() if np.ndim(v) == 0 and
               isinstance(v, (int, float, np.number, np.ndarray))}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    if self.tb:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)
      self.tb.flush()


def summarize(step_metrics: list, seconds: float, examples: int, tokens: int,
              learning_rate: Optional[float]) -> dict[str, float]:
  """Averages the per-step sums of a logging period (one device-to-host transfer)."""
  m = jax.device_get(step_metrics)
  total = {k: float(sum(x[k] for x in m)) for k in m[0]}
  steps = len(m)
  return {
      "loss": total["loss"] / steps,
      "z_loss": total["z_loss_sum"] / steps,
      "cross_ent_loss": (total["loss_sum"] - total["z_loss_sum"]) / steps,
      "accuracy": 100.0 * total["correct_tokens"] / max(total["num_tokens"], 1.0),
      "learning_rate": float("nan") if learning_rate is None else float(learning_rate),
      "examples_per_second": examples / seconds,
      "tokens_per_second": tokens / seconds,
      "steps_per_second": steps / seconds,
  }


def load_params_for_inference(trainer, initial_checkpoint_path: Optional[str],
                              checkpoint_path: Optional[str] = None,
                              model_dir: Optional[str] = None):
  """Backbone from `initial_checkpoint_path` + trainable state from a train checkpoint."""
  params, step = trainer.load_initial_params(initial_checkpoint_path)
  path = checkpoint_path or (checkpoints.latest_checkpoint(model_dir) if model_dir else None)
  if not path:
    logging.warning("No train checkpoint given or found in %s: using initial parameters.",
                    model_dir)
    return params
  state, frozen = trainer.create_state(params, step)
  state, frozen, _ = trainer_lib.restore_checkpoint(trainer, path, state, frozen)
  logging.info("Loaded the trainable state of %s.", path)
  return optim.merge_params(state.params, frozen)


def _pick(metrics: dict, name: str) -> Optional[float]:
  """`task/metric` or a bare metric name (first task that has it)."""
  if "/" in name:
    task, key = name.split("/", 1)
    return metrics.get(task, {}).get(key)
  for m in metrics.values():
    if name in m:
      return m[name]
  return None


def train(*, model_dir: str, trainer: trainer_lib.Trainer,
          train_dataset_cfg: pipeline.DatasetConfig, total_steps: int,
          initial_checkpoint_path: Optional[str] = None,
          checkpoint_cfg: trainer_lib.CheckpointConfig = trainer_lib.CheckpointConfig(),
          log_period: int = 100, eval_period: Optional[int] = None,
          eval_split: str = "validation", eval_batch_size: Optional[int] = None,
          best_metric: Optional[str] = None, max_encoder_length: Optional[int] = None,
          learning_rate=None, progress_bar: bool = True, tensorboard: bool = True
          ) -> dict[str, Any]:
  """Trains until the global step reaches `total_steps`; returns the last metrics."""
  cfg = train_dataset_cfg
  prompt_length = _prompt_length(trainer)
  pipeline.check_feature_lengths(cfg.task_feature_lengths, prompt_length, max_encoder_length)
  pipeline.get_task(cfg.mixture_or_task_name, cfg.module)
  os.makedirs(model_dir, exist_ok=True)

  params, step = trainer.load_initial_params(initial_checkpoint_path)
  state, frozen = trainer.create_state(params, step)
  del params
  input_position = 0
  latest = checkpoints.latest_checkpoint(model_dir)
  if latest:
    state, frozen, input_position = trainer_lib.restore_checkpoint(trainer, latest, state, frozen)
    logging.info("Resuming from %s (input position %d).", latest, input_position)
  step = int(state.step)
  if step >= total_steps:
    logging.info("Already at step %d >= TRAIN_STEPS=%d; nothing to train.", step, total_steps)

  shard = trainer.partitioner.data_shard_info()
  batches = pipeline.train_batches(cfg, skip_batches=input_position, shard=shard)
  writer = MetricWriter(os.path.join(model_dir, "train"), tensorboard)
  eval_writer = MetricWriter(os.path.join(model_dir, "eval"), tensorboard)
  evaluator = None
  if eval_period:
    evaluator = eval_lib.make_evaluator(cfg.mixture_or_task_name, cfg.task_feature_lengths,
                                        eval_split, cfg.module)
    eval_fns = eval_lib.ModelFns(trainer.model, eval_batch_size or cfg.batch_size,
                                 trainer.partitioner)
  best_path = os.path.join(model_dir, "best_checkpoint.json")
  best = None
  if os.path.exists(best_path):
    with open(best_path) as f:
      best = json.load(f)
  bar = tqdm.tqdm(total=total_steps, initial=step, disable=not progress_bar or
                  jax.process_index() != 0, dynamic_ncols=True, desc="train")

  def run_eval(step):
    nonlocal best
    merged = optim.merge_params(state.params, frozen)
    metrics = eval_lib.evaluate(evaluator, eval_fns, merged, step)
    eval_writer.write(step, metrics)
    value = _pick(metrics, best_metric) if best_metric else None
    if value is not None and (best is None or value > best["value"]):
      trainer_lib.save_checkpoint(model_dir, state, frozen, input_position, checkpoint_cfg,
                                  protected_steps=[step])
      best = {"step": step, "metric": best_metric, "value": value}
      if jax.process_index() == 0:
        with open(best_path, "w") as f:
          json.dump(best, f)
    bar.write(f"step {step} eval: {json.dumps(metrics)}")
    return metrics

  last_train, last_eval = {}, {}
  pending, t0, examples, tokens = [], time.time(), 0, 0
  while step < total_steps:
    host_batch = next(batches)
    examples += host_batch["encoder_input_tokens"].shape[0] * shard[1]
    tokens += int((host_batch["encoder_input_tokens"] > 0).sum()
                  + (host_batch["decoder_target_tokens"] > 0).sum()) * shard[1]
    state, metrics = trainer.train_step(state, frozen, trainer.partitioner.shard_batch(host_batch))
    pending.append(metrics)
    input_position += 1
    step += 1
    bar.update(1)
    if step % log_period == 0 or step == total_steps:
      lr = learning_rate(step) if callable(learning_rate) else learning_rate
      last_train = summarize(pending, time.time() - t0, examples, tokens, lr)
      writer.write(step, last_train)
      bar.set_postfix(loss=f"{last_train['loss']:.4g}", acc=f"{last_train['accuracy']:.1f}")
      pending, t0, examples, tokens = [], time.time(), 0, 0
    if step % checkpoint_cfg.period == 0 or step == total_steps:
      trainer_lib.save_checkpoint(model_dir, state, frozen, input_position, checkpoint_cfg,
                                  protected_steps=[best["step"]] if best else [])
    if evaluator and (step % eval_period == 0 or step == total_steps):
      last_eval = run_eval(step)
  bar.close()
  result = {"step": step, "train": last_train, "eval": last_eval, "best": best}
  if jax.process_index() == 0:
    print(json.dumps(result, indent=2, default=float))
  return result


def _prompt_length(trainer) -> int:
  factory = getattr(trainer.model.module, "prompt_factory", None)
  return factory().length if factory else 0


def main(argv: Optional[Sequence[str]] = None):
  return config.run("prompt_tuning.train", "train", sys.argv[1:] if argv is None else argv,
                    __doc__, REQUIRED)


def console_main():
  config.setup_logging()
  main()


if __name__ == "__main__":
  console_main()
