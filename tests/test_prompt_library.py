"""Mixed-prompt batches against the ordinary single-prompt model, prompt by prompt."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning import deep_prompts
from prompt_tuning import model as model_lib
from prompt_tuning import prompt_library as lib
from prompt_tuning import prompts
from prompt_tuning import rank_classification as rank
from prompt_tuning.data import batches
from prompt_tuning.models import t5

VOCAB = 50
# Enough buckets that a prompt placed at the wrong offset changes the relative-position biases.
CFG = t5.config_for_size(
    "tiny",
    dtype="float32",
    vocab_size=VOCAB,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=64,
)


@pytest.fixture(scope="module")
def frozen():
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(CFG))
  variables = model.get_initial_variables(jax.random.PRNGKey(0))
  return jax.tree.map(np.asarray, nn.unbox(variables)["params"])


def random_prompts(seed, lengths):
  rng = np.random.default_rng(seed)
  return {
      f"p{i}": rng.uniform(-2, 2, (n, CFG.emb_dim)).astype(np.float32)
      for i, n in enumerate(lengths)
  }


def random_examples(rng, names, n):
  out = []
  # Every prompt appears (cyclically, then shuffled) so each mix holds all of them.
  chosen = rng.permutation([names[i % len(names)] for i in range(n)])
  for name in chosen:
    inputs = rng.integers(2, VOCAB, rng.integers(1, 12)).tolist()
    targets = rng.integers(2, VOCAB, rng.integers(1, 6)).tolist() + [1]
    out.append(lib.Example(str(name), inputs, targets))
  return out


def pad_to(rows, width, n_rows):
  """`rows` padded with zeros to [n_rows, width] (more or longer rows fail)."""
  if len(rows) > n_rows:
    raise ValueError(f"{len(rows)} rows do not fit in {n_rows}.")
  return batches.pad_rows(list(rows) + [[]] * (n_rows - len(rows)), width)


def pad(rows):
  return batches.pad_rows(rows, max(len(r) for r in rows))


# The reference pads every call to these fixed shapes: one compilation per reference model for
# all its calls, and never the runner's buckets (powers of two), so the two pad differently.
REF_ROWS, REF_INPUTS, REF_TARGETS = 8, 13, 7


class Reference:
  """The ordinary single-prompt model, one per prompt (its own batch, its own fixed padding): an
  input prompt [P, D], deep-prompt prefixes {stack: [layers, 2, P', H, K]}, or both."""

  def __init__(self, params, prompt=None, placement="prefix", prefixes=None):
    params = dict(params)
    factory = deep_factory = None
    if prompt is not None:
      factory = prompts.input_prompt_factory(prompt.shape[0], prompts.from_array(prompt), placement)
      params["encoder"] = dict(params["encoder"], prompt={"prompt": {"prompt": prompt}})
    if prefixes:
      length = prefixes["encoder"].shape[2]
      deep_factory = deep_prompts.deep_prompt_factory(length, decoder="decoder" in prefixes)
      params["deep_prompt"] = {f"{k}_prefixes": v for k, v in prefixes.items()}
    self.model = model_lib.EncoderDecoderModel(
        t5.EncoderDecoder(CFG, prompt_factory=factory, deep_prompt_factory=deep_factory),
        decode_fn=decoding.greedy,
    )
    self.params = params
    self._score = jax.jit(self.model.score_batch)
    self._predict = jax.jit(self.model.predict_batch)

  def score(self, inputs, targets):
    t = pad_to(targets, REF_TARGETS, REF_ROWS)
    batch = {
        "encoder_input_tokens": pad_to(inputs, REF_INPUTS, REF_ROWS),
        "decoder_input_tokens": batches.shift_right(t),
        "decoder_target_tokens": t,
        "decoder_loss_weights": (t > 0).astype(np.float32),
    }
    return np.asarray(self._score(self.params, batch))[: len(inputs)]

  def generate(self, inputs, max_len):
    batch = {
        "encoder_input_tokens": pad_to(inputs, REF_INPUTS, REF_ROWS),
        "decoder_input_tokens": np.zeros((REF_ROWS, max_len), np.int32),
    }
    decodes = self._predict(self.params, batch)
    return [lib.trim_decode(d, 1) for d in np.asarray(decodes)[: len(inputs)]]


def reference_outputs(params, table, examples, max_len, placements=None):
  """Scores and greedy decodes of every example from its own prompt's ordinary model."""
  scores, decodes = [None] * len(examples), [None] * len(examples)
  for name, prompt in table.items():
    idx = [i for i, e in enumerate(examples) if e.prompt == name]
    if not idx:
      continue
    ref = Reference(params, prompt, (placements or {}).get(name, "prefix"))
    inputs = [examples[i].inputs for i in idx]
    s = ref.score(inputs, [examples[i].targets for i in idx])
    d = ref.generate(inputs, max_len)
    for j, i in enumerate(idx):
      scores[i], decodes[i] = s[j], d[j]
  return np.asarray(scores), decodes


def test_mixed_batch_equals_each_prompt_alone(frozen):
  table = random_prompts(1, [3, 7, 1, 5])
  library = lib.PromptLibrary(CFG.emb_dim)
  for name, p in table.items():
    library.add(name, p)
  runner = lib.MixedPromptRunner(CFG, frozen, library)
  rng = np.random.default_rng(0)
  shapes = set()
  for _ in range(3):  # Different mixes: one compilation per shape bucket, not per mix.
    examples = random_examples(rng, list(table), 7)
    n_in, n_tg = (max(len(getattr(e, f)) for e in examples) for f in ("inputs", "targets"))
    shapes.add((lib.next_power_of_two(n_in, runner.min_input_length), lib.next_power_of_two(n_tg)))
    scores = runner.score(examples)
    decodes = runner.generate(examples, max_decode_length=6)
    want_scores, want_decodes = reference_outputs(frozen, table, examples, 6)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert decodes == want_decodes
    # The prompts matter here: naming another prompt changes the scores.
    swapped = [
        lib.Example("p1" if e.prompt != "p1" else "p0", e.inputs, e.targets) for e in examples
    ]
    assert np.all(np.abs(runner.score(swapped) - scores) > 1e-4)
  input_buckets = {inputs for inputs, _ in shapes}
  assert dict(runner.compilations) == {"score": len(shapes), "predict": len(input_buckets)}
  assert len(shapes) < 3 or len(input_buckets) < 3  # Some mixes shared a compilation.


def test_mixed_placements_equal_each_prompt_alone(frozen, tmp_path):
  """Prefix, after_first and suffix prompts in one batch, each as its training model places it."""
  table = random_prompts(6, [3, 5, 2])
  placements = {"p0": "prefix", "p1": "suffix", "p2": "after_first"}
  for name, p in table.items():
    np.save(tmp_path / f"{name}.npy", p)
  (tmp_path / "p1.json").write_text('{"placement": "suffix"}')  # As the training export writes.
  library = lib.PromptLibrary(CFG.emb_dim)
  library.load_file(str(tmp_path / "p0.npy"))
  library.load_file(str(tmp_path / "p1.npy"))
  library.load_file(str(tmp_path / "p2.npy"), placement="after_first")
  assert library.placements() == placements
  runner = lib.MixedPromptRunner(CFG, frozen, library)
  examples = random_examples(np.random.default_rng(7), list(table), 9)
  scores = runner.score(examples)
  want = np.zeros(len(examples))
  for name, placement in placements.items():  # One batch per prompt, of its examples.
    idx = [i for i, e in enumerate(examples) if e.prompt == name]
    ref = Reference(frozen, table[name], placement)
    want[idx] = ref.score([examples[i].inputs for i in idx], [examples[i].targets for i in idx])
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
  # Placement matters here: the suffix and after_first prompts re-added as prefixes (same
  # shapes, no new compilation) score otherwise; the prefix prompt's examples do not change.
  for name in ("p1", "p2"):
    library.add(name, table[name])
  wrong = runner.score(examples)
  moved = np.asarray([e.prompt != "p0" for e in examples])
  assert np.all(np.abs(wrong - scores)[moved] > 1e-4)
  np.testing.assert_allclose(wrong[~moved], scores[~moved], rtol=1e-5, atol=1e-5)
  assert dict(runner.compilations) == {"score": 1}

  # The sidecar and the asked-for placement must agree; a bad sidecar names itself.
  with pytest.raises(lib.PromptLibraryError, match="sidecar .*p1.json records 'suffix'"):
    library.load_file(str(tmp_path / "p1.npy"), placement="prefix")
  (tmp_path / "p0.json").write_text('{"placement": "middle"}')
  with pytest.raises(lib.PromptLibraryError, match="p0.json: placement 'middle' is not one of"):
    library.load_file(str(tmp_path / "p0.npy"))
  (tmp_path / "p0.json").write_text("[1]")
  with pytest.raises(
      lib.PromptLibraryError, match='p0.json: expected a JSON object with "placement"'
  ):
    library.load_file(str(tmp_path / "p0.npy"))


def test_training_export_records_the_prompts_placement(frozen):
  """What train_state.save writes as `<export>.json` beside the numpy checkpoint's prompt."""
  factory = prompts.input_prompt_factory(3, placement="suffix")
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(CFG, prompt_factory=factory))
  prompt = {"prompt": {"prompt": np.zeros((3, CFG.emb_dim), np.float32)}}
  params = dict(frozen, encoder=dict(frozen["encoder"], prompt=prompt))
  want = {prompts.PLAIN_PROMPT_EXPORT: {"placement": "suffix"}}
  assert model.numpy_sidecars(params) == want
  assert model_lib.EncoderDecoderModel(t5.EncoderDecoder(CFG)).numpy_sidecars(frozen) == {}


def random_prefixes(rng, length, decoder):
  """A deep prompt's {stack: [layers, 2, P', H, K]}, N(0, 1) as P-tuning v2 starts them."""
  stacks = deep_prompts.STACKS if decoder else deep_prompts.STACKS[:1]
  return {
      stack: rng.normal(size=deep_prompts.prefix_shape(CFG, stack, length)).astype(np.float32)
      for stack in stacks
  }


def save_export(directory, prefixes, prompt=None, placement=None):
  """What a training run's numpy export holds for a deep prompt (and an input prompt)."""
  directory.mkdir()
  for stack, array in prefixes.items():
    np.save(directory / deep_prompts.export_name(stack), array)
  if prompt is not None:
    np.save(directory / f"{prompts.PLAIN_PROMPT_EXPORT}.npy", prompt)
    (directory / f"{prompts.PLAIN_PROMPT_EXPORT}.json").write_text(
        json.dumps({"placement": placement})
    )


def test_deep_prompts_share_mixed_batches_with_input_prompts(frozen, tmp_path):
  """Deep prompts (encoder prefixes, with decoder prefixes, with an input prompt too) and input
  prompts in one batch: every example scores and decodes as its own prompt's model does."""
  rng = np.random.default_rng(11)
  table = random_prompts(12, [3, 5, 4])
  entries = {  # name -> Reference arguments
      "p0": dict(prompt=table["p0"]),
      "p1": dict(prompt=table["p1"], placement="suffix"),
      "d0": dict(prefixes=random_prefixes(rng, 2, decoder=False)),
      "d1": dict(prefixes=random_prefixes(rng, 5, decoder=True)),
      "both": dict(
          prompt=table["p2"], placement="after_first", prefixes=random_prefixes(rng, 3, False)
      ),
  }
  np.save(tmp_path / "p0.npy", table["p0"])
  np.save(tmp_path / "p1.npy", table["p1"])
  (tmp_path / "p1.json").write_text('{"placement": "suffix"}')
  for name in ("d0", "d1", "both"):
    e = entries[name]
    save_export(tmp_path / name, e["prefixes"], e.get("prompt"), e.get("placement"))
  (tmp_path / "notes").mkdir()  # Not a prompt: skipped.

  library = lib.PromptLibrary.for_config(CFG)
  loaded, errors = library.load_directory(str(tmp_path))
  assert (sorted(loaded), errors) == (sorted(entries), {})
  assert library.lengths() == {"both": 4, "d0": 0, "d1": 0, "p0": 3, "p1": 5}
  assert library.prefix_lengths() == {
      "both": {"encoder": 3},
      "d0": {"encoder": 2},
      "d1": {"encoder": 5, "decoder": 5},
  }
  assert library.placements()["both"] == "after_first"
  snapshot = library.snapshot()
  assert snapshot.prefixes["encoder"][0].shape == (
      8,
      CFG.num_encoder_layers,
      2,
      5,  # The longest encoder prefixes.
      CFG.num_heads,
      CFG.head_dim,
  )
  assert snapshot.prefixes["decoder"][1].tolist() == [0, 0, 5, 0, 0, 0, 0, 0]

  runner = lib.MixedPromptRunner(CFG, frozen, library)
  examples = random_examples(np.random.default_rng(13), list(entries), 11)
  scores = runner.score(examples)
  decodes = runner.generate(examples, max_decode_length=6)
  want_scores, want_decodes = np.zeros(len(examples)), [None] * len(examples)
  for name, kwargs in entries.items():  # One batch per prompt, of its examples.
    idx = [i for i, e in enumerate(examples) if e.prompt == name]
    ref = Reference(frozen, **kwargs)
    inputs = [examples[i].inputs for i in idx]
    want_scores[idx] = ref.score(inputs, [examples[i].targets for i in idx])
    for i, d in zip(idx, ref.generate(inputs, 6)):
      want_decodes[i] = d
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  assert decodes == want_decodes
  assert dict(runner.compilations) == {"score": 1, "predict": 1}

  # The prefixes matter: d0's examples re-run as d1's (and the reverse) score otherwise.
  swap = {"d0": "d1", "d1": "d0"}
  swapped = [lib.Example(swap.get(e.prompt, e.prompt), e.inputs, e.targets) for e in examples]
  moved = np.asarray([e.prompt in swap for e in examples])
  changed = np.abs(runner.score(swapped) - scores)
  assert np.all(changed[moved] > 1e-4) and np.all(changed[~moved] < 1e-5)


def test_deep_prompt_errors_name_the_file(frozen, tmp_path):
  rng = np.random.default_rng(3)
  good = random_prefixes(rng, 2, decoder=False)
  save_export(tmp_path / "good", good)
  layers = CFG.num_encoder_layers
  save_export(tmp_path / "shallow", {"encoder": good["encoder"][: layers - 1]})
  save_export(tmp_path / "nan", {"encoder": np.full_like(good["encoder"], np.nan)})
  library = lib.PromptLibrary.for_config(CFG)
  loaded, errors = library.load_directory(str(tmp_path))
  assert loaded == ["good"]
  shallow = str(tmp_path / "shallow" / "deep_prompt.encoder_prefixes.npy")
  want = f"[{layers}, 2, length, {CFG.num_heads}, {CFG.head_dim}]"
  assert f"{shallow}: the model's encoder needs prefixes {want}" in (
      errors[str(tmp_path / "shallow")]
  )
  assert "NaN" in errors[str(tmp_path / "nan")]
  # A prefixes file on its own is not an input prompt; the message says what to load instead.
  with pytest.raises(lib.PromptLibraryError, match="load the directory that holds them"):
    library.load_file(str(tmp_path / "good" / "deep_prompt.encoder_prefixes.npy"))
  with pytest.raises(lib.PromptLibraryError, match="no deep_prompt.encoder_prefixes.npy"):
    library.load_deep_prompt(str(tmp_path))
  # A library built from the width alone cannot check prefixes, so it refuses them.
  with pytest.raises(lib.PromptLibraryError, match="PromptLibrary.for_config"):
    lib.PromptLibrary(CFG.emb_dim).load_file(str(tmp_path / "good"))
  # A runner over another model's shapes refuses the library.
  other = t5.config_for_size("tiny", vocab_size=VOCAB, num_encoder_layers=layers + 1)
  with pytest.raises(lib.PromptLibraryError, match="deep-prompt shapes"):
    lib.MixedPromptRunner(CFG, frozen, lib.PromptLibrary.for_config(other))


def test_library_files_errors_and_reload(tmp_path):
  good = np.ones((3, CFG.emb_dim), np.float32)
  np.save(tmp_path / "a.npy", good)
  np.save(tmp_path / "wide.npy", np.ones((3, CFG.emb_dim + 1), np.float32))
  np.save(tmp_path / "pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
  library = lib.PromptLibrary(CFG.emb_dim, prompt_length_multiple=4)
  loaded, errors = library.load_directory(str(tmp_path))
  assert loaded == ["a"]
  assert "width 5 does not match" in errors[str(tmp_path / "wide.npy")]
  assert "wide.npy" in errors[str(tmp_path / "wide.npy")]
  assert "pickled.npy" in errors[str(tmp_path / "pickled.npy")]
  with pytest.raises(lib.PromptLibraryError, match="pickled.npy"):
    library.load_file(str(tmp_path / "pickled.npy"))
  # Unchanged files are not reloaded; a replaced one is, under the same name and row.
  assert library.load_directory(str(tmp_path))[0] == []
  np.save(tmp_path / "b.npy", 2 * good[:2])
  os.utime(tmp_path / "a.npy", (1, 1))
  np.save(tmp_path / "a.npy", 3 * np.ones((6, CFG.emb_dim), np.float32))
  assert library.load_directory(str(tmp_path))[0] == ["a", "b"]
  table, lengths, rows, placements, prefixes = library.snapshot()
  assert table.shape == (2, 8, CFG.emb_dim) and rows == {"a": 0, "b": 1}  # 6 rounded up to 8.
  exact = lib.PromptLibrary(CFG.emb_dim)  # By default the table is as long as the longest.
  exact.load_directory(str(tmp_path))
  assert exact.snapshot().table.shape == (2, 6, CFG.emb_dim)
  with pytest.raises(lib.PromptLibraryError, match="prompt_length_multiple=0 must be at least 1"):
    lib.PromptLibrary(CFG.emb_dim, prompt_length_multiple=0)
  assert lengths.tolist() == [6, 2] and placements.tolist() == [0, 0]  # Prefixes.
  assert prefixes == {}  # No deep prompt: the compiled call gets no prefix tables.
  np.testing.assert_array_equal(table[0, :6], 3.0)
  np.testing.assert_array_equal(table[0, 6:], 0.0)
  with pytest.raises(lib.PromptLibraryError, match="Unknown prompt 'zz'"):
    library.remove("zz")


def test_bad_requests_name_the_problem(frozen):
  library = lib.PromptLibrary(CFG.emb_dim)
  library.add("p", np.ones((2, CFG.emb_dim), np.float32))
  runner = lib.MixedPromptRunner(CFG, frozen, library, max_input_length=16)
  for example, message in [
      (lib.Example("nope", [3]), "Unknown prompt 'nope'"),
      (lib.Example("p", list(range(2, 20))), "max_input_length=16"),
      (lib.Example("p", []), "Empty input"),
      (lib.Example("p", [3, VOCAB]), "Input token ids"),
  ]:
    with pytest.raises(lib.PromptLibraryError, match=message):
      runner.check(example)


def test_rank_classification_against_score_batch_row_by_row(frozen):
  table = random_prompts(2, [4, 2, 6])
  labels = [[5, 1], [7, 8, 1], [9, 1]]
  rng = np.random.default_rng(3)
  inputs = [rng.integers(2, VOCAB, n).tolist() for n in (3, 9, 5)]
  library = lib.PromptLibrary(CFG.emb_dim)
  for name, p in table.items():
    library.add(name, p)
  runner = lib.MixedPromptRunner(CFG, frozen, library)

  # By hand: one call of the ordinary model's score_batch per (example, label).
  ref = Reference(frozen, table["p0"])
  by_hand = np.asarray([[ref.score([x], [t])[0] for t in labels] for x in inputs])
  predicted, scores = rank.rank_classify(ref.model.score_batch, ref.params, pad(inputs), labels)
  np.testing.assert_allclose(scores, by_hand, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(predicted, by_hand.argmax(-1))

  # Mixed prompts, each example with its own label set.
  examples = [lib.Example(p, x) for p, x in zip(["p0", "p1", "p2"], inputs)]
  label_sets = [labels, labels[:2], labels[1:]]
  for e, ls, (best, s) in zip(
      examples, label_sets, rank.mixed_rank_classify(runner, examples, label_sets)
  ):
    want = Reference(frozen, table[e.prompt]).score([e.inputs] * len(ls), ls)
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-5)
    assert best == int(np.argmax(want))

  # Ensemble: each member is its prompt alone; the ensemble sums their log-likelihoods.
  names = ["p0", "p1", "p2"]
  ensemble, member = rank.ensemble_rank_classify(runner, names, inputs, labels)
  for k, name in enumerate(names):
    want = rank.rank_classify(
        Reference(frozen, table[name]).model.score_batch,
        Reference(frozen, table[name]).params,
        pad(inputs),
        labels,
    )[1]
    np.testing.assert_allclose(member[k], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ensemble, member.sum(0).argmax(-1))
  with pytest.raises(rank.RankClassificationError, match="empty"):
    rank.mixed_rank_classify(runner, examples[:1], [[]])


def test_ensemble_generation_votes_over_single_prompt_decodes(frozen):
  table = random_prompts(4, [2, 5, 3])
  library = lib.PromptLibrary(CFG.emb_dim)
  for name, p in table.items():
    library.add(name, p)
  runner = lib.MixedPromptRunner(CFG, frozen, library)
  rng = np.random.default_rng(5)
  inputs = [rng.integers(2, VOCAB, n).tolist() for n in (4, 7)]
  votes, members = rank.ensemble_generate(runner, list(table), inputs, 5)
  for k, name in enumerate(table):
    assert members[k] == Reference(frozen, table[name]).generate(inputs, 5)
  for b, vote in enumerate(votes):
    assert vote == rank.majority_vote([m[b] for m in members])


def test_majority_vote():
  assert rank.majority_vote([[1], [2, 1], [2, 1]]) == [2, 1]
  assert rank.majority_vote([[3], [2], [4]]) == [3]  # A tie goes to the first prompt.
  assert rank.majority_vote([[3], [2], [2], [3]]) == [3]
