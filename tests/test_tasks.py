"""Tests for tasks/ (SuperGLUE, GLUE) and the data sources, registration and text tasks.

TFDS is mocked offline: `tfds.testing.mock_data` with an `as_dataset_fn` that runs the
real TFDS `super_glue` generation code over the hand-written official JSONL files in
testdata/super_glue/ (GLUE: hand-built TFDS-schema rows in testdata/glue/), then
encodes and decodes them with the real TFDS features. The JSONL path reads the same
files through `super_glue_format.py`; both must give identical preprocessed examples.
"""

import contextlib
import functools
import importlib
import json
import pathlib
import sys
import textwrap

from conftest import T5_VOCAB, require
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.data import files
from prompt_tuning.data import registration
from prompt_tuning.data import sources
from prompt_tuning.data import super_glue_format
from prompt_tuning.data import text_tasks
from prompt_tuning.data import vocab
from prompt_tuning.tasks import glue
from prompt_tuning.tasks import super_glue

TESTDATA = pathlib.Path(__file__).parent / "testdata"
SUPER_GLUE_DIR = TESTDATA / "super_glue"
JSONL_PREFIX = "jsonl_"
EOS_ID = 1

super_glue.register_super_glue("jsonl", str(SUPER_GLUE_DIR), prefix=JSONL_PREFIX)

