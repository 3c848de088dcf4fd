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

`MixedPromptEncoderDecoder` has `t5.EncoderDecoder`'s parameter tree (plus `prompt_table`) and its
`encode`/`decode`/`__call__` signatures, so `model.EncoderDecoderModel` scores and decodes with it
unchanged. Its `encoder_input_tokens` are packed [B, 1 + L]: column 0 is the example's row in the
prompt table, the rest its tokens.

`PromptLibrary` loads named prompts (`.npy`, never unpickled; the placement from a sidecar
`<name>.json` beside it, as the training run's numpy export writes, or given when loading;
prefix without either) and builds the table;
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

  def __call__(self, packed_Bx1L: Array, enable_dropout: bool = False) -> Array:
    """Packed [B, 1 + L] -> encoded [B, P + L, D]; masked positions are exactly 0."""
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
    for layer in self.layers:
      x = layer(x, bias, logit_mask)
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
        f"{source}: a deep prompt (per-layer key/value prefixes, shape {array.shape}) is not "
        "served: the library holds input prompts [length, width] only. Evaluate it with "
        "`python -m prompt_tuning.eval --gin_file=runs/prompt_eval.gin "
        "--gin_file=prompts/deep_prompt_from_export.gin --gin.DEEP_PROMPT_DIR=...` "
        "(docs/prompt_variants.md#deep-prompts)."
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
  if array.shape[0] == 0:
    raise PromptLibraryError(f"{source}: the prompt has no positions (shape {array.shape}).")
  if not np.issubdtype(array.dtype, np.floating):
    raise PromptLibraryError(f"{source}: a prompt must be floating point; got {array.dtype}.")
  if not np.all(np.isfinite(array)):
    raise PromptLibraryError(f"{source}: the prompt holds NaN or infinite values.")
  return array.astype(np.float32)


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


def load_prompt_file(path: str, width: int) -> np.ndarray:
  """Reads a `.npy` prompt without unpickling; every failure names the file."""
  try:
    array = prompts.load_npy(path)
  except (OSError, ValueError) as e:  # Missing, pickled, truncated or not an .npy at all.
    raise PromptLibraryError(f"{path}: cannot load the prompt: {e}") from None
  return check_prompt(array, width, os.fspath(path))


class Snapshot(NamedTuple):
  """The library as of one moment (see `PromptLibrary.snapshot`)."""

  table: np.ndarray  # [N, P, D] float32
  lengths: np.ndarray  # [N] int32
  rows: dict[str, int]  # name -> row
  placements: np.ndarray  # [N] int32, `PLACEMENT_CODES`


