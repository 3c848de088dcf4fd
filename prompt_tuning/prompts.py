"""Soft prompts: the trainable [P, D] matrix, its initialisers, and how it joins the inputs.

`InputPrompt` (alias `PrefixPrompt`) is what the T5 encoder calls with the embedded inputs (see
`models/t5.py`; the contract is `PromptModule`, built by a `PromptFactory`); it owns a `Prompt`
whose single parameter lives at `encoder/prompt/prompt/prompt`, as in the original
implementation, so `.*prompt.*` selects it, and places it as a prefix (default), after the first
token or as a suffix (`placement.py`). Reparameterised and multi-task prompts:
`prompt_variants.py`.

Initialisers follow Flax's signature `(rng, shape, dtype) -> array` and are built by factories:

  random_uniform(scale=0.5)                       U[-scale, scale] (the paper's "random")
  sampled_vocab(embeddings, 5000, vocab=None)     rows of the first N (real) tokens' embeddings
  class_labels(embeddings, vocab, labels, ...)    mean embedding of each label's pieces, then fallback
  from_string(embeddings, vocab, text, ...)       embeddings of a text's pieces, then fallback
  from_array(array) / from_file(path)             a saved prompt (.npy, never unpickled)

`get_initializer(name, **kwargs)` picks one by name for configs.
"""

import functools
import logging
import os
from typing import Callable, Optional, Protocol, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import placement as placement_lib

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
ArrayLike = Union[np.ndarray, jax.Array]
PROMPT_AXES = ("prompt", "prompt_embed")


class PromptInitError(ValueError):
  """A prompt initialiser was given inputs it cannot use."""


# ------------------------------------------------------------------------------------------------
# Initialisers.


def random_uniform(scale: float = 0.5) -> Initializer:
  """U[-scale, scale]; the paper's random initialisation uses scale 0.5."""

  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, minval=-scale, maxval=scale)

  return init


def _check_embeddings(embeddings, shape):
  embeddings = np.asarray(embeddings) if not isinstance(embeddings, jax.Array) else embeddings
  if embeddings.ndim != 2:
    raise PromptInitError(
        f"The embedding table must be 2-D [vocab, embed]; got {embeddings.shape}."
    )
  if embeddings.shape[1] != shape[-1]:
    raise PromptInitError(
        f"Embedding width {embeddings.shape[1]} does not match the prompt's {shape[-1]} "
        f"(prompt shape {tuple(shape)})."
    )
  return embeddings


def _real_tokens(vocab) -> int:
  """The vocabulary's real pieces: seqio's `vocab_size` counts the sentinel extra ids too."""
  return vocab.vocab_size - vocab.extra_ids


def _describe(vocab) -> str:
  path = getattr(vocab, "sentencepiece_model_file", None)
  return f"{type(vocab).__name__}({path})" if path else type(vocab).__name__


def _population_rows(table_rows: int, population_size: Optional[int], vocab) -> int:
  """How many leading rows of a `table_rows`-row table `sampled_vocab` samples from."""
  if vocab is None:
    if population_size is None:
      return table_rows
    if population_size > table_rows:
      raise PromptInitError(
          f"prompts.sampled_vocab.population_size={population_size} is larger than the "
          f"embedding table ({table_rows} rows): lower it, or pass `vocab` so it is clamped to "
          "the vocabulary's real tokens."
      )
    return population_size
  real = _real_tokens(vocab)
  if real > table_rows:
    raise PromptInitError(
        f"The vocabulary {_describe(vocab)} has {real} real tokens but the embedding table only "
        f"{table_rows} rows: they do not belong together."
    )
  if population_size is None:
    return real
  if population_size > real:
    # Rows past the real pieces are sentinel extra ids and padding: never a word's embedding.
    logging.warning(
        "prompts.sampled_vocab.population_size=%d is larger than the %d real tokens of %s; "
        "sampling from those %d only.",
        population_size,
        real,
        _describe(vocab),
        real,
    )
    return real
  return population_size


def sampled_vocab(
    embeddings: ArrayLike, population_size: Optional[int] = 5000, vocab=None
) -> Initializer:
  """Rows sampled without replacement from the first `population_size` embeddings.

  The T5 vocabulary is ordered by frequency, so the first 5,000 rows are common tokens.
  With `vocab` (a seqio vocabulary) the population never goes past its real tokens
  (`vocab_size - extra_ids`): a larger `population_size` is clamped to them with a warning,
  and `population_size=None` means all of them. Without `vocab`, `population_size=None` samples
  from the whole table and a population larger than the table is a `PromptInitError`.
  """

  def init(rng, shape, dtype=jnp.float32):
    table = _check_embeddings(embeddings, shape)
    population = table[: _population_rows(table.shape[0], population_size, vocab)]
    if shape[0] > population.shape[0]:
      raise PromptInitError(
          f"Cannot sample {shape[0]} distinct rows from a population of {population.shape[0]}."
      )
    rows = jax.random.choice(rng, jnp.asarray(population), (shape[0],), replace=False)
    return rows.astype(dtype)

  return init


