"""The synthetic world, its SuperGLUE-like tasks, and T5's pretraining objectives."""
import collections
import itertools
import os
import re

import numpy as np
import pytest

from prompt_tuning import pretrain
from prompt_tuning import synthetic
from prompt_tuning.data import pretraining
from prompt_tuning.data import sources
from prompt_tuning.data import vocab as vocab_lib

SMALL = (("train", 60), ("validation", 30))


def _words(text):
  return set(re.findall(r"[A-Za-z]+", text))


# -------------------------------------------------------------------------------------- world


def test_world_is_deterministic_in_the_seed():
  assert list(synthetic.corpus(3, 50)) == list(synthetic.corpus(3, 50))
  assert list(synthetic.corpus(3, 50)) != list(synthetic.corpus(4, 50))
  for fn in synthetic.EXAMPLE_FNS.values():
    assert fn(3, "train", 40) == fn(3, "train", 40)
    assert fn(3, "train", 40) != fn(4, "train", 40)
    assert fn(3, "train", 40) != fn(3, "validation", 40)


def test_written_files_are_deterministic(tmp_path):
  a = synthetic.write_super_glue(str(tmp_path / "a"), 7, SMALL)
  b = synthetic.write_super_glue(str(tmp_path / "b"), 7, SMALL)
  for folder in ("BoolQ", "RTE", "CB"):
    for name in ("train.jsonl", "val.jsonl"):
      with open(os.path.join(a, folder, name)) as fa, open(os.path.join(b, folder, name)) as fb:
        assert fa.read() == fb.read()


@pytest.mark.parametrize("config,labels", [("boolq", (True, False)),
                                           ("rte", ("entailment", "not_entailment")),
                                           ("cb", ("entailment", "contradiction", "neutral"))])