# Expected (inputs, targets) text, per task and split, for the files in testdata/.
RTE_VALIDATION = [
    (
        "rte hypothesis: The company hired engineers. premise: The company hired twenty new "
        "engineers in March.",
        "entailment",
    ),
    (
        "rte hypothesis: The bridge was opened yesterday. premise: The bridge was closed for "
        "repairs.",
        "not_entailment",
    ),
]
MULTIRC_PARAGRAPH = "Sent 1: Sam bought apples at the market. Sent 2: He paid two dollars. "
RECORD_VALIDATION_INPUTS = (
    "entities: Louvre, Monday, Newswire, Paris, The Louvre passage: Paris (Newswire) -- The "
    "Louvre reopened on Monday after a week of repairs. Visitors queued outside the Louvre. "
    "The museum had been closed since Monday? Paris welcomed them back"
)
SUPER_GLUE_EXPECTED = {
    ("boolq", "validation"): [
        (
            "boolq passage: On a clear day the sky looks blue because air scatters blue light "
            "more than red light. question: is the sky blue on a clear day",
            "True",
        ),
        (
            "boolq passage: Penguins live almost only in the Southern Hemisphere. question: do "
            "penguins live at the north pole",
            "False",
        ),
    ],
    ("boolq", "test"): [
        (
            "boolq passage: Some mudskippers climb low mangrove roots. question: can a fish "
            "climb a tree",
            "<unk>",
        )
    ],
    ("cb", "validation"): [
        (
            "cb hypothesis: Mary had left the house premise: Mary said she had already left the "
            "house when the rain started.",
            "entailment",
        ),
        (
            "cb hypothesis: Tom visited Paris premise: It is not true that Tom ever visited "
            "Paris.",
            "contradiction",
        ),
        (
            "cb hypothesis: the train was late premise: Anna wondered whether the train would be "
            "late.",
            "neutral",
        ),
    ],
    ("copa", "validation"): [
        (
            "copa choice1: He fell off the ladder. choice2: He climbed up the ladder. premise: "
            "The man lost his balance on the ladder. question: effect",
            "choice1",
        ),
        (
            "copa choice1: The sun was shining. choice2: It had rained overnight. premise: The "
            "grass was wet. question: cause",
            "choice2",
        ),
    ],
    ("multirc", "validation"): [
        (
            f"multirc question: What did Sam buy? answer: Apples paragraph: {MULTIRC_PARAGRAPH}",
            "True",
        ),
        (
            f"multirc question: What did Sam buy? answer: Pears paragraph: {MULTIRC_PARAGRAPH}",
            "False",
        ),
        (
            "multirc question: How much did he pay? answer: Two dollars paragraph: "
            f"{MULTIRC_PARAGRAPH}",
            "True",
        ),
        (
            "multirc question: How much did he pay? answer: Ten dollars paragraph: "
            f"{MULTIRC_PARAGRAPH}",
            "False",
        ),
    ],
    ("multirc", "test"): [
        (
            "multirc question: When does the shop open? answer: At nine paragraph: Sent 1: The "
            "shop opens at nine. ",
            "<unk>",
        ),
        (
            "multirc question: When does the shop open? answer: At noon paragraph: Sent 1: The "
            "shop opens at nine. ",
            "<unk>",
        ),
    ],
    ("record", "validation"): [
        (
            "record query: Crowds gathered outside the @placeholder in Paris. "
            + RECORD_VALIDATION_INPUTS,
            "Louvre",
        ),
        (
            "record query: Crowds gathered outside the @placeholder in Paris. "
            + RECORD_VALIDATION_INPUTS,
            "The Louvre",
        ),
        ("record query: @placeholder welcomed the visitors. " + RECORD_VALIDATION_INPUTS, "Paris"),
    ],
    ("record", "test"): [
        (
            "record query: The @placeholder is in Rome. entities: Colosseum, Rome, Wire passage: "
            "Rome (Wire) -- The Colosseum drew record crowds. Tourists flocked to Rome",
            "<unk>",
        )
    ],
    ("rte", "validation"): RTE_VALIDATION,
    ("wic", "validation"): [
        (
            "wic sentence1: He sat on the bank of the river. sentence2: She works at the bank "
            "downtown. word: bank",
            "False",
        ),
        (
            "wic sentence1: I run every morning. sentence2: They run to the station. word: run",
            "True",
        ),
    ],
    ("wsc_fixed", "train"): [
        (
            "wsc text: * The trophy * did not fit in the suitcase because # it # was too big.",
            "True",
        ),
        (
            "wsc text: * The trophy * did not fit in the suitcase because # it # was too small.",
            "False",
        ),
    ],
    ("wsc_fixed", "validation"): [
        # The file's span "her sister." is repaired to "her sister" (TFDS wsc.fixed).
        ("wsc text: Anna thanked * her sister * because # she # had helped a lot.", "True"),
        ("wsc text: * Paul * called George but # he # did not answer.", "False"),
    ],
    ("wsc_fixed", "test"): [
        ("wsc text: * The dog * chased the cat until # it # got tired.", "<unk>")
    ],
    ("wsc_v102_simple", "train"): [
        # Only the example whose noun is the referent is kept for training.
        ("wsc: The trophy did not fit in the suitcase because *it* was too big.", "The trophy")
    ],
    ("wsc_v102_simple", "validation"): [
        ("wsc: Anna thanked her sister because *she* had helped a lot.", "her sister"),
        ("wsc: Paul called George but *he* did not answer.", "Paul"),
    ],
    ("axb", "test"): [
        (
            "rte hypothesis: The cat did not sit on the mat. premise: The cat sat on the mat.",
            "not_entailment",
        ),
        ("rte hypothesis: Some dogs bark. premise: All dogs bark.", "entailment"),
    ],
    ("axg", "test"): [
        (
            "rte hypothesis: The patient will be discharged soon. premise: The nurse told the "
            "patient that he would be discharged soon.",
            "entailment",
        ),
        (
            "rte hypothesis: The patient will be discharged soon. premise: The nurse told the "
            "patient that she would be discharged soon.",
            "entailment",
        ),
        (
            "rte hypothesis: The chef had worked late. premise: The chef thanked the waiter "
            "because he had worked late.",
            "not_entailment",
        ),
        (
            "rte hypothesis: The chef had worked late. premise: The chef thanked the waiter "
            "because she had worked late.",
            "not_entailment",
        ),
    ],
}
GLUE_EXPECTED = {
    ("cola", "validation"): [
        ("cola sentence: The book was read by Mary.", "acceptable"),
        ("cola sentence: Book the was Mary read.", "unacceptable"),
    ],
    ("sst2", "validation"): [
        ("sst2 sentence: a warm and funny film ", "positive"),
        ("sst2 sentence: dull and far too long ", "negative"),
    ],
    ("mrpc", "validation"): [
        (
            "mrpc sentence1: The firm said profits rose 5 percent. sentence2: Profits rose 5 "
            "percent, the firm said.",
            "equivalent",
        ),
        (
            "mrpc sentence1: The talks ended on Friday. sentence2: The talks will resume next "
            "month.",
            "not_equivalent",
        ),
    ],
    ("qqp", "validation"): [
        (
            "qqp question1: How do I learn to cook? question2: What is the best way to learn "
            "cooking?",
            "duplicate",
        ),
        ("qqp question1: Why is the sea salty? question2: How deep is the sea?", "not_duplicate"),
    ],
    ("stsb", "validation"): [
        ("stsb sentence1: A man is playing a guitar. sentence2: A man plays the guitar.", "4.8"),
        ("stsb sentence1: A dog runs. sentence2: A woman is cooking.", "0.4"),
    ],
    ("mnli", "validation_matched"): [
        (
            "mnli hypothesis: The museum is closed on Mondays. premise: The museum is open every "
            "day except Monday.",
            "entailment",
        ),
        ("mnli hypothesis: He bought a blue car. premise: He bought a red car.", "contradiction"),
        ("mnli hypothesis: She bought apples. premise: She went to the market.", "neutral"),
    ],
    ("qnli", "validation"): [
        (
            "qnli question: Where is the Eiffel Tower? sentence: The Eiffel Tower is in Paris.",
            "entailment",
        )
    ],
    ("rte", "validation"): [
        (
            "rte sentence1: The company hired twenty new engineers in March. sentence2: The "
            "company hired engineers.",
            "entailment",
        ),
        (
            "rte sentence1: The bridge was closed for repairs. sentence2: The bridge was opened "
            "yesterday.",
            "not_entailment",
        ),
    ],
    ("wnli", "validation"): [
        (
            "wnli sentence1: The cup fell off the table because it was slippery. sentence2: The "
            "table was slippery.",
            "not_entailment",
        )
    ],
}


