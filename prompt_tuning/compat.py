"""T5X's and the original prompt-tuning's gin names, accepted with the same meaning.

Users of the original set T5X configurables on the command line, e.g.
`--gin.utils.SaveCheckpointConfig.keep=20` or
`--gin.prompt_init/prompts.from_sample_of_embeddings.population_size=1000`. Each such name is
registered here under its T5X name, with only the parameters this project supports. After the
configuration is parsed, `forward()` moves every value bound to one of them onto the project's
own configurable (the `ALIASES` table; docs/coming_from_t5x.md lists it) and drops the alias
binding, so the rest of the code only ever sees the project's names. A T5X name or parameter
with no equivalent is not registered, so gin rejects it; `hint()` names the project's setting.
"""

import inspect
import math
import re
from typing import Any, Callable, NamedTuple, Optional

import gin


class Target(NamedTuple):
  """Where an alias parameter's value goes: `configurable.param` of the project."""

  configurable: (
      str  # Matched against the end of the registered name, e.g. 'pipeline.DatasetConfig'.
  )
  param: str
  scopes: tuple[str, ...] = ("",)  # The alias scopes it applies to ('': unscoped).
  convert: Optional[Callable[[Any], Any]] = None


def _only(name: str, *allowed) -> Callable[[Any], Any]:
  """A converter accepting only values that mean what this project always does."""

  def convert(value):
    if value not in allowed:
      raise ValueError(
          f"{name}={value!r} is not supported: this project always uses "
          f"{' or '.join(map(repr, allowed))}."
      )
    return value

  return convert


def _submesh_size(submesh) -> int:
  """T5X's `model_parallel_submesh` (x, y, z, core) spans this many devices: the model axis."""
  if not isinstance(submesh, (tuple, list)) or not all(isinstance(d, int) for d in submesh):
    raise ValueError(
        f"partitioning.PjitPartitioner.model_parallel_submesh must be a tuple of ints; "
        f"got {submesh!r}."
    )
  return math.prod(submesh)


# Training's datasets in T5X: `train/...` is the training data, `train_eval/...` and
# `infer_eval/...` the evaluation during training. T5X's finetune.gin binds every field of those
# three scopes, so an unscoped binding changes none of them; here it fails as having no effect.
# Eval and infer have one, unscoped, dataset.
_TRAIN = ("train",)
_TRAIN_EVAL = ("train_eval", "infer_eval")

