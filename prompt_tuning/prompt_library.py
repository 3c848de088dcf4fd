"""One frozen model, many prompts: a prompt table and mixed-prompt batches (paper section 6).

Every example of a batch names its own prompt. The prompts live in one table [N, P, D] (N prompts
padded to the longest, P, with their true lengths) that is an input of the compiled call, so
adding or replacing a prompt never recompiles unless the table outgrows its bucket.

Layout. Each prompt keeps the placement it was trained with (`placement.py`): a single-prompt
model sees `[prompt, tokens]` (prefix), `[token_0, prompt, tokens_1..]` (after_first) or
`[tokens, prompt]` (suffix, after the last real token). Here each example is packed the same
way as its own prompt's model, contiguously, and padded at the end, e.g. a prefix example as
`[prompt_i (P_i), tokens (L), pad (P - P_i)]`, with the padding masked out: only where the
prompt starts differs per example (0, 1, or the number of real tokens). T5's relative attention
only sees distances between visible positions, and those are the single-prompt model's, so every
example's output equals what its prompt alone gives (up to float summation order), with nothing
leaking between examples, whatever placements share the batch.

Deep prompts (`deep_prompts.py`: key/value prefixes in every self-attention layer, no input
positions) are served alike: the library holds each stack's prefixes in a second table [N,
layers, 2, P', H, K] with their lengths, and every example attends to its own prompt's prefixes,
the padding past its length masked out (`t5.ExamplePrefixes`). An input prompt's examples get
none, a deep prompt's no input positions, so both kinds share a batch; without deep prompts
loaded the compiled call has no prefix tables at all.

`MixedPromptEncoderDecoder` has `t5.EncoderDecoder`'s parameter tree (plus `prompt_table`) and its
`encode`/`decode`/`__call__` signatures, so `model.EncoderDecoderModel` scores and decodes with it
unchanged. Its `encoder_input_tokens` are packed [B, 1 + L]: column 0 is the example's row in the
prompt table, the rest its tokens.

`PromptLibrary` loads named prompts (`.npy`, never unpickled; the placement from a sidecar
`<name>.json` beside it, as the training run's numpy export writes, or given when loading;
prefix without either; a deep prompt from the directory of its `deep_prompt.<stack>_prefixes.npy`)
and builds the tables;
`MixedPromptRunner` runs scoring, greedy generation, rank classification and ensembles with shapes
bucketed to powers of two, and counts its compilations.
"""

import collections
import dataclasses
import json
import os
import threading
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning import deep_prompts
from prompt_tuning import model as model_lib
from prompt_tuning import partitioning
from prompt_tuning.data import batches
from prompt_tuning import placement as placement_lib
from prompt_tuning import prompts
from prompt_tuning.models import t5

Array = jax.Array


class PromptLibraryError(ValueError):
  """A prompt file or request the library cannot use; the message names it."""


# ------------------------------------------------------------------------------------------------
# The model: T5 whose encoder takes each example's prompt from a table.


# A prompt's placement as stored in the table: its index in `placement.PLACEMENTS`.
PLACEMENT_CODES = {name: i for i, name in enumerate(placement_lib.PLACEMENTS)}
_PREFIX, _AFTER_FIRST, _SUFFIX = (PLACEMENT_CODES[p] for p in ("prefix", "after_first", "suffix"))


class PromptTable(nn.Module):
  """The table [N, P, D], lengths [N] and placement codes [N] as (frozen) parameters; given at
  apply time, any shape."""

  @nn.compact
  def __call__(self) -> tuple[Array, Array, Array]:
    # Read, not declared: `self.param` would fix the shape, and the table grows with the library.
    names = ("table", "lengths", "placements")
    arrays = [self.get_variable("params", n) for n in names]
    if any(a is None for a in arrays):
      raise PromptLibraryError(
          "No prompt table in the parameters: pass params['prompt_table'] = "
          "{'table': [N, P, D], 'lengths': [N], 'placements': [N]} (MixedPromptRunner does)."
      )
    return tuple(arrays)

  def prefixes(self, stack: str) -> Optional[tuple[Array, Array]]:
    """The deep prompts' table [N, layers, 2, P', H, K] of `stack` and lengths [N], or None when
    no loaded prompt has prefixes there."""
    kv = self.get_variable("params", f"{stack}_prefixes")
    return None if kv is None else (kv, self.get_variable("params", f"{stack}_prefix_lengths"))


