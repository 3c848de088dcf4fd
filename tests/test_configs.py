"""Every gin file under configs/ parses in a valid combination; model files build the right model.

Models are built abstractly (`jax.eval_shape` of the initial variables): no weight is allocated
and no checkpoint is read (the embedded size resolves its checkpoint path only when a run asks).
"""

import functools
import json
import math
import os
import re
from typing import Optional, Sequence

import gin
import pytest

from test_sizes import LM100K, TABLE_4, abstract_params, original_tiny_tree, t5x_listing
from prompt_tuning import config
from prompt_tuning import embedded

CONFIGS = config.CONFIGS_DIR
ALL_FILES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.gin"))
GENERIC_MODELS = ("models/t5_1_1.gin", "models/t5_1_1_prompt.gin")
NAMED_MODELS = [
    f for f in ALL_FILES if re.fullmatch(r"models/t5_1_1_\w+\.gin", f) and f not in GENERIC_MODELS
]
PROMPT_PATH = "encoder/prompt/prompt/prompt"


def _text(rel: str) -> str:
  return (CONFIGS / rel).read_text()


def _includes(rel: str) -> list[str]:
  """`rel` and the files it includes, recursively."""
  found = [rel]
  for inc in re.findall(r"^include '([^']+)'", _text(rel), re.M):
    found += _includes(inc)
  return found


def combination(rel: str) -> list[str]:
  """The files to parse, in order, for `rel` to be complete enough to use."""
  if rel.startswith(("architectures/", "models/t5_1_1", "ablations/")):
    return [rel]
  if rel.startswith("models/sizes/"):
    return ["models/t5_1_1_prompt.gin", rel]
  if rel.startswith("models/released_"):  # Follows a size file's MODEL_SIZE.
    return ["models/t5_1_1_prompt.gin", "models/sizes/base.gin", rel]
  if rel.startswith("tasks/"):
    return ["runs/embedded_base.gin", rel]
  if rel.startswith(("models/decoding/", "prompts/")):
    return ["models/t5_1_1_prompt.gin", "models/sizes/tiny.gin", rel]
  if rel.startswith("runs/"):
    needs_model = any(re.search(r"%MODEL\b", _text(f)) for f in _includes(rel))
    has_model = any(f.startswith("models/") for f in _includes(rel))
    return ["models/t5_1_1_base_prompt.gin", rel] if needs_model and not has_model else [rel]
  raise AssertionError(f"configs/{rel}: no combination known; add its folder to combination().")


def _documented_macros(rel: str) -> set[str]:
  """Macro-like names in the leading comments of `rel`, its includes and its includers: the
  macros a user is told to set on the command line."""
  related = set(_includes(rel)) | {f for f in ALL_FILES if rel in _includes(f)}
  names = set()
  for f in related:
    header = re.match(r"(?:#.*\n)*", _text(f)).group(0)
    names |= set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", header))
  return names


def _parse(files: Sequence[str], bindings: Sequence[str] = ()):
  gin.clear_config()
  config.parse_gin(files, list(bindings))


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.mark.parametrize("rel", ALL_FILES)
def test_every_file_parses_with_its_macros_defined_or_documented(rel):
  files = combination(rel)
  _parse(files)
  used = {
      m
      for f in files
      for inc in _includes(f)
      for m in re.findall(r"%([A-Z_][A-Z0-9_]*)", _text(inc))
  }
  undefined = set()
  for name in used:
    try:
      gin.query_parameter(f"%{name}")
    except ValueError:
      undefined.add(name)
  assert not undefined - _documented_macros(
      rel
  ), f"configs/{rel} (parsed as {files}) uses macros that nothing defines or documents"


