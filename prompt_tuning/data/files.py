"""Reading and checking local JSONL/TSV files, before anything reaches tf.data.

Bad data (an unreadable file, invalid UTF-8 or JSON, a TSV row with the wrong number of
columns, a missing field, a wrong type, empty text, a label that is not one of the task's
labels) raises `DataError` naming the file, the line and the field; a label is never guessed.
A file that is not there raises `DataNotFoundError` (a `DataError`), which mixing rates treat
as "data not prepared yet".
"""

import csv
import dataclasses
import gzip
import io
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import tensorflow as tf


class DataError(ValueError):
  """Bad local data; the message names the file, line and field."""


class DataNotFoundError(DataError):
  """A local data file (or every match of a glob pattern) is missing."""


def _open_lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, decoded line) for each line of `path` (gunzipped if it ends in .gz)."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except (tf.errors.NotFoundError, FileNotFoundError) as e:
    raise DataNotFoundError(f"{path}: cannot read file: {e}") from e
  except (tf.errors.OpError, OSError) as e:
    raise DataError(f"{path}: cannot read file: {e}") from e
  if path.endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; truncated: EOFError.
      raise DataError(f"{path}: not a valid gzip file: {e}") from e
  for number, raw in enumerate(io.BytesIO(data), start=1):
    try:
      yield number, raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{number}: not valid UTF-8: {e}") from e


def read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed JSON) for each non-blank line of `path`."""
  for number, line in _open_lines(path):
    if not line.strip():
      continue
    try:
      yield number, json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{number}: invalid JSON: {e}") from e


def read_tsv(path: str) -> Iterator[tuple[int, dict[str, str]]]:
  """(line number, {column: value}) per row of a TSV file with a header line."""
  lines = [line for _, line in _open_lines(path)]
  reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
  header = reader.fieldnames or []
  for row in reader:
    if None in row or any(v is None for v in row.values()):
      raise DataError(
          f"{path}:{reader.line_num}: expected {len(header)} tab-separated "
          f"columns {header}, got a different number."
      )
    yield reader.line_num, row


def expand_patterns(patterns: Sequence[str], split: str) -> list[str]:
  """The files of `patterns` (paths or globs); DataNotFoundError if a glob matches none."""
  paths = []
  for pattern in patterns:
    matches = sorted(tf.io.gfile.glob(pattern)) if _is_glob(pattern) else [pattern]
    if not matches:
      raise DataNotFoundError(f"{pattern}: no file matches this pattern (split {split!r}).")
    paths.extend(matches)
  return paths


def _is_glob(pattern: str) -> bool:
  return any(ch in pattern for ch in "*?[")


@dataclasses.dataclass(frozen=True)
class Fields:
  """Checked access to one record; errors say `<file>:<line>: field '<name>'`."""

  path: str
  line: int
  record: Any
  prefix: str = ""

  def error(self, field: str, problem: str) -> DataError:
    return DataError(f"{self.path}:{self.line}: field '{self.prefix}{field}': {problem}")

  def has(self, field: str) -> bool:
    return isinstance(self.record, Mapping) and field in self.record

  def get(self, field: str) -> Any:
    if not isinstance(self.record, Mapping):
      raise DataError(
          f"{self.path}:{self.line}: expected a JSON object at "
          f"'{self.prefix or '<line>'}', got {type(self.record).__name__}."
      )
    if field not in self.record:
      raise self.error(field, "missing.")
    return self.record[field]

  def text(self, field: str) -> str:
    value = self.get(field)
    if not isinstance(value, str):
      raise self.error(field, f"expected a string, got {value!r}.")
    if not value.strip():
      raise self.error(field, "empty text.")
    return value

  def integer(self, field: str) -> int:
    value = self.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
      raise self.error(field, f"expected an integer, got {value!r}.")
    return value

  def child(self, field: str) -> "Fields":
    return Fields(self.path, self.line, self.get(field), f"{self.prefix}{field}.")

  def children(self, field: str) -> list["Fields"]:
    value = self.get(field)
    if not isinstance(value, list):
      raise self.error(field, f"expected a list, got {type(value).__name__}.")
    return [
        Fields(self.path, self.line, v, f"{self.prefix}{field}[{i}].") for i, v in enumerate(value)
    ]

  def label(
      self,
      field: str,
      label_names: Sequence[str],
      split: str,
      convert: Callable[[Any], Any] = lambda v: v,
  ) -> int:
    """Index of the label in `label_names`; -1 if absent in the test split."""
    if not self.has(field):
      if split == "test":
        return -1
      raise self.error(field, "missing (only the test split may be unlabelled).")
    value = self.record[field]
    name = convert(value)
    if not isinstance(name, str) or name not in label_names:
      raise self.error(field, f"label {value!r} is not one of {list(label_names)}.")
    return list(label_names).index(name)


def read_json(path: str) -> Any:
  """The one JSON document in `path` (SQuAD's files are one object, not JSONL)."""
  text = "".join(line for _, line in _open_lines(path))
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}.") from e