def mixed_layout(packed_Bx1L: Array, lengths_N: Array, placements_N: Array, prompt_len: int):
  """Where each example's prompt and tokens go in the encoder sequence of length P + L.

  Returns (prompt ids [B], in_prompt [B, S], prompt row at each position [B, S], token ids at
  each position [B, S], valid [B, S]) with S = P + L. Example i's prompt starts at s_i (0 for a
  prefix, 1 after the first token, the number of real tokens for a suffix): position j is prompt
  row j - s_i if s_i <= j < s_i + P_i, token j if j < s_i, else token j - P_i; as `placement.py`
  lays out each placement.
  """
  ids_B = packed_Bx1L[:, 0]
  tokens_BxL = packed_Bx1L[:, 1:]
  length = tokens_BxL.shape[1]
  plen_Bx1 = lengths_N[ids_B][:, None]
  placement_Bx1 = placements_N[ids_B][:, None]
  start_Bx1 = jnp.where(
      placement_Bx1 == _SUFFIX,
      placement_lib.suffix_start_B(tokens_BxL)[:, None],
      jnp.where(placement_Bx1 == _AFTER_FIRST, 1, 0),
  )
  in_prompt, source = placement_lib.layout(start_Bx1, plen_Bx1, prompt_len + length)
  in_tokens = ~in_prompt & (source < length)
  tok_at = jnp.take_along_axis(tokens_BxL, jnp.clip(source, 0, length - 1), axis=1)
  tok_at = jnp.where(in_tokens, tok_at, 0)
  valid = in_prompt | (tok_at > 0)
  return ids_B, in_prompt, jnp.clip(source, 0, prompt_len - 1), tok_at, valid


class MixedPromptEncoder(nn.Module):
  """`t5.Encoder` (same parameter names) with a per-example prompt from the table."""

  config: t5.T5Config
  token_embedder: nn.Module
  prompt_table: nn.Module

  def setup(self):
    cfg = self.config
    self.relpos_bias = t5.RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        bidirectional=True,
        dtype=cfg.dtype,
    )
    self.layers = [t5.EncoderLayer(cfg, name=f"layers_{i}") for i in range(cfg.num_encoder_layers)]
    self.encoder_norm = t5.LayerNorm(cfg.layer_norm_epsilon, cfg.dtype)

  def valid_positions(self, packed_Bx1L: Array) -> Array:
    table, lengths, placements = self.prompt_table()
    return mixed_layout(packed_Bx1L, lengths, placements, table.shape[1])[-1]

  def __call__(
      self,
      packed_Bx1L: Array,
      enable_dropout: bool = False,
      prefix_kv: Optional[t5.ExamplePrefixes] = None,
  ) -> Array:
    """Packed [B, 1 + L] -> encoded [B, P + L, D]; masked positions are exactly 0. `prefix_kv`:
    each example's deep-prompt prefixes in every layer (None: no deep prompt is loaded)."""
    if enable_dropout:
      raise ValueError("MixedPromptEncoder serves a frozen model: enable_dropout must be False.")
    cfg = self.config
    table, lengths, placements = self.prompt_table()
    ids_B, in_prompt, row, tok_at, valid = mixed_layout(
        packed_Bx1L, lengths, placements, table.shape[1]
    )
    x_tok = self.token_embedder(tok_at)
    # As `InputPrompt`: the prompt is cast to the embeddings' dtype.
    x_prompt = jnp.take_along_axis(table[ids_B], row[..., None], axis=1).astype(x_tok.dtype)
    x = jnp.where(in_prompt[..., None], x_prompt, x_tok).astype(cfg.dtype)
    length = x.shape[1]
    bias = t5.mask_to_bias(t5.attention_mask(valid, valid), cfg.dtype) + self.relpos_bias(
        length, length
    )
    logit_mask = valid[..., None].astype(cfg.dtype)
    for i, layer in enumerate(self.layers):
      x = layer(x, bias, logit_mask, False, t5.layer_prefix(prefix_kv, i))
    return self.encoder_norm(x) * logit_mask