# The original's file names (docs/coming_from_t5x.md) and what each one selects.
ALIASES = {
    "nucleus_sampling": "temperature_sample",
    "from_class_labels": "class_labels",
    "from_class_labels_numpy": "class_labels",
    "from_sampled_vocab": "sampled_vocab",
    "from_sampled_vocab_numpy": "sampled_vocab",
    "spot": "from_file",
    "spot_embedded_boolq": "from_file",
}
# Prompt files that replace the prompt module (docs/prompt_variants.md), not its initialiser.
PROMPT_STRUCTURES = {
    "prompts/residual_reparam.gin": "reparam_prompt_factory",
    "prompts/multitask.gin": "multitask_prompt_factory",
    "prompts/multitask_target.gin": "multitask_prompt_factory",
}


def _selects(rel: str) -> str:
  name = rel.split("/")[-1].removesuffix(".gin")
  return ALIASES.get(name, name)


@pytest.mark.parametrize("rel", [f for f in ALL_FILES if f.startswith("models/decoding/")])
def test_decoding_file_sets_its_decode_fn(rel):
  _parse(combination(rel))
  model = config.macro("MODEL", evaluate=True)
  assert model.decode_fn.__name__ == _selects(rel)


# prompts/ files that replace the input prompt by a deep prompt (prompt_tuning/deep_prompts.py):
# the factory each one binds.
DEEP_PROMPT_FILES = {
    "prompts/deep_prompt.gin": "deep_prompt_factory",
    "prompts/deep_prompt_from_export.gin": "deep_prompt_factory",
    "prompts/deep_prompt_frozen_kv.gin": "deep_prompt_factory",
    "prompts/prefix_tuning.gin": "prefix_tuning_factory",
}


@pytest.mark.parametrize(
    "rel",
    [
        f
        for f in ALL_FILES
        if f.startswith("prompts/") and f not in PROMPT_STRUCTURES and f not in DEEP_PROMPT_FILES
    ],
)
def test_prompt_file_sets_its_initialiser(rel):
  _parse(combination(rel))
  assert gin.query_parameter("%PROMPT").configurable.name == _selects(rel)


@pytest.mark.parametrize("rel", sorted(PROMPT_STRUCTURES))
def test_prompt_structure_file_sets_its_factory(rel):
  _parse(combination(rel))
  factory = gin.query_parameter("t5.EncoderDecoder.prompt_factory").configurable.name
  assert factory == PROMPT_STRUCTURES[rel]


@pytest.mark.parametrize("rel", sorted(DEEP_PROMPT_FILES))
def test_deep_prompt_file_sets_its_factory(rel):
  _parse(combination(rel))
  factory = gin.query_parameter("t5.EncoderDecoder.deep_prompt_factory")
  assert factory.configurable.name == DEEP_PROMPT_FILES[rel]
  assert gin.query_parameter("t5.EncoderDecoder.prompt_factory") is None


def _embedded_dims() -> tuple[int, int]:
  """d_model and frozen parameter count of the committed embedded checkpoint (config.json)."""
  with open(os.path.join(embedded.ASSETS_DIR, "config.json")) as f:
    cfg = json.load(f)
  listing = t5x_listing(
      cfg["vocab_size"],
      cfg["emb_dim"],
      cfg["num_heads"],
      cfg["head_dim"],
      cfg["mlp_dim"],
      cfg["num_encoder_layers"],
      cfg["num_decoder_layers"],
      cfg["relative_attention_num_buckets"],
  )
  return cfg["emb_dim"], sum(math.prod(s) for s in listing.values())


def expected(size: str) -> tuple[int, int]:
  """(d_model, frozen parameter count) of a size, from facts outside the model code."""
  if size in TABLE_4:
    return LM100K[size][0], TABLE_4[size]
  if size == "tiny":
    tree = original_tiny_tree()
    return tree["token_embedder/embedding"][1], sum(math.prod(s) for s in tree.values())
  if size == "embedded":
    return _embedded_dims()
  raise AssertionError(f"No expected dimensions for size {size!r}; add them to expected().")