@pytest.fixture(scope="module", autouse=True)
def t5_vocab():
  vocab.set_default_vocab_path(require(T5_VOCAB))
  yield
  vocab.set_default_vocab_path(None)


def _sg_task(name: str, split: str, taskless: bool = False, prefix: str = "") -> str:
  if name == "wsc_v102_simple":
    suffix = "_simple_train" if split == "train" else "_simple_eval"
    return super_glue.task_name("wsc", taskless, prefix) + suffix
  return super_glue.task_name(name, taskless, prefix)


def _tfds_examples(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
  """What TFDS itself would generate from our files (GLUE: rows already in its schema)."""
  if builder.name == "super_glue":
    config = builder.builder_config.name
    path = super_glue_format.super_glue_jsonl_files(config, str(SUPER_GLUE_DIR))[split]
    generate = builder._generate_examples  # pylint: disable=protected-access
    return [ex for _, ex in generate(data_file=path, split=split)]
  path = TESTDATA / "glue" / f"{builder.builder_config.name}.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


# (TFDS name, split) -> serialized examples. Filled before mocking: the mock also fakes
# the file system, so TFDS's generator could not read testdata/ inside it.
_SERIALIZED = {}


def _serialize_for_mock(source: seqio.DataSource, split: str) -> None:
  if not isinstance(source, seqio.TfdsDataSource):
    return
  builder = tfds.builder(source.tfds_dataset.name)
  features = builder.info.features
  _SERIALIZED[builder.info.full_name, split] = [
      features.serialize_example(ex) for ex in _tfds_examples(builder, split)
  ]


def _mock_as_dataset(builder, split, **unused_kwargs) -> tf.data.Dataset:
  """Stands in for reading TFRecords: TFDS's own feature decoding of our examples."""
  serialized = _SERIALIZED[builder.info.full_name, split]
  return tf.data.Dataset.from_tensor_slices(serialized).map(
      builder.info.features.deserialize_example
  )


@contextlib.contextmanager
def mock_tfds():
  with tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=_mock_as_dataset
  ):
    yield