class MixedPromptEncoderDecoder(t5.EncoderDecoder):
  """`t5.EncoderDecoder` whose encoder inputs are packed [prompt id, tokens...] (see module doc).

  Same parameter tree plus `prompt_table`; `encode`, `decode` and `__call__` are inherited.
  """

  def setup(self):
    cfg = self.config
    self.token_embedder = t5.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype)
    self.prompt_table = PromptTable()
    self.encoder = MixedPromptEncoder(cfg, self.token_embedder, self.prompt_table)
    self.decoder = t5.Decoder(cfg, self.token_embedder)

  def _prefix_kv(self, stack: str, encoder_input_tokens: Array) -> Optional[t5.ExamplePrefixes]:
    """Each example's prompt's prefixes in `stack` (rows past a prompt's length masked)."""
    found = self.prompt_table.prefixes(stack)
    if found is None:
      return None
    kv_N, lengths_N = found
    ids_B = encoder_input_tokens[:, 0]
    kv = jnp.moveaxis(kv_N[ids_B], 1, 0)  # [layers, B, 2, P', H, K]
    valid_BxP = jnp.arange(kv.shape[3])[None, :] < lengths_N[ids_B][:, None]
    return t5.ExamplePrefixes(kv, valid_BxP)


# ------------------------------------------------------------------------------------------------
# The library of named prompts.


def next_power_of_two(n: int, minimum: int = 1) -> int:
  n = max(int(n), minimum)
  return 1 << (n - 1).bit_length()


def check_prompt(array: Any, width: int, source: str) -> np.ndarray:
  """A [length, width] finite float array, or a `PromptLibraryError` naming `source`."""
  array = np.asarray(array)
  if array.ndim == 5 or os.path.basename(source).startswith("deep_prompt."):
    raise PromptLibraryError(
        f"{source}: deep-prompt prefixes (shape {array.shape}) are not an input prompt: load "
        "the directory that holds them (the training run's numpy export, or what "
        "`python -m prompt_tuning.deep_prompts export` writes) as one prompt."
    )
  if array.ndim != 2:
    raise PromptLibraryError(
        f"{source}: a prompt must be 2-D [length, {width}]; got shape {array.shape}."
    )
  if array.shape[1] != width:
    raise PromptLibraryError(
        f"{source}: prompt width {array.shape[1]} does not match the model's embedding width "
        f"{width} (shape {array.shape})."
    )
  return _finite_floats(array, source)


def _finite_floats(array: np.ndarray, source: str) -> np.ndarray:
  """`array` (a prompt [P, D] or prefixes [layers, 2, P', H, K]) as float32, if it has positions
  and only finite floating-point values; else an error naming `source`."""
  if array.shape[-3 if array.ndim == 5 else 0] == 0:
    raise PromptLibraryError(f"{source}: the prompt has no positions (shape {array.shape}).")
  if not np.issubdtype(array.dtype, np.floating):
    raise PromptLibraryError(f"{source}: a prompt must be floating point; got {array.dtype}.")
  if not np.all(np.isfinite(array)):
    raise PromptLibraryError(f"{source}: the prompt holds NaN or infinite values.")
  return array.astype(np.float32)


def prefix_dims(config: t5.T5Config) -> dict[str, tuple[int, int, int]]:
  """(layers, heads, head_dim) of each stack's deep-prompt prefixes in a model of `config`."""
  return {
      stack: deep_prompts.prefix_shape(config, stack, 0)[:1] + (config.num_heads, config.head_dim)
      for stack in deep_prompts.STACKS
  }


def check_prefixes(array: Any, dims: tuple[int, int, int], stack: str, source: str) -> np.ndarray:
  """A stack's prefixes [layers, 2, P', H, K] that fit `dims`, or an error naming `source`."""
  array = np.asarray(array)
  layers, heads, head_dim = dims
  if array.ndim != 5 or array.shape[:2] != (layers, 2) or array.shape[3:] != (heads, head_dim):
    raise PromptLibraryError(
        f"{source}: the model's {stack} needs prefixes [{layers}, 2, length, {heads}, "
        f"{head_dim}] ([layers, keys/values, length, heads, head_dim]); got shape {array.shape}."
    )
  return _finite_floats(array, source)


