"""A small synthetic world: a pretraining corpus and SuperGLUE-like tasks from one seed.

Everything is generated deterministically from a seed by `random.Random`, so the embedded
default model, its vocabulary and its tasks can be rebuilt bit for bit.

The world is people with facts ("Anya lives in Paris.", "Tom works as a baker."). A passage
states some facts about two or three people; several people share each relation with
different values, so a question's words always appear in the passage whatever its answer
and only binding the right value to the right person answers it.

* `corpus(...)`: pretraining documents, each a passage followed by questions answered in
  natural language, paraphrases, negations and "the text does not say" statements: the
  skills the tasks need, never in the tasks' exact input format.
* `boolq_examples`, `rte_examples`, `cb_examples`: records in the official SuperGLUE JSONL
  schemas, with labels balanced exactly; `write_super_glue(data_dir)` writes
  `BoolQ/ RTE/ CB/ {train,val}.jsonl` for `tasks.super_glue.register_super_glue('jsonl', ...)`.
"""
import json
import os
import random
from typing import Any, Iterator, Optional, Sequence

NAMES = ("Anya", "Tom", "Mira", "Omar", "Lena", "Ivan", "Sara", "Paul", "Nina", "Hugo",
         "Emma", "Leo", "Ruth", "Carl", "Jane", "Otto", "Vera", "Adam", "Iris", "Noah",
         "Rosa", "Ben", "Clara", "Felix", "Maya", "Oscar", "Alice", "Max")
VALUES = {
    "city": ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Berlin", "Tokyo", "Delhi", "Dublin",
             "Vienna", "Madrid", "Quito", "Seoul", "Boston"),
    "job": ("baker", "doctor", "teacher", "farmer", "pilot", "singer", "lawyer", "nurse",
            "painter", "driver", "cook", "writer"),
    "pet": ("cat", "dog", "horse", "parrot", "rabbit", "goat", "fish", "turtle", "mouse",
            "snake"),
    "food": ("apples", "bread", "rice", "soup", "cheese", "pasta", "honey", "beans", "cake",
             "plums"),
}
RELATIONS = tuple(VALUES)
# (statement, negated statement, yes/no question, wh-question) per relation.
TEMPLATES = {
    "city": ("{n} lives in {v}", "{n} does not live in {v}", "does {n} live in {v}",
             "where does {n} live"),
    "job": ("{n} works as a {v}", "{n} does not work as a {v}", "does {n} work as a {v}",
            "what does {n} do for a living"),
    "pet": ("{n} has a pet {v}", "{n} does not have a pet {v}", "does {n} have a pet {v}",
            "which pet does {n} have"),
    "food": ("{n} likes to eat {v}", "{n} does not like to eat {v}", "does {n} like to eat {v}",
             "what does {n} like to eat"),
}
SPLIT_SIZES = (("train", 2000), ("validation", 400))
SUPER_GLUE_FOLDERS = {"boolq": "BoolQ", "rte": "RTE", "cb": "CB"}
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl"}


def _cap(text: str) -> str:
  return text[0].upper() + text[1:]


def statement(rel: str, name: str, value: str, negated: bool = False) -> str:
  return TEMPLATES[rel][1 if negated else 0].format(n=name, v=value)


def question(rel: str, name: str, value: str) -> str:
  return TEMPLATES[rel][2].format(n=name, v=value)