@functools.lru_cache(maxsize=None)
def load(name: str, split: str, stage: str = "tokenised") -> tuple[dict, ...]:
  """A task split's examples, cached, at a `stage` of the pipeline.

  "raw": from the source; "text": after the text formatter only (cheap: no tokenizer);
  "tokenised": the task's full output.
  """
  task = seqio.get_mixture_or_task(name)
  _serialize_for_mock(task.source, split)
  with mock_tfds():
    if stage in ("raw", "text"):
      ds = task.source.get_dataset(split=split, shuffle=False)
      if stage == "text":
        ds = task.preprocessors[0](ds)
    else:
      # No in-memory caching: it asks TFDS for split sizes, which a mock has not got.
      ds = task.get_dataset(
          sequence_length=None, split=split, shuffle=False, try_in_mem_cache=False
      )
    return tuple(ds.as_numpy_iterator())


def texts(examples) -> list[tuple[str, str]]:
  """(inputs, targets) text, from a text or a tokenised stage."""
  examples = list(examples)
  suffix = "_pretokenized" if examples and "inputs_pretokenized" in examples[0] else ""
  return [(ex["inputs" + suffix].decode(), ex["targets" + suffix].decode()) for ex in examples]


def assert_same_examples(a, b):
  """Same examples: same keys, nesting, dtypes and values."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert tf.nest.map_structure(lambda v: np.asarray(v).dtype, x) == tf.nest.map_structure(
        lambda v: np.asarray(v).dtype, y
    )
    tf.nest.map_structure(np.testing.assert_array_equal, x, y)


SG_CASES = sorted(SUPER_GLUE_EXPECTED)


@pytest.mark.parametrize("name,split", SG_CASES)
def test_super_glue_text_and_eos(name, split):
  examples = load(_sg_task(name, split), split)
  assert texts(examples) == SUPER_GLUE_EXPECTED[name, split]
  for ex in examples:
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32 and ex[key].ndim == 1
      assert ex[key][-1] == EOS_ID and EOS_ID not in ex[key][:-1]
    if ex["targets_pretokenized"] != b"<unk>":  # T5's vocabulary has no "<" (nor has T5).
      assert (
          vocab.get_vocabulary().decode(ex["targets"].tolist())
          == ex["targets_pretokenized"].decode()
      )


@pytest.mark.parametrize("name,split", SG_CASES)
def test_super_glue_jsonl_source_equals_tfds(name, split):
  """The official files read by super_glue_format.py == TFDS's own generation of them."""
  assert_same_examples(
      load(_sg_task(name, split), split, "raw"),
      load(_sg_task(name, split, prefix=JSONL_PREFIX), split, "raw"),
  )


@pytest.mark.parametrize(
    "name,split",
    [
        ("boolq", "test"),
        ("multirc", "validation"),
        ("record", "validation"),
        ("wsc_fixed", "validation"),
        ("wsc_v102_simple", "train"),
        ("axb", "test"),
    ],
)
def test_super_glue_jsonl_task_equals_tfds(name, split):
  assert_same_examples(
      load(_sg_task(name, split), split), load(_sg_task(name, split, prefix=JSONL_PREFIX), split)
  )


@pytest.mark.parametrize(
    "name,split",
    [
        ("rte", "validation"),
        ("multirc", "test"),
        ("record", "test"),
        ("wsc_fixed", "test"),
        ("wsc_v102_simple", "validation"),
        ("axg", "test"),
    ],
)
def test_super_glue_taskless_drops_only_the_task_name(name, split):
  expected = [
      (inputs.split(" ", 1)[1], targets) for inputs, targets in SUPER_GLUE_EXPECTED[name, split]
  ]
  assert (
      texts(load(_sg_task(name, split, taskless=True, prefix=JSONL_PREFIX), split, "text"))
      == expected
  )


@pytest.mark.parametrize("name,split", sorted(GLUE_EXPECTED))
def test_glue_text(name, split):
  assert texts(load(glue.task_name(name), split, "text")) == GLUE_EXPECTED[name, split]


def test_glue_tokenised():
  examples = load(glue.task_name("mrpc"), "validation")
  assert texts(examples) == GLUE_EXPECTED["mrpc", "validation"]
  assert all(ex[k][-1] == EOS_ID for ex in examples for k in ("inputs", "targets"))


@pytest.mark.parametrize("name,split", [("sst2", "validation"), ("mnli", "validation_matched")])
def test_glue_taskless_drops_only_the_task_name(name, split):
  expected = [(i.split(" ", 1)[1], t) for i, t in GLUE_EXPECTED[name, split]]
  assert texts(load(glue.task_name(name, taskless=True), split, "text")) == expected