def check_placement(placement: Any, source: str) -> str:
  if placement not in placement_lib.PLACEMENTS:
    raise PromptLibraryError(
        f"{source}: placement {placement!r} is not one of {list(placement_lib.PLACEMENTS)}."
    )
  return placement


def sidecar_path(path: str) -> str:
  """`<name>.json` beside `<name>.npy`: the prompt's metadata (the training export writes it)."""
  return os.path.splitext(os.fspath(path))[0] + ".json"


def read_placement(path: str) -> Optional[str]:
  """The placement recorded in `path`'s sidecar, or None without one; a bad sidecar is an error."""
  sidecar = sidecar_path(path)
  if not os.path.exists(sidecar):
    return None
  try:
    with open(sidecar) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise PromptLibraryError(f"{sidecar}: cannot read the prompt's sidecar: {e}") from None
  if not isinstance(meta, dict) or "placement" not in meta:
    raise PromptLibraryError(f'{sidecar}: expected a JSON object with "placement"; got {meta!r}.')
  return check_placement(meta["placement"], sidecar)


def read_npy(path: str) -> np.ndarray:
  """Reads a `.npy` without unpickling; every failure names the file."""
  try:
    return prompts.load_npy(path)
  except (OSError, ValueError) as e:  # Missing, pickled, truncated or not an .npy at all.
    raise PromptLibraryError(f"{path}: cannot load the prompt: {e}") from None


def load_prompt_file(path: str, width: int) -> np.ndarray:
  return check_prompt(read_npy(path), width, os.fspath(path))


def is_deep_prompt_directory(path: str) -> bool:
  """A directory holding a deep prompt's encoder prefixes (`deep_prompts.export_name`)."""
  return os.path.isfile(os.path.join(path, deep_prompts.export_name("encoder")))


class Snapshot(NamedTuple):
  """The library as of one moment (see `PromptLibrary.snapshot`)."""

  table: np.ndarray  # [N, P, D] float32
  lengths: np.ndarray  # [N] int32 (0: a deep prompt without input positions)
  rows: dict[str, int]  # name -> row
  placements: np.ndarray  # [N] int32, `PLACEMENT_CODES`
  # stack -> (prefixes [N, layers, 2, P', H, K] float32, lengths [N] int32); only the stacks
  # in which some loaded prompt has prefixes.
  prefixes: dict[str, tuple[np.ndarray, np.ndarray]]


