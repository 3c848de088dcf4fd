"""SeqIO data sources: TFDS by default, local JSONL files (checked in Python) as the alternative.

`super_glue_source(config, "jsonl", data_dir)` reads the official SuperGLUE files and yields
exactly the examples TFDS `super_glue/<config>:1.0.2` yields (see `super_glue_format.py`), so the
same preprocessors serve both. `CheckedFileDataSource` is the seqio source over any files read
and checked by a Python function; `register_text_task` (`text_tasks.py`) uses it too.
`LocalOrTfdsSource` reads local files when a directory is configured (a gin macro or an
environment variable, looked up when the data is read: `configured_dir`), TFDS otherwise.
"""

import functools
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import config
from prompt_tuning.data import files as files_lib
from prompt_tuning.data import super_glue_format

SUPER_GLUE_TFDS_VERSION = "1.0.2"
GLUE_TFDS_VERSION = "2.0.0"
FilesBySplit = Mapping[str, Sequence[str] | str]


def dataset_from_examples(
    examples: Sequence[Mapping[str, Any]], signature: Mapping[str, Any]
) -> tf.data.Dataset:
  """A tf.data pipeline over already-checked Python examples."""

  def cast(value, spec):
    if isinstance(value, Mapping):
      return {k: cast(value[k], spec[k]) for k in spec}
    if spec.dtype == tf.string:
      return np.array(value, dtype=object) if spec.shape.rank else value
    return np.array(value, dtype=spec.dtype.as_numpy_dtype)

  def generate():
    for example in examples:
      yield {k: cast(example[k], spec) for k, spec in signature.items()}

  return tf.data.Dataset.from_generator(generate, output_signature=dict(signature))


class CheckedFileDataSource(seqio.FunctionDataSource):
  """Files read and checked in Python by `read_fn(path, split) -> examples`.

  Paths may be local or anything `tf.io.gfile` opens (e.g. gs://), and glob patterns.
  `files_by_split` may also be a function returning that mapping, called at each read, with
  the split names given as `splits`: the files are then chosen (or generated) when the data is
  first read, not when the task is registered.
  """

  def __init__(
      self,
      files_by_split: FilesBySplit | Callable[[], FilesBySplit],
      read_fn: Callable[[str, str], list[dict[str, Any]]],
      signature: Mapping[str, Any],
      splits: Optional[Sequence[str]] = None,
  ):
    if callable(files_by_split):
      if not splits:
        raise ValueError("CheckedFileDataSource: a function as files_by_split needs `splits`.")
    else:
      splits = list(files_by_split)
    self._files_by_split = files_by_split
    self._read_fn = read_fn
    self._signature = signature
    self._num_examples = {}  # split -> count from the last read (mixing rates ask often).
    super().__init__(dataset_fn=self._dataset_fn, splits=list(splits))

  def files(self, split: str) -> list[str]:
    """The files of `split`, patterns expanded; DataNotFoundError if a pattern matches none."""
    by_split = self._files_by_split() if callable(self._files_by_split) else self._files_by_split
    patterns = by_split[split]
    return files_lib.expand_patterns(
        [patterns] if isinstance(patterns, str) else list(patterns), split
    )

  def read(self, split: str) -> list[dict[str, Any]]:
    examples = [ex for path in self.files(split) for ex in self._read_fn(path, split)]
    self._num_examples[split] = len(examples)
    return examples

  def _dataset_fn(
      self, split: str, shuffle_files: bool, seed: Optional[int] = None
  ) -> tf.data.Dataset:
    del shuffle_files, seed  # Files are read whole; seqio shuffles examples.
    return dataset_from_examples(self.read(split), self._signature)

  def num_input_examples(self, split: str) -> Optional[int]:
    if split not in self._num_examples:
      self.read(split)
    return self._num_examples[split]

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._files_by_split})"