# (alias configurable, parameter) -> the project's bindings that take its value. Only targets
# whose configurable is part of the parsed configuration apply (e.g. `evaluation.run` under
# runs/prompt_eval.gin, `pipeline.DatasetConfig` under runs/prompt_finetune.gin).
ALIASES: dict[tuple[str, str], tuple[Target, ...]] = {
    ("utils.SaveCheckpointConfig", "period"): (Target("train_state.CheckpointConfig", "period"),),
    ("utils.SaveCheckpointConfig", "keep"): (Target("train_state.CheckpointConfig", "keep"),),
    ("utils.SaveCheckpointConfig", "dtype"): (),  # Checked only: see _CHECK_ONLY.
    ("utils.DatasetConfig", "mixture_or_task_name"): (
        Target("pipeline.DatasetConfig", "mixture_or_task_name", _TRAIN),
        Target("evaluation.run", "mixture_or_task_name"),
        Target("inference.run", "mixture_or_task_name"),
    ),
    ("utils.DatasetConfig", "task_feature_lengths"): (
        Target("pipeline.DatasetConfig", "task_feature_lengths", _TRAIN),
        Target("evaluation.run", "task_feature_lengths"),
        Target("inference.run", "task_feature_lengths"),
    ),
    ("utils.DatasetConfig", "module"): (
        Target("pipeline.DatasetConfig", "module", _TRAIN),
        Target("evaluation.run", "mixture_or_task_module"),
        Target("inference.run", "mixture_or_task_module"),
    ),
    ("utils.DatasetConfig", "split"): (
        Target("pipeline.DatasetConfig", "split", ("train",)),
        Target("training.run", "eval_split", ("train_eval", "infer_eval")),
        Target("evaluation.run", "split"),
        Target("inference.run", "split"),
    ),
    ("utils.DatasetConfig", "batch_size"): (
        Target("pipeline.DatasetConfig", "batch_size", _TRAIN),
        Target("training.run", "eval_batch_size", _TRAIN_EVAL),
        Target("evaluation.run", "batch_size"),
        Target("inference.run", "batch_size"),
    ),
    ("utils.DatasetConfig", "shuffle"): (Target("pipeline.DatasetConfig", "shuffle", _TRAIN),),
    ("utils.DatasetConfig", "seed"): (Target("pipeline.DatasetConfig", "seed", _TRAIN),),
    ("utils.DatasetConfig", "use_cached"): (
        Target("pipeline.DatasetConfig", "use_cached", _TRAIN),
        Target("evaluation.run", "use_cached"),
        Target("inference.run", "use_cached"),
    ),
    # Prompt tuning never packs (the original rejects packed inputs too).
    ("utils.DatasetConfig", "pack"): (),
    ("partitioning.PjitPartitioner", "num_partitions"): (
        Target("partitioning.Partitioner", "num_partitions"),
    ),
    ("partitioning.PjitPartitioner", "model_parallel_submesh"): (
        Target("partitioning.Partitioner", "num_partitions", convert=_submesh_size),
    ),
    ("prompts.from_sample_of_embeddings", "population_size"): (
        Target("prompts.sampled_vocab", "population_size", ("", "prompt_init")),
    ),
    ("linen.initializers.uniform", "scale"): (
        Target("prompts.random_uniform", "scale", ("", "prompt_init")),
    ),
    ("utils.create_learning_rate_scheduler", "base_learning_rate"): (
        Target("optim.create_optimizer", "learning_rate"),
        Target("training.run", "learning_rate"),
    ),
    ("utils.create_learning_rate_scheduler", "factors"): (),
}
# Parameters whose only supported value is what this project always does: checked, not bound.
_CHECK_ONLY = {
    ("utils.SaveCheckpointConfig", "dtype"): _only("utils.SaveCheckpointConfig.dtype", "float32"),
    ("utils.DatasetConfig", "pack"): _only("utils.DatasetConfig.pack", False),
    ("utils.create_learning_rate_scheduler", "factors"): _only(
        "utils.create_learning_rate_scheduler.factors", "constant"
    ),
}

# T5X names this project has no equivalent for, and what to use instead.
HINTS = {
    "RestoreCheckpointConfig": (
        "set INITIAL_CHECKPOINT_PATH (the backbone) and CHECKPOINT_PATH or MODEL_DIR (a trained "
        "checkpoint; eval and infer), see restore.RestoreConfig"
    ),
    "CheckpointConfig": "use train_state.CheckpointConfig (CHECKPOINT_PERIOD, CHECKPOINTS_TO_KEEP)",
    "SaveCheckpointConfig": "supported: period, keep, dtype='float32'",
    "DatasetConfig": (
        "supported: mixture_or_task_name, task_feature_lengths, split, batch_size, shuffle, seed, "
        "use_cached, pack=False, module"
    ),
    "PjitPartitioner": "supported: num_partitions, model_parallel_submesh (see NUM_PARTITIONS)",
    "Trainer": "use trainer.Trainer; gradient accumulation (num_microbatches) is not supported",
    "create_learning_rate_scheduler": (
        "supported: factors='constant', base_learning_rate (LEARNING_RATE); other schedules: "
        "optim.create_optimizer.learning_rate"
    ),
    "from_embedded_list": "use prompts/class_labels.gin (CLASS_LABELS)",
    "from_embedded_string": "use prompts/from_string.gin (PROMPT_TEXT)",
    "from_array": "use prompts/from_file.gin (PROMPT_FILE)",
    "from_sample_of_embeddings": "supported: population_size (prompts.sampled_vocab)",
    "train_script": "use training.run (runs/finetune.gin)",
    "eval_script": "use evaluation.run (runs/prompt_eval.gin)",
    "infer_script": "use inference.run (runs/prompt_infer.gin)",
    "EncoderDecoderModel": "use model.EncoderDecoderModel (models/t5_1_1.gin)",
}


