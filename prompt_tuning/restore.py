"""Where parameters come from: the one place that reads them, for train, eval and infer.

What is loaded from where is data, a `RestoreConfig` (T5X's `RestoreCheckpointConfig`, narrowed
to prompt tuning's cases), read in this order:

  1. the backbone from `initial_checkpoint_path`, a T5X checkpoint (lm100k, the embedded default,
     or any other) - every parameter except those matching `scratch_patterns`;
  2. the parameters matching `scratch_patterns` (the prompt) from their initialisers, e.g. a saved
     prompt `.npy` with `prompts/from_file.gin`, or class labels with `prompts/class_labels.gin`;
  3. a training checkpoint (`checkpoint_path`, else the latest one in `model_dir`, if any): its
     parameters - the trainable ones, or all of a full checkpoint - replace those of 1 and 2,
     except those matching `checkpoint_skip_patterns`. A full checkpoint (every backbone
     parameter: `save_mode='full'`, or one the original implementation wrote) stands in for 1,
     which is then not read: the original's users pass the backbone as CHECKPOINT_PATH.

Training reads 1 and 2 here and resumes its whole train state (optimizer, step, input position)
with `train_state.restore`; eval and infer read 1-3 here and never build an optimizer.
"""

import dataclasses
import logging
import re
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import checkpoints
from prompt_tuning import optim
from prompt_tuning import partitioning

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
  """What to read from where; see the module docstring for the order."""

  initial_checkpoint_path: Optional[str]
  scratch_patterns: Sequence[str] = optim.PROMPT_PATTERNS
  checkpoint_path: Optional[str] = None
  model_dir: Optional[str] = None
  # Never read from step 3's checkpoint (T5X's assignment map to None): prompts/from_file.gin
  # sets the prompt's, so a given PROMPT_FILE wins, as in the original's prompt_eval.gin.
  checkpoint_skip_patterns: Sequence[str] = ()

  def __post_init__(self):
    for name, setting in (
        ("scratch_patterns", "INIT_FROM_SCRATCH_PATTERNS"),
        ("checkpoint_skip_patterns", "RestoreConfig.checkpoint_skip_patterns"),
    ):
      object.__setattr__(self, name, tuple(getattr(self, name)))
      for pattern in getattr(self, name):
        try:
          re.compile(pattern)
        except re.error as e:
          raise ValueError(f"{setting}: {pattern!r} is not a regex ({e}).") from None

  def training_checkpoint(self) -> Optional[str]:
    """Step 3's checkpoint: `checkpoint_path`, else the latest in `model_dir`, else None."""
    if self.checkpoint_path:
      return self.checkpoint_path
    return checkpoints.latest_checkpoint(self.model_dir) if self.model_dir else None


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """Shapes, logical axes and shardings of a model's parameters, computed without allocating."""

  shapes: Params  # jax.ShapeDtypeStruct leaves.
  axes: Params  # Tuples of logical axis names.
  shardings: Params

  @classmethod
  def of(
      cls,
      model,
      partitioner: partitioning.Partitioner,
      input_shapes: Optional[Mapping[str, int]] = None,
      rng=None,
  ) -> "ParamSpec":
    lengths = dict(input_shapes or {"inputs": 8, "targets": 4})
    rng = jax.random.PRNGKey(0) if rng is None else rng
    boxed = jax.eval_shape(
        lambda r: model.get_initial_variables(r, 1, lengths["inputs"], lengths["targets"])[
            "params"
        ],
        rng,
    )
    axes = jax.tree.map(
        tuple,
        nn.get_partition_spec(boxed),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )
    return cls(nn.unbox(boxed), axes, partitioner.param_shardings(boxed))

  def select(self, tree: Params, patterns: Sequence[str], keep: bool = True) -> dict[str, Any]:
    """The leaves of `tree` (shaped like the params) whose path matches `patterns` (or not)."""
    return optim.unflatten(
        {k: v for k, v in optim.flatten(tree).items() if optim.is_trainable(k, patterns) == keep}
    )

  def shardings_of(self, tree: Params) -> dict[str, Any]:
    flat = optim.flatten(self.shardings)
    return optim.unflatten({k: flat[k] for k in optim.flatten(tree)})


def init_params(model, spec: ParamSpec, rng, patterns: Sequence[str] = (".*",)) -> dict[str, Any]:
  """Initialises the parameters matching `patterns`, sharded (XLA drops the rest)."""
  wanted = spec.select(spec.shapes, patterns)
  if not wanted:
    return {}

  def init(r):
    params = nn.unbox(model.get_initial_variables(r)["params"])
    return spec.select(params, patterns)

  return jax.jit(init, out_shardings=spec.shardings_of(wanted))(rng)


def initial_params(cfg: RestoreConfig, model, spec: ParamSpec, rng) -> tuple[dict, int]:
  """(every parameter, global step) from steps 1 and 2: backbone + parameters from scratch."""
  if not cfg.initial_checkpoint_path:
    logging.warning("No INITIAL_CHECKPOINT_PATH: every parameter starts from scratch.")
    return init_params(model, spec, rng), 0
  scratch = optim.flatten(init_params(model, spec, rng, cfg.scratch_patterns))
  regex = None
  if scratch:  # Read everything except the parameters initialised from scratch.
    regex = "(?!(" + "|".join(f"(?:{p})" for p in cfg.scratch_patterns) + ")$).*"
  loaded = checkpoints.load_t5x_checkpoint(
      cfg.initial_checkpoint_path, regex=regex, shardings=spec.shardings, dtype=jnp.float32
  )
  params = optim.unflatten({**optim.flatten(loaded), **scratch})
  checkpoints.check_against(spec.shapes, params)
  return params, checkpoints.read_step(cfg.initial_checkpoint_path)


def load_params(cfg: RestoreConfig, model, spec: ParamSpec, rng) -> tuple[dict, int]:
  """(every parameter, step) after all three steps: what eval and infer run."""
  path = cfg.training_checkpoint()
  if not path:
    logging.info(
        "No training checkpoint given (CHECKPOINT_PATH) or found in MODEL_DIR=%s: "
        "using the initial parameters.",
        cfg.model_dir,
    )
    return initial_params(cfg, model, spec, rng)
  names = set(optim.flatten(spec.shapes))
  wanted = {
      k
      for k in checkpoints.list_parameters(path)
      if not optim.is_trainable(k, cfg.checkpoint_skip_patterns)
  }
  unknown = sorted(wanted - names)
  if unknown:
    raise checkpoints.CheckpointError(f"{path}: parameters the model does not have: {unknown}.")
  backbone = {k for k in names if not optim.is_trainable(k, cfg.scratch_patterns)}
  if backbone <= wanted:  # A full checkpoint: step 1 would read what it replaces.
    logging.info("%s holds every backbone parameter: INITIAL_CHECKPOINT_PATH is not read.", path)
    params = init_params(model, spec, rng, cfg.scratch_patterns)
  else:
    params, _ = initial_params(cfg, model, spec, rng)
  saved = {}
  if wanted:
    regex = "|".join(re.escape(k) for k in sorted(wanted))
    saved = optim.flatten(
        checkpoints.load_t5x_checkpoint(
            path, regex=regex, shardings=spec.shardings, dtype=jnp.float32
        )
    )
  params = optim.unflatten({**optim.flatten(params), **saved})
  checkpoints.check_against(spec.shapes, params)
  logging.info("Loaded %d parameters from %s.", len(saved), path)
  return params, checkpoints.read_step(path)