class Passage:
  """Facts {(name, relation): value} about a few people, and their text."""

  def __init__(self, rng: random.Random, num_people: int = 0, num_relations: int = 0,
               num_missing: int = 0):
    num_people = num_people or rng.randint(2, 3)
    num_relations = num_relations or rng.randint(1, 2)
    self.names = rng.sample(NAMES, num_people)
    self.relations = rng.sample(RELATIONS, num_relations)
    # Values differ between people, so "X lives in <Y's city>" is false, not unknown.
    self.facts = {}
    for rel in self.relations:
      for name, value in zip(self.names, rng.sample(VALUES[rel], num_people)):
        self.facts[(name, rel)] = value
    # Unstated facts (CB's neutral): keep at least two stated values per relation.
    droppable = [k for k in self.facts if sum(r == k[1] for _, r in self.facts) > 2]
    self.missing = {}
    for key in rng.sample(droppable, min(num_missing, len(droppable))):
      if sum(r == key[1] for _, r in self.facts) > 2:
        self.missing[key] = self.facts.pop(key)
    sentences = [_cap(statement(rel, name, value)) + "." for (name, rel), value
                 in self.facts.items()]
    rng.shuffle(sentences)
    self.text = " ".join(sentences)

  def other_value(self, rng: random.Random, name: str, rel: str) -> str:
    """A value of `rel` stated for someone else (so it appears in the passage)."""
    return rng.choice(sorted(v for (n, r), v in self.facts.items() if r == rel and n != name))


# ------------------------------------------------------------------------------------ corpus


def _qa_lines(rng: random.Random, p: Passage) -> list[str]:
  """Questions about the passage answered in several natural styles."""
  lines = []
  for _ in range(rng.randint(3, 5)):
    name, rel = rng.choice(sorted(p.facts))
    true_v = p.facts[(name, rel)]
    truth = rng.random() < 0.5
    value = true_v if truth else p.other_value(rng, name, rel)
    q, s = question(rel, name, value), statement(rel, name, value)
    # Yes/no questions answered True/False are the commonest style.
    style = rng.choice((0, 1, 1, 2, 2, 3, 4, 5, 6))
    if style == 0:
      lines.append(f"{_cap(q)}? " + ("Yes, " + s if truth else
                                     "No, " + statement(rel, name, true_v)) + ".")
    elif style == 1:
      lines.append(f"Question: {q}? Answer: {'True' if truth else 'False'}.")
    elif style == 2:
      lines.append(f"Is it true that {s}? {'True' if truth else 'False'}.")
    elif style == 3:
      lines.append(f"{_cap(q)}? {'yes' if truth else 'no'}.")
    elif style == 4:  # Entailment: a statement that follows, or does not.
      neg = rng.random() < 0.5
      follows = truth != neg
      lines.append(f"Does it follow that {statement(rel, name, value, neg)}? "
                   f"{'Yes, that is entailment' if follows else 'No, that is a contradiction'}.")
    elif style == 5:  # Negations and paraphrase.
      lines.append(_cap(statement(rel, name, value, negated=True)) + "." if not truth else
                   f"So it is true that {s}.")
    else:  # Something the text does not say.
      unknown = [n for n in NAMES if (n, rel) not in p.facts]
      other = rng.choice(unknown)
      lines.append(f"{_cap(question(rel, other, value))}? The text does not say, "
                   "so that is neutral.")
  return lines


def corpus(seed: int = 0, num_docs: int = 20000) -> Iterator[str]:
  """English-like pretraining documents: a passage, then questions about it answered."""
  rng = random.Random(f"corpus-{seed}")
  for _ in range(num_docs):
    p = Passage(rng)
    yield " ".join([p.text] + _qa_lines(rng, p))


# ------------------------------------------------------------------------------------- tasks


def _balanced(rng: random.Random, n: int, labels: Sequence[Any]) -> list[Any]:
  out = [labels[i % len(labels)] for i in range(n)]
  rng.shuffle(out)
  return out


def boolq_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """BoolQ schema: {question, passage, idx, label: bool}; the answer is in the passage."""
  rng = random.Random(f"boolq-{seed}-{split}")
  out = []
  for idx, label in enumerate(_balanced(rng, n, (True, False))):
    p = Passage(rng)
    name, rel = rng.choice(sorted(p.facts))
    value = p.facts[(name, rel)] if label else p.other_value(rng, name, rel)
    out.append({"question": question(rel, name, value), "passage": p.text, "idx": idx,
                "label": label})
  return out


