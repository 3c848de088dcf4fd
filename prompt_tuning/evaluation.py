"""Evaluation with `seqio.Evaluator`: generated predictions and rank-classification scores.

Used during training (every `EVAL_PERIOD` steps, see `training.py`) and by the eval command
(`python -m prompt_tuning.eval`, which calls `run`).

The eval command has two more modes (paper section 6), each reported beside generation:
  * rank classification (`rank_labels`, gin EVAL_RANK_LABELS): every example scores each label
    string as its target and the most likely one is its prediction, so a classifier's metrics
    never depend on free generation producing a valid label;
  * prompt ensembles (`ensemble_prompt_files`, gin EVAL_ENSEMBLE_PROMPTS): each saved prompt
    (a `.npy` input prompt, or the folder of a deep prompt's `deep_prompt.<stack>_prefixes.npy`)
    replaces the model's prompt in turn; every member is evaluated, and so is the ensemble
    (majority vote of the members' generations; summed log-likelihoods for rank
    classification).
"""

import collections
import concurrent.futures
import functools
import json
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from prompt_tuning import deep_prompts
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import rank_classification as rank
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
  evaluator = functools.partial(
      seqio.Evaluator,
      task_name,
      feature_converter=pipeline.feature_converter(),
      eval_split=split,
      use_cached=use_cached,
      sequence_length=dict(feature_lengths),
      logger_cls=loggers,
      log_dir=log_dir,
      async_compute_metrics=False,
  )
  return pipeline.build(task_name, evaluator)  # It builds and caches its datasets here.


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

  def compile_ahead(self, evaluator: seqio.Evaluator, params) -> concurrent.futures.Future:
    """Compiles, in a background thread, what the evaluator's tasks will call (`predict` for
    generation metrics, `score` for score metrics) at the shapes of their cached batches; wait on
    the future before the first evaluation, which then finds the programs in JAX's cache.

    `training.run` calls it once the evaluator is built, so the first evaluation's compilation
    (seconds on a small CPU) overlaps the first training steps instead of stopping them.
    """
    # Shapes only: the train steps donate the arrays while this compiles.
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        params,
    )
    fns = {
        seqio.metrics.ModelOutputType.PREDICTION: self.predict,
        seqio.metrics.ModelOutputType.PREDICTION_WITH_AUX: self.predict,
        seqio.metrics.ModelOutputType.SCORE: self.score,
    }
    programs = {}  # Keyed by function and shapes: each program compiled once.
    for task in evaluator.eval_tasks:
      batches = self.host_batches(evaluator.cached_model_datasets[task.name])
      for metric in task.metric_objs:
        fn = fns.get(metric.model_output_type)
        if fn is not None and batches:
          batch = batches[0][1]
          key = (id(fn), tuple(sorted((k, v.shape) for k, v in batch.items())))
          programs[key] = (fn, batch)

    def compile_all():
      for fn, batch in programs.values():
        fn.lower(params, batch).compile()

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eval_compile_ahead")
    future = pool.submit(compile_all)
    pool.shutdown(wait=False)
    return future

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

  def ensemble_predict_fn(self, members: Sequence[Any], rank_labels=None):
    """seqio's `predict_fn` for the ensemble of `members` (parameter trees): the majority vote
    of their generations or, given `rank_labels` (token ids per label), the label whose
    log-likelihood summed over the members is highest. One member is plain rank
    classification."""

    def predict_fn(ds):
      if rank_labels is not None:
        summed = collections.defaultdict(float)
        for params in members:
          for indices, batch in self.host_batches(ds):
            _, scores = rank.rank_classify(
                self.score, params, batch["encoder_input_tokens"], rank_labels
            )
            for index, s in zip(indices, scores):
              if index >= 0:
                summed[int(index)] = summed[int(index)] + s
        return [(i, list(rank_labels[int(np.argmax(s))])) for i, s in sorted(summed.items())]
      votes = collections.defaultdict(list)
      for params in members:
        indices, (tokens, _) = self._run(self.predict, params, ds)
        for i, member_tokens in zip(indices, tokens.tolist()):
          votes[i].append(member_tokens)
      return [(i, rank.majority_vote(v)) for i, v in sorted(votes.items())]

    return predict_fn


def label_token_ids(task_name: str, labels: Sequence[str], module=None) -> list[list[int]]:
  """Each label string as the task's target tokens (its targets vocabulary, then EOS)."""
  task = pipeline.get_task(task_name, module)
  vocab = task.output_features["targets"].vocabulary
  try:
    return rank.label_targets(vocab, list(labels), vocab.eos_id)
  except rank.RankClassificationError as e:
    raise ValueError(f"EVAL_RANK_LABELS for {task_name}: {e}") from None


