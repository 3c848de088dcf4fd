"""The paper's domain-shift experiments (section 5): SQuAD -> MRQA, QQP <-> MRPC.

On small files in the official formats under testdata/ (`mrqa/` MRQA 2019 JSONL with its header
line, one gzipped as MRQA distributes them; `squad/` SQuAD v1.1 JSON; `glue_tsv/` GLUE's QQP and
MRPC TSVs): the readers, SQuAD F1/EM and the label translation against hand-computed values
(through seqio's evaluator with chosen predictions), the original's task names, and the transfer
command on the tiny checkpoint.
"""

import collections
import json
import pathlib
import re
import string

import pytest
import seqio

from prompt_tuning import domain_transfer
from prompt_tuning import transfer
from prompt_tuning.data import files
from prompt_tuning.data import glue_format
from prompt_tuning.data import pipeline
from prompt_tuning.data import qa_format
from prompt_tuning.data import vocab
from prompt_tuning.tasks import glue_transfer
from prompt_tuning.tasks import qa
import cli_utils
from conftest import T5_VOCAB, TINY_CHECKPOINT, require

TESTDATA = pathlib.Path(__file__).parent / "testdata"
MRQA_DIR = TESTDATA / "mrqa"
SQUAD_DIR = TESTDATA / "squad"
GLUE_DIR = TESTDATA / "glue_tsv"


# ------------------------------------------------------------------------------------------------
# Readers.


def test_mrqa_reader_one_example_per_question_from_gzip_and_plain():
  bioasq = qa_format.read_mrqa_jsonl(str(MRQA_DIR / "BioASQ.jsonl.gz"), "validation")
  assert [(e["id"], e["question"], e["answers"], e["target"]) for e in bioasq] == [
      (
          "bioasqc1q0",
          "Which cells produce insulin?",
          ["beta cells", "pancreatic beta cells"],
          "beta cells",
      ),
      (
          "bioasqc2q0",
          "What does imatinib inhibit?",
          ["BCR-ABL tyrosine kinase", "BCR-ABL"],
          "BCR-ABL tyrosine kinase",
      ),
  ]
  textbook = qa_format.read_mrqa_jsonl(str(MRQA_DIR / "TextbookQA.jsonl"), "validation")
  assert [e["question"] for e in textbook] == ["What gas is released?", "What do plants make?"]
  assert textbook[0]["context"] == textbook[1]["context"]  # Two questions, one context line.
  assert qa.mrqa_file("duorc", str(MRQA_DIR)).endswith("DuoRC.ParaphraseRC.jsonl")


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "c", "context": "x", "qas": []}'], "expected the MRQA header line"),
        (
            [
                '{"header": {"dataset": "X", "split": "dev"}}',
                '{"context": "a b", "qas": [{"qid": "q", "question": "a?", "answers": ["a"], '
                '"detected_answers": []}]}',
            ],
            ":2: field 'qas[0].detected_answers': empty",
        ),
        (
            [
                '{"header": {"dataset": "X", "split": "dev"}}',
                '{"context": "a b", "qas": [{"qid": "q", "question": "a?", "answers": "a", '
                '"detected_answers": [{"text": "a"}]}]}',
            ],
            "field 'qas[0].answers': expected a non-empty list",
        ),
        (['{"header": {"dataset": "X", "split": "dev"}}'], "no questions after the header"),
    ],
)
def test_mrqa_reader_rejects_bad_files_naming_line_and_field(tmp_path, lines, message):
  path = tmp_path / "X.jsonl"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(files.DataError, match=re.escape(message)):
    qa_format.read_mrqa_jsonl(str(path), "validation")


def test_mrqa_without_a_folder_names_the_settings(monkeypatch):
  monkeypatch.delenv(qa.MRQA_DIR_ENV_VAR, raising=False)
  task = seqio.get_mixture_or_task("mrqa_race_v001")
  with pytest.raises(files.DataNotFoundError, match="MRQA_DATA_DIR.*PROMPT_TUNING_MRQA_DIR"):
    task.source.read("validation")