def test_ids_carried_for_metrics():
  multirc = load(_sg_task("multirc", "validation"), "validation")
  assert [(ex["idx/paragraph"], ex["idx/question"], ex["idx/answer"]) for ex in multirc] == [
      (0, 0, 0),
      (0, 0, 1),
      (0, 1, 2),
      (0, 1, 3),
  ]
  record = load(_sg_task("record", "validation"), "validation")
  assert [(ex["idx/passage"], ex["idx/query"]) for ex in record] == [(0, 0), (0, 0), (0, 1)]
  # Every copy of a query keeps all of its gold answers, for evaluation.
  assert [list(ex["answers"]) for ex in record] == [
      [b"Louvre", b"The Louvre"],
      [b"Louvre", b"The Louvre"],
      [b"Paris"],
  ]


def _evaluate(task: seqio.Task, examples, predictions) -> dict[str, float]:
  """What seqio's evaluator does with the postprocess_fn and metric_fns."""
  targets = [
      task.postprocess_fn(ex["targets_pretokenized"].decode(), example=ex, is_target=True)
      for ex in examples
  ]
  predictions = [
      task.postprocess_fn(p, example=ex, is_target=False) for ex, p in zip(examples, predictions)
  ]
  results = {}
  for fn in task.metric_fns:
    results.update(fn(targets, predictions))
  return results


@pytest.mark.parametrize(
    "name,split",
    [
        ("boolq", "validation"),
        ("cb", "validation"),
        ("copa", "validation"),
        ("multirc", "validation"),
        ("record", "validation"),
        ("rte", "validation"),
        ("wic", "validation"),
        ("wsc_fixed", "validation"),
        ("axb", "test"),
        ("axg", "test"),
    ],
)
def test_gold_predictions_score_perfectly(name, split):
  task = seqio.get_mixture_or_task(_sg_task(name, split))
  examples = load(task.name, split)
  gold = [ex["targets_pretokenized"].decode() for ex in examples]
  results = _evaluate(task, examples, gold)
  assert results and all(v == 100.0 for v in results.values()), results
  garbage = _evaluate(task, examples, ["not a label"] * len(examples))
  assert garbage.get("accuracy", 0.0) == 0.0 and garbage.get("exact_match", 0.0) == 0.0


def test_wsc_simple_scores_whether_the_referent_was_named():
  task = seqio.get_mixture_or_task(_sg_task("wsc_v102_simple", "validation"))
  examples = load(task.name, "validation")  # Labels: 1 ("her sister"), 0 ("Paul").
  assert _evaluate(task, examples, ["her sister", "George"]) == {"accuracy": 100.0}
  # Determiners and case are ignored: "the sister" names the referent, "paul" too.
  assert _evaluate(task, examples, ["the sister", "paul"]) == {"accuracy": 50.0}
  assert _evaluate(task, examples, ["", "Paul's dog"]) == {"accuracy": 50.0}


def test_names_registered():
  for name in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc_fixed", "axb", "axg"):
    for taskless in (False, True):
      assert isinstance(seqio.get_mixture_or_task(super_glue.task_name(name, taskless)), seqio.Task)
  for name in ("sst2", "mrpc", "qqp", "rte", "mnli", "cola", "stsb", "qnli", "wnli", "ax"):
    assert isinstance(seqio.get_mixture_or_task(glue.task_name(name, True)), seqio.Task)
  for mixture in (
      "super_glue_v102_proportional",
      "taskless_super_glue_v102_proportional",
      "glue_v002_proportional",
  ):
    assert isinstance(seqio.get_mixture_or_task(mixture), seqio.Mixture)


def test_mixture_rates_fall_back_to_published_sizes_without_data(tmp_path):
  mixture = seqio.get_mixture_or_task("taskless_super_glue_v102_proportional")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates["taskless_super_glue_boolq_v102"] == 9_427
  assert rates["taskless_super_glue_record_v102"] == 100_730
  assert rates["taskless_super_glue_wsc_v102_simple_train"] == 554
  assert rates["taskless_super_glue_axg_v102"] == 0
  assert "taskless_super_glue_wsc_fixed_v102" not in rates


