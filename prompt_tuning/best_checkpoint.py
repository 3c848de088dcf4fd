"""Which checkpoint is best on dev (the paper's early stopping), kept in MODEL_DIR.

`BEST_METRIC` names a metric of the evaluation: `task/metric`, or a bare metric name (the first
task that reports it). Higher is better. The choice is written to `best_checkpoint.json`, so a
resumed run keeps it, and the best checkpoint is never pruned.
"""

import json
import os
from typing import Any, Mapping, Optional

import jax

from prompt_tuning import partitioning

FILE_NAME = "best_checkpoint.json"


class MetricNotFoundError(ValueError):
  """BEST_METRIC names a metric the evaluation does not produce."""


def pick(metrics: Mapping[str, Mapping[str, Any]], name: str) -> float:
  """The value of `name` in {task: {metric: value}}; an error lists what exists."""
  if "/" in name:
    task, key = name.split("/", 1)
    value = metrics.get(task, {}).get(key)
  else:
    value = next((m[name] for m in metrics.values() if name in m), None)
  if value is None:
    available = sorted(f"{t}/{k}" for t, m in metrics.items() for k in m)
    raise MetricNotFoundError(
        f"BEST_METRIC={name!r} is not among the evaluation's metrics {available}; set "
        "--gin.BEST_METRIC to one of them (or a bare metric name such as 'accuracy')."
    )
  return float(value)


class BestCheckpoint:
  """Tracks the best evaluation so far; every process holds the same decision."""

  def __init__(self, model_dir: str, metric: str):
    self.path = os.path.join(model_dir, FILE_NAME)
    self.metric = metric
    self.best: Optional[dict[str, Any]] = None
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.best = json.load(f)

  @property
  def step(self) -> Optional[int]:
    return self.best["step"] if self.best else None

  def update(self, step: int, metrics: Mapping[str, Mapping[str, Any]]) -> bool:
    """Records `metrics` of `step`; True if it is the new best (then save that checkpoint).

    SeqIO computes metrics on process 0 only, so process 0 decides and tells the others: every
    process must then take part in the checkpoint save.
    """
    decision, value, error = 0, float("nan"), None  # 1 improved, 0 not, -1 no such metric.
    if jax.process_index() == 0:
      try:
        value = pick(metrics, self.metric)
        decision = int(self.best is None or value > self.best["value"])
      except MetricNotFoundError as e:  # Raised below, once every process knows.
        decision, error = -1, e
    decision = int(partitioning.broadcast_from_process_0(decision))
    if decision < 0:
      raise error or MetricNotFoundError(f"BEST_METRIC={self.metric!r}: see process 0's error.")
    improved = bool(decision)
    if improved:
      value = float(partitioning.broadcast_from_process_0(value))
      self.best = {"step": step, "metric": self.metric, "value": value}
      if jax.process_index() == 0:
        with open(self.path + ".tmp", "w") as f:
          json.dump(self.best, f)
        os.replace(self.path + ".tmp", self.path)
    return improved
