"""Input-level prompt variants: a reparameterised prompt and multi-task prompts.

Both are `prompts.PromptModule`s (the encoder's `encoder/prompt`), placed like any input prompt
(`placement.py`), and both export plain prompts [P, D] into the numpy checkpoint (`exports()`,
written by `train_state.save`) that `prompts/from_file.gin` and the prompt library read unchanged.

`ReparamPrompt` (prefix tuning's trick, in residual prompt tuning's form): during training the
prompt is `E + up(relu(down(E)))`, a residual bottleneck MLP applied to each row of a trainable
matrix E [P, D]. The up-projection starts at zero, so the first prompt is exactly its initialiser
(class labels, a saved prompt...). Unlike residual prompt tuning there is no layer norm after the
MLP: a norm of an all-zero output would scale its first gradients by 1/sqrt(eps). The export
`encoder.prompt.prompt.prompt.npy` is the computed prompt; the MLP is not needed after training.

`MultiTaskPrompt` (the original's `extended/multitask_prompts.py`): a shared prompt [P_s, D] and
one prompt per task [N, P_t, D], combined by addition (P_t = P_s; the prompt is shared + task) or
by concatenation along the length ([shared; task], P_s + P_t rows). The task of each example is
its first input token, as in the original: task i's token is `first_task_token - i` (the
sentinels `<extra_id_i>`, which `tasks/multitask.py` prepends), and the module drops that token
before placing the prompt, so the encoder sees the example's own tokens and its task's prompt.
Each task's combined prompt is exported as `tasks/<task name>.npy`.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import placement as placement_lib
from prompt_tuning import prompts

Array = jax.Array
COMBINES = ("add", "concat")
TASK_AXES = ("prompt_tasks", "prompt", "prompt_embed")
MLP_AXES = ("prompt_embed", "prompt_mlp")


# ------------------------------------------------------------------------------------------------
# Reparameterised prompt.


class ResidualMlp(nn.Module):
  """x + up(relu(down(x))) on each row [P, D]; `up` starts at zero (identity at first)."""

  hidden_dim: int

  @nn.compact
  def __call__(self, x_PxD: Array) -> Array:
    width = x_PxD.shape[-1]
    param = lambda name, init, shape, axes: self.param(
        name, nn.with_logical_partitioning(init, axes), shape, jnp.float32
    )
    down = param("down_kernel", nn.initializers.lecun_normal(), (width, self.hidden_dim), MLP_AXES)
    down_bias = param("down_bias", nn.initializers.zeros, (self.hidden_dim,), MLP_AXES[1:])
    up = param("up_kernel", nn.initializers.zeros, (self.hidden_dim, width), MLP_AXES[::-1])
    up_bias = param("up_bias", nn.initializers.zeros, (width,), MLP_AXES[:1])
    hidden_PxH = jax.nn.relu(x_PxD @ down + down_bias[None, :])
    return x_PxD + hidden_PxH @ up + up_bias[None, :]


class ReparamPrompt(nn.Module):
  """A prompt computed by a residual MLP from a trainable matrix (see the module docstring).

  Parameters: `encoder/prompt/embedding/prompt` [P, D] (initialised by `init`) and
  `encoder/prompt/mlp/{down,up}_{kernel,bias}`; all match `.*prompt.*`.
  """

  length: int
  init: prompts.Initializer = prompts.random_uniform()
  hidden_dim: int = 128
  placement: str = "prefix"

  def setup(self):
    self.embedding = prompts.Prompt(self.length, self.init)
    self.mlp = ResidualMlp(self.hidden_dim)

  def prompt(self, embed_dim: int) -> Array:
    """The prompt [P, D] the encoder sees (float32)."""
    return self.mlp(self.embedding(embed_dim))

  def __call__(self, embedded_BxLxD: Array, tokens_BxL: Array) -> Array:
    batch, _, embed_dim = embedded_BxLxD.shape
    prompt_PxD = self.prompt(embed_dim)
    prompt_BxPxD = jnp.broadcast_to(prompt_PxD, (batch,) + prompt_PxD.shape)
    return placement_lib.insert(prompt_BxPxD, embedded_BxLxD, tokens_BxL, self.placement)

  def valid_positions(self, tokens_BxL: Array) -> Array:
    return placement_lib.valid_positions(tokens_BxL, self.length, self.placement)

  def exports(self, embed_dim: int) -> dict[str, Array]:
    return {prompts.PLAIN_PROMPT_EXPORT: self.prompt(embed_dim)}


def reparam_prompt_factory(
    length: int,
    init: prompts.Initializer = prompts.random_uniform(),
    hidden_dim: int = 128,
    placement: str = "prefix",
) -> prompts.PromptFactory:
  """The encoder's `prompt_factory` for a `ReparamPrompt`."""
  if length <= 0:
    raise prompts.PromptInitError(f"PROMPT_LENGTH must be positive; got {length}.")
  if hidden_dim <= 0:
    raise ValueError(f"REPARAM_HIDDEN_DIM must be positive; got {hidden_dim}.")
  return functools.partial(ReparamPrompt, length, init, hidden_dim, placement_lib.check(placement))


# ------------------------------------------------------------------------------------------------
# Multi-task prompts.