def test_squad_reader_and_glue_tsv_reader():
  dev = qa_format.read_squad_json(str(SQUAD_DIR / "dev-v1.1.json"), "validation")
  assert [e["id"] for e in dev] == ["56be4db0acb8001400a502ec", "56be4db0acb8001400a502ed"]
  # Answers are stripped, as TFDS squad strips them.
  assert dev[0]["answers"] == ["The Denver Broncos", "Denver Broncos", "Denver Broncos"]
  assert dev[0]["target"] == "The Denver Broncos"
  mrpc = glue_format.read_glue_tsv("mrpc", str(GLUE_DIR / "MRPC" / "dev.tsv"), "validation")
  assert [(e["label"], e["idx"]) for e in mrpc] == [(1, 0), (0, 1), (0, 2)]
  assert (
      mrpc[0]["sentence2"]
      == '" The foodservice pie business does not fit our long-term growth strategy .'
  )
  qqp = glue_format.read_glue_tsv("qqp", str(GLUE_DIR / "QQP" / "dev.tsv"), "validation")
  assert [e["label"] for e in qqp] == [0, 0, 1]
  assert qqp[2]["question1"] == "Is there a reason why we should travel alone?"


# ------------------------------------------------------------------------------------------------
# Text, postprocessing and metrics through seqio's evaluator, with chosen predictions.


@pytest.fixture
def data_dirs(monkeypatch):
  vocab.set_default_vocab_path(require(T5_VOCAB))
  monkeypatch.setenv(qa.MRQA_DIR_ENV_VAR, str(MRQA_DIR))
  monkeypatch.setenv(qa.SQUAD_DIR_ENV_VAR, str(SQUAD_DIR))
  monkeypatch.setenv(glue_transfer.GLUE_DIR_ENV_VAR, str(GLUE_DIR))
  yield
  vocab.set_default_vocab_path(None)


def _evaluate_with_answers(task: str, answers: dict[str, str]) -> dict[str, float]:
  """The task's metrics when the model answers `answers[s]` to the input containing `s`."""
  voc = vocab.get_vocabulary()

  def predict_fn(ds):
    out = []
    for index, features in ds.as_numpy_iterator():
      text = voc.decode(features["encoder_input_tokens"].tolist())
      (answer,) = [a for key, a in answers.items() if key in text]
      tokens = voc.encode(answer) + [1]  # EOS, then padding: a model's fixed-length output.
      out.append((int(index), tokens + [0] * (16 - len(tokens))))
    return out

  evaluator = seqio.Evaluator(
      task,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="validation",
      sequence_length={"inputs": 64, "targets": 8},
      logger_cls=(),
  )
  metrics, _ = evaluator.evaluate(
      compute_metrics=True, predict_fn=predict_fn, score_fn=lambda ds: [], step=None
  )
  return metrics.result()[task]


def test_mrqa_inputs_and_squad_f1_em_hand_computed(data_dirs):
  del data_dirs
  examples = list(
      seqio.get_mixture_or_task("mrqa_bioasq_v001").get_dataset(
          {"inputs": 64, "targets": 8}, "validation", shuffle=False
      )
  )
  # T5's SQuAD format: spaces around punctuation, whitespace (a newline here) squashed.
  assert examples[1]["inputs_pretokenized"].numpy().decode() == (
      "question: What does imatinib inhibit ? context: Imatinib inhibits the BCR - ABL tyrosine "
      "kinase . It is used in chronic myeloid leukemia . "
  )
  assert examples[1]["targets_pretokenized"].numpy().decode() == "BCR - ABL tyrosine kinase"
  metrics = _evaluate_with_answers(
      "mrqa_bioasq_v001_examples",
      {"insulin": "Pancreatic beta cells.", "imatinib": "BCR - ABL kinase"},
  )
  # Q1 matches gold 2 exactly (case, punctuation ignored). Q2 (in the spaced form the targets
  # teach): "bcr abl kinase" against "bcr abl tyrosine kinase" has P 3/3, R 3/4, F1 6/7; against
  # "bcr abl" P 2/3, R 1, F1 4/5. (Unspaced, "BCR-ABL" would normalise to the one token "bcrabl".)
  assert metrics["em"] == pytest.approx(50.0)
  assert metrics["f1"] == pytest.approx(100 * (1 + 6 / 7) / 2)