def _fill_rows(rows: np.ndarray, fallback: Initializer, rng, shape, dtype):
  """Puts `rows` (at most `shape[0]`) first and the rest of `fallback(rng, shape)` after."""
  base = fallback(rng, shape, dtype)
  if len(rows) == 0:
    return base
  return jnp.concatenate([jnp.asarray(rows, dtype), base[len(rows) :]], axis=0)


def class_labels(
    embeddings: ArrayLike, vocab, labels: Sequence[str], fallback: Optional[Initializer] = None
) -> Initializer:
  """One prompt position per class label: the mean embedding of the label's sub-tokens.

  Remaining positions come from `fallback` (default: `sampled_vocab(embeddings, vocab=vocab)`,
  the paper's setting). A prompt shorter than the label list keeps the first labels, with a
  warning, as the original's `from_embedded_list` does (e.g. length 1 with BoolQ's two labels:
  the prompt is `False` alone).
  """
  fallback = fallback or sampled_vocab(embeddings, vocab=vocab)

  def init(rng, shape, dtype=jnp.float32):
    # Host-side numpy: the labels are static, and jnp ops here would be traced under
    # `jax.jit(module.init)`, where converting their result to numpy fails.
    table = np.asarray(_check_embeddings(embeddings, shape))
    kept = list(labels)
    if len(kept) > shape[0]:
      logging.warning(
          "Prompt length %d is shorter than the %d class labels: initialising from %s and "
          "skipping %s.",
          shape[0],
          len(kept),
          kept[: shape[0]],
          kept[shape[0] :],
      )
      kept = kept[: shape[0]]
    rows = []
    for label in kept:
      ids = list(vocab.encode(label))
      if not ids:
        raise PromptInitError(f"Class label {label!r} tokenises to no tokens; cannot embed it.")
      rows.append(table[np.asarray(ids)].mean(axis=0))
    return _fill_rows(
        np.stack(rows) if rows else np.zeros((0, shape[-1])),
        fallback,
        rng,
        shape,
        dtype,
    )

  return init


def from_string(
    embeddings: ArrayLike, vocab, text: str, fallback: Optional[Initializer] = None
) -> Initializer:
  """The embeddings of `text`'s tokens fill the first positions (truncated with a warning).

  Remaining positions come from `fallback` (default: `sampled_vocab(embeddings, vocab=vocab)`).
  """
  fallback = fallback or sampled_vocab(embeddings, vocab=vocab)

  def init(rng, shape, dtype=jnp.float32):
    table = np.asarray(_check_embeddings(embeddings, shape))  # Host-side, as in class_labels.
    ids = list(vocab.encode(text))
    if not ids:
      raise PromptInitError(f"Prompt text {text!r} tokenises to no tokens.")
    if len(ids) > shape[0]:
      logging.warning(
          "Prompt text %r has %d tokens; keeping the first %d.", text, len(ids), shape[0]
      )
      ids = ids[: shape[0]]
    return _fill_rows(table[np.asarray(ids)], fallback, rng, shape, dtype)

  return init


def from_array(array: ArrayLike) -> Initializer:
  """A fixed prompt, e.g. one trained before; its shape must match."""
  array = np.asarray(array)

  def init(rng, shape, dtype=jnp.float32):
    del rng
    if tuple(array.shape) != tuple(shape):
      raise PromptInitError(
          f"Saved prompt has shape {array.shape} but the model's prompt is {tuple(shape)} "
          "[prompt_length, embed_dim]; set PROMPT_LENGTH to match or use another prompt."
      )
    return jnp.asarray(array, dtype)

  return init


def load_npy(path: str) -> np.ndarray:
  """Loads a `.npy` array without ever unpickling (saved prompts are plain float arrays)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Prompt/embedding file not found: {path}")
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    raise PromptInitError(f"{path}: not a plain .npy array ({e}).") from e


def from_file(path: str) -> Initializer:
  """A prompt saved as `.npy` (e.g. `MODEL_DIR/numpy_checkpoints/.../prompt.npy`)."""
  array = load_npy(path)
  init = from_array(array)

  def checked(rng, shape, dtype=jnp.float32):
    try:
      return init(rng, shape, dtype)
    except PromptInitError as e:
      raise PromptInitError(f"{path}: {e}") from None

  return checked


def _is_npy(path: str) -> bool:
  """A file in numpy's format, whatever its name (the original writes them without `.npy`)."""
  if not os.path.isfile(path):
    return False
  with open(path, "rb") as f:
    return f.read(6) == b"\x93NUMPY"


@functools.lru_cache(maxsize=4)
def load_embeddings(path: str) -> np.ndarray:
  """The token embedding table [V, D] from a `.npy` file or a T5X checkpoint.

  From a checkpoint only `token_embedder/embedding` is read, not the whole model.
  """
  path = os.fspath(path)
  if path.endswith(".npy") or _is_npy(path):
    return load_npy(path)
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top

  tree = checkpoints.load_t5x_checkpoint(path, regex="token_embedder/embedding")
  return np.asarray(tree["token_embedder"]["embedding"])


