"""Where the T5 SentencePiece vocabulary comes from.

Resolution order, checked every time the vocabulary is used (not at import):
  1. `set_default_vocab_path(path)`, if called;
  2. the gin macro `VOCAB_PATH` of the configuration parsed now (e.g. `@embedded.vocab_path()`),
     so a run configured by gin uses its vocabulary whether it starts from the command line or
     from Python;
  3. the `PROMPT_TUNING_VOCAB` environment variable;
  4. T5's public vocabulary, `gs://t5-data/vocabs/cc_all.32000/sentencepiece.model`.

Tasks hold a `DeferredVocabulary`, so importing `prompt_tuning.tasks` never opens a
file or touches the network, and the path may be set after the tasks are imported.
"""

import functools
import os
from typing import Any, Iterable, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning import config

DEFAULT_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100
VOCAB_ENV_VAR = "PROMPT_TUNING_VOCAB"

_vocab_path_override: Optional[str] = None


def set_default_vocab_path(path: Optional[os.PathLike | str]) -> None:
  """Sets the SentencePiece model used by every task; None restores the default."""
  global _vocab_path_override
  _vocab_path_override = None if path is None else os.fspath(path)


def get_vocab_path() -> str:
  """The SentencePiece model path in effect now."""
  return (
      _vocab_path_override
      or config.macro("VOCAB_PATH", evaluate=True)
      or os.environ.get(VOCAB_ENV_VAR)
      or DEFAULT_VOCAB_PATH
  )


@functools.lru_cache(maxsize=8)
def _sentencepiece_vocabulary(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  # One object per (path, extra_ids): seqio loads the model on first use and keeps it.
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def get_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """The T5 vocabulary at `get_vocab_path()` (the model file is read lazily)."""
  return _sentencepiece_vocabulary(get_vocab_path(), extra_ids)


class DeferredVocabulary(seqio.Vocabulary):
  """A vocabulary that resolves `get_vocabulary()` each time it is used."""

  def __init__(self, extra_ids: int = DEFAULT_EXTRA_IDS):
    super().__init__(extra_ids=extra_ids)

  def resolve(self) -> seqio.SentencePieceVocabulary:
    return get_vocabulary(self.extra_ids)

  @property
  def eos_id(self) -> Optional[int]:
    return self.resolve().eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self.resolve().unk_id

  @property
  def pad_id(self) -> int:
    return self.resolve().pad_id

  @property
  def bos_id(self) -> Optional[int]:
    return self.resolve().bos_id

  @property
  def vocab_size(self) -> int:
    return self.resolve().vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.resolve()._base_vocab_size  # pylint: disable=protected-access

  def _encode(self, s: str) -> Sequence[int]:
    return self.resolve().encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    return self.resolve().decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.resolve().encode_tf(s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self.resolve().decode_tf(ids)

  def encode(self, s: str) -> Sequence[int]:
    return self.resolve().encode(s)

  def decode(self, ids: Iterable[int]) -> str:
    return self.resolve().decode(ids)

  def encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.resolve().encode_tf(s)

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self.resolve().decode_tf(ids)

  def __getattr__(self, name: str) -> Any:
    # Reached only for names not defined here (e.g. `sp_model`, `tokenizer`). Private
    # names are refused so copy/pickle never recurse before `__init__` has run.
    if name.startswith("_"):
      raise AttributeError(name)
    return getattr(self.resolve(), name)

  def __eq__(self, other: Any) -> bool:
    if isinstance(other, DeferredVocabulary):
      return self.extra_ids == other.extra_ids
    return self.resolve() == other

  def __hash__(self) -> int:
    return hash((DeferredVocabulary, self.extra_ids))

  def __str__(self) -> str:
    return f"DeferredVocabulary(path={get_vocab_path()!r}, extra_ids={self.extra_ids})"


def get_output_features(extra_ids: int = DEFAULT_EXTRA_IDS) -> dict[str, seqio.Feature]:
  """T5's `inputs`/`targets` features: both tokenised with the T5 vocab, both + EOS."""
  vocabulary = DeferredVocabulary(extra_ids)
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