def _round_up(n: int, multiple: int, minimum: int) -> int:
  return max(-(-n // multiple) * multiple, minimum)


class PromptLibrary:
  """Named prompts of one model, kept as bucketed tables: input prompts [N, P, D] plus lengths
  and placements (each prompt is served where it was trained to go: `placement.py`), and deep
  prompts' prefixes per stack [N, layers, 2, P', H, K] plus lengths.

  Thread-safe: prompts may be added, replaced or removed while a server runs. The tables' N is
  a power of two (at least `min_prompts`) so the compiled calls only change shape when the
  library outgrows a bucket. P is the longest input prompt, rounded up to a multiple of
  `prompt_length_multiple` (default 1: not rounded; at least `min_prompt_length`). Every
  example's encoder runs over P + L positions, so rounding costs work in every call (20 -> 24:
  5% of a 64-token input's encoder, benchmarks/serving.py), while P only changes, and the calls
  recompile, when a longer prompt is loaded. A server that will load prompts of many lengths in
  increasing order can round to bound its compilations. P' is rounded alike.

  Deep prompts need the model's layer shapes: build the library with `for_config` (a library
  of `width` alone refuses them).
  """

  def __init__(
      self,
      width: int,
      min_prompts: int = 1,
      min_prompt_length: int = 1,
      prompt_length_multiple: int = 1,
      prefix_dims: Optional[Mapping[str, tuple[int, int, int]]] = None,
  ):
    if prompt_length_multiple < 1:
      raise PromptLibraryError(
          f"prompt_length_multiple={prompt_length_multiple} must be at least 1 (1: no rounding)."
      )
    self.width = int(width)
    self.min_prompts = min_prompts
    self.min_prompt_length = min_prompt_length
    self.prompt_length_multiple = prompt_length_multiple
    self.prefix_dims = None if prefix_dims is None else dict(prefix_dims)
    self._prompts: dict[str, np.ndarray] = {}  # [P, D]; [0, D] for a deep prompt alone.
    self._placements: dict[str, str] = {}
    self._prefixes: dict[str, dict[str, np.ndarray]] = {}  # name -> stack -> prefixes.
    self._files: dict[str, tuple] = {}  # name -> (path, mtimes of its files).
    self._lock = threading.Lock()
    self._table = None

  @classmethod
  def for_config(cls, config: t5.T5Config, **kwargs) -> "PromptLibrary":
    """A library for a model of `config`: input prompts of its width and deep prompts."""
    return cls(config.emb_dim, prefix_dims=prefix_dims(config), **kwargs)

  def add(
      self,
      name: str,
      array: Any = None,
      source: Optional[str] = None,
      placement: str = "prefix",
      prefixes: Optional[Mapping[str, Any]] = None,
  ) -> None:
    """Adds or replaces prompt `name`: an input prompt `array` [P, D] placed as `placement`
    (`placement.PLACEMENTS`), deep-prompt `prefixes` {stack: [layers, 2, P', H, K]}, or both (a
    model trained with both)."""
    if not name or not isinstance(name, str):
      raise PromptLibraryError(f"A prompt name must be a non-empty string; got {name!r}.")
    source = source or f"prompt {name!r}"
    if array is None and not prefixes:
      raise PromptLibraryError(f"{source}: neither an input prompt nor deep-prompt prefixes.")
    if array is None:
      array = np.zeros((0, self.width), np.float32)
    else:
      array = check_prompt(array, self.width, source)
    placement = check_placement(placement, source)
    checked = {}
    for stack, value in (prefixes or {}).items():
      if stack not in deep_prompts.STACKS:
        raise PromptLibraryError(
            f"{source}: unknown stack {stack!r}; one of {deep_prompts.STACKS}."
        )
      checked[stack] = check_prefixes(value, self._prefix_dims(source)[stack], stack, source)
    with self._lock:
      self._prompts[name] = array
      self._placements[name] = placement
      self._prefixes[name] = checked
      self._table = None

  def load_file(
      self, path: str, name: Optional[str] = None, placement: Optional[str] = None
  ) -> str:
    """Adds (or replaces) the prompt in `path` under `name` (default: the file's stem).

    Its placement is `placement` or the one in its sidecar `<stem>.json` (both: they must
    agree); prefix without either. A directory is a deep prompt (`load_deep_prompt`).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
      return self.load_deep_prompt(path, name, placement)
    name = name or os.path.splitext(os.path.basename(path))[0]
    placement = self._placement(path, placement) or "prefix"
    stamp = self._stamp(path)
    self.add(name, load_prompt_file(path, self.width), source=path, placement=placement)
    with self._lock:
      self._files[name] = stamp
    return name

  def load_deep_prompt(
      self, directory: str, name: Optional[str] = None, placement: Optional[str] = None
  ) -> str:
    """Adds (or replaces) the deep prompt saved in `directory` under `name` (default: the
    directory's name): `deep_prompt.<stack>_prefixes.npy` per stack (what the training run's
    numpy export holds, or `python -m prompt_tuning.deep_prompts export` writes), and the input
    prompt `encoder.prompt.prompt.prompt.npy` if the model had one too (`placement` as in
    `load_file`)."""
    directory = os.fspath(directory).rstrip(os.sep) or os.sep
    if not is_deep_prompt_directory(directory):
      raise PromptLibraryError(
          f"{directory}: not a deep prompt: it has no {deep_prompts.export_name('encoder')}."
      )
    dims = self._prefix_dims(directory)
    name = name or os.path.basename(directory)
    stamp = self._stamp(directory)
    prefixes = {}
    for stack in deep_prompts.STACKS:
      path = os.path.join(directory, deep_prompts.export_name(stack))
      if os.path.exists(path):
        prefixes[stack] = check_prefixes(read_npy(path), dims[stack], stack, path)
    array = None
    prompt_path = os.path.join(directory, prompts.PLAIN_PROMPT_EXPORT + ".npy")
    if os.path.exists(prompt_path):
      array = load_prompt_file(prompt_path, self.width)
      placement = self._placement(prompt_path, placement)
    self.add(name, array, directory, placement or "prefix", prefixes)
    with self._lock:
      self._files[name] = stamp
    return name

  def _prefix_dims(self, source: str) -> dict[str, tuple[int, int, int]]:
    if self.prefix_dims is None:
      raise PromptLibraryError(
          f"{source}: this library holds input prompts only; build it with "
          "`PromptLibrary.for_config(config)` to serve deep prompts."
      )
    return self.prefix_dims

  @staticmethod
  def _placement(path: str, asked: Optional[str]) -> Optional[str]:
    """`asked` or the placement in `path`'s sidecar (both: they must agree); None: neither."""
    recorded = read_placement(path)
    if asked is not None and recorded is not None and asked != recorded:
      raise PromptLibraryError(
          f"{path}: placement {asked!r} was asked for, but its sidecar "
          f"{sidecar_path(path)} records {recorded!r} (the placement it was trained with)."
      )
    return asked or recorded

  @staticmethod
  def _stamp(path: str) -> tuple:
    """Changes when the file or its sidecar does, or for a directory any file in it (what
    `load_directory` reloads on)."""
    mtime = lambda p: os.path.getmtime(p) if os.path.exists(p) else 0.0
    if os.path.isdir(path):
      entries = sorted(os.listdir(path))
      return (path,) + tuple((e, mtime(os.path.join(path, e))) for e in entries)
    return (path, mtime(path), mtime(sidecar_path(path)))

  def load_directory(self, directory: str) -> tuple[list[str], dict[str, str]]:
    """Loads every `*.npy` in `directory`, and every subdirectory holding a deep prompt, that
    is new or changed since it was last loaded.

    Returns (names loaded, {path: error} for what could not be used); the good ones are
    loaded whatever the bad ones hold.
    """
    if not os.path.isdir(directory):
      raise PromptLibraryError(f"Prompt directory not found: {directory}")
    loaded, errors = [], {}
    for entry in sorted(os.listdir(directory)):
      path = os.path.join(directory, entry)
      if entry.endswith(".npy"):
        name = os.path.splitext(entry)[0]
      elif is_deep_prompt_directory(path):
        name = entry
      else:
        continue
      if self._files.get(name) == self._stamp(path):
        continue
      try:
        loaded.append(self.load_file(path, name))
      except PromptLibraryError as e:
        errors[path] = str(e)
    return loaded, errors

  def remove(self, name: str) -> None:
    with self._lock:
      self._check_name(name)
      for held in (self._prompts, self._placements, self._prefixes):
        del held[name]
      self._files.pop(name, None)
      self._table = None

  def _check_name(self, name: str) -> None:
    if name not in self._prompts:
      raise PromptLibraryError(
          f"Unknown prompt {name!r}; loaded prompts: {sorted(self._prompts) or 'none'}."
      )

  @property
  def names(self) -> list[str]:
    with self._lock:
      return sorted(self._prompts)

  def lengths(self) -> dict[str, int]:
    """Input positions of each prompt (0: a deep prompt without an input prompt)."""
    with self._lock:
      return {k: int(v.shape[0]) for k, v in sorted(self._prompts.items())}

  def prefix_lengths(self) -> dict[str, dict[str, int]]:
    """{name: {stack: P'}} of the deep prompts."""
    with self._lock:
      return {
          k: {stack: int(a.shape[2]) for stack, a in v.items()}
          for k, v in sorted(self._prefixes.items())
          if v
      }

  def placements(self) -> dict[str, str]:
    with self._lock:
      return dict(sorted(self._placements.items()))

  def __len__(self) -> int:
    return len(self._prompts)

  def __contains__(self, name: str) -> bool:
    return name in self._prompts

  def snapshot(self) -> Snapshot:
    """The tables as of now (`Snapshot`); rows past the prompts (bucket padding) are prefix
    input prompts of length 1 and zeros, without prefixes."""
    with self._lock:
      if self._table is None:
        if not self._prompts:
          raise PromptLibraryError("The prompt library is empty: load a prompt first.")
        names = sorted(self._prompts)
        rows = next_power_of_two(len(names), self.min_prompts)
        multiple = self.prompt_length_multiple
        max_len = max(p.shape[0] for p in self._prompts.values())
        plen = _round_up(max_len, multiple, self.min_prompt_length)
        table = np.zeros((rows, plen, self.width), np.float32)
        lengths = np.ones((rows,), np.int32)
        placements = np.full((rows,), _PREFIX, np.int32)
        for i, name in enumerate(names):
          p = self._prompts[name]
          table[i, : p.shape[0]] = p
          lengths[i] = p.shape[0]
          placements[i] = PLACEMENT_CODES[self._placements[name]]
        prefixes = {}
        for stack in deep_prompts.STACKS:
          held = {n: v[stack] for n, v in self._prefixes.items() if stack in v}
          if not held:
            continue
          prefix_len = _round_up(max(a.shape[2] for a in held.values()), multiple, 1)
          layers, heads, head_dim = self.prefix_dims[stack]
          kv = np.zeros((rows, layers, 2, prefix_len, heads, head_dim), np.float32)
          kv_lengths = np.zeros((rows,), np.int32)
          for i, name in enumerate(names):
            if name in held:
              kv[i, :, :, : held[name].shape[2]] = held[name]
              kv_lengths[i] = held[name].shape[2]
          prefixes[stack] = (kv, kv_lengths)
        rows_of = {n: i for i, n in enumerate(names)}
        self._table = Snapshot(table, lengths, rows_of, placements, prefixes)
      return self._table


# ------------------------------------------------------------------------------------------------
# Running mixed batches.


def frozen_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The frozen model's parameters without any single prompt (`encoder/prompt`, `deep_prompt`)."""
  params = dict(params)
  params["encoder"] = {k: v for k, v in params["encoder"].items() if k != "prompt"}
  params.pop("prompt_table", None)
  params.pop("deep_prompt", None)
  return params


def trim_decode(tokens: Sequence[int], eos_id: int) -> list[int]:
  """Tokens up to and including the first EOS, without trailing padding."""
  out = []
  for t in tokens:
    t = int(t)
    if t == 0:
      break
    out.append(t)
    if t == eos_id:
      break
  return out


@dataclasses.dataclass
class Example:
  """One request row: a prompt name and encoder token ids (and, to score, target ids)."""

  prompt: str
  inputs: Sequence[int]
  targets: Sequence[int] = ()


class MixedPromptRunner:
  """Scores and greedily decodes batches whose examples name their prompts, in one call each.

  Shapes are bucketed: batch size, input length, target length and decode length to powers of
  two (inputs at least `min_input_length`), the table as `PromptLibrary` does. `compilations`
  counts the traces of each compiled function (one per new bucket, never one per prompt mix).
  """

  def __init__(
      self,
      config: t5.T5Config,
      params: Mapping[str, Any],
      library: PromptLibrary,
      max_input_length: int = 512,
      max_target_length: int = 128,
      min_input_length: int = 8,
      eos_id: int = 1,
  ):
    if library.width != config.emb_dim:
      raise PromptLibraryError(
          f"The library's prompt width {library.width} is not the model's emb_dim "
          f"{config.emb_dim}."
      )
    if library.prefix_dims is not None and library.prefix_dims != prefix_dims(config):
      raise PromptLibraryError(
          f"The library's deep-prompt shapes {library.prefix_dims} are not the model's "
          f"{prefix_dims(config)} ((layers, heads, head_dim) per stack)."
      )
    self.config = config
    # On the device once: handing host arrays to the compiled call copies them at every call.
    self.params = jax.device_put(frozen_params(params))
    self.library = library
    self.max_input_length = max_input_length
    self.max_target_length = max_target_length
    self.min_input_length = min_input_length
    self.eos_id = eos_id
    self.model = model_lib.EncoderDecoderModel(
        MixedPromptEncoderDecoder(config), decode_fn=decoding.greedy, eos_id=eos_id
    )
    self.compilations = collections.Counter()
    self._table_lock = threading.Lock()
    self._device_table = None
    self._score = partitioning.jit(self._counted("score", self.model.score_batch))
    self._predict = partitioning.jit(self._counted("predict", self.model.predict_batch))

  def _counted(self, name, fn):
    def traced(*args):
      self.compilations[name] += 1  # Runs once per trace, i.e. per compiled shape.
      return fn(*args)

    return traced

  def _with_table(self):
    snapshot = self.library.snapshot()
    with self._table_lock:  # The table goes to the device once per version of the library.
      if self._device_table is None or self._device_table[0] is not snapshot:
        arrays = {k: getattr(snapshot, k) for k in ("table", "lengths", "placements")}
        for stack, (kv, lengths) in snapshot.prefixes.items():
          arrays[f"{stack}_prefixes"], arrays[f"{stack}_prefix_lengths"] = kv, lengths
        self._device_table = (snapshot, jax.device_put(arrays))
      device_table = self._device_table[1]
    return dict(self.params, prompt_table=device_table), snapshot.rows

  def check(self, example: Example, need_targets: bool = False) -> None:
    """Raises `PromptLibraryError` for a request that cannot be run (naming the problem)."""
    if example.prompt not in self.library:
      raise PromptLibraryError(
          f"Unknown prompt {example.prompt!r}; loaded prompts: {self.library.names or 'none'}."
      )
    n = len(example.inputs)
    if n == 0:
      raise PromptLibraryError("Empty input: nothing to encode.")
    if n > self.max_input_length:
      raise PromptLibraryError(
          f"Input has {n} tokens, more than max_input_length={self.max_input_length}."
      )
    ids = np.asarray(example.inputs)
    if (
        not np.issubdtype(ids.dtype, np.integer)
        or ids.min() < 1
        or ids.max() >= self.config.vocab_size
    ):
      raise PromptLibraryError(
          f"Input token ids must be integers in [1, {self.config.vocab_size}); got {list(ids)[:8]}."
      )
    if need_targets:
      t = np.asarray(example.targets)
      if t.size == 0:
        raise PromptLibraryError("Empty target: nothing to score.")
      if t.size > self.max_target_length:
        raise PromptLibraryError(
            f"Target has {t.size} tokens, more than max_target_length={self.max_target_length}."
        )
      if not np.issubdtype(t.dtype, np.integer) or t.min() < 1 or t.max() >= self.config.vocab_size:
        raise PromptLibraryError(
            f"Target token ids must be integers in [1, {self.config.vocab_size})."
        )

  def _encoder_inputs(self, examples: Sequence[Example], rows: Mapping[str, int], batch: int):
    length = next_power_of_two(max(len(e.inputs) for e in examples), self.min_input_length)
    packed = np.zeros((batch, 1 + length), np.int32)
    packed[: len(examples)] = batches.pad_rows(
        [[rows[e.prompt]] + list(e.inputs) for e in examples], 1 + length
    )
    return packed

  def score(self, examples: Sequence[Example]) -> np.ndarray:
    """Log-likelihood of each example's targets given its prompt and inputs [len(examples)]."""
    for e in examples:
      self.check(e, need_targets=True)
    params, rows = self._with_table()
    batch = next_power_of_two(len(examples))
    # Powers of two from 1: class labels are a few tokens, and the decoder's cost (its logits
    # over the vocabulary) grows with every padded position.
    tlen = next_power_of_two(max(len(e.targets) for e in examples))
    targets = np.zeros((batch, tlen), np.int32)
    targets[: len(examples)] = batches.pad_rows([e.targets for e in examples], tlen)
    data = {
        "encoder_input_tokens": self._encoder_inputs(examples, rows, batch),
        "decoder_input_tokens": batches.shift_right(targets),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }
    return np.asarray(self._score(params, data))[: len(examples)]

  def generate(self, examples: Sequence[Example], max_decode_length: int) -> list[list[int]]:
    """Greedy decodes, each cut after its first EOS (or at `max_decode_length` tokens)."""
    if not 1 <= max_decode_length <= self.max_target_length:
      raise PromptLibraryError(
          f"max_decode_length={max_decode_length} must be in [1, {self.max_target_length}]."
      )
    for e in examples:
      self.check(e)
    params, rows = self._with_table()
    batch = next_power_of_two(len(examples))
    # Powers of two from 1, as targets: the decoding loop runs over the whole width when no
    # row stops early, so 4 wanted tokens padded to 8 would cost twice the decoder steps.
    dlen = next_power_of_two(max_decode_length)
    data = {
        "encoder_input_tokens": self._encoder_inputs(examples, rows, batch),
        "decoder_input_tokens": np.zeros((batch, dlen), np.int32),
    }
    decodes = np.asarray(self._predict(params, data))[: len(examples)]
    return [trim_decode(d[:max_decode_length], self.eos_id) for d in decodes]