_FACTORIES = {
    "random_uniform": random_uniform,
    "sampled_vocab": sampled_vocab,
    "class_labels": class_labels,
    "from_string": from_string,
    "from_array": from_array,
    "from_file": from_file,
}


def get_initializer(name: str, **kwargs) -> Initializer:
  """Builds an initialiser by name, e.g. `get_initializer('class_labels', embeddings=..., ...)`."""
  if name not in _FACTORIES:
    raise PromptInitError(
        f"Unknown prompt initialiser {name!r}; choose one of {sorted(_FACTORIES)}."
    )
  return _FACTORIES[name](**kwargs)


# ------------------------------------------------------------------------------------------------
# Modules.


class Prompt(nn.Module):
  """Owns the prompt parameter [length, embed_dim] (float32, whatever the activation dtype)."""

  length: int
  init: Initializer = random_uniform()

  @nn.compact
  def __call__(self, embed_dim: int) -> jax.Array:
    return self.param(
        "prompt",
        nn.with_logical_partitioning(self.init, PROMPT_AXES),
        (self.length, embed_dim),
        jnp.float32,
    )


class PromptModule(Protocol):
  """What the T5 encoder accepts as its prompt (`models/t5.py`, `Encoder.prompt_factory`).

  Called as `prompt(embedded_BxLxD, tokens_BxL)` with the embedded inputs and their token ids;
  returns the encoder's input [B, S, D] (S = P + L for a prompt of `length` P placed among the
  L tokens; a module that consumes a token, as the multi-task prompt does its task index, returns
  fewer). `valid_positions(tokens_BxL)` says which of those S positions are real [B, S]: the
  encoder masks with it, and so does the decoder's cross-attention. `exports(embed_dim)` returns arrays
  computed from the parameters to save beside them in the numpy checkpoint, by file name without
  `.npy` (e.g. a reparameterised prompt as the plain prompt it amounts to); most return `{}`.
  """

  length: int

  def __call__(self, embedded_BxLxD: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    ...

  def valid_positions(self, tokens_BxL: jax.Array) -> jax.Array:
    ...

  def exports(self, embed_dim: int) -> dict[str, jax.Array]:
    ...


class PromptFactory(Protocol):
  """The encoder's `prompt_factory`: `()` -> a fresh `PromptModule` (called in its setup)."""

  def __call__(self) -> PromptModule:
    ...


# The numpy checkpoint's file (without `.npy`) of a plain prompt, `encoder/prompt/prompt/prompt`:
# what `prompts/from_file.gin` and the prompt library read, and what variants export as.
PLAIN_PROMPT_EXPORT = "encoder.prompt.prompt.prompt"


def input_prompt_factory(
    length: int, init: Initializer = random_uniform(), placement: str = "prefix"
) -> PromptFactory:
  """What the encoder's `prompt_factory` takes: builds a fresh `InputPrompt` when called."""
  if length <= 0:
    raise PromptInitError(f"PROMPT_LENGTH must be positive; got {length}.")
  return functools.partial(InputPrompt, length, init, placement_lib.check(placement))


def prefix_prompt_factory(length: int, init: Initializer = random_uniform()) -> PromptFactory:
  """`input_prompt_factory` with the prompt prepended (the paper's setting)."""
  return input_prompt_factory(length, init, "prefix")


class InputPrompt(nn.Module):
  """Places one trained prompt among the embedded encoder inputs of every example.

  `placement` (see `placement.py`): "prefix" prepends it (the paper's setting), "after_first"
  puts it after the first token, "suffix" after each example's last real token. Called by the
  encoder as `prompt(embedded_BxLxD, tokens_BxL)`; returns [B, P + L, D].
  """

  length: int
  init: Initializer = random_uniform()
  placement: str = "prefix"

  def setup(self):
    self.prompt = Prompt(self.length, self.init)

  def __call__(self, embedded_BxLxD: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    batch, _, embed_dim = embedded_BxLxD.shape
    prompt_PxD = self.prompt(embed_dim)
    prompt_BxPxD = jnp.broadcast_to(prompt_PxD, (batch,) + prompt_PxD.shape)
    return placement_lib.insert(prompt_BxPxD, embedded_BxLxD, tokens_BxL, self.placement)

  def valid_positions(self, tokens_BxL: jax.Array) -> jax.Array:
    return placement_lib.valid_positions(tokens_BxL, self.length, self.placement)

  def exports(self, embed_dim: int) -> dict[str, jax.Array]:
    del embed_dim
    return {}  # The parameter itself is the plain prompt (`PLAIN_PROMPT_EXPORT`).


# The paper's and the original's name; `InputPrompt`'s default placement is the prefix.
PrefixPrompt = InputPrompt
