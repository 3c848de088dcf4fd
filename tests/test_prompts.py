"""Prompt initialisers and modules: parity with the original initialisers, and their invariants."""

import functools
import hashlib
import inspect
import json
import logging
import pickle

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES, GOLDEN, T5_VOCAB, TINY_CHECKPOINT, require
from prompt_tuning import checkpoints
from prompt_tuning import prompts
from prompt_tuning.models import t5

RNG = jax.random.PRNGKey(0)
SHAPE = (5, 4)
LABELS = ["positive", "negative"]
PRETRAINED = FIXTURES / "pretrained_prompts" / "t5_1_1_lm100k_base"


def _run(init, shape=SHAPE, rng=RNG):
  """Runs an initialiser under jit, as `module.init` does in training."""
  return np.asarray(jax.jit(init, static_argnums=(1, 2))(rng, tuple(shape), jnp.float32))


def _run_many(*inits_and_shapes, rng=RNG):
  """Several initialisers in one jit: one compilation instead of one each (CPU time is scarce)."""
  outs = jax.jit(lambda r: [init(r, shape, jnp.float32) for init, shape in inits_and_shapes])(rng)
  return [np.asarray(o) for o in outs]


@pytest.fixture(scope="module")
def emb():
  return prompts.load_embeddings(require(TINY_CHECKPOINT))


@pytest.fixture(scope="module")
def vocab():
  import seqio  # pylint: disable=g-import-not-at-top  (slow: pulls in TensorFlow)

  return seqio.SentencePieceVocabulary(str(require(T5_VOCAB)))


@pytest.fixture(scope="module")
def spec():
  return json.loads(require(GOLDEN / "initializers.json").read_text())


# ------------------------------------------------------------------------------------------------
# Parity with the original initialisers (golden item h).


def test_load_embeddings_reads_only_the_table(monkeypatch):
  read = []
  original = checkpoints._read_leaf  # pylint: disable=protected-access

  def recording(node, path, *args, **kwargs):
    read.append("/".join(path))
    return original(node, path, *args, **kwargs)

  monkeypatch.setattr(checkpoints, "_read_leaf", recording)
  # Unwrapped: a memoised result from another test would read nothing at all.
  load = inspect.unwrap(prompts.load_embeddings)
  assert load(require(TINY_CHECKPOINT)).shape == (32128, 4)
  assert read == ["token_embedder/embedding"]


def test_embedding_table_is_the_goldens(emb, spec):
  assert emb.shape == tuple(spec["embedding_shape"]) and emb.dtype == np.float32
  digest = hashlib.sha256(np.ascontiguousarray(emb, np.float32).tobytes()).hexdigest()
  assert digest == spec["embedding_sha256_float32_c_order"]
  for index, row in spec["embedding_rows"].items():
    np.testing.assert_array_equal(emb[int(index)], np.float32(row))


def test_label_and_string_token_ids(vocab, spec):
  for label, ids in spec["multipiece_label_token_ids"].items():
    assert list(vocab.encode(label)) == ids, label
  assert list(vocab.encode(spec["from_embedded_string_text"])) == (
      spec["from_embedded_string_token_ids"]
  )
  assert list(vocab.encode(spec["from_embedded_string_truncated_text"])) == (
      spec["from_embedded_string_truncated_token_ids"]
  )


def _golden_initializers(emb, vocab):
  uniform = nn.initializers.uniform()  # Flax's default U[0, 0.01), the original's fallback.
  multipiece = LABELS + ["Classify"]
  return {
      "from_sample_of_embeddings": prompts.sampled_vocab(emb, population_size=None),
      "from_sample_of_embeddings_pop5000": prompts.sampled_vocab(emb, 5000),
      "from_embedded_list": prompts.class_labels(emb, vocab, LABELS, fallback=uniform),
      "from_embedded_list_with_sample_init_pop5000": prompts.class_labels(
          emb, vocab, LABELS, fallback=prompts.sampled_vocab(emb, 5000)
      ),
      "from_embedded_list_multipiece": prompts.class_labels(
          emb, vocab, multipiece, fallback=uniform
      ),
      "default_uniform_init_used_for_remaining_rows": uniform,
      "from_embedded_string": prompts.from_string(
          emb, vocab, "positive or negative", fallback=uniform
      ),
      "from_embedded_string_truncated": prompts.from_string(
          emb, vocab, "Classify this movie review: positive or negative", fallback=uniform
      ),
  }