def test_labels_are_balanced(config, labels):
  counts = collections.Counter(r["label"] for r in synthetic.EXAMPLE_FNS[config](0, "train", 600))
  assert counts == {label: 600 // len(labels) for label in labels}


def test_files_follow_the_official_schemas(tmp_path):
  data_dir = synthetic.write_super_glue(str(tmp_path), 0, SMALL)
  for config in ("boolq", "rte", "cb"):
    files = sources.super_glue_jsonl_files(config, data_dir)
    for split, n in SMALL:
      examples = sources.read_super_glue_jsonl(config, files[split], split)  # Checks fields.
      assert len(examples) == n
      assert [e["idx"] for e in examples] == list(range(n))
      names = sources.SUPER_GLUE_LABELS[config]
      assert {e["label"] for e in examples} == set(range(len(names)))


def test_boolq_needs_the_passage():
  """Both answers use only passage words; the answer is whether the fact is stated."""
  for r in synthetic.boolq_examples(0, "train", 300):
    assert _words(r["question"]) - {"does", "live", "work", "have", "like", "eat"} <= (
        _words(r["passage"]) | {"a", "to", "pet", "in", "as"})
    name = r["question"].split()[1]
    value = r["question"].split()[-1]
    assert name in r["passage"] and value in r["passage"]
    stated = any(s.startswith(name + " ") and s.endswith(" " + value)
                 for s in r["passage"].rstrip(".").split(". "))
    assert stated == r["label"]


def test_hypotheses_reuse_premise_words():
  for config in ("rte", "cb"):
    for r in synthetic.EXAMPLE_FNS[config](0, "train", 300):
      content = _words(r["hypothesis"]) - {"does", "not", "live", "work", "have", "like", "Does"}
      assert content <= _words(r["premise"]) | {"live", "work", "have", "like"}, r


def test_negation_is_no_cue():
  """Negated hypotheses are equally common under every label."""
  for config in ("rte", "cb"):
    by_label = collections.defaultdict(list)
    for r in synthetic.EXAMPLE_FNS[config](0, "train", 600):
      by_label[r["label"]].append(" not " in r["hypothesis"])
    for label, negated in by_label.items():
      assert 0.3 < np.mean(negated) < 0.7, (config, label)


def test_corpus_contains_the_skills():
  text = " ".join(synthetic.corpus(0, 500))
  for phrase in ("Answer: True", "Answer: False", "does not", "entailment", "contradiction",
                 "neutral", "Is it true that"):
    assert phrase in text
  # And never the tasks' own input format.
  assert "passage:" not in text and "hypothesis:" not in text


@pytest.fixture
def small_vocab(tmp_path):
  data_dir = synthetic.write_super_glue(str(tmp_path / "data"), 0, SMALL)
  path = pretrain.train_vocab(str(tmp_path), synthetic.vocab_sentences(0, 300, data_dir), 200)
  vocab_lib.set_default_vocab_path(path)
  yield data_dir
  vocab_lib.set_default_vocab_path(None)


def test_tasks_register_and_yield_examples(small_vocab):
  import seqio  # pylint: disable=g-import-not-at-top
  names = synthetic.register_tasks(small_vocab, prefix="test_synthetic_")
  expected = {"boolq": ("boolq passage: ", {"True", "False"}),
              "rte": ("rte hypothesis: ", {"entailment", "not_entailment"}),
              "cb": ("cb hypothesis: ", {"entailment", "contradiction", "neutral"})}
  for config, (start, targets) in expected.items():
    name = f"test_synthetic_super_glue_{config}_v102"
    assert name in names
    ds = seqio.get_mixture_or_task(name).get_dataset(
        {"inputs": 128, "targets": 8}, split="validation", shuffle=False)
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == 30
    assert all(e["inputs_pretokenized"].decode().startswith(start) for e in examples)
    assert {e["targets_pretokenized"].decode() for e in examples} == targets
    assert all(e["inputs"][-1] == 1 for e in examples)  # EOS appended, nothing truncated.


# --------------------------------------------------------------------------------- objectives

VOCAB = 612  # 512 pieces + 100 extra ids.


@pytest.mark.parametrize("length", [2, 3, 10, 57, 128])
def test_span_corruption_reconstructs_the_original(length):
  rng = np.random.default_rng(length)
  for _ in range(20):
    tokens = rng.integers(3, VOCAB - 100, length)
    inputs, targets = pretraining.span_corruption(tokens, rng, VOCAB)
    np.testing.assert_array_equal(pretraining.uncorrupt(inputs, targets, VOCAB), tokens)
    sentinels = inputs[inputs >= VOCAB - 100]
    # One sentinel per span, counting down from the end of the vocabulary, in both sequences.
    np.testing.assert_array_equal(sentinels, VOCAB - 1 - np.arange(len(sentinels)))
    np.testing.assert_array_equal(targets[targets >= VOCAB - 100], sentinels)
    assert targets[0] == VOCAB - 1 and inputs[0] < VOCAB - 100  # Starts with kept text.


def test_span_corruption_statistics():
  rng = np.random.default_rng(0)
  noise, spans = 0, 0
  for _ in range(200):
    mask = pretraining.random_spans_noise_mask(100, rng)
    noise += mask.sum()
    spans += np.sum(mask[1:] & ~mask[:-1])
    assert not mask[0]
  assert noise == 200 * 15  # Density 0.15 exactly per sequence.
  assert spans == 200 * 5  # round(15 / 3) spans: mean span length 3.


def test_span_corruption_is_deterministic_in_the_rng():
  tokens = np.arange(3, 53)
  a = pretraining.span_corruption(tokens, np.random.default_rng(1), VOCAB)
  b = pretraining.span_corruption(tokens, np.random.default_rng(1), VOCAB)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_sentinel_matches_seqio():
  assert pretraining.sentinel_id(VOCAB, 0) == VOCAB - 1
  assert pretraining.sentinel_id(VOCAB, 99) == VOCAB - 100


def test_prefix_lm_splits_the_text():
  rng = np.random.default_rng(0)
  splits = set()
  for length in itertools.chain([2, 3], range(5, 60, 7)):
    tokens = np.arange(3, 3 + length)
    prefix, suffix = pretraining.prefix_lm(tokens, rng)
    assert len(prefix) >= 1 and len(suffix) >= 1
    np.testing.assert_array_equal(np.concatenate([prefix, suffix]), tokens)
    splits.add(len(prefix))
  assert len(splits) > 5


def test_encoder_decoder_batch():
  batch = pretraining.encoder_decoder_batch([([5, 6, 7], [8, 9]), ([5] * 10, [9] * 10)], 6, 4)
  np.testing.assert_array_equal(batch["encoder_input_tokens"],
                                [[5, 6, 7, 1, 0, 0], [5, 5, 5, 5, 5, 1]])
  np.testing.assert_array_equal(batch["decoder_target_tokens"], [[8, 9, 1, 0], [9, 9, 9, 1]])
  np.testing.assert_array_equal(batch["decoder_input_tokens"], [[0, 8, 9, 1], [0, 9, 9, 9]])
  np.testing.assert_array_equal(batch["decoder_loss_weights"], [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_model_vocab_size_is_padded():
  assert pretrain.model_vocab_size(386) == 512
  assert pretrain.model_vocab_size(28) == 128


# ------------------------------------------------------------------------ committed artefacts


def _require_assets():
  if not os.path.exists(os.path.join(pretrain.ASSETS_DIR, "config.json")):
    pytest.skip("prompt_tuning/assets/embedded is not built (python -m prompt_tuning.pretrain).")


def test_embedded_assets_load_and_are_small():
  _require_assets()
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  cfg = pretrain.load_config()
  sp = spm.SentencePieceProcessor(model_file=os.path.join(pretrain.ASSETS_DIR, "spiece.model"))
  assert cfg.vocab_size == pretrain.model_vocab_size(sp.get_piece_size())
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
  for stage in ("span_corruption", "lm_adapted"):
    params = checkpoints.load_t5x_checkpoint(pretrain.checkpoint_path(stage=stage))
    assert params["token_embedder"]["embedding"].shape == (cfg.vocab_size, cfg.emb_dim)
  assert (checkpoints.read_step(pretrain.checkpoint_path(stage="lm_adapted"))
          > checkpoints.read_step(pretrain.checkpoint_path(stage="span_corruption")))
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in
              os.walk(pretrain.ASSETS_DIR) for f in files)
  assert total < 20 * 2**20


def test_vocab_covers_the_task_formats(small_vocab):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=vocab_lib.get_vocab_path())
  for text in ("boolq passage: Tom lives in Oslo. question: does Tom live in Oslo",
               "cb hypothesis: Tom lives in Oslo. premise: Tom lives in Oslo.", "True False"):
    assert sp.unk_id() not in sp.encode(text), text