def test_squad_local_json_scores_against_every_gold_answer(data_dirs):
  del data_dirs
  metrics = _evaluate_with_answers(
      "squad_v010_allanswers", {"won": "the Broncos", "score": "24–10 win"}
  )
  # Q1: "broncos" vs "denver broncos": P 1, R 1/2, F1 2/3; not exact. Q2: "24–10 win" (the dash
  # is not ASCII punctuation, so "24–10" is one token) vs "24–10": P 1/2, R 1, F1 2/3.
  assert metrics["em"] == pytest.approx(0.0)
  assert metrics["f1"] == pytest.approx(100 * 2 / 3)


def test_qqp_words_are_scored_as_mrpc_labels(data_dirs):
  del data_dirs
  task = glue_transfer.transfer_task_name("qqp", "mrpc", taskless=True)
  examples = list(
      seqio.get_mixture_or_task(task).get_dataset(
          {"inputs": 64, "targets": 8}, "validation", shuffle=False
      )
  )
  assert (
      examples[0]["inputs_pretokenized"]
      .numpy()
      .decode()
      .startswith("sentence1: He said the foodservice")
  )
  # Gold labels 1, 0, 0. Predictions: duplicate -> equivalent (1), "maybe" -> invalid (counted
  # as the wrong class, 1), not_duplicate -> not_equivalent (0): accuracy 2/3; for class 1,
  # TP 1, FP 1, FN 0 -> F1 2/3.
  metrics = _evaluate_with_answers(
      task, {"foodservice": "duplicate", "Magnarelli": "maybe", "dollar": "not_duplicate"}
  )
  assert metrics == pytest.approx({"accuracy": 100 * 2 / 3, "f1": 100 * 2 / 3})


# ------------------------------------------------------------------------------------------------
# Names.


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("taskless_glue_sst2_v200_examples", "taskless_glue_sst2_v002"),
        ("glue_sst2_v200_examples", "glue_sst2_v002"),
        ("taskless_glue_mrpc_v200", "taskless_glue_mrpc_v002"),
        ("taskless_super_glue_boolq_v102_examples", "taskless_super_glue_boolq_v102"),
        ("super_glue_wsc_v102_simple_eval_examples", "super_glue_wsc_v102_simple_eval"),
        ("mrqa_drop_v001_examples", "mrqa_drop_v001"),
        ("taskless_glue_qqp_from_mrpc_v002_examples", "taskless_glue_qqp_from_mrpc_v002"),
    ],
)
def test_original_names_are_copies_of_the_tasks(alias, canonical):
  a, c = seqio.get_mixture_or_task(alias), seqio.get_mixture_or_task(canonical)
  assert isinstance(a, seqio.Task) and a.name == alias
  assert (a.source, a.preprocessors, a.postprocessor) == (
      c.source,
      c.preprocessors,
      c.postprocessor,
  )
  assert a.metric_fns == c.metric_fns


def test_sst2_demo_task_and_module_resolve():
  # sst2-demo.sh: MIXTURE_OR_TASK_NAME / MIXTURE_OR_TASK_MODULE as the original's script sets them.
  task = pipeline.get_task("taskless_glue_sst2_v200_examples", "prompt_tuning.data.glue")
  assert task.name == "taskless_glue_sst2_v200_examples"
  with pytest.raises(ImportError, match="prompt_tuning.data.c4"):
    pipeline.import_task_modules("prompt_tuning.data.c4")  # Not one of the mapped modules.


def test_original_mixtures():
  def members(name):
    return sorted(t.name for t in seqio.get_mixture_or_task(name).tasks)

  assert members("squad_to_mrqa_examples") == sorted(
      ["squad_v010_allanswers_examples"] + [f"mrqa_{n}_v001_examples" for n in qa.MRQA_DATASETS]
  )
  assert members("taskless_glue_mrpc_from_qqp_zeroshot_v002") == [
      "taskless_glue_mrpc_from_qqp_v002",
      "taskless_glue_qqp_v002",
  ]
  assert members("taskless_super_glue_wsc_and_dev_v102_simple_examples") == [
      "taskless_super_glue_wsc_v102_simple_eval",
      "taskless_super_glue_wsc_v102_simple_train",
  ]


# ------------------------------------------------------------------------------------------------
# The command.