GOLDEN_NAMES = [
    "from_sample_of_embeddings",
    "from_sample_of_embeddings_pop5000",
    "from_embedded_list",
    "from_embedded_list_with_sample_init_pop5000",
    "from_embedded_list_multipiece",
    "default_uniform_init_used_for_remaining_rows",
    "from_embedded_string",
    "from_embedded_string_truncated",
]


@pytest.fixture(scope="module")
def ours(emb, vocab):
  inits = _golden_initializers(emb, vocab)
  return dict(zip(GOLDEN_NAMES, _run_many(*[(inits[n], SHAPE) for n in GOLDEN_NAMES])))


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_initializers_match_original_bit_exactly(ours, name):
  # jax >= 0.5 defaults to partitionable threefry (README note 9); the goldens for it are these.
  assert jax.config.jax_threefry_partitionable
  g = dict(np.load(require(GOLDEN / "initializers_threefry_partitionable.npz")))
  np.testing.assert_array_equal(ours[name], g[name])


def test_initializers_match_original_legacy_rng(emb, vocab):
  """With jax 0.4.30's RNG setting the same code reproduces the original run's own draws."""
  g = dict(np.load(require(GOLDEN / "initializers.npz")))
  inits = _golden_initializers(emb, vocab)
  names = ["from_sample_of_embeddings_pop5000", "from_embedded_list"]
  with jax.threefry_partitionable(False):
    outs = _run_many(*[(inits[n], SHAPE) for n in names])
  for name, out in zip(names, outs):
    np.testing.assert_array_equal(out, g[name], err_msg=name)


@pytest.mark.parametrize(
    "key,name",
    [
        ("threefry_partitionable_from_sample_of_embeddings_indices", "from_sample_of_embeddings"),
        (
            "threefry_partitionable_from_sample_of_embeddings_pop5000_indices",
            "from_sample_of_embeddings_pop5000",
        ),
        ("from_sample_of_embeddings_indices", None),
        ("from_sample_of_embeddings_pop5000_indices", None),
    ],
)
def test_sampled_rows_are_the_recorded_embedding_rows(emb, spec, key, name):
  indices = spec[key]
  if "pop5000" in key:
    assert max(indices) < 5000
  if name is None:  # Legacy-RNG indices: check them against the legacy golden file.
    g = dict(np.load(require(GOLDEN / "initializers.npz")))
    name = key[: -len("_indices")]
  else:
    g = dict(np.load(require(GOLDEN / "initializers_threefry_partitionable.npz")))
  np.testing.assert_array_equal(g[name], emb[indices])


def test_label_rows_are_exact_embeddings_and_means(emb, ours):
  out = ours["from_embedded_list_multipiece"]
  np.testing.assert_array_equal(out[0], emb[1465])
  np.testing.assert_array_equal(out[1], emb[2841])
  # ('▁Class', 'ify'): the mean of the two pieces; a two-term float32 sum halved is exact.
  np.testing.assert_array_equal(out[2], (emb[4501] + emb[4921]) / np.float32(2))
  np.testing.assert_array_equal(out[3:], ours["default_uniform_init_used_for_remaining_rows"][3:])
  out = ours["from_embedded_string"]
  np.testing.assert_array_equal(out[:3], emb[[1465, 42, 2841]])
  np.testing.assert_array_equal(out[3:], ours["default_uniform_init_used_for_remaining_rows"][3:])
  np.testing.assert_array_equal(
      ours["from_embedded_string_truncated"], emb[[4501, 4921, 48, 1974, 1132]]
  )


def test_truncated_string_logs_a_warning(emb, vocab, caplog):
  # Tracing is enough to log (values are checked against the goldens above); no compilation.
  text = "Classify this movie review: positive or negative"
  trace = lambda init: jax.eval_shape(lambda r: init(r, SHAPE, jnp.float32), RNG)
  with caplog.at_level(logging.WARNING):
    assert trace(prompts.from_string(emb, vocab, text)).shape == SHAPE
  assert "has 9 tokens; keeping the first 5" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    trace(prompts.from_string(emb, vocab, "positive or negative"))
  assert "keeping the first" not in caplog.text


# ------------------------------------------------------------------------------------------------
# Each initialiser's own invariants.


def _synthetic_table(n, d=3):
  """Row i is all i, so a sampled row tells which index it came from."""
  return np.repeat(np.arange(n, dtype=np.float32)[:, None], d, axis=1)


