"""The smallest real end-to-end run, needing nothing from outside the repository.

It builds a toy world in `--workdir` and then runs the real command line on it:
  1. a synthetic sentiment task ("the film was superb" -> positive) as JSONL files;
  2. a SentencePiece vocabulary trained on that text (T5's special ids, 100 extra ids);
  3. a small randomly initialised T5 1.1, written as a T5X checkpoint;
  4. `python -m prompt_tuning.train` (prompt tuning, backbone frozen) with evaluation.

The backbone is random, not pretrained, so the dev accuracy it prints says nothing about prompt
tuning's quality; the pretrained embedded default (synthetic corpus, span corruption + LM
adaptation) is future work (see the README). With `../shared` present, `--use_shared_fixtures`
trains on the real tiny T5X test checkpoint and T5 vocabulary instead.

  python -m prompt_tuning.demo --workdir=/tmp/prompt_tuning_demo
"""
import argparse
import json
import os
import random
import sys

POSITIVE = ["superb", "wonderful", "great", "lovely", "brilliant", "moving", "delightful", "fun"]
NEGATIVE = ["dull", "boring", "awful", "bad", "terrible", "tedious", "clumsy", "bland"]
SUBJECTS = ["the film", "the movie", "this story", "the acting", "the plot", "the ending"]
TEMPLATES = ["{s} was {w}", "i thought {s} was {w}", "{s} is {w} and {w2}", "honestly, {s} felt {w}"]


def write_task_data(data_dir: str, seed: int = 0, sizes=(("train", 512), ("validation", 64))):
  rng = random.Random(seed)
  for split, n in sizes:
    with open(os.path.join(data_dir, f"{split}.jsonl"), "w") as f:
      for _ in range(n):
        label = rng.randint(0, 1)
        words = POSITIVE if label else NEGATIVE
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=rng.choice(words),
                                            w2=rng.choice(words))
        f.write(json.dumps({"sentence": text, "label": ["negative", "positive"][label]}) + "\n")


def train_vocab(data_dir: str) -> str:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  lines = []
  for split in ("train", "validation"):
    with open(os.path.join(data_dir, f"{split}.jsonl")) as f:
      for line in f:
        r = json.loads(line)
        lines += [r["sentence"], r["label"]]
  prefix = os.path.join(data_dir, "spiece")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=80, model_type="unigram", hard_vocab_limit=False,
      user_defined_symbols=["positive", "negative"],
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
  return prefix + ".model"


def write_checkpoint(path: str, vocab_size: int, seed: int = 0):
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top
  module = t5.EncoderDecoder(t5.T5Config(**demo_config(vocab_size), dtype="float32"))
  ones = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(seed), ones, ones, ones)["params"])
  checkpoints.save_t5x_checkpoint(path, jax.device_get(params), step=0, overwrite=True)


def demo_config(vocab_size: int) -> dict:
  return dict(vocab_size=vocab_size, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
              num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
              relative_attention_max_distance=32)


TASK_MODULE = '''"""Registers the demo task (written by prompt_tuning.demo)."""
from prompt_tuning.data import sources

sources.register_text_task(
    "demo_sentiment", {{"train": {train!r}, "validation": {validation!r}}},
    input_field="sentence", target_field="label", label_names=["negative", "positive"],
    metrics=("accuracy",), overwrite=True)
'''


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="/tmp/prompt_tuning_demo")
  parser.add_argument("--train_steps", type=int, default=300)
  parser.add_argument("--use_shared_fixtures", default=None,
                      help="Path of ../shared: use its tiny T5X checkpoint and T5 vocabulary.")
  args = parser.parse_args(argv)
  data_dir = os.path.join(args.workdir, "data")
  os.makedirs(data_dir, exist_ok=True)
  write_task_data(data_dir)
  gin_model = ["--gin_file=models/t5_1_1_prompt.gin"]
  if args.use_shared_fixtures:
    fixtures = os.path.join(args.use_shared_fixtures, "fixtures")
    vocab_path = os.path.join(fixtures, "t5_vocab", "spiece.model")
    checkpoint = os.path.join(fixtures, "t5x_checkpoints", "t5_1_1_tiny", "checkpoint_3")
    gin_model += ["--gin_file=models/sizes/tiny.gin"]
    start_step = 3
  else:
    vocab_path = train_vocab(data_dir)
    vocab_size = 128 * -(-(80 + 100) // 128)  # Pieces + extra ids, padded to a multiple of 128.
    checkpoint = os.path.join(args.workdir, "backbone", "checkpoint_0")
    if not os.path.exists(checkpoint):
      write_checkpoint(checkpoint, vocab_size)
    gin_model += ["--gin_file=models/sizes/tiny.gin"] + [
        f"--gin.t5.config_for_size.{k}={v}" for k, v in demo_config(vocab_size).items()]
    start_step = 0
  with open(os.path.join(args.workdir, "demo_tasks.py"), "w") as f:
    f.write(TASK_MODULE.format(train=os.path.join(data_dir, "train.jsonl"),
                               validation=os.path.join(data_dir, "validation.jsonl")))
  sys.path.insert(0, args.workdir)
  from prompt_tuning import config, train  # pylint: disable=g-import-not-at-top
  config.setup_logging()
  return train.main(gin_model + [
      "--gin_file=prompts/class_labels.gin",
      "--gin_file=runs/prompt_finetune.gin",
      f"--gin.VOCAB_PATH='{vocab_path}'",
      f"--gin.MODEL_DIR='{os.path.join(args.workdir, 'model')}'",
      "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'",
      "--gin.MIXTURE_OR_TASK_MODULE='demo_tasks'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
      f"--gin.TRAIN_STEPS={start_step + args.train_steps}",
      f"--gin.INITIAL_CHECKPOINT_PATH='{checkpoint}'",
      "--gin.CLASS_LABELS=['negative', 'positive']",
      "--gin.PROMPT_LENGTH=8",
      "--gin.BATCH_SIZE=16",
      "--gin.ACTIVATION_DTYPE='float32'",
      "--gin.LOG_PERIOD=25",
      f"--gin.EVAL_PERIOD={args.train_steps}",
      f"--gin.CHECKPOINT_PERIOD={args.train_steps}",
      "--gin.BEST_METRIC='accuracy'",
      "--gin_file=models/decoding/greedy.gin",
  ])


if __name__ == "__main__":
  main()
