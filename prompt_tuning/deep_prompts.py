"""Deep prompts: trainable key/value prefixes in every self-attention layer.

Prefix tuning (Li & Liang, 2021) and P-tuning v2 (Liu et al., 2022) give each attention layer P'
extra key and value positions that every query attends to; the frozen T5 is otherwise unchanged
(`models/t5.py`, `MultiHeadAttention._attend_with_prefix`). A deep-prompt module sits at
`deep_prompt` in the model (`t5.EncoderDecoder.deep_prompt_factory`), so `.*prompt.*` trains it
and nothing else, and returns each stack's prefixes when called as `deep_prompt(stack)`:

  [layers, 2, P', H, K] for stack "encoder" (or "decoder"): per layer, keys then values.

Two modules produce them:

  DeepPrompt             the prefixes are the parameters: `deep_prompt/encoder_prefixes` (and
                         `deep_prompt/decoder_prefixes`). P-tuning v2; prompts/deep_prompt.gin.
  ReparameterisedPrompt  prefix tuning's MLP: per stack a small matrix `prompt` [P', E] through
                         tanh(prompt @ hidden_kernel + hidden_bias) @ out_kernel + out_bias, whose
                         output is all that stack's layers' prefixes at once
                         (`deep_prompt/<stack>/...`); prompts/prefix_tuning.gin.

The artefact of either is the prefixes alone, one `.npy` per stack (float32, [layers, 2, P', H,
K] as above) named `deep_prompt.<stack>_prefixes.npy`: what the training run's numpy export
(`MODEL_DIR/numpy_checkpoints/checkpoint_<step>/`) already holds for a `DeepPrompt`, and what

  python -m prompt_tuning.deep_prompts export SRC_DIR DST_DIR

writes from a numpy export of either kind (the MLP is evaluated once and dropped). A `DeepPrompt`
starts from such a directory with `directory=` (prompts/deep_prompt_from_export.gin), or from the
keys and values the frozen encoder computes for an input prompt (`deep_prompt_init.frozen_kv`,
e.g. of the class-label prompt; prompts/deep_prompt_frozen_kv.gin).

Trainable parameters per stack with N layers, H heads of dimension K: `DeepPrompt` N * 2 * P' *
H * K; `ReparameterisedPrompt` P' * E + E * M + M + (M + 1) * N * 2 * H * K (M: hidden width).
"""

import argparse
import functools
import os
import shutil
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import prompts

Array = jax.Array
STACKS = ("encoder", "decoder")
# Logical axes of a stack's prefixes [layers, 2, P', H, K]: heads are split like the attention's
# own (model parallelism), axes without a partitioning rule (`prompt_layers`, `prompt_kv`, and the
# MLP's `prompt_mlp`) are replicated, and the prompt axes keep Adafactor from factoring (optim.py).
PREFIX_AXES = ("prompt_layers", "prompt_kv", "prompt", "heads", "kv")


class DeepPromptError(ValueError):
  """A deep prompt's settings or saved prefixes do not fit the model."""


class DeepPromptModule(Protocol):
  """`deep_prompt(stack)` -> that stack's prefixes [layers, 2, P', H, K], or None.

  `exports()`: arrays computed from the parameters for the numpy checkpoint (name -> array).
  """

  def __call__(self, stack: str) -> Optional[Array]:
    ...

  def exports(self) -> dict[str, Array]:
    ...


class DeepPromptFactory(Protocol):
  """`t5.EncoderDecoder.deep_prompt_factory`: `(config)` -> a fresh `DeepPromptModule`."""

  def __call__(self, config: Any) -> DeepPromptModule:
    ...


def export_name(stack: str) -> str:
  return f"deep_prompt.{stack}_prefixes.npy"


def prefix_shape(config: Any, stack: str, length: int) -> tuple[int, ...]:
  """[layers, 2, P', H, K] of `stack` in a model of `config` (a `t5.T5Config`)."""
  layers = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
  return (layers, 2, length, config.num_heads, config.head_dim)


def _stacks(decoder: bool) -> tuple[str, ...]:
  return STACKS if decoder else STACKS[:1]


def _check_stack(stack: str, decoder: bool) -> bool:
  """Whether `stack` has prefixes; an unknown stack name is an error."""
  if stack not in STACKS:
    raise DeepPromptError(f"Unknown stack {stack!r}; choose one of {STACKS}.")
  return stack in _stacks(decoder)


def normal(stddev: float = 1.0) -> prompts.Initializer:
  """N(0, stddev^2), P-tuning v2's initialisation of its prefixes."""

  def init(rng, shape, dtype=jnp.float32):
    return stddev * jax.random.normal(rng, shape, dtype)

  return init


def from_export(directory: str, stack: str) -> prompts.Initializer:
  """`stack`'s prefixes from `directory/deep_prompt.<stack>_prefixes.npy`; the shape must match."""
  path = os.path.join(os.fspath(directory), export_name(stack))
  array = prompts.load_npy(path)
  fixed = prompts.from_array(array)

  def init(rng, shape, dtype=jnp.float32):
    try:
      return fixed(rng, shape, dtype)
    except prompts.PromptInitError:  # Its message speaks of input prompts; name the prefixes.
      raise DeepPromptError(
          f"{path}: prefixes of shape {array.shape}, the model's {stack} needs {tuple(shape)} "
          "[layers, 2, PROMPT_LENGTH, heads, head_dim]."
      ) from None

  return init


