"""Pretrains the embedded default model: a small T5 1.1 on the synthetic world.

The recipe is T5 1.1 LM-adapted's, scaled down: generate the world (`synthetic.py`), train a
SentencePiece vocabulary on its corpus (T5's special ids: pad 0, EOS 1, UNK 2; 100 extra ids),
train from scratch with span corruption (noise density 0.15, mean span length 3), save
`span_corruption/checkpoint_N`, continue with the prefix-LM objective ("LM adaptation") and
save `lm_adapted/checkpoint_{N+M}` (the step counts on, like lm100k's 1,100,000). Batches are
built in numpy (`data/pretraining.py`) and fed to the project's `Trainer` with every parameter
trainable.

  python -m prompt_tuning.pretrain --out_dir=/tmp/embedded
"""
import argparse
import functools
import json
import os
import shutil
import time
from typing import Any, Optional

import jax
import numpy as np
import optax

from prompt_tuning import checkpoints
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import synthetic
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.data import pretraining
from prompt_tuning.models import t5

EXTRA_IDS = 100
ASSETS_DIR = os.path.join(os.path.dirname(__file__), "assets", "embedded")
# The architecture of the embedded model (vocab_size is set from the SentencePiece model).
MODEL_CONFIG = dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=3,
                    num_decoder_layers=2, relative_attention_num_buckets=16,
                    relative_attention_max_distance=64)


def model_vocab_size(num_pieces: int) -> int:
  """Pieces + extra ids, padded to a multiple of 128 like T5's 32,128."""
  return 128 * -(-(num_pieces + EXTRA_IDS) // 128)


def train_vocab(out_dir: str, sentences, num_pieces: int) -> str:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  prefix = os.path.join(out_dir, "spiece")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_prefix=prefix, vocab_size=num_pieces,
      model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
      input_sentence_size=200000, shuffle_input_sentence=True, minloglevel=2)
  return prefix + ".model"


def load_config(directory: str = ASSETS_DIR, dtype: str = "float32") -> t5.T5Config:
  """The T5Config saved beside a pretrained model by `main` (`config.json`)."""
  with open(os.path.join(directory, "config.json")) as f:
    return t5.T5Config(**json.load(f), dtype=dtype)


def checkpoint_path(directory: str = ASSETS_DIR, stage: str = "lm_adapted") -> str:
  """`<directory>/<stage>/checkpoint_<step>` (the latest one)."""
  path = checkpoints.latest_checkpoint(os.path.join(directory, stage))
  if path is None:
    raise FileNotFoundError(f"No checkpoint under {os.path.join(directory, stage)}.")
  return path


class Pretrainer:
  """Every parameter trainable; numpy batches of one objective at a time."""

  def __init__(self, cfg: t5.T5Config, learning_rate: float, total_steps: int, seed: int = 0):
    self.model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg))
    warmup = min(200, total_steps // 10 + 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, total_steps,
                                                  learning_rate * 0.1)
    self.trainer = trainer_lib.Trainer(
        self.model, functools.partial(optim.create_optimizer, "adamw", schedule),
        partitioning.Partitioner(), trainable_patterns=(".*",),
        init_from_scratch_patterns=(".*",), seed=seed)
    params, _ = self.trainer.load_initial_params(None)
    self.state, self.frozen = self.trainer.create_state(params, 0)

  def step(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    self.state, metrics = self.trainer.train_step(
        self.state, self.frozen, self.trainer.partitioner.shard_batch(batch))
    return metrics

  @property
  def params(self):
    return jax.device_get(optim.merge_params(self.state.params, self.frozen))

  def save(self, path: str) -> str:
    return checkpoints.save_t5x_checkpoint(path, self.params, step=int(self.state.step),
                                           overwrite=True)


def _batches(docs, objective: str, batch_size: int, input_length: int, target_length: int,
             vocab_size: int, rng: np.random.Generator):
  while True:
    pairs = []
    for i in rng.integers(0, len(docs), batch_size):
      tokens = docs[i][:input_length - 1]
      if objective == "span_corruption":
        pairs.append(pretraining.span_corruption(tokens, rng, vocab_size))
      else:
        pairs.append(pretraining.prefix_lm(tokens, rng))
    yield pretraining.encoder_decoder_batch(pairs, input_length, target_length)


def run_stage(pt: Pretrainer, batches, steps: int, name: str, log, log_period: int = 50):
  start, loss = time.time(), float('nan')
  for i in range(1, steps + 1):
    m = pt.step(next(batches))
    if i % log_period == 0 or i == steps:
      m = jax.device_get(m)
      loss = float(m["loss_sum"]) / float(m["num_tokens"])
      acc = float(m["correct_tokens"]) / float(m["num_tokens"])
      log(f"{name} step {int(pt.state.step)} ({i}/{steps}) loss/token {loss:.4f} "
          f"token accuracy {acc:.3f} {i / (time.time() - start):.2f} steps/s")
  return loss


def main(argv: Optional[list[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_docs", type=int, default=20000)
  parser.add_argument("--num_pieces", type=int, default=400)
  parser.add_argument("--span_steps", type=int, default=1500)
  parser.add_argument("--lm_steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--input_length", type=int, default=128)
  parser.add_argument("--span_target_length", type=int, default=32)
  parser.add_argument("--lm_target_length", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  log_file = open(os.path.join(args.out_dir, "pretrain.log"), "a")

  def log(msg):
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    log_file.write(line + "\n")
    log_file.flush()

  data_dir = synthetic.write_super_glue(os.path.join(args.out_dir, "data"), args.seed)
  vocab_path = train_vocab(args.out_dir, synthetic.vocab_sentences(args.seed, args.num_docs,
                                                                   data_dir), args.num_pieces)
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=vocab_path)
  docs = sp.encode(list(synthetic.corpus(args.seed, args.num_docs)))
  lengths = np.array([len(d) for d in docs])
  vocab_size = sp.get_piece_size() + EXTRA_IDS  # Sentinels count down from here.
  config = dict(MODEL_CONFIG, vocab_size=model_vocab_size(sp.get_piece_size()))
  with open(os.path.join(args.out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  log(f"{len(docs)} docs, tokens/doc mean {lengths.mean():.1f} max {lengths.max()}, "
      f"{sp.get_piece_size()} pieces, model vocab {config['vocab_size']}, config {config}")
  total = args.span_steps + args.lm_steps
  pt = Pretrainer(t5.T5Config(**config, dtype="float32"), args.learning_rate, total,
                  args.seed)
  rng = np.random.default_rng(args.seed)
  run_stage(pt, _batches(docs, "span_corruption", args.batch_size, args.input_length,
                         args.span_target_length, vocab_size, rng), args.span_steps,
            "span_corruption", log)
  path = pt.save(os.path.join(args.out_dir, "span_corruption",
                              f"checkpoint_{args.span_steps}"))
  log(f"saved {path}")
  run_stage(pt, _batches(docs, "prefix_lm", args.batch_size, args.input_length,
                         args.lm_target_length, vocab_size, rng), args.lm_steps, "lm_adapted",
            log)
  path = pt.save(os.path.join(args.out_dir, "lm_adapted", f"checkpoint_{total}"))
  log(f"saved {path}")
  return path


if __name__ == "__main__":
  main()
