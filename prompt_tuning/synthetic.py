"""A small synthetic world: a pretraining corpus and SuperGLUE-like tasks from one seed.

Everything is generated deterministically from a seed by `random.Random`, so the embedded
default model, its vocabulary and its tasks can be rebuilt bit for bit.

The world is 28 people with fixed facts: where each lives, works, which pet each has and what
each likes to eat ("Anya lives in Paris."). One relation per person is never known. The facts
hold everywhere, in the corpus and in the tasks, the way a real pretraining corpus carries
knowledge about the world.

* `corpus(...)`: pretraining documents, each a passage stating some facts about two or three
  people, then 3-6 questions about those people, answered from what the world knows (stated
  in the passage or not): open questions, yes/no questions answered True/False, yes/no or
  with a correction, claims judged entailed or contradicted, and "nobody knows" (neutral) for
  unknown facts. The tasks' skills, in prose, never in their input format.
* `boolq_examples`, `rte_examples`, `cb_examples`: records in the official SuperGLUE JSONL
  schemas, labels balanced exactly. Each passage/premise talks about the person asked about
  but never states the asked fact, and a question's value is as likely to appear in the
  passage under either label: the answer needs the world knowledge that pretraining puts in
  the model (a randomly initialised backbone has none). `write_super_glue(data_dir)` writes
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
# Names the generator's output (prompt_tuning.tasks.synthetic caches files under it): change it
# whenever what this module writes changes.
VERSION = "v4"
SPLIT_SIZES = (("train", 2000), ("validation", 400))
SUPER_GLUE_FOLDERS = {"boolq": "BoolQ", "rte": "RTE", "cb": "CB"}
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl"}


def _cap(text: str) -> str:
  return text[0].upper() + text[1:]


def statement(rel: str, name: str, value: str, negated: bool = False) -> str:
  return TEMPLATES[rel][1 if negated else 0].format(n=name, v=value)


def question(rel: str, name: str, value: str) -> str:
  return TEMPLATES[rel][2].format(n=name, v=value)


class World:
  """Every person's facts {(name, relation): value}; one relation per person is unknown."""

  def __init__(self, seed: int = 0):
    rng = random.Random(f"world-{seed}")
    self.facts = {}
    for rel in RELATIONS:
      # Each value held by equally many people, so no value is a cue to either label.
      values = [VALUES[rel][i % len(VALUES[rel])] for i in range(len(NAMES))]
      rng.shuffle(values)
      self.facts.update({(name, rel): v for name, v in zip(NAMES, values)})
    self.unknown = {name: rng.choice(RELATIONS) for name in NAMES}
    for name, rel in self.unknown.items():
      del self.facts[(name, rel)]

  def other_value(self, rng: random.Random, name: str, rel: str) -> str:
    """A uniformly random value of `rel` that is not `name`'s."""
    return rng.choice([v for v in VALUES[rel] if v != self.facts.get((name, rel))])


class Passage:
  """Stated facts about `about` and one or two others, never the `hidden` (name, relation)."""

  def __init__(self, world: World, rng: random.Random, about: Optional[str] = None,
               hidden: Optional[tuple[str, str]] = None):
    about = about or rng.choice(NAMES)
    self.names = [about] + rng.sample([n for n in NAMES if n != about], rng.randint(1, 2))
    relations = rng.sample(RELATIONS, rng.randint(1, 2))
    self.facts = {(n, r): world.facts[(n, r)] for n in self.names for r in relations
                  if (n, r) in world.facts and (n, r) != hidden}
    if not any(n == about for n, _ in self.facts):  # Always say something about `about`.
      rel = rng.choice(sorted(r for n, r in world.facts if n == about and (n, r) != hidden))
      self.facts[(about, rel)] = world.facts[(about, rel)]
    sentences = [_cap(statement(rel, name, value)) + "." for (name, rel), value
                 in self.facts.items()]
    rng.shuffle(sentences)
    self.text = " ".join(sentences)


# ------------------------------------------------------------------------------------ corpus


