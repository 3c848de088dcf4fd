"""A small synthetic world: a pretraining corpus and SuperGLUE-like tasks from one seed.

Everything is generated deterministically from a seed by `random.Random`, so the embedded
default model, its vocabulary and its tasks can be rebuilt bit for bit.

The world is 20 people. Each has a city, a job, a pet and a favourite food ("Anya lives in
Paris."), and four yes/no traits: married, speaks French, plays chess, can swim ("Anya does
not speak French."). One trait per person is never known. The facts hold
everywhere, in the corpus and in the tasks, the way a real pretraining corpus carries
knowledge about the world.

* `corpus(...)`: pretraining documents, each a passage stating some facts about one or two
  people, then 4-7 questions about them answered from what the world knows (stated in the
  passage or not): open questions ("Where does Tom live? The answer is Oslo."), trait
  questions answered True/False, Yes/No with the fact, claims judged entailment or
  contradiction, and "Nobody knows, so that is neutral." for unknown traits. The tasks' skills,
  in prose, never in the tasks' input format.
* `boolq_examples`, `rte_examples`, `cb_examples`: records in the official SuperGLUE JSONL
  schemas, labels balanced exactly, asking whether a trait holds (BoolQ) or whether a claim
  about a trait follows (RTE, CB). The passage/premise talks about the person asked about but
  never states the asked trait, and the train and validation splits ask about disjoint halves
  of the people: the answer is knowledge the model got in pretraining, which neither the task's
  training examples nor the passage give away (a randomly initialised backbone has none).
  `write_super_glue(data_dir)` writes `BoolQ/ RTE/ CB/ {train,val}.jsonl` for
  `tasks.super_glue.register_super_glue('jsonl', ...)`.
"""

import json
import os
import random
from typing import Any, Iterator, Optional, Sequence

NAMES = (
    "Anya",
    "Tom",
    "Mira",
    "Omar",
    "Lena",
    "Ivan",
    "Sara",
    "Paul",
    "Nina",
    "Hugo",
    "Emma",
    "Leo",
    "Ruth",
    "Carl",
    "Jane",
    "Otto",
    "Vera",
    "Adam",
    "Iris",
    "Noah",
)
VALUES = {
    "city": (
        "Paris",
        "Rome",
        "Oslo",
        "Lima",
        "Cairo",
        "Berlin",
        "Tokyo",
        "Delhi",
        "Dublin",
        "Vienna",
        "Madrid",
        "Quito",
        "Seoul",
        "Boston",
    ),
    "job": (
        "baker",
        "doctor",
        "teacher",
        "farmer",
        "pilot",
        "singer",
        "lawyer",
        "nurse",
        "painter",
        "driver",
        "cook",
        "writer",
    ),
    "pet": ("cat", "dog", "horse", "parrot", "rabbit", "goat", "fish", "turtle", "mouse", "snake"),
    "food": (
        "apples",
        "bread",
        "rice",
        "soup",
        "cheese",
        "pasta",
        "honey",
        "beans",
        "cake",
        "plums",
    ),
}
RELATIONS = tuple(VALUES)
# (statement, wh-question) per relation.
TEMPLATES = {
    "city": ("{n} lives in {v}", "where does {n} live"),
    "job": ("{n} works as a {v}", "what does {n} do for a living"),
    "pet": ("{n} has a pet {v}", "which pet does {n} have"),
    "food": ("{n} likes to eat {v}", "what does {n} like to eat"),
}
# (statement, negated statement, yes/no question) per trait.
TRAITS = {
    "married": ("{n} is married", "{n} is not married", "is {n} married"),
    "french": ("{n} speaks French", "{n} does not speak French", "does {n} speak French"),
    "chess": ("{n} plays chess", "{n} does not play chess", "does {n} play chess"),
    "swim": ("{n} can swim", "{n} cannot swim", "can {n} swim"),
}
# Names the generator's output (prompt_tuning.tasks.synthetic caches files under it): change it
# whenever what this module writes changes.
VERSION = "v5"
SPLIT_SIZES = (("train", 2000), ("validation", 400))
SUPER_GLUE_FOLDERS = {"boolq": "BoolQ", "rte": "RTE", "cb": "CB"}
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl"}