def _hypothesis(rng: random.Random, p: Passage, label: str) -> str:
  """A hypothesis whose words are all in the premise, with the given relation to it."""
  if label == "neutral":
    name, rel = rng.choice(sorted(p.missing))
    value = rng.choice(sorted(v for (_, r), v in p.facts.items() if r == rel))
    return _cap(statement(rel, name, value, negated=rng.random() < 0.5)) + "."
  name, rel = rng.choice(sorted(p.facts))
  # Entailed: the stated fact, or a swapped value negated; contradicted: the reverse.
  negated = rng.random() < 0.5
  true_value = (label == "entailment") != negated
  value = p.facts[(name, rel)] if true_value else p.other_value(rng, name, rel)
  return _cap(statement(rel, name, value, negated)) + "."


def rte_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """RTE schema: {premise, hypothesis, idx, label: entailment|not_entailment}."""
  rng = random.Random(f"rte-{seed}-{split}")
  out = []
  for idx, label in enumerate(_balanced(rng, n, ("entailment", "not_entailment"))):
    p = Passage(rng)
    hyp = _hypothesis(rng, p, "entailment" if label == "entailment" else "contradiction")
    out.append({"premise": p.text, "hypothesis": hyp, "idx": idx, "label": label})
  return out


def cb_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """CB schema: {premise, hypothesis, idx, label: entailment|contradiction|neutral}."""
  rng = random.Random(f"cb-{seed}-{split}")
  out = []
  for idx, label in enumerate(_balanced(rng, n, ("entailment", "contradiction", "neutral"))):
    # Three people, two relations and one dropped fact whatever the label: everyone is
    # still named in the premise, and a missing fact is no cue by itself.
    p = Passage(rng, num_people=3, num_relations=2, num_missing=1)
    out.append({"premise": p.text, "hypothesis": _hypothesis(rng, p, label), "idx": idx,
                "label": label})
  return out


EXAMPLE_FNS = {"boolq": boolq_examples, "rte": rte_examples, "cb": cb_examples}


def write_super_glue(data_dir: str, seed: int = 0,
                     split_sizes: Sequence[tuple[str, int]] = SPLIT_SIZES) -> str:
  """Writes `<data_dir>/{BoolQ,RTE,CB}/{train,val}.jsonl`; returns `data_dir`."""
  for config, folder in SUPER_GLUE_FOLDERS.items():
    os.makedirs(os.path.join(data_dir, folder), exist_ok=True)
    for split, n in split_sizes:
      with open(os.path.join(data_dir, folder, SPLIT_FILES[split]), "w") as f:
        for record in EXAMPLE_FNS[config](seed, split, n):
          f.write(json.dumps(record) + "\n")
  return data_dir


def register_tasks(data_dir: str, prefix: str = "synthetic_") -> list[str]:
  """Registers the SuperGLUE tasks over `data_dir` as `<prefix>super_glue_boolq_v102`, ...

  Every SuperGLUE task gets registered (same preprocessors, formats and metrics as the real
  ones); only BoolQ, RTE and CB have data here.
  """
  from prompt_tuning.tasks import super_glue  # pylint: disable=g-import-not-at-top
  return super_glue.register_super_glue("jsonl", data_dir, prefix=prefix)


def vocab_sentences(seed: int = 0, num_docs: int = 20000,
                    data_dir: Optional[str] = None) -> Iterator[str]:
  """Text to train the SentencePiece model on: the corpus, plus task text if given."""
  yield from corpus(seed, num_docs)
  # Label words of every task, so class-label prompt initialisation finds them, and the
  # words of T5's input formats (without them lowercase "q" would be unknown).
  yield "True False entailment not_entailment contradiction neutral"
  yield "boolq passage: question: rte cb hypothesis: premise:"
  if data_dir:
    for folder in SUPER_GLUE_FOLDERS.values():
      with open(os.path.join(data_dir, folder, "train.jsonl")) as f:
        for line in f:
          yield " ".join(str(v) for v in json.loads(line).values())