@runtime_checkable
class StackInitializer(Protocol):
  """An `init` that needs the model's configuration: `initializer(config, stack)` gives the
  `prompts.Initializer` of that stack's prefixes (e.g. `deep_prompt_init.FrozenKv`)."""

  def initializer(self, config: Any, stack: str) -> prompts.Initializer:
    ...


def check_export(directory: str, decoder: bool) -> None:
  """Every stack that has prefixes has a file, and no file would be ignored."""
  for stack in STACKS:
    path = os.path.join(directory, export_name(stack))
    wanted = stack in _stacks(decoder)
    if wanted and not os.path.isfile(path):
      raise FileNotFoundError(f"Deep prompt export has no {stack} prefixes: {path} is missing.")
    if not wanted and os.path.exists(path):
      raise DeepPromptError(
          f"{path} holds decoder prefixes but the deep prompt has none "
          "(set DEEP_PROMPT_DECODER = True to use them)."
      )


# ------------------------------------------------------------------------------------------------
# Modules.


def _prefix_param(module: nn.Module, name: str, init, shape) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, PREFIX_AXES), shape, jnp.float32)


class DeepPrompt(nn.Module):
  """The prefixes themselves are trained (P-tuning v2): `<stack>_prefixes` [layers, 2, P', H, K].

  `directory`: start from exported prefixes (`export_name`) instead of `init`.
  """

  config: Any
  length: int
  in_decoder: bool = False
  prefix_init: prompts.Initializer | StackInitializer = normal()
  directory: Optional[str] = None

  def setup(self):
    for stack in _stacks(self.in_decoder):
      init = self.prefix_init
      if self.directory is not None:
        init = from_export(self.directory, stack)
      elif isinstance(init, StackInitializer):  # Needs the model's shape, which the module has.
        init = init.initializer(self.config, stack)
      shape = prefix_shape(self.config, stack, self.length)
      setattr(self, f"{stack}_prefixes", _prefix_param(self, f"{stack}_prefixes", init, shape))

  def __call__(self, stack: str) -> Optional[Array]:
    if not _check_stack(stack, self.in_decoder):
      return None
    return getattr(self, f"{stack}_prefixes")

  def exports(self) -> dict[str, Array]:
    return {}  # The parameters are the artefact (`deep_prompt.<stack>_prefixes.npy`).


def reparameterise(
    prompt_PxE: Array,
    hidden_kernel_ExM: Array,
    hidden_bias_M: Array,
    out_kernel_MxNx2xHxK: Array,
    out_bias_Nx2xHxK: Array,
) -> Array:
  """Prefix tuning's MLP, tanh between two affine maps: -> prefixes [N, 2, P', H, K]."""
  hidden_PxM = jnp.tanh(prompt_PxE @ hidden_kernel_ExM + hidden_bias_M[None])
  out = jnp.einsum("pm,mnchk->ncphk", hidden_PxM, out_kernel_MxNx2xHxK)
  return out + out_bias_Nx2xHxK[:, :, None]


_MLP_PARAMS = ("prompt", "hidden_kernel", "hidden_bias", "out_kernel", "out_bias")


class PrefixMlp(nn.Module):
  """One stack's reparameterisation: a [P', E] matrix through the MLP to [N, 2, P', H, K]."""

  shape: Sequence[int]  # The prefixes': [N, 2, P', H, K].
  embed_dim: int
  hidden_dim: int
  prompt_init: prompts.Initializer
  out_stddev: float

  @nn.compact
  def __call__(self) -> Array:
    layers, kv, length, heads, head_dim = self.shape
    axes = ("prompt_layers", "prompt_kv", "heads", "kv")
    param = lambda name, init, shape, names: self.param(
        name, nn.with_logical_partitioning(init, names), shape, jnp.float32
    )
    return reparameterise(
        param("prompt", self.prompt_init, (length, self.embed_dim), prompts.PROMPT_AXES),
        param(
            "hidden_kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            (self.embed_dim, self.hidden_dim),
            ("prompt_embed", "prompt_mlp"),
        ),
        param("hidden_bias", nn.initializers.zeros, (self.hidden_dim,), ("prompt_mlp",)),
        param(
            "out_kernel",
            nn.initializers.variance_scaling(self.out_stddev**2, "fan_in", "truncated_normal"),
            (self.hidden_dim, layers, kv, heads, head_dim),
            ("prompt_mlp",) + axes,
        ),
        param("out_bias", nn.initializers.zeros, (layers, kv, heads, head_dim), axes),
    )