@functools.lru_cache(maxsize=None)
def _build(files: tuple[str, ...], prompt_length: Optional[int]):
  """(MODEL_SIZE, module, frozen count, prompt count or None) of the model the files configure.

  Cached by file names and prompt length: a pure function of the (read-only) gin files.
  """
  _parse(files, [f"PROMPT_LENGTH = {prompt_length}"] if prompt_length else [])
  module = config.macro("MODEL", evaluate=True).module
  flat = dict(abstract_params(module))
  prompt = flat.pop(PROMPT_PATH, None)
  assert not any("prompt" in k for k in flat), sorted(flat)
  frozen = sum(math.prod(v.shape) for v in flat.values())
  return (
      gin.query_parameter("%MODEL_SIZE"),
      module,
      frozen,
      None if prompt is None else math.prod(prompt.shape),
  )


def _named_size(rel: str) -> str:
  return re.fullmatch(r"models/t5_1_1_(\w+?)(_prompt)?\.gin", rel).group(1)


SIZE_FILES = [f for f in ALL_FILES if f.startswith("models/sizes/")]
NAMED_PROMPT = [f for f in NAMED_MODELS if f.endswith("_prompt.gin")]
NAMED_PLAIN = [f for f in NAMED_MODELS if f not in NAMED_PROMPT]
# Traced: each named prompt file at its default length (100) and once more at another length;
# the generic model files with the sizes no named file covers (cheap: tiny, embedded), at a
# couple of lengths. The named plain files are their prompt files minus the prompt (below), so
# an lm100k backbone is traced once per size: the whole file stays well under 30 s.
BUILDS = (
    [((f,), None) for f in NAMED_PROMPT]
    + [(("models/t5_1_1_small_prompt.gin",), 7)]
    + [
        ((generic, size), length)
        for size in SIZE_FILES
        if not any(size in _includes(f) for f in NAMED_MODELS)
        for generic, length in [
            (GENERIC_MODELS[0], None),
            (GENERIC_MODELS[1], 1),
            (GENERIC_MODELS[1], 7),
        ]
    ]
)


def test_builds_cover_every_model_and_size_file():
  built = {inc for files, _ in BUILDS for f in files for inc in _includes(f)}
  # models/released_*.gin only choose a checkpoint; they build nothing.
  model_files = {
      f
      for f in ALL_FILES
      if f.startswith("models/") and f.count("/") == 1 and not f.startswith("models/released_")
  }
  assert (model_files - set(NAMED_PLAIN)) | set(SIZE_FILES) <= built
  assert {f.replace(".gin", "_prompt.gin") for f in NAMED_PLAIN} <= set(NAMED_PROMPT)
  assert {f"models/t5_1_1_{s}_prompt.gin" for s in TABLE_4} <= set(NAMED_PROMPT)
  assert {f"models/t5_1_1_{s}.gin" for s in TABLE_4} <= set(NAMED_PLAIN)


@pytest.mark.parametrize(
    "files,prompt_length", BUILDS, ids=["+".join(f) + f":P={p}" for f, p in BUILDS]
)
def test_model_has_table_4_frozen_count_and_prompt_of_length_times_d_model(files, prompt_length):
  size, _, frozen, prompt = _build(files, prompt_length)
  if files[0] in NAMED_MODELS:
    assert size == _named_size(files[0]), f"configs/{files[0]} sets MODEL_SIZE = {size!r}"
  d_model, expected_frozen = expected(size)
  assert frozen == expected_frozen
  if "models/t5_1_1_prompt.gin" in _includes(files[0]):
    assert prompt == (prompt_length or 100) * d_model
  else:
    assert prompt is None


@pytest.mark.parametrize("rel", NAMED_PLAIN)
def test_plain_model_file_is_its_prompt_file_without_the_prompt(rel):
  """So its parameters are the frozen ones of the prompt file's traced model (Table 4)."""
  size, prompted, frozen, _ = _build((rel.replace(".gin", "_prompt.gin"),), None)
  assert frozen == expected(size)[1]
  _parse([rel])
  assert gin.query_parameter("%MODEL_SIZE") == size == _named_size(rel)
  model = config.macro("MODEL", evaluate=True)
  assert model.module.prompt_factory is None
  assert model.module == prompted.clone(prompt_factory=None)