def test_suite_flag_and_run_file():
  assert transfer.command_line(["--suite", "mrqa", "--gin_file=m.gin"]) == [
      "--gin.TRANSFER_SUITE='mrqa'",
      "--gin_file=m.gin",
      "--gin_file=runs/prompt_transfer.gin",
  ]
  given = ["--suite=qqp_mrpc", "--gin_file=prompt_tuning/configs/runs/prompt_transfer.gin"]
  assert transfer.command_line(given) == [
      "--gin.TRANSFER_SUITE='qqp_mrpc'",
      "--gin_file=prompt_tuning/configs/runs/prompt_transfer.gin",
  ]
  with pytest.raises(ValueError, match="Unknown transfer suite 'squad'"):
    domain_transfer.get_suite("squad")
  with pytest.raises(ValueError, match="taskless is a setting of the qqp_mrpc"):
    domain_transfer.get_suite("mrqa", taskless=True)


def test_table_layout():
  suite = domain_transfer.get_suite("mrpc_qqp", taskless=False)
  table = domain_transfer.format_table(
      suite, {"glue_qqp_from_mrpc_v002": {"accuracy": 75.44, "f1": 69.66}}
  )
  assert table == (
      "Train  Eval  Accuracy    F1\n" "-----  ----  --------  ----\n" "MRPC   QQP       75.4  69.7"
  )


def _normalise(text: str) -> list[str]:
  """SQuAD's answer normalisation, written out independently of the library's."""
  text = text.lower().translate(str.maketrans("", "", string.punctuation))
  return re.sub(r"\b(a|an|the)\b", " ", text).split()


def _squad_f1(prediction: str, golds: list[str]) -> float:
  best = 0.0
  for gold in golds:
    p, g = _normalise(prediction), _normalise(gold)
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same:
      best = max(best, 2 * same / (len(p) + len(g)))
  return best


@pytest.mark.slow
def test_transfer_command_prints_table_1_on_the_tiny_checkpoint(tmp_path):
  out_dir = tmp_path / "eval"
  args = [
      "--suite=mrqa",
      "--gin_file=prompt_tuning/configs/models/t5_1_1_prompt.gin",
      "--gin_file=models/sizes/tiny.gin",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
      "--gin.BATCH_SIZE=4",
      "--gin.PROMPT_LENGTH=3",
      *cli_utils.gin_flags(
          {
              "INITIAL_CHECKPOINT_PATH": require(TINY_CHECKPOINT),
              "MRQA_DATA_DIR": MRQA_DIR,
              "SQUAD_DATA_DIR": SQUAD_DIR,
              "EVAL_OUTPUT_DIR": out_dir,
          }
      ),
  ]
  env = cli_utils.make_env(tmp_path, require(T5_VOCAB))
  cli = cli_utils.Cli("transfer", args, env, tmp_path / "logs", "transfer").check()
  table, _, rest = cli.stdout.partition("\n{")
  lines = table.strip().splitlines()
  assert lines[0].split() == ["Dataset", "Domain", "F1", "EM"]
  expected_rows = [
      ("SQuAD", "Wiki"),
      ("TextbookQA", "Book"),
      ("BioASQ", "Bio"),
      ("RACE", "Exam"),
      ("RE", "Wiki"),
      ("DuoRC", "Movie"),
      ("DROP", "Wiki"),
  ]
  assert [tuple(line.split()[:2]) for line in lines[2:]] == expected_rows
  rows = json.loads("{" + rest)["rows"]
  assert [(r["dataset"], r["domain"]) for r in rows] == expected_rows
  for row, line in zip(rows, lines[2:]):
    assert line.split()[2:] == [f"{row['f1']:.1f}", f"{row['em']:.1f}"]
    # F1 again from the logged generations and gold answers (step 3: the tiny checkpoint's).
    logged = cli_utils.read_jsonl(out_dir / f"{row['task']}-000003.jsonl")
    assert len(logged) == {"SQuAD": 2, "TextbookQA": 2, "BioASQ": 2}.get(row["dataset"], 1)
    f1 = [_squad_f1(r["output"], r["target"]["value"]) for r in logged]
    assert row["f1"] == pytest.approx(100 * sum(f1) / len(f1))