class PromptLibrary:
  """Named prompts of one embedding width, kept as a bucketed table [N, P, D] plus lengths and
  placements (each prompt is served where it was trained to go: `placement.py`).

  Thread-safe: prompts may be added, replaced or removed while a server runs. The table's N is
  a power of two (at least `min_prompts`) so the compiled calls only change shape when the
  library outgrows a bucket. Its P is the longest prompt rounded up to a multiple of
  `prompt_length_multiple` (at least `min_prompt_length`): every example's encoder runs over P +
  L positions, so a power of two would cost up to 2x the prompt's positions (20 -> 32: 14% of a
  64-token input's encoder work, benchmarks/serving.py), while P only changes when a longer
  prompt is loaded, not per batch.
  """

  def __init__(
      self,
      width: int,
      min_prompts: int = 1,
      min_prompt_length: int = 1,
      prompt_length_multiple: int = 8,
  ):
    self.width = int(width)
    self.min_prompts = min_prompts
    self.min_prompt_length = min_prompt_length
    self.prompt_length_multiple = prompt_length_multiple
    self._prompts: dict[str, np.ndarray] = {}
    self._placements: dict[str, str] = {}
    self._files: dict[str, tuple] = {}  # name -> (path, mtimes of it and its sidecar).
    self._lock = threading.Lock()
    self._table = None

  def add(
      self, name: str, array: Any, source: Optional[str] = None, placement: str = "prefix"
  ) -> None:
    """Adds or replaces prompt `name`, placed as `placement` (`placement.PLACEMENTS`)."""
    if not name or not isinstance(name, str):
      raise PromptLibraryError(f"A prompt name must be a non-empty string; got {name!r}.")
    source = source or f"prompt {name!r}"
    array = check_prompt(array, self.width, source)
    placement = check_placement(placement, source)
    with self._lock:
      self._prompts[name] = array
      self._placements[name] = placement
      self._table = None

  def load_file(
      self, path: str, name: Optional[str] = None, placement: Optional[str] = None
  ) -> str:
    """Adds (or replaces) the prompt in `path` under `name` (default: the file's stem).

    Its placement is `placement` or the one in its sidecar `<stem>.json` (both: they must
    agree); prefix without either.
    """
    path = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    recorded = read_placement(path)
    if placement is not None and recorded is not None and placement != recorded:
      raise PromptLibraryError(
          f"{path}: placement {placement!r} was asked for, but its sidecar "
          f"{sidecar_path(path)} records {recorded!r} (the placement it was trained with)."
      )
    placement = placement or recorded or "prefix"
    stamp = self._stamp(path)
    self.add(name, load_prompt_file(path, self.width), source=path, placement=placement)
    with self._lock:
      self._files[name] = stamp
    return name

  @staticmethod
  def _stamp(path: str) -> tuple:
    """Changes when the file or its sidecar does (what `load_directory` reloads on)."""
    mtime = lambda p: os.path.getmtime(p) if os.path.exists(p) else 0.0
    return (path, mtime(path), mtime(sidecar_path(path)))

  def load_directory(self, directory: str) -> tuple[list[str], dict[str, str]]:
    """Loads every `*.npy` in `directory` that is new or changed since it was last loaded.

    Returns (names loaded, {file: error} for files that could not be used); the good files are
    loaded whatever the bad ones hold.
    """
    if not os.path.isdir(directory):
      raise PromptLibraryError(f"Prompt directory not found: {directory}")
    loaded, errors = [], {}
    for entry in sorted(os.listdir(directory)):
      if not entry.endswith(".npy"):
        continue
      path = os.path.join(directory, entry)
      name = os.path.splitext(entry)[0]
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
      del self._prompts[name]
      del self._placements[name]
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
    with self._lock:
      return {k: int(v.shape[0]) for k, v in sorted(self._prompts.items())}

  def placements(self) -> dict[str, str]:
    with self._lock:
      return dict(sorted(self._placements.items()))

  def __len__(self) -> int:
    return len(self._prompts)

  def __contains__(self, name: str) -> bool:
    return name in self._prompts

  def snapshot(self) -> Snapshot:
    """(table [N, P, D] float32, lengths [N] int32, {name: row}, placement codes [N] int32) as
    of now; rows past the prompts (bucket padding) are prefixes of length 1 and zeros."""
    with self._lock:
      if self._table is None:
        if not self._prompts:
          raise PromptLibraryError("The prompt library is empty: load a prompt first.")
        names = sorted(self._prompts)
        rows = next_power_of_two(len(names), self.min_prompts)
        max_len = max(p.shape[0] for p in self._prompts.values())
        multiple = self.prompt_length_multiple
        plen = max(-(-max_len // multiple) * multiple, self.min_prompt_length)
        table = np.zeros((rows, plen, self.width), np.float32)
        lengths = np.ones((rows,), np.int32)
        placements = np.full((rows,), _PREFIX, np.int32)
        for i, name in enumerate(names):
          p = self._prompts[name]
          table[i, : p.shape[0]] = p
          lengths[i] = p.shape[0]
          placements[i] = PLACEMENT_CODES[self._placements[name]]
        self._table = Snapshot(table, lengths, {n: i for i, n in enumerate(names)}, placements)
      return self._table


# ------------------------------------------------------------------------------------------------
# Running mixed batches.


def frozen_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The frozen model's parameters without any single prompt (`encoder/prompt`)."""
  params = dict(params)
  params["encoder"] = {k: v for k, v in params["encoder"].items() if k != "prompt"}
  params.pop("prompt_table", None)
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
  two (inputs and targets at least `min_length`), the table as `PromptLibrary` does. `compilations` counts the
  traces of each compiled function (one per new bucket, never one per prompt mix).
  """

  def __init__(
      self,
      config: t5.T5Config,
      params: Mapping[str, Any],
      library: PromptLibrary,
      max_input_length: int = 512,
      max_target_length: int = 128,
      min_length: int = 8,
      eos_id: int = 1,
  ):
    if library.width != config.emb_dim:
      raise PromptLibraryError(
          f"The library's prompt width {library.width} is not the model's emb_dim "
          f"{config.emb_dim}."
      )
    self.config = config
    # On the device once: handing host arrays to the compiled call copies them at every call.
    self.params = jax.device_put(frozen_params(params))
    self.library = library
    self.max_input_length = max_input_length
    self.max_target_length = max_target_length
    self.min_length = min_length
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
    length = next_power_of_two(max(len(e.inputs) for e in examples), self.min_length)
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
    tlen = next_power_of_two(max(len(e.targets) for e in examples), self.min_length)
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
    # Powers of two from 1, not `min_length`: the decoding loop runs over the whole width when no
    # row stops early, so 4 wanted tokens padded to 8 would cost twice the decoder steps.
    dlen = next_power_of_two(max_decode_length)
    data = {
        "encoder_input_tokens": self._encoder_inputs(examples, rows, batch),
        "decoder_input_tokens": np.zeros((batch, dlen), np.int32),
    }
    decodes = np.asarray(self._predict(params, data))[: len(examples)]
    return [trim_decode(d[:max_decode_length], self.eos_id) for d in decodes]