class _FakeVocab:
  """`pieces`: text -> ids; like seqio, `vocab_size` counts the `extra_ids` sentinels too."""

  def __init__(self, pieces, real_tokens=100, extra_ids=0):
    self.pieces = pieces
    self.vocab_size = real_tokens + extra_ids
    self.extra_ids = extra_ids

  def encode(self, text):
    return self.pieces[text]


def test_random_uniform_statistics():
  shape = (1000, 1000)
  default, half, double = _run_many(
      (prompts.get_initializer("random_uniform"), shape),
      (prompts.random_uniform(0.5), shape),
      (prompts.random_uniform(2.0), shape),
      rng=jax.random.PRNGKey(3),
  )
  np.testing.assert_array_equal(default, half)  # The paper's "random uniform": scale 0.5.
  for scale, x in ((0.5, half), (2.0, double)):
    assert x.dtype == np.float32 and x.min() >= -scale and x.max() <= scale
    assert x.min() < -0.99 * scale and x.max() > 0.99 * scale
    assert abs(x.mean()) < 3e-3 * scale
    np.testing.assert_allclose(x.std(), scale / np.sqrt(3), rtol=2e-3)


def test_sampled_vocab_draws_distinct_rows_of_the_population():
  table = _synthetic_table(20000)
  # (population_size=None reaching past row 5000 is shown by the golden indices above.)
  default, whole = _run_many(
      (prompts.sampled_vocab(table), (300, 3)),  # Default population: the first 5000 rows.
      (prompts.sampled_vocab(table[:8], population_size=8), (8, 3)),
  )
  assert np.all(default == default[:, :1])  # Whole rows, not mixed ones.
  ids = default[:, 0].astype(int)
  assert len(set(ids)) == 300 and ids.min() >= 0 and ids.max() < 5000
  # P == N gives a permutation.
  assert sorted(whole[:, 0].astype(int)) == list(range(8))


def test_sampled_vocab_clamps_to_the_real_tokens_with_a_warning(caplog):
  # Like the embedded model: rows past the real pieces are sentinel extra ids, then padding.
  table = _synthetic_table(48)
  vocab = _FakeVocab({}, real_tokens=30, extra_ids=10)
  with caplog.at_level(logging.WARNING):
    clamped, everything = _run_many(
        (prompts.sampled_vocab(table, 5000, vocab=vocab), (30, 3)),
        (prompts.sampled_vocab(table, None, vocab=vocab), (30, 3)),
    )
  # 30 distinct rows out of 30: exactly the real tokens, never a sentinel or padding row.
  assert sorted(clamped[:, 0].astype(int)) == list(range(30))
  assert sorted(everything[:, 0].astype(int)) == list(range(30))
  assert (
      "prompts.sampled_vocab.population_size=5000 is larger than the 30 real tokens of "
      "_FakeVocab; sampling from those 30 only"
  ) in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    _run(prompts.sampled_vocab(table, 20, vocab=vocab), (20, 3))
  assert not caplog.text  # Within the real tokens: nothing to say.


def test_sampled_vocab_population_larger_than_the_table_raises():
  with pytest.raises(
      prompts.PromptInitError,
      match=r"prompts.sampled_vocab.population_size=5000 is larger than the "
      r"embedding table \(768 rows\)",
  ):
    _run(prompts.sampled_vocab(_synthetic_table(768), population_size=5000), (4, 3))
  with pytest.raises(
      prompts.PromptInitError, match="has 800 real tokens but the embedding " "table only 768 rows"
  ):
    _run(prompts.sampled_vocab(_synthetic_table(768), vocab=_FakeVocab({}, 800)), (4, 3))


def test_sampled_vocab_real_tokens_of_a_seqio_vocabulary(vocab, caplog):
  with caplog.at_level(logging.WARNING):
    jax.eval_shape(
        lambda r: prompts.sampled_vocab(_synthetic_table(32_128), 40_000, vocab)(
            r, (4, 3), jnp.float32
        ),
        RNG,
    )
  assert f"the 32000 real tokens of SentencePieceVocabulary({T5_VOCAB})" in caplog.text


def test_sampled_vocab_too_long_prompt_raises():
  with pytest.raises(
      prompts.PromptInitError, match="Cannot sample 6 distinct rows from a " "population of 5"
  ):
    _run(prompts.sampled_vocab(_synthetic_table(100), population_size=5), (6, 3))


def test_embedding_width_mismatch_raises():
  with pytest.raises(prompts.PromptInitError, match="Embedding width 3 does not match"):
    _run(prompts.sampled_vocab(_synthetic_table(100)), (4, 5))