class ReparameterisedPrompt(nn.Module):
  """Prefix tuning: each stack's prefixes from its own `PrefixMlp` at `deep_prompt/<stack>/`.

  `embed_dim` None: the model's width. Training only; export the prefixes (`export`) to serve.
  """

  config: Any
  length: int
  in_decoder: bool = True
  hidden_dim: int = 512
  embed_dim: Optional[int] = None
  prompt_init: prompts.Initializer = normal()
  out_stddev: float = 1.0

  def setup(self):
    for stack in _stacks(self.in_decoder):  # Submodules named `encoder` and `decoder`.
      mlp = PrefixMlp(
          prefix_shape(self.config, stack, self.length),
          self.embed_dim or self.config.emb_dim,
          self.hidden_dim,
          self.prompt_init,
          self.out_stddev,
      )
      setattr(self, stack, mlp)

  def __call__(self, stack: str) -> Optional[Array]:
    if not _check_stack(stack, self.in_decoder):
      return None
    return getattr(self, stack)()

  def exports(self) -> dict[str, Array]:
    """The prefixes the MLPs compute, under the names a `DeepPrompt`'s parameters export to, so
    every numpy checkpoint of a prefix-tuning run is a deep prompt (MLP dropped)."""
    return {
        export_name(stack)[: -len(".npy")]: getattr(self, stack)()
        for stack in _stacks(self.in_decoder)
    }


# ------------------------------------------------------------------------------------------------
# Factories (what gin binds to `t5.EncoderDecoder.deep_prompt_factory`).


def _check_length(length: int) -> None:
  if length <= 0:
    raise DeepPromptError(f"PROMPT_LENGTH (the deep prompt's) must be positive; got {length}.")


def deep_prompt_factory(
    length: int,
    decoder: bool = False,
    init: prompts.Initializer | StackInitializer = normal(),
    directory: Optional[str] = None,
) -> DeepPromptFactory:
  """Builds `DeepPrompt`s; with `directory`, from exported prefixes (then `init` is unused)."""
  _check_length(length)
  if directory is not None:
    check_export(os.fspath(directory), decoder)
  return functools.partial(
      DeepPrompt, length=length, in_decoder=decoder, prefix_init=init, directory=directory
  )


def prefix_tuning_factory(
    length: int,
    decoder: bool = True,
    hidden_dim: int = 512,
    embed_dim: Optional[int] = None,
    init: prompts.Initializer = normal(),
    out_stddev: float = 1.0,
) -> DeepPromptFactory:
  """Builds `ReparameterisedPrompt`s."""
  _check_length(length)
  for name, value in (("hidden_dim", hidden_dim), ("embed_dim", embed_dim or 1)):
    if value <= 0:
      raise DeepPromptError(f"prefix_tuning_factory.{name} must be positive; got {value}.")
  return functools.partial(
      ReparameterisedPrompt,
      length=length,
      in_decoder=decoder,
      hidden_dim=hidden_dim,
      embed_dim=embed_dim,
      prompt_init=init,
      out_stddev=out_stddev,
  )


# ------------------------------------------------------------------------------------------------
# Export: the prefixes alone, from a numpy export of either module.


def export(src: str, dst: str) -> list[str]:
  """Writes each stack's prefixes from the numpy export in `src` to `dst`; returns the paths.

  `src` holds `deep_prompt.<stack>_prefixes.npy` (a `DeepPrompt`: copied) or
  `deep_prompt.<stack>.<param>.npy` (a `ReparameterisedPrompt`: the MLP is evaluated).
  """
  src, dst = os.fspath(src), os.fspath(dst)
  if not os.path.isdir(src):
    raise FileNotFoundError(f"Not a directory: {src}")
  os.makedirs(dst, exist_ok=True)
  written = []
  for stack in STACKS:
    out = os.path.join(dst, export_name(stack))
    direct = os.path.join(src, export_name(stack))
    mlp = [os.path.join(src, f"deep_prompt.{stack}.{name}.npy") for name in _MLP_PARAMS]
    if os.path.isfile(direct):
      shutil.copyfile(direct, out)
    elif any(os.path.isfile(p) for p in mlp):
      arrays = [prompts.load_npy(p) for p in mlp]  # A missing one is named by load_npy.
      prefixes = jax.jit(reparameterise)(*arrays)
      np.save(out, np.asarray(prefixes, np.float32))
    else:
      continue
    written.append(out)
  if not written:
    raise DeepPromptError(
        f"{src} holds no deep prompt (deep_prompt.<stack>_prefixes.npy or "
        "deep_prompt.<stack>.prompt.npy): is it a numpy_checkpoints/checkpoint_<step> folder?"
    )
  return written


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      description="Deep prompts. `export SRC DST`: write the per-layer prefixes "
      "(deep_prompt.<stack>_prefixes.npy) from a run's numpy export, dropping any MLP."
  )
  sub = parser.add_subparsers(dest="command", required=True)
  cmd = sub.add_parser("export", help="Per-layer prefixes from a numpy export.")
  cmd.add_argument("src", help="MODEL_DIR/numpy_checkpoints/checkpoint_<step>")
  cmd.add_argument("dst", help="Output folder (prompts/deep_prompt_from_export.gin reads it).")
  args = parser.parse_args(argv)
  for path in export(args.src, args.dst):
    print(path)


if __name__ == "__main__":
  main()