def _cap(text: str) -> str:
  return text[0].upper() + text[1:]


def statement(rel: str, name: str, value: str) -> str:
  return TEMPLATES[rel][0].format(n=name, v=value)


def trait_statement(trait: str, name: str, holds: bool) -> str:
  return TRAITS[trait][0 if holds else 1].format(n=name)


def trait_question(trait: str, name: str) -> str:
  return TRAITS[trait][2].format(n=name)


class World:
  """Every person's facts {(name, relation): value} and traits {(name, trait): bool}.

  Each relation's values and each trait's truth are spread evenly over people, so no value or
  trait is a cue by itself; one trait per person is unknown (absent from `traits`). `people`
  maps each split to its half of the people: tasks ask about different people in train and
  validation, so a validation answer is never in the task's training data.
  """

  def __init__(self, seed: int = 0):
    rng = random.Random(f"world-{seed}")
    self.facts, self.traits = {}, {}
    for rel in RELATIONS:
      values = [VALUES[rel][i % len(VALUES[rel])] for i in range(len(NAMES))]
      rng.shuffle(values)
      self.facts.update({(name, rel): v for name, v in zip(NAMES, values)})
    order = list(NAMES)
    rng.shuffle(order)
    half = len(order) // 2
    self.people = {"train": tuple(sorted(order[:half])), "validation": tuple(sorted(order[half:]))}
    traits = sorted(TRAITS)
    self.unknown = {name: traits[i % len(traits)] for i, name in enumerate(order)}
    # Within each split, each trait holds for half of the people who have it known.
    for people in self.people.values():
      for trait in traits:
        known = [n for n in people if self.unknown[n] != trait]
        holds = [i % 2 == 0 for i in range(len(known))]
        rng.shuffle(holds)
        self.traits.update({(n, trait): h for n, h in zip(known, holds)})

  def known_traits(self, name: str) -> list[str]:
    return [t for t in TRAITS if (name, t) in self.traits]


class Passage:
  """Stated facts about `about` and perhaps one other person: one relation each, and one to
  three traits, never the `hidden` trait of `about`."""

  def __init__(
      self,
      world: World,
      rng: random.Random,
      about: Optional[str] = None,
      hidden: Optional[str] = None,
  ):
    about = about or rng.choice(NAMES)
    self.names = [about] + rng.sample([n for n in NAMES if n != about], rng.randint(0, 1))
    rel = rng.choice(RELATIONS)
    sentences = [statement(rel, n, world.facts[(n, rel)]) for n in self.names]
    for _ in range(rng.randint(1, 3)):
      name = rng.choice(self.names)
      choices = [t for t in world.known_traits(name) if (name, t) != (about, hidden)]
      trait = rng.choice(choices)
      sentences.append(trait_statement(trait, name, world.traits[(name, trait)]))
    sentences = [_cap(s) + "." for s in dict.fromkeys(sentences)]
    rng.shuffle(sentences)
    self.text = " ".join(sentences)


# ------------------------------------------------------------------------------------ corpus


def _qa_lines(rng: random.Random, world: World, p: Passage) -> list[str]:
  """Questions about the passage's people, answered from the world's facts."""
  lines = []
  for _ in range(rng.randint(4, 7)):
    name = rng.choice(p.names)
    style = rng.choice((0, 1, 1, 1, 2, 3, 3, 4))
    if style == 0:  # Open question about a relation, answered with the value.
      rel = rng.choice(RELATIONS)
      lines.append(
          f"{_cap(TEMPLATES[rel][1].format(n=name))}? " f"The answer is {world.facts[(name, rel)]}."
      )
      continue
    trait = world.unknown[name] if rng.random() < 0.15 else rng.choice(world.known_traits(name))
    q = trait_question(trait, name)
    if (name, trait) not in world.traits:
      lines.append(f"{_cap(q)}? Nobody knows, so that is neutral.")
      continue
    holds = world.traits[(name, trait)]
    if style == 1:
      lines.append(f"Question: {q}? Answer: {holds}.")
    elif style == 2:
      lines.append(f"{_cap(q)}? {'Yes' if holds else 'No'}, {trait_statement(trait, name, holds)}.")
    elif style == 3:
      claim = rng.random() < 0.5
      lines.append(f"Is it true that {trait_statement(trait, name, claim)}? {claim == holds}.")
    else:  # Entailment: a claim that follows, or does not.
      claim = rng.random() < 0.5
      lines.append(
          f"Does it follow that {trait_statement(trait, name, claim)}? "
          + ("Yes, that is entailment." if claim == holds else "No, that is a contradiction.")
      )
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