def test_jsonl_mixture_rate_counts_local_examples():
  mixture = seqio.get_mixture_or_task(JSONL_PREFIX + "super_glue_v102_proportional")
  # WSC/train.jsonl has two lines; BoolQ has no train.jsonl, so the fallback applies.
  rate = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rate[JSONL_PREFIX + "super_glue_wsc_v102_simple_train"] == 2
  assert rate[JSONL_PREFIX + "super_glue_boolq_v102"] == 9_427


def test_mixture_rate_that_cannot_be_computed_names_the_task_and_cause(tmp_path):
  """No silent rate 0: a task with no count and no published size, or no train split, fails."""
  train = _write(tmp_path / "train.jsonl", [json.dumps({"x": "a", "y": "b"})])
  counted = text_tasks.register_text_task(
      "rate_counted", {"train": train}, "x", "y", overwrite=True
  )
  missing = text_tasks.register_text_task(
      "rate_missing", {"train": str(tmp_path / "none.jsonl")}, "x", "y", overwrite=True
  )
  eval_only = text_tasks.register_text_task(
      "rate_eval_only", {"validation": train}, "x", "y", overwrite=True
  )
  rate = registration.rate_num_examples({"rate_eval_only": 10.0})
  try:
    assert rate(counted) == 1
    with pytest.raises(
        registration.MixtureRateError, match=r"task 'rate_missing'.*data is missing.*none\.jsonl"
    ):
      rate(missing)
    with pytest.raises(
        registration.MixtureRateError, match=r"task 'rate_eval_only'.*no 'train' split"
    ):
      rate(eval_only)
    assert registration.rate_num_examples({"rate_missing": 7.0})(missing) == 7
    # Bad data is a data error, not a reason to fall back to the published size.
    _write(tmp_path / "train.jsonl", ["{not json"])
    fresh = text_tasks.register_text_task(
        "rate_counted", {"train": train}, "x", "y", overwrite=True
    )
    with pytest.raises(files.DataError, match="train.jsonl:1: invalid JSON"):
      registration.rate_num_examples({"rate_counted": 5.0})(fresh)
  finally:
    for name in ("rate_counted", "rate_missing", "rate_eval_only"):
      seqio.TaskRegistry.remove(name)


def test_add_task_and_add_mixture_replace_what_was_registered(tmp_path):
  train = _write(tmp_path / "train.jsonl", [json.dumps({"x": "a", "y": "b"})])
  first = text_tasks.register_text_task("replaced_task", {"train": train}, "x", "y")
  try:
    with pytest.raises(ValueError, match="duplicate provider: replaced_task"):
      text_tasks.register_text_task("replaced_task", {"train": train}, "x", "y")
    second = registration.add_task(
        "replaced_task", source=first.source, output_features=first.output_features
    )
    assert seqio.get_mixture_or_task("replaced_task") is second is not first
    registration.add_mixture("replaced_mixture", [("replaced_task", 1.0)])
    mixture = registration.add_mixture("replaced_mixture", [("replaced_task", 2.0)])
    assert seqio.get_mixture_or_task("replaced_mixture") is mixture
    assert mixture.get_rate(second) == 2.0
  finally:
    seqio.MixtureRegistry.remove("replaced_mixture")
    seqio.TaskRegistry.remove("replaced_task")


def test_env_var_selects_jsonl(monkeypatch):
  monkeypatch.setenv(super_glue.SUPER_GLUE_DIR_ENV_VAR, str(SUPER_GLUE_DIR))
  try:
    super_glue._register_default()  # pylint: disable=protected-access
    task = seqio.get_mixture_or_task("super_glue_rte_v102")
    assert isinstance(task.source, sources.CheckedFileDataSource)
    ds = task.get_dataset(sequence_length=None, split="validation", shuffle=False)
    assert texts(ds.as_numpy_iterator()) == RTE_VALIDATION
  finally:
    monkeypatch.delenv(super_glue.SUPER_GLUE_DIR_ENV_VAR)
    super_glue._register_default()  # pylint: disable=protected-access
  assert isinstance(seqio.get_mixture_or_task("super_glue_rte_v102").source, seqio.TfdsDataSource)