def test_class_labels_first_then_fallback():
  table = _synthetic_table(100)
  vocab = _FakeVocab({"a": [10], "bc": [20, 31]})
  fill = lambda rng, shape, dtype: jnp.full(shape, -1.0, dtype)
  filled, default, sampled = _run_many(
      (prompts.class_labels(table, vocab, ["a", "bc"], fallback=fill), (4, 3)),
      (prompts.class_labels(table, vocab, ["a"]), (6, 3)),
      (prompts.sampled_vocab(table, vocab=vocab), (6, 3)),
  )
  np.testing.assert_array_equal(filled, [[10] * 3, [25.5] * 3, [-1] * 3, [-1] * 3])
  # The default fallback samples vocabulary rows (the paper's setting), distinct from each other.
  assert default[0, 0] == 10 and len(set(default[1:, 0])) == 5
  np.testing.assert_array_equal(default[1:], sampled[1:])


def test_class_labels_truncated_to_prompt_length(caplog):
  # The original's from_embedded_list keeps the labels that fit and warns about the rest.
  table = _synthetic_table(100)
  vocab = _FakeVocab({"a": [10], "bc": [20, 31], "": []})
  fill = lambda rng, shape, dtype: jnp.full(shape, -1.0, dtype)
  with caplog.at_level(logging.WARNING):
    one, two = _run_many(
        # The empty label is past the prompt: skipped before it is tokenised, as upstream.
        (prompts.class_labels(table, vocab, ["bc", "a", ""], fallback=fill), (1, 3)),
        (prompts.class_labels(table, vocab, ["a", "bc", ""], fallback=fill), (2, 3)),
    )
  np.testing.assert_array_equal(one, [[25.5] * 3])
  np.testing.assert_array_equal(two, [[10] * 3, [25.5] * 3])
  assert "initialising from ['bc'] and skipping ['a', '']" in caplog.text


def test_class_labels_errors(emb, vocab):
  with pytest.raises(prompts.PromptInitError, match="Class label '' tokenises to no tokens"):
    _run(prompts.class_labels(emb, vocab, ["positive", ""]))
  with pytest.raises(prompts.PromptInitError, match="Prompt text '' tokenises to no tokens"):
    _run(prompts.from_string(emb, vocab, ""))


def test_from_array_and_from_file(tmp_path):
  saved = np.random.RandomState(0).randn(3, 4).astype(np.float32)
  np.testing.assert_array_equal(_run(prompts.from_array(saved), (3, 4)), saved)
  path = tmp_path / "prompt.npy"
  np.save(path, saved)
  np.testing.assert_array_equal(_run(prompts.from_file(str(path)), (3, 4)), saved)
  with pytest.raises(prompts.PromptInitError) as e:
    _run(prompts.from_file(str(path)), (5, 4))
  assert str(path) in str(e.value) and "(3, 4)" in str(e.value) and "(5, 4)" in str(e.value)


_UNPICKLED = []


def _record_unpickle():
  _UNPICKLED.append(True)
  return "boom"


class _Tripwire:

  def __reduce__(self):
    return (_record_unpickle, ())


def test_pickled_npy_is_refused_never_unpickled(tmp_path):
  _UNPICKLED.clear()
  path = tmp_path / "evil.npy"
  np.save(path, np.array([_Tripwire()], dtype=object), allow_pickle=True)
  with pytest.raises(prompts.PromptInitError, match="not a plain .npy array"):
    prompts.from_file(str(path))
  with pytest.raises(prompts.PromptInitError, match=str(path)):
    prompts.load_embeddings(str(path))
  assert not _UNPICKLED
  pickle.loads(pickle.dumps(_Tripwire()))  # The tripwire itself works.
  assert _UNPICKLED


def test_missing_file_names_the_path(tmp_path):
  path = tmp_path / "nowhere" / "prompt.npy"
  with pytest.raises(FileNotFoundError, match=str(path)):
    prompts.from_file(str(path))


def test_get_initializer_by_name():
  small, saved = _run_many(
      (prompts.get_initializer("random_uniform", scale=0.01), (50, 4)),
      (prompts.get_initializer("from_array", array=_synthetic_table(3, 4)), (3, 4)),
  )
  assert np.abs(small).max() <= 0.01 and np.abs(small).max() > 0.009
  np.testing.assert_array_equal(saved, _synthetic_table(3, 4))
  with pytest.raises(prompts.PromptInitError, match="Unknown prompt initialiser 'nope'") as e:
    prompts.get_initializer("nope")
  for name in ("random_uniform", "sampled_vocab", "class_labels", "from_string", "from_file"):
    assert name in str(e.value)


