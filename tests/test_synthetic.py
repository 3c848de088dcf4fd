"""The embedded default's synthetic world, its SuperGLUE-like tasks, T5's pretraining objectives
and the pretraining recipe."""

import collections
import itertools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.data import batches
from prompt_tuning.data import super_glue_format
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.embedded import objectives
from prompt_tuning.embedded import pretrain
from prompt_tuning.embedded import world as world_lib

SMALL = (("train", 60), ("validation", 30))


def _words(text):
  return set(re.findall(r"[A-Za-z]+", text))


# -------------------------------------------------------------------------------------- world


def test_world_is_deterministic_in_the_seed():
  assert list(world_lib.corpus(3, 50)) == list(world_lib.corpus(3, 50))
  assert list(world_lib.corpus(3, 50)) != list(world_lib.corpus(4, 50))
  for fn in world_lib.EXAMPLE_FNS.values():
    assert fn(3, "train", 40) == fn(3, "train", 40)
    assert fn(3, "train", 40) != fn(4, "train", 40)
    assert fn(3, "train", 40) != fn(3, "validation", 40)


def test_written_files_are_deterministic(tmp_path):
  a = world_lib.write_super_glue(str(tmp_path / "a"), 7, SMALL)
  b = world_lib.write_super_glue(str(tmp_path / "b"), 7, SMALL)
  for folder in ("BoolQ", "RTE", "CB"):
    for name in ("train.jsonl", "val.jsonl"):
      with open(os.path.join(a, folder, name)) as fa, open(os.path.join(b, folder, name)) as fb:
        assert fa.read() == fb.read()