def test_vocab_path_is_resolved_at_use(monkeypatch):
  assert vocab.get_vocab_path() == str(T5_VOCAB)
  vocab.set_default_vocab_path(None)
  monkeypatch.setenv(vocab.VOCAB_ENV_VAR, "/elsewhere/spiece.model")
  assert vocab.get_vocab_path() == "/elsewhere/spiece.model"
  monkeypatch.delenv(vocab.VOCAB_ENV_VAR)
  assert vocab.get_vocab_path() == vocab.DEFAULT_VOCAB_PATH
  vocab.set_default_vocab_path(T5_VOCAB)
  features = seqio.get_mixture_or_task("super_glue_rte_v102").output_features
  assert features["targets"].vocabulary.vocab_size == 32_100
  assert features["targets"].vocabulary.eos_id == EOS_ID


# ------------------------------------------------------------------------- bad data


def _write(path: pathlib.Path, lines: list[str]) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


GOOD_RTE = {
    "premise": "A man sleeps.",
    "hypothesis": "A man rests.",
    "label": "entailment",
    "idx": 0,
}


@pytest.mark.parametrize(
    "config,row,field,split",
    [
        ("rte", {**GOOD_RTE, "label": "maybe"}, "label", "validation"),
        ("rte", {k: v for k, v in GOOD_RTE.items() if k != "hypothesis"}, "hypothesis", "train"),
        ("rte", {k: v for k, v in GOOD_RTE.items() if k != "label"}, "label", "validation"),
        ("rte", {**GOOD_RTE, "premise": "  "}, "premise", "validation"),
        ("rte", {**GOOD_RTE, "idx": "0"}, "idx", "validation"),
        (
            "copa",
            {
                "premise": "p",
                "choice1": "a",
                "choice2": "b",
                "question": "cause",
                "label": 2,
                "idx": 0,
            },
            "label",
            "validation",
        ),
        ("boolq", {"question": "q", "passage": "p", "label": 1, "idx": 0}, "label", "train"),
        (
            "multirc",
            {
                "idx": 0,
                "passage": {
                    "text": "t",
                    "questions": [
                        {
                            "question": "q",
                            "idx": 0,
                            "answers": [{"text": "a", "idx": 0, "label": 3}],
                        }
                    ],
                },
            },
            "passage.questions[0].answers[0].label",
            "validation",
        ),
        (
            "record",
            {
                "idx": 0,
                "passage": {"text": "Paris", "entities": [{"start": 0, "end": 9}]},
                "qas": [],
            },
            "passage.entities[0].end",
            "validation",
        ),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, config, row, field, split):
  path = _write(
      tmp_path / "bad.jsonl", [json.dumps(GOOD_RTE) if config == "rte" else "", json.dumps(row)]
  )
  with pytest.raises(files.DataError) as e:
    super_glue_format.read_super_glue_jsonl(config, path, split)
  assert f"{path}:2: field '{field}'" in str(e.value)


def test_unreadable_files_name_the_file_and_line(tmp_path):
  missing = str(tmp_path / "RTE" / "val.jsonl")
  with pytest.raises(files.DataError, match=f"{missing}: cannot read file"):
    super_glue_format.read_super_glue_jsonl("rte", missing, "validation")
  bad_json = _write(tmp_path / "a.jsonl", [json.dumps(GOOD_RTE), "{not json"])
  with pytest.raises(files.DataError, match=f"{bad_json}:2: invalid JSON"):
    super_glue_format.read_super_glue_jsonl("rte", bad_json, "validation")
  bad_utf8 = tmp_path / "b.jsonl"
  bad_utf8.write_bytes(b'{"premise": "caf\xe9"}\n')
  with pytest.raises(files.DataError, match=f"{bad_utf8}:1: not valid UTF-8"):
    super_glue_format.read_super_glue_jsonl("rte", str(bad_utf8), "validation")


def test_bad_data_fails_get_dataset_before_tf_data(tmp_path):
  _write(tmp_path / "RTE" / "val.jsonl", [json.dumps({**GOOD_RTE, "label": 7})])
  super_glue.register_super_glue("jsonl", str(tmp_path), prefix="bad_")
  task = seqio.get_mixture_or_task("bad_super_glue_rte_v102")
  with pytest.raises(files.DataError, match="val.jsonl:1: field 'label'"):
    task.get_dataset(sequence_length=None, split="validation", shuffle=False)


# ------------------------------------------------------------ register your own task

MY_TASKS_MODULE = """
from prompt_tuning.data import text_tasks

text_tasks.register_text_task(
    "my_sentiment",
    {{"train": "{data}/train.jsonl", "validation": "{data}/val*.jsonl"}},
    input_field="review",
    target_field="label",
    prefix="sentiment:",
    label_names=("negative", "positive"),
    metrics=("accuracy", "f1"),
)
"""


def test_register_text_task_from_module_imported_by_name(tmp_path, monkeypatch):
  data = tmp_path / "data"
  _write(data / "train.jsonl", [json.dumps({"review": "Great food.", "label": "positive"})])
  _write(
      data / "val.jsonl",
      [
          json.dumps({"review": "Cold soup.", "label": 0}),
          json.dumps({"review": "Lovely staff!", "label": "positive"}),
      ],
  )
  (tmp_path / "my_tasks.py").write_text(MY_TASKS_MODULE.format(data=data))
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.import_module("my_tasks")  # What --gin.MIXTURE_OR_TASK_MODULE=my_tasks does.
  try:
    task = seqio.get_mixture_or_task("my_sentiment")
    examples = list(
        task.get_dataset(
            sequence_length=None, split="validation", shuffle=False
        ).as_numpy_iterator()
    )
    assert texts(examples) == [
        ("sentiment: Cold soup.", "negative"),
        ("sentiment: Lovely staff!", "positive"),
    ]
    assert all(ex["targets"][-1] == EOS_ID for ex in examples)
    assert _evaluate(task, examples, ["negative", "negative"]) == {"accuracy": 50.0, "f1": 0.0}
  finally:
    sys.modules.pop("my_tasks", None)
    seqio.TaskRegistry.remove("my_sentiment")


def test_register_text_task_tsv_with_field_list(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("id\tq1\tq2\tsame\n7\tHi there?\tHello?\t1\n8\tWhy?\tHow?\t0\n")
  task = text_tasks.register_text_task(
      "my_pairs",
      {"test": str(path)},
      input_field=("q1", "q2"),
      target_field="same",
      file_format="tsv",
      label_names=("different", "same"),
      overwrite=True,
  )
  examples = list(
      task.get_dataset(sequence_length=None, split="test", shuffle=False).as_numpy_iterator()
  )
  assert texts(examples) == [
      ("q1: Hi there? q2: Hello?", "same"),
      ("q1: Why? q2: How?", "different"),
  ]
  path.write_text("id\tq1\tq2\tsame\n7\tHi there?\tHello?\t1\n8\tWhy?\tHow?\t2\n")
  with pytest.raises(files.DataError, match=f"{path}:3: field 'same': label '2'"):
    task.get_dataset(sequence_length=None, split="test", shuffle=False)
  path.write_text("id\tq1\tq2\tsame\n7\tHi there?\t1\n")
  with pytest.raises(files.DataError, match=f"{path}:2: expected 4 tab-separated"):
    task.get_dataset(sequence_length=None, split="test", shuffle=False)
  seqio.TaskRegistry.remove("my_pairs")


def test_register_text_task_rejects_missing_files_and_bad_metrics(tmp_path):
  task = text_tasks.register_text_task(
      "my_missing", {"train": str(tmp_path / "none*.jsonl")}, "x", "y", overwrite=True
  )
  with pytest.raises(files.DataError, match="no file matches"):
    task.get_dataset(sequence_length=None, split="train", shuffle=False)
  seqio.TaskRegistry.remove("my_missing")
  with pytest.raises(ValueError, match="need label_names"):
    text_tasks.register_text_task("my_bad", {"train": "x.jsonl"}, "x", "y", metrics=("f1",))


def test_docs_snippet_matches_the_test_module():
  docs = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text()
  assert "## Register your own task" in docs
  snippet = textwrap.dedent(MY_TASKS_MODULE).format(data="/path/to/my_data")
  assert snippet.strip() in docs