def _asked(rng: random.Random, world: World, split: str, holds: Optional[bool]):
  """A (name, trait) of the split's people whose truth is `holds` (None: unknown)."""
  people = world.people[split]
  if holds is None:
    name = rng.choice(people)
    return name, world.unknown[name]
  return rng.choice([(n, t) for n in people for t in TRAITS if world.traits.get((n, t)) == holds])


def boolq_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """BoolQ schema: {question, passage, idx, label: bool}; the passage is about the person
  but never states the asked trait."""
  world = World(seed)
  rng = random.Random(f"boolq-{seed}-{split}")
  out = []
  for idx, label in enumerate(_balanced(rng, n, (True, False))):
    name, trait = _asked(rng, world, split, label)
    p = Passage(world, rng, about=name, hidden=trait)
    out.append(
        {"question": trait_question(trait, name), "passage": p.text, "idx": idx, "label": label}
    )
  return out


def _entailment_examples(kind: str, labels: Sequence[str], seed: int, split: str, n: int):
  """Premise about the person; hypothesis a claim about one of their traits, negated half the
  time: entailed, contradicted, or (neutral) about their unknown trait."""
  world = World(seed)
  rng = random.Random(f"{kind}-{seed}-{split}")
  out = []
  for idx, label in enumerate(_balanced(rng, n, labels)):
    claim = rng.random() < 0.5
    holds = None if label == "neutral" else claim == (label == "entailment")
    name, trait = _asked(rng, world, split, holds)
    p = Passage(world, rng, about=name, hidden=trait)
    out.append(
        {
            "premise": p.text,
            "hypothesis": _cap(trait_statement(trait, name, claim)) + ".",
            "idx": idx,
            "label": label,
        }
    )
  return out


def rte_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """RTE schema: {premise, hypothesis, idx, label: entailment|not_entailment}."""
  return _entailment_examples("rte", ("entailment", "not_entailment"), seed, split, n)


def cb_examples(seed: int, split: str, n: int) -> list[dict[str, Any]]:
  """CB schema: {premise, hypothesis, idx, label: entailment|contradiction|neutral}."""
  return _entailment_examples("cb", ("entailment", "contradiction", "neutral"), seed, split, n)


EXAMPLE_FNS = {"boolq": boolq_examples, "rte": rte_examples, "cb": cb_examples}


def write_super_glue(
    data_dir: str, seed: int = 0, split_sizes: Sequence[tuple[str, int]] = SPLIT_SIZES
) -> str:
  """Writes `<data_dir>/{BoolQ,RTE,CB}/{train,val}.jsonl`; returns `data_dir`."""
  for config, folder in SUPER_GLUE_FOLDERS.items():
    os.makedirs(os.path.join(data_dir, folder), exist_ok=True)
    for split, n in split_sizes:
      with open(os.path.join(data_dir, folder, SPLIT_FILES[split]), "w") as f:
        for record in EXAMPLE_FNS[config](seed, split, n):
          f.write(json.dumps(record) + "\n")
  return data_dir


def vocab_sentences(
    seed: int = 0, num_docs: int = 20000, data_dir: Optional[str] = None
) -> Iterator[str]:
  """Text to train the SentencePiece model on: the corpus, plus the tasks' inputs if given."""
  yield from corpus(seed, num_docs)
  # Label words of every task, so class-label prompt initialisation finds them whole.
  yield "True False entailment not_entailment contradiction neutral"
  if data_dir:  # The tasks' inputs as T5 formats them, so "passage:" etc. get pieces too.
    for config, folder in SUPER_GLUE_FOLDERS.items():
      with open(os.path.join(data_dir, folder, "train.jsonl")) as f:
        for line in f:
          r = json.loads(line)
          if config == "boolq":
            yield f"{config} passage: {r['passage']} question: {r['question']}"
          else:
            yield f"{config} hypothesis: {r['hypothesis']} premise: {r['premise']}"