def combine(shared_PsxD: Array, task_NxPtxD: Array, how: str) -> Array:
  """Each task's prompt [N, P, D] from the shared one and the task parts (`COMBINES`)."""
  if how == "add":
    return shared_PsxD[None] + task_NxPtxD
  shared_NxPsxD = jnp.broadcast_to(shared_PsxD, (task_NxPtxD.shape[0],) + shared_PsxD.shape)
  return jnp.concatenate([shared_NxPsxD, task_NxPtxD], axis=1)


def task_index(first_tokens_B: Array, first_task_token: int, num_tasks: int) -> Array:
  """Task index [B] of each example from its first token (`first_task_token - i` is task i).

  Other tokens are clipped into range: padding rows of an evaluation batch (all zeros) get a
  task, and their outputs are masked anyway.
  """
  return jnp.clip(first_task_token - first_tokens_B, 0, num_tasks - 1)


class TaskPrompts(nn.Module):
  """Owns the per-task prompts [N, P_t, D]; `init` fills each task's [P_t, D] with its own rng."""

  num_tasks: int
  length: int
  init: prompts.Initializer

  @nn.compact
  def __call__(self, embed_dim: int) -> Array:
    def init(rng, shape, dtype=jnp.float32):
      rngs = jax.random.split(rng, shape[0])
      return jnp.stack([self.init(r, shape[1:], dtype) for r in rngs])

    return self.param(
        "prompt",
        nn.with_logical_partitioning(init, TASK_AXES),
        (self.num_tasks, self.length, embed_dim),
        jnp.float32,
    )


class MultiTaskPrompt(nn.Module):
  """A shared prompt plus a per-task one, picked per example by its first token (see above).

  Parameters: `encoder/prompt/shared/prompt` [P_s, D] and `encoder/prompt/tasks/prompt`
  [N, P_t, D].
  """

  shared_length: int
  task_names: Sequence[str]
  first_task_token: int
  how: str = "concat"
  task_length: int = 0  # Concatenation only; addition uses P_t = P_s.
  shared_init: prompts.Initializer = prompts.random_uniform()
  task_init: prompts.Initializer = prompts.random_uniform()
  placement: str = "prefix"

  @property
  def length(self) -> int:
    """Prompt rows the encoder sees (`PromptModule.length`)."""
    return self.shared_length + (self.task_length if self.how == "concat" else 0)

  def setup(self):
    self.shared = prompts.Prompt(self.shared_length, self.shared_init)
    rows = self.shared_length if self.how == "add" else self.task_length
    self.tasks = TaskPrompts(len(self.task_names), rows, self.task_init)

  def all_task_prompts(self, embed_dim: int) -> Array:
    """[N, P, D]: every task's combined prompt."""
    return combine(self.shared(embed_dim), self.tasks(embed_dim), self.how)

  def __call__(self, embedded_BxLxD: Array, tokens_BxL: Array) -> Array:
    prompts_NxPxD = self.all_task_prompts(embedded_BxLxD.shape[-1])
    task_B = task_index(tokens_BxL[:, 0], self.first_task_token, len(self.task_names))
    return placement_lib.insert(
        prompts_NxPxD[task_B], embedded_BxLxD[:, 1:], tokens_BxL[:, 1:], self.placement
    )

  def valid_positions(self, tokens_BxL: Array) -> Array:
    return placement_lib.valid_positions(tokens_BxL[:, 1:], self.length, self.placement)

  def exports(self, embed_dim: int) -> dict[str, Array]:
    prompts_NxPxD = self.all_task_prompts(embed_dim)
    return {f"tasks/{name}": prompts_NxPxD[i] for i, name in enumerate(self.task_names)}


def multitask_prompt_factory(
    shared_length: int,
    task_names: Sequence[str],
    first_task_token: int,
    how: str = "concat",
    task_length: int = 0,
    shared_init: prompts.Initializer = prompts.random_uniform(),
    task_init: prompts.Initializer = prompts.random_uniform(),
    placement: str = "prefix",
) -> prompts.PromptFactory:
  """The encoder's `prompt_factory` for a `MultiTaskPrompt`; checks the settings."""
  if how not in COMBINES:
    raise ValueError(f"MULTITASK_COMBINE={how!r}; choose one of {list(COMBINES)}.")
  if shared_length <= 0:
    raise prompts.PromptInitError(f"PROMPT_LENGTH must be positive; got {shared_length}.")
  if how == "concat" and task_length <= 0:
    raise ValueError(
        f"MULTITASK_COMBINE='concat' needs a positive TASK_PROMPT_LENGTH; got {task_length}."
    )
  if how == "add" and task_length not in (0, shared_length):
    raise ValueError(
        f"MULTITASK_COMBINE='add' sums prompts of the same length: TASK_PROMPT_LENGTH="
        f"{task_length} would be ignored (P_t = PROMPT_LENGTH = {shared_length}); leave it 0."
    )
  names = tuple(task_names)
  if not names or len(set(names)) != len(names):
    raise ValueError(f"MULTITASK_TASKS must be distinct task names; got {list(names)}.")
  bad = [n for n in names if not n or "/" in n or n.startswith(".")]
  if bad:
    raise ValueError(f"MULTITASK_TASKS names become file names (tasks/<name>.npy); bad: {bad}.")
  return functools.partial(
      MultiTaskPrompt,
      shared_length,
      names,
      first_task_token,
      how,
      task_length,
      shared_init,
      task_init,
      placement_lib.check(placement),
  )