def super_glue_source(
    config: str,
    source: str = "tfds",
    data_dir: Optional[str | Callable[[], str]] = None,
    splits: Optional[Sequence[str]] = None,
) -> seqio.DataSource:
  """The source of SuperGLUE `config` (a TFDS config name, e.g. "wsc.fixed").

  Args:
    config: TFDS `super_glue` config name.
    source: "tfds" (`super_glue/<config>:1.0.2`) or "jsonl" (official files).
    data_dir: for "jsonl", the folder holding `BoolQ/`, `CB/`, ..., or a function returning it,
      called when the data is read (it may write the files); for "tfds", an optional TFDS data
      directory.
    splits: a subset of the splits (default: all the config has).
  """
  if config in super_glue_format.DIAGNOSTIC_CONFIGS:
    all_splits = ["test"]
  else:
    all_splits = list(super_glue_format.SPLIT_FILES)
  splits = list(splits or all_splits)
  if source == "tfds":
    return seqio.TfdsDataSource(
        tfds_name=f"super_glue/{config}:{SUPER_GLUE_TFDS_VERSION}",
        tfds_data_dir=data_dir,
        splits=splits,
    )
  if source == "jsonl":
    if not data_dir:
      raise ValueError("source='jsonl' needs data_dir (the folder holding BoolQ/, CB/, ...).")
    read_fn = functools.partial(super_glue_format.read_super_glue_jsonl, config)
    signature = super_glue_format.super_glue_signature(config)
    if callable(data_dir):

      def files_by_split():
        paths = super_glue_format.super_glue_jsonl_files(config, data_dir())
        return {s: paths[s] for s in splits}

      return CheckedFileDataSource(files_by_split, read_fn, signature, splits)
    paths = super_glue_format.super_glue_jsonl_files(config, data_dir)
    return CheckedFileDataSource({s: paths[s] for s in splits}, read_fn, signature)
  raise ValueError(f"source must be 'tfds' or 'jsonl', got {source!r}.")


def glue_source(
    config: str, splits: Sequence[str], data_dir: Optional[str] = None
) -> seqio.DataSource:
  """TFDS `glue/<config>:2.0.0` with its splits listed (so no metadata is needed)."""
  return seqio.TfdsDataSource(
      tfds_name=f"glue/{config}:{GLUE_TFDS_VERSION}", tfds_data_dir=data_dir, splits=list(splits)
  )


def configured_dir(macro: str, env_var: str) -> Optional[str]:
  """The gin macro `macro` of the configuration parsed now, else `$env_var`, else None."""
  return config.macro(macro) or os.environ.get(env_var) or None


class LocalOrTfdsSource(seqio.FunctionDataSource):
  """Local files when `local_dir()` names a folder at read time, TFDS `tfds_name` otherwise.

  `local_files(dir)` maps each split to its file there; `read_fn(path, split)` reads and checks
  one (see `CheckedFileDataSource`) into examples of `signature`. `from_tfds`, if given, maps a
  TFDS example to that signature, so the preprocessors see the same fields from either source.
  """

  def __init__(
      self,
      tfds_name: str,
      splits: Sequence[str],
      local_dir: Callable[[], Optional[str]],
      local_files: Callable[[str], Mapping[str, str]],
      read_fn: Callable[[str, str], list[dict[str, Any]]],
      signature: Mapping[str, Any],
      from_tfds: Optional[Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]] = None,
  ):
    self._tfds = seqio.TfdsDataSource(tfds_name=tfds_name, splits=list(splits))
    self._local_dir = local_dir
    self._local_files = local_files
    self._read_fn = read_fn
    self._signature = signature
    self._from_tfds = from_tfds
    super().__init__(dataset_fn=self._dataset_fn, splits=list(splits))

  def _dataset_fn(
      self, split: str, shuffle_files: bool, seed: Optional[int] = None
  ) -> tf.data.Dataset:
    directory = self._local_dir()
    if directory:
      path = self._local_files(directory)[split]
      return dataset_from_examples(self._read_fn(path, split), self._signature)
    ds = self._tfds.get_dataset(split, shuffle=shuffle_files, seed=seed)
    return ds.map(self._from_tfds, num_parallel_calls=tf.data.AUTOTUNE) if self._from_tfds else ds

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._tfds.tfds_dataset.name}, local: {self._local_dir()})"
