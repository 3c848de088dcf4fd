"""Training and evaluation metrics: TensorBoard event files and a JSON-lines copy."""

import json
import os
from typing import Any, Optional

import jax
import numpy as np


class MetricWriter:
  """Writes `log_dir/metrics.jsonl` and TensorBoard events; process 0 only."""

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
    """Writes the scalars of `metrics`; nested dicts ({task: {metric: v}}) become `task/metric`."""
    if not self.active:
      return
    flat = {}
    for k, v in metrics.items():
      if isinstance(v, dict):
        flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
      else:
        flat[k] = v
    scalars = {
        k: float(v)
        for k, v in flat.items()
        if np.ndim(v) == 0 and isinstance(v, (int, float, np.number, np.ndarray))
    }
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    if self.tb:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)
      self.tb.flush()


def summarize(
    step_metrics: list, seconds: float, examples: int, tokens: int, learning_rate: Optional[float]
) -> dict[str, float]:
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