def _qa_lines(rng: random.Random, world: World, p: Passage) -> list[str]:
  """Questions about the passage's people, answered from the world's facts."""
  lines = []
  for _ in range(rng.randint(3, 6)):
    name = rng.choice(p.names)
    rel = world.unknown[name] if rng.random() < 0.15 else rng.choice(
        [r for r in RELATIONS if (name, r) in world.facts])
    if (name, rel) not in world.facts:  # The unknown relation.
      value = rng.choice(VALUES[rel])
      lines.append(f"{_cap(question(rel, name, value))}? Nobody knows, so that is neutral.")
      continue
    true_v = world.facts[(name, rel)]
    truth = rng.random() < 0.5
    value = true_v if truth else world.other_value(rng, name, rel)
    q, s = question(rel, name, value), statement(rel, name, value)
    style = rng.choice((0, 0, 1, 1, 1, 2, 3, 4))
    if style == 0:  # Open question, answered with the value.
      lines.append(f"{_cap(TEMPLATES[rel][3].format(n=name))}? The answer is {true_v}.")
    elif style == 1:
      lines.append(f"Question: {q}? Answer: {'True' if truth else 'False'}.")
    elif style == 2:
      lines.append(f"{_cap(q)}? " + ("Yes, " + s if truth else
                                     "No, " + statement(rel, name, true_v)) + ".")
    elif style == 3:
      lines.append(f"Is it true that {s}? {'True' if truth else 'False'}.")
    else:  # Entailment: a statement that follows, or does not.
      neg = rng.random() < 0.5
      follows = truth != neg
      lines.append(f"Does it follow that {statement(rel, name, value, neg)}? "
                   f"{'Yes, that is entailment' if follows else 'No, that is a contradiction'}.")
  return lines


def corpus(seed: int = 0, num_docs: int = 20000) -> Iterator[str]:
  """English-like pretraining documents: a passage, then questions about its people answered."""
  world = World(seed)
  rng = random.Random(f"corpus-{seed}")
  for _ in range(num_docs):
    p = Passage(world, rng)
    yield " ".join([p.text] + _qa_lines(rng, world, p))


# ------------------------------------------------------------------------------------- tasks


def _balanced(rng: random.Random, n: int, labels: Sequence[Any]) -> list[Any]:
  out = [labels[i % len(labels)] for i in range(n)]
  rng.shuffle(out)
  return out


def _known(rng: random.Random, world: World) -> tuple[str, str]:
  return rng.choice(sorted(world.facts))


def boolq_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """BoolQ schema: {question, passage, idx, label: bool}; the passage is about the person
  but never states the asked fact."""
  world = World(seed)
  rng = random.Random(f"boolq-{seed}-{split}")
  out = []
  for idx, label in enumerate(_balanced(rng, n, (True, False))):
    name, rel = _known(rng, world)
    value = world.facts[(name, rel)] if label else world.other_value(rng, name, rel)
    p = Passage(world, rng, about=name, hidden=(name, rel))
    out.append({"question": question(rel, name, value), "passage": p.text, "idx": idx,
                "label": label})
  return out


def _hypothesis(rng: random.Random, world: World, label: str) -> tuple[str, str, str]:
  """(name, relation, hypothesis) with the given relation to the world's facts."""
  if label == "neutral":
    name = rng.choice(NAMES)
    rel = world.unknown[name]
    value = rng.choice(VALUES[rel])
    return name, rel, _cap(statement(rel, name, value, negated=rng.random() < 0.5)) + "."
  name, rel = _known(rng, world)
  # Entailed: the true fact, or another value negated; contradicted: the reverse.
  negated = rng.random() < 0.5
  true_value = (label == "entailment") != negated
  value = world.facts[(name, rel)] if true_value else world.other_value(rng, name, rel)
  return name, rel, _cap(statement(rel, name, value, negated)) + "."


def _entailment_examples(kind: str, labels: Sequence[str], seed: int, split: str, n: int):
  world = World(seed)
  rng = random.Random(f"{kind}-{seed}-{split}")
  out = []
  for idx, label in enumerate(_balanced(rng, n, labels)):
    name, rel, hyp = _hypothesis(rng, world, "contradiction" if label == "not_entailment"
                                 else label)
    p = Passage(world, rng, about=name, hidden=(name, rel))
    out.append({"premise": p.text, "hypothesis": hyp, "idx": idx, "label": label})
  return out


def rte_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """RTE schema: {premise, hypothesis, idx, label: entailment|not_entailment}."""
  return _entailment_examples("rte", ("entailment", "not_entailment"), seed, split, n)


def cb_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """CB schema: {premise, hypothesis, idx, label: entailment|contradiction|neutral}."""
  return _entailment_examples("cb", ("entailment", "contradiction", "neutral"), seed, split, n)


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
