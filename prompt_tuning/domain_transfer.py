"""Evaluate one prompt on every task of a transfer suite and print the paper's table (section 5).

Suites:
  mrqa       a prompt trained on SQuAD, on SQuAD's dev set and the six MRQA 2019 out-of-domain
             dev sets: Table 1 (dataset, domain, F1, EM).
  qqp_mrpc   a prompt trained on QQP, zero-shot on MRPC's dev set: Table 2 (train, eval,
             accuracy, F1); `mrpc_qqp` the reverse.
The tasks are those of `tasks/qa.py` and `tasks/glue_transfer.py`. The command is
`python -m prompt_tuning.transfer --suite=...` (see transfer.py).
"""

import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import jax

from prompt_tuning import evaluation
from prompt_tuning import partitioning
from prompt_tuning import restore
from prompt_tuning.tasks import glue_transfer
from prompt_tuning.tasks import qa


@dataclasses.dataclass(frozen=True)
class Row:
  task: str
  labels: tuple[str, ...]  # The row's leading columns (dataset, domain / train, eval).


@dataclasses.dataclass(frozen=True)
class Suite:
  headers: tuple[str, ...]  # Leading columns, then one per metric.
  metrics: tuple[tuple[str, str], ...]  # (column title, metric key).
  rows: tuple[Row, ...]


def _mrqa_suite() -> Suite:
  rows = [Row(qa.SQUAD_TASK, ("SQuAD", qa.SQUAD_DOMAIN))]
  rows += [
      Row(qa.mrqa_task_name(name), (d.paper_name, d.domain)) for name, d in qa.MRQA_DATASETS.items()
  ]
  return Suite(("Dataset", "Domain"), (("F1", "f1"), ("EM", "em")), tuple(rows))


def _paraphrase_suite(source: str, target: str, taskless: bool) -> Suite:
  row = Row(
      glue_transfer.transfer_task_name(source, target, taskless), (source.upper(), target.upper())
  )
  return Suite(("Train", "Eval"), (("Accuracy", "accuracy"), ("F1", "f1")), (row,))


SUITES = ("mrqa", "qqp_mrpc", "mrpc_qqp")


def get_suite(name: str, taskless: Optional[bool] = None) -> Suite:
  """The suite `name`; `taskless` (QQP/MRPC only, default True) picks the inputs' format."""
  if name == "mrqa":
    if taskless is not None:
      raise ValueError(
          "taskless is a setting of the qqp_mrpc / mrpc_qqp suites; the SQuAD/MRQA inputs "
          "(`question: ... context: ...`) have no task name to leave out. Remove it."
      )
    return _mrqa_suite()
  if name in ("qqp_mrpc", "mrpc_qqp"):
    source, target = name.split("_")
    return _paraphrase_suite(source, target, True if taskless is None else taskless)
  raise ValueError(f"Unknown transfer suite {name!r}; choose from {list(SUITES)}.")


def format_table(suite: Suite, metrics: Mapping[str, Mapping[str, float]]) -> str:
  """A plain-text table: the suite's leading columns, then each metric with 1 decimal."""
  header = list(suite.headers) + [title for title, _ in suite.metrics]
  lines = [header]
  for row in suite.rows:
    values = [f"{metrics[row.task][key]:.1f}" for _, key in suite.metrics]
    lines.append(list(row.labels) + values)
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

  def fmt(cells: Sequence[str]) -> str:
    leading = len(suite.headers)
    parts = [
        c.ljust(w) if i < leading else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ]
    return "  ".join(parts).rstrip()

  rule = "  ".join("-" * w for w in widths)
  return "\n".join([fmt(lines[0]), rule] + [fmt(line) for line in lines[1:]])


def results(suite: Suite, metrics: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
  """The table as JSON-ready rows: leading columns by header name, then every metric."""
  return [
      {
          **{h.lower(): v for h, v in zip(suite.headers, row.labels)},
          "task": row.task,
          **dict(metrics[row.task]),
      }
      for row in suite.rows
  ]


def run(
    suite: str,
    task_feature_lengths: Mapping[str, int],
    model,
    partitioner: partitioning.Partitioner,
    restore_cfg: restore.RestoreConfig,
    batch_size: int = 32,
    output_dir: Optional[str] = None,
    use_cached: bool = False,
    taskless: Optional[bool] = None,
    mixture_or_task_module: Union[None, str, Sequence[str]] = None,
) -> dict[str, Any]:
  """Evaluates the parameters `restore_cfg` names on each task of `suite` (validation split).

  Prints the table, then `{"suite", "step", "rows"}` as JSON, and returns that (on process 0;
  other processes return {}). `output_dir` (default
  `MODEL_DIR/eval`) receives SeqIO's `<task>-metrics.jsonl` of every task.
  `mixture_or_task_module`: modules imported first (e.g. one that registers the suite's task
  names again over other data).
  """
  spec_suite = get_suite(suite, taskless)
  spec = restore.ParamSpec.of(model, partitioner, task_feature_lengths)
  params, step = restore.load_params(restore_cfg, model, spec, jax.random.PRNGKey(0))
  if output_dir is None and restore_cfg.model_dir:
    output_dir = os.path.join(restore_cfg.model_dir, "eval")
  if isinstance(mixture_or_task_module, str):
    mixture_or_task_module = [mixture_or_task_module]
  modules = ["prompt_tuning.tasks", *(mixture_or_task_module or ())]
  fns = evaluation.ModelFns(model, batch_size, partitioner)  # Compiled once for every task.
  metrics = {}
  for row in spec_suite.rows:
    evaluator = evaluation.make_evaluator(
        row.task, task_feature_lengths, "validation", modules, output_dir, use_cached
    )
    metrics.update(evaluation.evaluate(evaluator, fns, params, step))
  if jax.process_index() != 0:
    return {}  # SeqIO computes metrics on process 0 only.
  out = {"suite": suite, "step": step, "rows": results(spec_suite, metrics)}
  print(format_table(spec_suite, metrics))
  print(json.dumps(out, indent=2, default=str))
  return out