def with_prompt_array(params, array: np.ndarray, source: str = "prompt"):
  """`params` with `array` as the prompt (same shape as the model's prompt)."""
  current = params["encoder"]["prompt"]["prompt"]["prompt"]
  if array.shape != current.shape:
    raise ValueError(
        f"{source}: prompt shape {array.shape} does not match the model's prompt "
        f"{tuple(current.shape)} (PROMPT_LENGTH and the embedding width)."
    )
  prompt = jax.device_put(array.astype(current.dtype), getattr(current, "sharding", None))
  encoder = dict(params["encoder"], prompt={"prompt": {"prompt": prompt}})
  return dict(params, encoder=encoder)


def with_deep_prompt(params, directory: str):
  """`params` with the deep prompt saved in `directory` (`deep_prompt.<stack>_prefixes.npy` for
  each stack the model's `DeepPrompt` has; the shapes must match)."""
  current = params.get("deep_prompt", {})
  stacks = [s for s in deep_prompts.STACKS if f"{s}_prefixes" in current]
  if not stacks or len(stacks) != len(current):
    raise ValueError(
        f"{directory}: a deep prompt's folder needs a model whose deep prompt is its prefixes "
        "(prompts/deep_prompt_from_export.gin); this model's deep-prompt parameters are "
        f"{sorted(current) or 'none'}."
    )
  deep_prompts.check_export(directory, decoder="decoder" in stacks)
  replaced = {}
  for stack in stacks:
    old = current[f"{stack}_prefixes"]
    array = deep_prompts.from_export(directory, stack)(None, old.shape, old.dtype)
    replaced[f"{stack}_prefixes"] = jax.device_put(array, getattr(old, "sharding", None))
  return dict(params, deep_prompt=replaced)


def with_saved_prompt(params, path: str):
  """`params` with the prompt saved at `path`: a deep prompt's folder or an `.npy` input prompt."""
  if os.path.isdir(path):
    return with_deep_prompt(params, path)
  return with_prompt_array(params, prompts.load_npy(path), path)


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
    evaluator: seqio.Evaluator,
    fns: ModelFns,
    params,
    step: Optional[int] = None,
    predict_fn=None,
) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} for every task of the evaluator (empty on processes other than 0,
  where SeqIO computes no metrics). `predict_fn` replaces generation (rank classification,
  ensembles)."""
  generate_fn, score_fn = fns.for_params(params)
  predict_fn = predict_fn or generate_fn
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
    rank_labels: Optional[Sequence[str]] = None,
    ensemble_prompt_files: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
  """Evaluates the parameters `restore_cfg` names (see `restore.py`) and prints the metrics.

  `output_dir` (default `MODEL_DIR/eval`) receives SeqIO's `<task>-metrics.jsonl` of the
  generated predictions (the ensemble's, with `ensemble_prompt_files`); the other evaluations
  are printed only, so that file keeps one record per step under SeqIO's metric names. With
  `rank_labels`, each task's metrics also hold `rank_classification/<metric>`; with
  `ensemble_prompt_files`, the result is {"ensemble": {task: ...}, <file stem>: {task: ...}}.
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
  unlogged = evaluator
  if output_dir and (rank_labels is not None or ensemble_prompt_files):
    unlogged = make_evaluator(
        mixture_or_task_name,
        task_feature_lengths,
        split,
        mixture_or_task_module,
        None,
        use_cached,
    )
  fns = ModelFns(model, batch_size, partitioner)
  label_ids = None
  if rank_labels is not None:
    label_ids = label_token_ids(mixture_or_task_name, rank_labels, mixture_or_task_module)

  def both_modes(members, logged):
    out = evaluate(
        evaluator if logged else unlogged, fns, members[0], step, fns.ensemble_predict_fn(members)
    )
    if label_ids is not None:
      ranked = evaluate(
          unlogged, fns, members[0], step, fns.ensemble_predict_fn(members, label_ids)
      )
      for task, m in ranked.items():
        out.setdefault(task, {}).update({f"rank_classification/{k}": v for k, v in m.items()})
    return out

  if ensemble_prompt_files:
    members = {
        os.path.splitext(os.path.basename(os.path.normpath(f)))[0]: with_saved_prompt(params, f)
        for f in ensemble_prompt_files
    }
    if len(members) != len(ensemble_prompt_files):
      raise ValueError(f"EVAL_ENSEMBLE_PROMPTS: two files share a name: {ensemble_prompt_files}.")
    metrics = {name: both_modes([p], logged=False) for name, p in members.items()}
    metrics["ensemble"] = both_modes(list(members.values()), logged=True)
  else:
    metrics = both_modes([params], logged=True)
  if jax.process_index() == 0:
    print(json.dumps(metrics, indent=2, default=str))
  return metrics
