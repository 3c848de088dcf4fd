"""Why the RTE- and CB-like tasks did not learn: prompt tuning under other formats and targets.

Builds the synthetic RTE/CB records (prompt_tuning.embedded.world) in one input format and with
one set of target words, prompt-tunes the LM-adapted embedded model on them (class-label
initialisation from the target words, Adafactor, batch 32, benchmarks/embedded_default.py's loop
and teacher-forced exact-match accuracy) and prints one JSON line: the dev accuracy curve.

  python benchmarks/claim_formats.py --task=rte --fmt=t5 --labels=names --steps=150
  python benchmarks/claim_formats.py --task=rte --fmt=question --labels=yes_no --steps=150

Formats (`--fmt`): t5 `hypothesis: H premise: P` (T5's RTE/CB, taskless); premise_first
`premise: P hypothesis: H`; corpus `P Does it follow that h?` (the pretraining corpus's words);
question `premise: P question: does it follow that h?` (prompt_tuning.tasks.synthetic).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedded_default  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning import embedded  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.embedded import world  # pylint: disable=g-import-not-at-top

FORMATS = {
    "t5": lambda p, h: f"hypothesis: {h} premise: {p}",
    "premise_first": lambda p, h: f"premise: {p} hypothesis: {h}",
    "corpus": lambda p, h: f"{p} Does it follow that {h[:-1]}?",
    "question": lambda p, h: f"premise: {p} question: does it follow that {h[:-1]}?",
}
# Official label name -> target word; `names` keeps the names.
LABELS = {
    "names": {},
    "yes_no": {
        "entailment": "Yes",
        "not_entailment": "No",
        "contradiction": "No",
        "neutral": "Nobody",
    },
    "true_false": {"entailment": "True", "not_entailment": "False", "contradiction": "False"},
    "single_piece": {"not_entailment": "contradiction"},  # Every RTE target one piece.
}


def examples(task, split, fmt, labels, n):
  """[(inputs, targets)] token arrays without EOS, and the sorted target words."""
  vocab = vocab_lib.get_vocabulary()
  records = world.EXAMPLE_FNS[task](0, split, n)
  targets = [LABELS[labels].get(r["label"], r["label"]) for r in records]
  out = [
      (
          np.array(vocab.encode(FORMATS[fmt](r["premise"], r["hypothesis"]))[:64], np.int32),
          np.array(vocab.encode(t), np.int32),
      )
      for r, t in zip(records, targets)
  ]
  return out, sorted(set(targets))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--task", default="rte", choices=("rte", "cb"))
  parser.add_argument("--fmt", default="t5", choices=sorted(FORMATS))
  parser.add_argument("--labels", default="names", choices=sorted(LABELS))
  parser.add_argument("--learning_rate", type=float, default=0.3)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument(
      "--backbone", default="lm_adapted", choices=("lm_adapted", "span_corruption", "random")
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  vocab_lib.set_default_vocab_path(embedded.vocab_path())
  train, words = examples(args.task, "train", args.fmt, args.labels, 2000)
  dev, _ = examples(args.task, "validation", args.fmt, args.labels, 400)
  cfg = embedded.load_config()
  if args.backbone == "random":
    ckpt = embedded.write_random_checkpoint(os.path.join(tempfile.mkdtemp(), "checkpoint_0"), cfg)
  else:
    ckpt = embedded.checkpoint_path(args.backbone)
  start = time.time()
  r = embedded_default.run(
      cfg,
      ckpt,
      "prompt",
      train,
      dev,
      words,
      float("inf"),
      max_steps=args.steps,
      prompt_learning_rate=args.learning_rate,
      seed=args.seed,
      log=lambda *_: None,
  )
  curve = [
      (s, round(a, 3))
      for s, _, a in r["curve"]
      if s in (0, 5, 10, 20, 50) or s % 50 == 0 or s == r["steps"]
  ]
  print(
      json.dumps(
          {
              **vars(args),
              "targets": words,
              "final": r["accuracy"],
              "best": r["best"],
              "curve": curve,
              "seconds": round(time.time() - start),
          }
      )
  )


if __name__ == "__main__":
  main()