# ------------------------------------------------------------------------------------------------
# The modules.


def _tiny(dtype, length=3):
  factory = functools.partial(prompts.PrefixPrompt, length, prompts.random_uniform())
  return t5.EncoderDecoder(t5.config_for_size("tiny", dtype=dtype), prompt_factory=factory)


def _abstract_init(module):
  ones = jnp.ones((2, 6), jnp.int32)
  return jax.eval_shape(
      functools.partial(module.init, enable_dropout=False),
      jax.random.PRNGKey(0),
      ones,
      ones[:, :4],
      ones[:, :4],
  )


def test_prompt_parameter_path_and_axes():
  variables = _abstract_init(_tiny("float32"))
  flat = {
      "/".join(k): v
      for k, v in flax.traverse_util.flatten_dict(nn.unbox(variables["params"])).items()
  }
  assert [k for k in flat if "prompt" in k] == ["encoder/prompt/prompt/prompt"]
  assert flat["encoder/prompt/prompt/prompt"].shape == (3, 4)
  specs = nn.get_partition_spec(variables["params"])
  assert tuple(specs["encoder"]["prompt"]["prompt"]["prompt"]) == ("prompt", "prompt_embed")


def test_prompt_stays_float32_with_bfloat16_activations():
  module = _tiny("bfloat16")
  variables = _abstract_init(module)
  assert nn.unbox(variables["params"])["encoder"]["prompt"]["prompt"]["prompt"].dtype == (
      jnp.float32
  )
  tokens = jnp.ones((2, 6), jnp.int32)
  _, state = jax.eval_shape(
      lambda p: module.apply(
          {"params": p},
          tokens,
          method=module.encode,
          mutable=["intermediates"],
          capture_intermediates=lambda m, _: isinstance(m, (prompts.Prompt, prompts.PrefixPrompt)),
      ),
      nn.unbox(variables["params"]),
  )
  inter = state["intermediates"]["encoder"]
  assert inter["prompt"]["prompt"]["__call__"][0].dtype == jnp.float32  # The parameter.
  combined = inter["prompt"]["__call__"][0]  # What the encoder layers receive.
  assert combined.dtype == jnp.bfloat16 and combined.shape == (2, 3 + 6, 4)


def test_prefix_prompt_prepends_to_every_example():
  prompt = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
  module = prompts.PrefixPrompt(3, prompts.from_array(prompt))
  embedded = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
  tokens = jnp.ones((2, 5), jnp.int32)

  @jax.jit
  def run(embedded, tokens):
    out, variables = module.init_with_output(RNG, embedded, tokens)
    return out, variables, module.apply(variables, embedded.astype(jnp.bfloat16), tokens)

  out, variables, out16 = run(embedded, tokens)
  assert variables["params"]["prompt"]["prompt"].unbox().dtype == jnp.float32
  np.testing.assert_array_equal(variables["params"]["prompt"]["prompt"].unbox(), prompt)
  expected = np.concatenate([np.stack([prompt, prompt]), np.asarray(embedded)], axis=1)
  np.testing.assert_array_equal(out, expected)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(out16[:, :3], np.float32),
      np.stack([prompt, prompt]).astype(jnp.bfloat16).astype(np.float32),
  )


def test_released_prompts_load():
  tasks = ["sst2", "mrpc", "rte"]
  paths = [str(require(PRETRAINED / f"{task}.npy")) for task in tasks]
  modules = [prompts.PrefixPrompt(100, prompts.from_file(path)) for path in paths]
  embedded = jnp.zeros((1, 2, 768), jnp.float32)
  results = jax.jit(lambda e: [m.init_with_output(RNG, e, None) for m in modules])(embedded)
  for path, (out, variables) in zip(paths, results):
    expected = np.load(path)
    assert expected.shape == (100, 768) and expected.dtype == np.float32
    np.testing.assert_array_equal(variables["params"]["prompt"]["prompt"].unbox(), expected)
    assert out.shape == (1, 102, 768)
    np.testing.assert_array_equal(out[0, :100], expected)
    with pytest.raises(prompts.PromptInitError, match=r"\.npy.*\(100, 768\).*\(50, 768\)"):
      _run(prompts.from_file(path), (50, 768))
