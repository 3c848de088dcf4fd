"""SQuAD and the MRQA 2019 out-of-domain dev sets: the paper's QA domain shift (section 5, Table 1).

Registered on import, under the original's names (google-research/prompt-tuning `data/qa.py`):
  squad_v010_allanswers[_examples]       SQuAD v1.1 train / validation
  mrqa_<name>_v001[_examples]            validation only; <name> in `MRQA_DATASETS`
  squad_to_<name>_examples               mixture: train on SQuAD, evaluate on one MRQA set
  squad_to_mrqa_examples                 mixture: train on SQuAD, evaluate on all six
`_examples` is the same task (the original's also logged text examples to TensorBoard).

Format (T5's SQuAD format, which the original uses for MRQA too): `question: <q> context: <c>`
-> the answer, with spaces around punctuation; scored by SQuAD EM and F1 (max over gold answers).

Data, looked up when it is read:
- SQuAD: the official `train-v1.1.json` / `dev-v1.1.json` in `SQUAD_DATA_DIR` (gin macro) or
  `$PROMPT_TUNING_SQUAD_DIR`; without either, TFDS `squad/v1.1:3.0.0`.
- MRQA: MRQA's files as downloaded (`BioASQ.jsonl.gz`, ..., or gunzipped `.jsonl`) in
  `MRQA_DATA_DIR` (gin macro) or `$PROMPT_TUNING_MRQA_DIR`.
"""

import dataclasses
import functools
import os

from prompt_tuning.data import files
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import qa_format
from prompt_tuning.data import registration
from prompt_tuning.data import sources
from prompt_tuning.data import vocab

SQUAD_DIR_MACRO, SQUAD_DIR_ENV_VAR = "SQUAD_DATA_DIR", "PROMPT_TUNING_SQUAD_DIR"
MRQA_DIR_MACRO, MRQA_DIR_ENV_VAR = "MRQA_DATA_DIR", "PROMPT_TUNING_MRQA_DIR"
SQUAD_TFDS_NAME = "squad/v1.1:3.0.0"
SQUAD_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
SQUAD_TASK = "squad_v010_allanswers"


@dataclasses.dataclass(frozen=True)
class MrqaDataset:
  file_stem: str  # MRQA's file name without `.jsonl.gz`.
  paper_name: str  # As Table 1 of the paper names it.
  domain: str  # As Table 1 gives it.


# In the order of the paper's Table 1.
MRQA_DATASETS = {
    "textbookqa": MrqaDataset("TextbookQA", "TextbookQA", "Book"),
    "bioasq": MrqaDataset("BioASQ", "BioASQ", "Bio"),
    "race": MrqaDataset("RACE", "RACE", "Exam"),
    "relation_extraction": MrqaDataset("RelationExtraction", "RE", "Wiki"),
    "duorc": MrqaDataset("DuoRC.ParaphraseRC", "DuoRC", "Movie"),
    "drop": MrqaDataset("DROP", "DROP", "Wiki"),
}
SQUAD_DOMAIN = "Wiki"


def mrqa_task_name(name: str) -> str:
  return f"mrqa_{name}_v001"


def squad_dir():
  return sources.configured_dir(SQUAD_DIR_MACRO, SQUAD_DIR_ENV_VAR)


def mrqa_file(name: str, data_dir: str) -> str:
  """`<dir>/<Stem>.jsonl.gz` as MRQA distributes it, else the gunzipped `<dir>/<Stem>.jsonl`."""
  stem = os.path.join(data_dir, MRQA_DATASETS[name].file_stem)
  for path in (stem + ".jsonl.gz", stem + ".jsonl"):
    if os.path.exists(path):
      return path
  raise files.DataNotFoundError(
      f"MRQA {MRQA_DATASETS[name].paper_name}: neither {stem}.jsonl.gz nor {stem}.jsonl exists "
      f"({MRQA_DIR_MACRO} / ${MRQA_DIR_ENV_VAR} = {data_dir!r})."
  )


def _mrqa_files(name: str) -> dict[str, str]:
  data_dir = sources.configured_dir(MRQA_DIR_MACRO, MRQA_DIR_ENV_VAR)
  if not data_dir:
    raise files.DataNotFoundError(
        f"No MRQA data folder: set --gin.{MRQA_DIR_MACRO}=\"'<dir>'\" or ${MRQA_DIR_ENV_VAR} to "
        "the folder holding the MRQA 2019 out-of-domain dev files (BioASQ.jsonl.gz, ...; MRQA's "
        "download_out_of_domain_dev.sh fetches them)."
    )
  return {"validation": mrqa_file(name, data_dir)}


def _add_qa_task(name: str, source) -> None:
  registration.add_task(
      name,
      source=source,
      preprocessors=[preprocessors.squad, *registration.tokenize_and_append_eos()],
      output_features=vocab.get_output_features(),
      postprocess_fn=postprocessors.qa,
      metric_fns=[metrics.squad_em_f1],
  )
  registration.add_alias(f"{name}_examples", name)


def register_qa() -> list[str]:
  """Registers SQuAD, the six MRQA sets and the original's mixtures; returns their names."""
  squad = sources.LocalOrTfdsSource(
      SQUAD_TFDS_NAME,
      list(SQUAD_FILES),
      squad_dir,
      lambda d: {s: os.path.join(d, f) for s, f in SQUAD_FILES.items()},
      qa_format.read_squad_json,
      qa_format.QA_SIGNATURE,
      preprocessors.squad_from_tfds,
  )
  _add_qa_task(SQUAD_TASK, squad)
  names = [SQUAD_TASK]
  for name in MRQA_DATASETS:
    source = sources.CheckedFileDataSource(
        functools.partial(_mrqa_files, name),
        qa_format.read_mrqa_jsonl,
        qa_format.QA_SIGNATURE,
        ["validation"],
    )
    _add_qa_task(mrqa_task_name(name), source)
    names.append(mrqa_task_name(name))
  # The original's zero-shot mixtures: SQuAD trains (the MRQA sets have no train split).
  train = f"{SQUAD_TASK}_examples"
  for name in MRQA_DATASETS:
    mixture = f"squad_to_{name}_examples"
    registration.add_mixture(mixture, [train, f"{mrqa_task_name(name)}_examples"], default_rate=1.0)
    names.append(mixture)
  everything = [train] + [f"{mrqa_task_name(n)}_examples" for n in MRQA_DATASETS]
  registration.add_mixture("squad_to_mrqa_examples", everything, default_rate=1.0)
  return names + ["squad_to_mrqa_examples"]


REGISTERED = register_qa()