# The original's task modules (MIXTURE_OR_TASK_MODULE in its scripts) -> the modules here that
# register the same task names (docs/tasks.md, "The original's task names").
TASK_MODULES = {
    "prompt_tuning.data.tasks": "prompt_tuning.tasks",
    "prompt_tuning.data.glue": "prompt_tuning.tasks.glue",
    "prompt_tuning.data.super_glue": "prompt_tuning.tasks.super_glue",
    "prompt_tuning.data.qa": "prompt_tuning.tasks.qa",
    "prompt_tuning.data.glue_transfer": "prompt_tuning.tasks.glue_transfer",
}


def _alias(module: str, name: str, params: tuple[str, ...]):
  """Registers `module.name` with exactly `params`; it is never called, only forwarded."""

  def never_called(**kwargs):
    raise RuntimeError(
        f"{module}.{name} is a T5X name that only forwards its settings "
        f"({sorted(kwargs)}); refer to the project's configurable instead (docs/coming_from_t5x.md)."
    )

  # gin reads the accepted parameter names from the signature.
  never_called.__signature__ = inspect.Signature(
      [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in params]
  )
  gin.configurable(name, module=module)(never_called)


def _register():
  by_name: dict[str, list[str]] = {}
  for configurable, param in ALIASES:
    by_name.setdefault(configurable, []).append(param)
  for configurable, params in by_name.items():
    module, name = configurable.rsplit(".", 1)
    _alias(module, name, tuple(params))


_register()


def _matches(selector: str, name: str) -> bool:
  return selector == name or selector.endswith("." + name)


def forward() -> None:
  """Moves every value bound to an alias onto the project's configurables (see `ALIASES`)."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  aliases = {c for c, _ in ALIASES}
  # Configurables the configuration binds or refers to (`@name`): the possible targets.
  present = {selector for _, selector in config}
  present |= {r.configurable.selector for params in config.values() for r in _refs(params)}
  for scope, selector in list(config):
    alias = next((a for a in aliases if _matches(selector, a)), None)
    if alias is None:
      continue
    for param, value in config.pop((scope, selector)).items():
      check = _CHECK_ONLY.get((alias, param))
      if check is not None:
        check(value)
        continue
      targets = [
          (t, s)
          for t in ALIASES[alias, param]
          if scope in t.scopes
          for s in present
          if _matches(s, t.configurable)
      ]
      if not targets:
        where = f"{scope}/" if scope else ""
        raise ValueError(
            f"{where}{alias}.{param} has no effect in this configuration: its equivalents "
            f"{[t.configurable + '.' + t.param for t in ALIASES[alias, param]]} (for scopes "
            f"{sorted({s or '(none)' for t in ALIASES[alias, param] for s in t.scopes})}) "
            "are not part of it."
        )
      for target, registered in targets:
        converted = target.convert(value) if target.convert else value
        gin.bind_parameter(_binding_key(config, registered, target.param), converted)


def _refs(value):
  """The `@configurable` references in a binding's value, however deeply nested."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector != "gin.macro":
      yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _refs(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _refs(v)


def _binding_key(config, selector: str, param: str) -> str:
  """Where a value for `selector.param` goes: the macro it reads (`%NAME`), else itself.

  Setting the macro keeps it read, and reaches every binding that shares it, as setting the
  macro on the command line would.
  """
  current = config.get(("", selector), {}).get(param)
  while isinstance(current, gin.config.ConfigurableReference) and current.selector == "gin.macro":
    macro = current.scoped_selector.split("/")[0]
    selector, param = f"{macro}/gin.macro", "value"
    current = config.get((macro, "gin.macro"), {}).get("value")
  return f"{selector}.{param}"


def hint(message: str) -> Optional[str]:
  """The project's equivalent for a T5X name in gin's error `message`, if it names one."""
  quoted = re.findall(r"'([\w./]+)'", message)
  for name in quoted:
    for t5x_name, text in HINTS.items():
      if re.search(rf"(^|[./]){re.escape(t5x_name)}($|\.)", name):
        return f"{name} is a T5X name: {text} (docs/coming_from_t5x.md)."
  return None