@pytest.mark.parametrize(
    "config,labels",
    [
        ("boolq", (True, False)),
        ("rte", ("entailment", "not_entailment")),
        ("cb", ("entailment", "contradiction", "neutral")),
    ],
)
def test_labels_are_balanced(config, labels):
  counts = collections.Counter(r["label"] for r in world_lib.EXAMPLE_FNS[config](0, "train", 600))
  assert counts == {label: 600 // len(labels) for label in labels}


def test_files_follow_the_official_schemas(tmp_path):
  data_dir = world_lib.write_super_glue(str(tmp_path), 0, SMALL)
  for config in ("boolq", "rte", "cb"):
    files = super_glue_format.super_glue_jsonl_files(config, data_dir)
    for split, n in SMALL:
      # Reading checks every field.
      examples = super_glue_format.read_super_glue_jsonl(config, files[split], split)
      assert len(examples) == n
      assert [e["idx"] for e in examples] == list(range(n))
      names = super_glue_format.SUPER_GLUE_LABELS[config]
      assert {e["label"] for e in examples} == set(range(len(names)))


def test_world_has_fixed_balanced_facts():
  world = world_lib.World(0)
  assert (world.facts, world.traits) == (world_lib.World(0).facts, world_lib.World(0).traits)
  assert world.traits != world_lib.World(1).traits
  for rel, values in world_lib.VALUES.items():  # Every value held by about as many people.
    counts = collections.Counter(world.facts[(n, rel)] for n in world_lib.NAMES)
    assert max(counts.values()) <= -(-len(world_lib.NAMES) // len(values))
  for name in world_lib.NAMES:  # Exactly one unknown trait per person.
    assert [t for t in world_lib.TRAITS if (name, t) not in world.traits] == [world.unknown[name]]
  train, validation = world.people["train"], world.people["validation"]
  assert not set(train) & set(validation) and set(train) | set(validation) == set(world_lib.NAMES)
  for people in (train, validation):  # Within a split, each trait holds for half the people.
    for trait in world_lib.TRAITS:
      holds = [world.traits[(n, trait)] for n in people if (n, trait) in world.traits]
      assert abs(sum(holds) - len(holds) / 2) <= 0.5


def _parse(sentence: str):
  """('trait', name, trait, holds) or ('fact', name, relation, value) of a sentence."""
  sentence = sentence.rstrip(".?")
  found = [
      ("trait", m.group(1), trait, form == forms[0])
      for trait, forms in world_lib.TRAITS.items()
      for form in forms[:2]
      if (m := re.fullmatch(form.format(n=r"(\w+)"), sentence))
  ]
  found += [
      ("fact", m.group(1), rel, m.group(2))
      for rel, forms in world_lib.TEMPLATES.items()
      if (m := re.fullmatch(forms[0].format(n=r"(\w+)", v=r"(\w+)"), sentence))
  ]
  (parsed,) = found
  return parsed


def _question(text: str) -> tuple[str, str]:
  ((name, trait),) = [
      (m.group(1), trait)
      for trait, forms in world_lib.TRAITS.items()
      if (m := re.fullmatch(forms[2].format(n=r"(\w+)"), text))
  ]
  return name, trait


def _check_passage(world, passage: str, name: str, trait: str):
  """Every sentence is a true fact; the person is named; the asked trait is never stated."""
  parsed = [_parse(s) for s in passage.rstrip(".").split(". ")]
  assert name in {p[1] for p in parsed}
  for kind, who, what, value in parsed:
    truth = world.traits if kind == "trait" else world.facts
    assert truth[(who, what)] == value
    assert (who, what) != (name, trait)


def test_boolq_needs_world_knowledge():
  """The label is the world's truth about a trait the passage never states, asked about the
  split's own people; trait words are no cue (each trait about as often True as False)."""
  world = world_lib.World(0)
  for split in ("train", "validation"):
    by_trait = collections.defaultdict(list)
    for r in world_lib.boolq_examples(0, split, 2000):
      name, trait = _question(r["question"])
      assert name in world.people[split]
      assert world.traits[(name, trait)] == r["label"]
      _check_passage(world, r["passage"], name, trait)
      by_trait[trait].append(r["label"])
    for trait, labels in by_trait.items():
      assert 0.4 < np.mean(labels) < 0.6, (split, trait)


def test_hypotheses_follow_the_world_and_are_never_stated():
  world = world_lib.World(0)
  for config in ("rte", "cb"):
    for split in ("train", "validation"):
      for r in world_lib.EXAMPLE_FNS[config](0, split, 300):
        _, name, trait, claim = _parse(r["hypothesis"])
        assert name in world.people[split]
        _check_passage(world, r["premise"], name, trait)
        if (name, trait) not in world.traits:
          expected = "neutral"
        else:
          expected = (
              "entailment"
              if world.traits[(name, trait)] == claim
              else ("contradiction" if config == "cb" else "not_entailment")
          )
        assert r["label"] == expected, r


def test_negation_is_no_cue():
  """Negated hypotheses are equally common under every label."""
  for config in ("rte", "cb"):
    by_label = collections.defaultdict(list)
    for r in world_lib.EXAMPLE_FNS[config](0, "train", 600):
      by_label[r["label"]].append(" not " in r["hypothesis"] or "cannot" in r["hypothesis"])
    for label, negated in by_label.items():
      assert 0.3 < np.mean(negated) < 0.7, (config, label)


def test_corpus_contains_the_skills():
  text = " ".join(world_lib.corpus(0, 500))
  for phrase in (
      "Answer: True",
      "Answer: False",
      "does not",
      "entailment",
      "contradiction",
      "neutral",
      "Is it true that",
      "The answer is",
      "? Yes, ",
      "? No, ",
  ):
    assert phrase in text
  # And never the tasks' own input format.
  assert "passage:" not in text and "hypothesis:" not in text


def test_corpus_passages_and_answers_agree_with_the_world():
  world = world_lib.World(0)
  checked = 0
  for doc in world_lib.corpus(0, 300):
    passage = doc[: doc.index("?")].rsplit(". ", 1)[0] + "."
    _check_passage(world, passage, _parse(passage.split(". ")[0])[1], None)
    for q, a in re.findall(r"Question: (.+?)\? Answer: (True|False)\.", doc):
      assert world.traits[_question(q)] == (a == "True")
      checked += 1
    for s, a in re.findall(r"Is it true that (.+?)\? (True|False)\.", doc):
      _, name, trait, claim = _parse(s)
      assert (world.traits[(name, trait)] == claim) == (a == "True")
      checked += 1
  assert checked > 300


@pytest.fixture
def small_vocab(tmp_path):
  data_dir = world_lib.write_super_glue(str(tmp_path / "data"), 0, SMALL)
  path = pretrain.train_vocab(str(tmp_path), world_lib.vocab_sentences(0, 300, data_dir), 200)
  vocab_lib.set_default_vocab_path(path)
  yield data_dir
  vocab_lib.set_default_vocab_path(None)


def test_tasks_register_and_yield_examples(small_vocab):
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tasks import super_glue  # pylint: disable=g-import-not-at-top

  from prompt_tuning.tasks import synthetic  # pylint: disable=g-import-not-at-top

  names = super_glue.register_super_glue(
      "jsonl", small_vocab, prefix="test_synthetic_", tasks=synthetic.TASKS
  )
  words = {
      "boolq": {False: "False", True: "True"},
      "rte": {"entailment": "Yes", "not_entailment": "No"},
      "cb": {"entailment": "Yes", "contradiction": "No", "neutral": "Nobody"},
  }
  for config, folder in world_lib.SUPER_GLUE_FOLDERS.items():
    records = [json.loads(l) for l in open(os.path.join(small_vocab, folder, "val.jsonl"))]
    if config == "boolq":  # T5's format.
      expected = [f"boolq passage: {r['passage']} question: {r['question']}" for r in records]
    else:  # The claim asked as the corpus asks it (tasks/synthetic.py).
      expected = [
          f"{config} premise: {r['premise']} question: does it follow that "
          f"{r['hypothesis'][:-1]}?"
          for r in records
      ]
    for taskless in (False, True):
      name = super_glue.task_name(config, taskless, "test_synthetic_")
      assert name in names
      task = seqio.get_mixture_or_task(name)
      ds = task.get_dataset({"inputs": 128, "targets": 8}, split="validation", shuffle=False)
      examples = list(ds.as_numpy_iterator())
      assert [e["inputs_pretokenized"].decode() for e in examples] == [
          x.split(" ", 1)[1] if taskless else x for x in expected
      ]
      targets = [e["targets_pretokenized"].decode() for e in examples]
      assert targets == [words[config][r["label"]] for r in records]
      assert all(e["inputs"][-1] == 1 for e in examples)  # EOS appended, nothing truncated.
      # The metric sees the official label index.
      label_ids = {w: i for i, w in enumerate(synthetic.CLASS_LABELS[config])}
      assert [task.postprocess_fn(t) for t in targets] == [label_ids[t] for t in targets]


# --------------------------------------------------------------------------------- objectives

VOCAB = 612  # 512 pieces + 100 extra ids.


@pytest.mark.parametrize("length", [2, 3, 10, 57, 128])
def test_span_corruption_reconstructs_the_original(length):
  rng = np.random.default_rng(length)
  for _ in range(20):
    tokens = rng.integers(3, VOCAB - 100, length)
    inputs, targets = objectives.span_corruption(tokens, rng, VOCAB)
    np.testing.assert_array_equal(objectives.uncorrupt(inputs, targets, VOCAB), tokens)
    sentinels = inputs[inputs >= VOCAB - 100]
    # One sentinel per span, counting down from the end of the vocabulary, in both sequences.
    np.testing.assert_array_equal(sentinels, VOCAB - 1 - np.arange(len(sentinels)))
    np.testing.assert_array_equal(targets[targets >= VOCAB - 100], sentinels)
    assert targets[0] == VOCAB - 1 and inputs[0] < VOCAB - 100  # Starts with kept text.


def test_span_corruption_statistics():
  rng = np.random.default_rng(0)
  noise, spans = 0, 0
  for _ in range(200):
    mask = objectives.random_spans_noise_mask(100, rng)
    noise += mask.sum()
    spans += np.sum(mask[1:] & ~mask[:-1])
    assert not mask[0]
  assert noise == 200 * 15  # Density 0.15 exactly per sequence.
  assert spans == 200 * 5  # round(15 / 3) spans: mean span length 3.


def test_span_corruption_is_deterministic_in_the_rng():
  tokens = np.arange(3, 53)
  a = objectives.span_corruption(tokens, np.random.default_rng(1), VOCAB)
  b = objectives.span_corruption(tokens, np.random.default_rng(1), VOCAB)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_sentinel_matches_seqio():
  assert objectives.sentinel_id(VOCAB, 0) == VOCAB - 1
  assert objectives.sentinel_id(VOCAB, 99) == VOCAB - 100


def test_prefix_lm_splits_the_text():
  rng = np.random.default_rng(0)
  splits = set()
  for length in itertools.chain([2, 3], range(5, 60, 7)):
    tokens = np.arange(3, 3 + length)
    prefix, suffix = objectives.prefix_lm(tokens, rng)
    assert len(prefix) >= 1 and len(suffix) >= 1
    np.testing.assert_array_equal(np.concatenate([prefix, suffix]), tokens)
    splits.add(len(prefix))
  assert len(splits) > 5


def test_prefix_lm_can_split_only_after_given_tokens():
  tokens = [5, 6, 9, 7, 9, 8]  # 9 ends a sentence.
  rng = np.random.default_rng(0)
  splits = collections.Counter(len(objectives.prefix_lm(tokens, rng, [9])[0]) for _ in range(200))
  assert set(splits) == {3, 5}  # Right after each 9 (never after the last token).
  no_boundary = {len(objectives.prefix_lm([5, 6, 7], rng, [9])[0]) for _ in range(50)}
  assert no_boundary == {1, 2}  # None present: any point.


def test_encoder_decoder_batch():
  batch = batches.encoder_decoder_batch([([5, 6, 7], [8, 9]), ([5] * 10, [9] * 10)], 6, 4)
  np.testing.assert_array_equal(
      batch["encoder_input_tokens"], [[5, 6, 7, 1, 0, 0], [5, 5, 5, 5, 5, 1]]
  )
  np.testing.assert_array_equal(batch["decoder_target_tokens"], [[8, 9, 1, 0], [9, 9, 9, 1]])
  np.testing.assert_array_equal(batch["decoder_input_tokens"], [[0, 8, 9, 1], [0, 9, 9, 9]])
  np.testing.assert_array_equal(batch["decoder_loss_weights"], [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_model_vocab_size_is_padded():
  assert pretrain.model_vocab_size(386) == 512
  assert pretrain.model_vocab_size(28) == 128


# ------------------------------------------------------------------------------ the recipe


def test_pretraining_recipe_runs_end_to_end(tmp_path):
  """The gin recipe at a toy size: vocabulary, both stages, T5X checkpoints, config.json."""
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning import embedded  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top

  out = tmp_path / "embedded"
  gin.clear_config()
  args = [
      "--gin_file=runs/pretrain_embedded.gin",
      f"--gin.OUT_DIR='{out}'",
      "--gin.pretrain.pretrain.num_docs=200",
      "--gin.pretrain.pretrain.num_pieces=200",
      "--gin.pretrain.pretrain.span_steps=2",
      "--gin.pretrain.pretrain.lm_steps=3",
      "--gin.pretrain.pretrain.batch_size=4",
      "--gin.pretrain.pretrain.log_period=1",
      "--gin.pretrain.pretrain.model_overrides={'emb_dim': 8, 'num_heads': 2, 'head_dim': 4, "
      "'mlp_dim': 16, 'num_encoder_layers': 1, 'num_decoder_layers': 1}",
  ]
  path = pretrain.main(args)
  gin.clear_config()
  assert path == embedded.checkpoint_path("lm_adapted", str(out))
  assert checkpoints.read_step(path) == 5
  assert checkpoints.read_step(embedded.checkpoint_path("span_corruption", str(out))) == 2
  cfg = embedded.load_config(str(out))
  assert (cfg.emb_dim, cfg.vocab_size) == (8, 384)  # 200 pieces + 100 extra ids -> 384.
  params = checkpoints.load_t5x_checkpoint(path)
  assert params["token_embedder"]["embedding"].shape == (384, 8)
  log = (out / "pretrain.log").read_text()
  assert log.count("zero-shot BoolQ-like") == 5
  assert not (out / "data").exists()  # Task files are regenerated from the seed, not shipped.
  # A killed run resumes by stage: with the LM-adapted checkpoint gone, only that stage reruns.
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.rmtree(out / "lm_adapted")
  # Rerun keeping the LM-adapted checkpoint after 2 of the 3 LM steps (the LM-adaptation-length
  # ablation's intermediate checkpoints).
  keep = ["--gin.pretrain.pretrain.lm_keep_steps=[2]"]
  assert pretrain.main(args + keep) == path
  gin.clear_config()
  log = (out / "pretrain.log").read_text()
  assert "span_corruption: found" in log and log.count("zero-shot BoolQ-like") == 8
  kept = out / "lm_adapted_intermediate" / "checkpoint_4"
  assert sorted(os.listdir(out / "lm_adapted_intermediate")) == ["checkpoint_4"]
  assert embedded.checkpoint_path("lm_adapted_intermediate", str(out), step=4) == str(kept)
  with pytest.raises(FileNotFoundError, match="step 3 under.*lm_keep_steps"):
    embedded.checkpoint_path("lm_adapted_intermediate", str(out), step=3)
  with pytest.raises(ValueError, match=r"lm_keep_steps.*\[4\] are not in 1..lm_steps \(3\)"):
    pretrain.main(args + ["--gin.pretrain.pretrain.lm_keep_steps=[1, 4]"])
  gin.clear_config()
  with pytest.raises(ValueError, match="already done.*fresh OUT_DIR"):
    pretrain.main(args + keep)
  gin.clear_config()
  # The kept checkpoint is what a run with 2 LM steps ends with: the stage's learning rate and
  # data order do not depend on lm_steps.
  shutil.rmtree(out / "lm_adapted")
  short = pretrain.main(args + ["--gin.pretrain.pretrain.lm_steps=2"])
  gin.clear_config()
  assert short == str(out / "lm_adapted" / "checkpoint_4")
  a, b = checkpoints.load_t5x_checkpoint(str(kept)), checkpoints.load_t5x_checkpoint(short)
  assert [k for k, _ in _leaves(a)] == [k for k, _ in _leaves(b)]
  for (key, x), (_, y) in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=key)
  span = checkpoints.load_t5x_checkpoint(embedded.checkpoint_path("span_corruption", str(out)))
  assert not np.array_equal(  # The 2 LM steps did change the parameters.
      span["token_embedder"]["embedding"], a["token_embedder"]["embedding"]
  )


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top

  return [(jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def test_vocab_covers_the_task_formats(small_vocab):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  sp = spm.SentencePieceProcessor(model_file=vocab_lib.get_vocab_path())
  for text in (
      "boolq passage: Tom lives in Oslo. question: does Tom live in Oslo",
      "cb hypothesis: Tom lives in Oslo. premise: Tom lives in Oslo.",
      "cb premise: Tom lives in Oslo. question: does it follow that Tom can swim?",
      "True False Yes No Nobody",
  ):
    assert sp.unk_id() not in sp.encode(text), text


def test_task_module_writes_files_once(tmp_path, monkeypatch):
  from prompt_tuning.tasks import synthetic as synthetic_tasks  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv(synthetic_tasks.DATA_DIR_ENV_VAR, str(tmp_path))
  path = synthetic_tasks.data_dir()
  assert path == str(tmp_path / f"{world_lib.VERSION}_seed0")
  assert synthetic_tasks.ensure_data(path) == path
  boolq = tmp_path / path / "BoolQ" / "val.jsonl"
  assert len(boolq.read_text().splitlines()) == dict(world_lib.SPLIT_SIZES)["validation"]
  stamp = os.path.getmtime(boolq)
  synthetic_tasks.ensure_data(path)  # Complete: left alone.
  assert os.path.getmtime(boolq) == stamp
  assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # No temporary leftovers.
  assert "synthetic_taskless_super_glue_boolq_v102" in synthetic_tasks.REGISTERED


def test_task_module_writes_nothing_until_a_task_is_read(tmp_path):
  """Importing registers the tasks only; the first read writes the files where the environment
  says at that moment."""
  home, at_import, at_read = tmp_path / "home", tmp_path / "at_import", tmp_path / "at_read"
  home.mkdir()
  script = f"""
import os, sys
from prompt_tuning.tasks import synthetic
assert "prompt_tuning.embedded" not in sys.modules, "the world was imported at import"
assert not os.path.exists({str(home)!r} + "/.cache/prompt_tuning"), "files written at import"
assert not os.path.exists({str(at_import)!r}), "files written at import"
os.environ[synthetic.DATA_DIR_ENV_VAR] = {str(at_read)!r}
import seqio
source = seqio.get_mixture_or_task("synthetic_super_glue_boolq_v102").source
print(source.num_input_examples("validation"))
"""
  env = dict(os.environ, HOME=str(home), PROMPT_TUNING_SYNTHETIC_DIR=str(at_import))
  out = subprocess.run(
      [sys.executable, "-c", script],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split()[-1] == str(dict(world_lib.SPLIT_SIZES)["validation"])
  # (TensorFlow writes ~/.keras/keras.json when imported: not ours.)
  assert not list(home.rglob("*.jsonl")) and not (home / ".cache" / "prompt_tuning").exists()
  assert not at_import.exists()
  assert os.listdir(at_read) == [f"{world_lib.VERSION}_seed0"]


def _stated_learning_rate(k: int, peak: float, schedule_steps: int) -> float:
  """The schedule as configs/runs/pretrain_embedded.gin states it, `k` steps into a stage:
  linear warmup from 0 over min(200, schedule_steps // 10 + 1) steps, then cosine decay to
  0.1 * peak at `schedule_steps`."""
  warmup = min(200, schedule_steps // 10 + 1)
  if k < warmup:
    return peak * k / warmup
  progress = min((k - warmup) / (schedule_steps - warmup), 1.0)
  return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def test_each_stage_runs_its_own_learning_rate_schedule(tmp_path):
  """The logged rate at each global step is the stated formula, counted from the stage's start."""
  span_steps, lm_steps, peak, schedule_steps = 4, 5, 2e-3, 20  # Warmup 3 steps, then cosine.
  pretrain.pretrain(
      str(tmp_path),
      num_docs=100,
      num_pieces=200,
      span_steps=span_steps,
      lm_steps=lm_steps,
      batch_size=2,
      learning_rate=peak,
      schedule_steps=schedule_steps,
      log_period=1,
      model_overrides={
          "emb_dim": 8,
          "num_heads": 2,
          "head_dim": 4,
          "mlp_dim": 16,
          "num_encoder_layers": 1,
          "num_decoder_layers": 1,
      },
  )
  logged = {
      int(m.group(2)): (m.group(1), float(m.group(3)))
      for m in re.finditer(
          r"(\w+) step (\d+) \(\d+/\d+\) .*? learning rate (\S+) ",
          (tmp_path / "pretrain.log").read_text(),
      )
  }
  assert sorted(logged) == list(range(1, span_steps + lm_steps + 1))
  for step, (stage, lr) in logged.items():
    stage_start = 0 if stage == "span_corruption" else span_steps
    # Logged after the update from step - 1, with the rate that update used.
    expected = _stated_learning_rate(step - 1 - stage_start, peak, schedule_steps)
    assert lr == pytest.approx(expected, rel=1e-4, abs=1e-12), (step, stage)
  # By design the LM stage warms up again: its first update has the warmup's first rate, 0.
  assert logged[span_steps + 1] == ("lm_adapted", 0.0)
  assert logged[span_steps][1] == pytest.approx(peak)  # Span corruption got past its warmup.
