"""Pretrains the embedded default model: a small T5 1.1 on the synthetic world.

The recipe is T5 1.1 LM-adapted's, scaled down: generate the world (`world.py`), train a
SentencePiece vocabulary on its corpus (T5's special ids: pad 0, EOS 1, UNK 2; 100 extra ids),
train from scratch with span corruption (noise density 0.15, mean span length 3), save
`span_corruption/checkpoint_N`, continue with the prefix-LM objective ("LM adaptation") and
save `lm_adapted/checkpoint_{N+M}` (the step counts on, like lm100k's 1,100,000). Batches are
built in numpy (`objectives.py`) and fed to the project's `Trainer` with every parameter
trainable (AdamW). Every `log_period` steps it logs the loss, the learning rate and a zero-shot
probe: BoolQ-like dev questions written as corpus text ("... Question: <q>? Answer:"), scored
True vs False.

The learning rate: each stage runs its own warmup + cosine schedule, counted from the stage's
first step (`stage_schedule`); the LM-adaptation stage warms up again from zero and ends where
its schedule is cut off, not at the schedule's end. The committed checkpoints were trained so.

`lm_keep_steps` also keeps LM-adapted checkpoints after that many LM steps, in
`lm_adapted_intermediate/` (the LM-adaptation-length ablation; docs/embedded_default.md).

Rebuild the committed assets (about 35 minutes on 2 CPU cores):
  python -m prompt_tuning.embedded.pretrain --gin_file=runs/pretrain_embedded.gin \\
    --gin.OUT_DIR="'prompt_tuning/embedded/assets'"
"""

import functools
import json
import os
import shutil
import sys
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np
import optax

from prompt_tuning import checkpoints
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import restore
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.data import batches
from prompt_tuning.embedded import objectives
from prompt_tuning.embedded import world
from prompt_tuning.models import t5

EXTRA_IDS = 100
INTERMEDIATE = "lm_adapted_intermediate"  # Where `lm_keep_steps` checkpoints go.


def model_vocab_size(num_pieces: int) -> int:
  """Pieces + extra ids, padded to a multiple of 128 like T5's 32,128."""
  return 128 * -(-(num_pieces + EXTRA_IDS) // 128)


def train_vocab(out_dir: str, sentences, num_pieces: int) -> str:
  # BPE, not T5's unigram: at a few hundred pieces the unigram trainer stops early and splits
  # common words into letters, while BPE makes every word of this small world one piece.
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  prefix = os.path.join(out_dir, "spiece")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_prefix=prefix,
      vocab_size=num_pieces,
      model_type="bpe",
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      character_coverage=1.0,
      input_sentence_size=200000,
      shuffle_input_sentence=True,
      minloglevel=2,
  )
  return prefix + ".model"


def stage_schedule(learning_rate: float, schedule_steps: int, stage_start: int) -> optax.Schedule:
  """The learning rate of a stage that starts at global step `stage_start`, by global step.

  `lr(step) = warmup_cosine(step - stage_start)`: linear warmup from 0 over
  min(200, schedule_steps // 10 + 1) steps to `learning_rate`, then cosine decay that would reach
  0.1 * learning_rate at `schedule_steps` steps into the stage. Every stage starts it afresh and
  is cut off wherever the stage ends: with the committed recipe (5,000 schedule steps), span
  corruption stops at 0.85 of the peak after 1,500 steps, and LM adaptation warms up again and
  stops at 0.30 of the peak after 3,500. This is what trained the committed checkpoints (it was
  meant to be one schedule over the global step; keeping it keeps them reproducible).
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, min(200, schedule_steps // 10 + 1), schedule_steps, learning_rate * 0.1
  )
  return lambda step: schedule(step - stage_start)


class Pretrainer:
  """Every parameter trainable (AdamW); numpy batches of one objective at a time.

  `schedule` maps the global step to the learning rate (`stage_schedule`); the optimizer state
  starts afresh at each stage, whether or not the run was interrupted.
  """

  def __init__(
      self, cfg: t5.T5Config, schedule: optax.Schedule, seed: int = 0, params=None, step: int = 0
  ):
    self.model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg))
    self.trainer = trainer_lib.Trainer(
        self.model,
        functools.partial(optim.create_optimizer, "adamw", schedule),
        partitioning.Partitioner(),
        trainable_patterns=(".*",),
        seed=seed,
    )
    if params is None:
      params = restore.init_params(self.model, self.trainer.spec, self.trainer.rng)
    params = jax.device_put(params)  # Numpy trees (from a checkpoint) become jax arrays.
    self.state, self.frozen = self.trainer.create_state(params, step)
    self._score = None

  @property
  def learning_rate(self) -> float:
    """The rate of the last update (the optimizer state keeps it)."""
    return float(self.state.opt_state.hyperparams["learning_rate"])

  def step(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    self.state, metrics = self.trainer.train_step(
        self.state, self.frozen, self.trainer.partitioner.shard_batch(batch)
    )
    return metrics

  def score(self, trainable, frozen, batch):
    if self._score is None:
      self._score = jax.jit(lambda t, f, b: self.model.score_batch(optim.merge_params(t, f), b))
    return self._score(trainable, frozen, batch)

  @property
  def params(self):
    return jax.device_get(optim.merge_params(self.state.params, self.frozen))

  def save(self, path: str) -> str:
    return checkpoints.save_t5x_checkpoint(
        path, self.params, step=int(self.state.step), overwrite=True
    )


def _batches(
    docs,
    objective: str,
    batch_size: int,
    input_length: int,
    target_length: int,
    vocab_size: int,
    rng: np.random.Generator,
    split_after=None,
):
  while True:
    pairs = []
    for i in rng.integers(0, len(docs), batch_size):
      tokens = docs[i][: input_length - 1]
      if objective == "span_corruption":
        pairs.append(objectives.span_corruption(tokens, rng, vocab_size))
      else:
        pairs.append(objectives.prefix_lm(tokens, rng, split_after))
    yield batches.encoder_decoder_batch(pairs, input_length, target_length)


def probe_batch(sp, examples, input_length: int) -> dict[str, np.ndarray]:
  """BoolQ-like examples as corpus text ("<passage> Question: <q>? Answer:"), each paired
  with both answers, False then True."""
  pairs = []
  for ex in examples:
    inputs = sp.encode(f"{ex['passage']} Question: {ex['question']}? Answer:")
    pairs += [(inputs, sp.encode("False")), (inputs, sp.encode("True"))]
  return batches.encoder_decoder_batch(pairs, input_length, 4)


def probe_accuracy(pt: Pretrainer, batch, labels: np.ndarray) -> float:
  """Zero-shot accuracy: does the model score the right answer above the wrong one?"""
  scores = np.asarray(pt.score(pt.state.params, pt.frozen, batch)).reshape(-1, 2)
  return float(np.mean(np.argmax(scores, -1) == labels))


def run_stage(
    pt: Pretrainer,
    batches,
    steps: int,
    name: str,
    log,
    probe=None,
    log_period: int = 100,
    keep_steps: Sequence[int] = (),
    keep_dir: Optional[str] = None,
):
  """`steps` updates; after the stage's `keep_steps`-th ones, also a checkpoint in `keep_dir`."""
  start, loss = time.time(), float("nan")
  for i in range(1, steps + 1):
    m = pt.step(next(batches))
    if i in keep_steps:
      log(f"{name}: kept {pt.save(os.path.join(keep_dir, f'checkpoint_{int(pt.state.step)}'))}")
    if i % log_period == 0 or i == steps:
      m = jax.device_get(m)
      loss = float(m["loss_sum"]) / float(m["num_tokens"])
      acc = float(m["correct_tokens"]) / float(m["num_tokens"])
      zero_shot = f" zero-shot BoolQ-like {probe():.3f}" if probe else ""
      # The learning rate is the one of the update that reached this step.
      log(
          f"{name} step {int(pt.state.step)} ({i}/{steps}) loss/token {loss:.4f} "
          f"token accuracy {acc:.3f} learning rate {pt.learning_rate:.4e}{zero_shot} "
          f"{i / (time.time() - start):.2f} steps/s"
      )
  return loss


def pretrain(
    out_dir: str,
    *,
    size: str = "embedded",
    model_overrides: Optional[dict] = None,
    seed: int = 0,
    num_docs: int = 20000,
    num_pieces: int = 600,
    span_steps: int = 1500,
    lm_steps: int = 3500,
    batch_size: int = 32,
    input_length: int = 96,
    span_target_length: int = 32,
    lm_target_length: int = 48,
    learning_rate: float = 1e-3,
    schedule_steps: int = 5000,
    lm_split_after: Sequence[str] = (".", "?", ":"),
    log_period: int = 100,
    lm_keep_steps: Sequence[int] = (),
) -> str:
  """Runs the whole recipe into `out_dir`; returns the LM-adapted checkpoint's path.

  A stage whose checkpoint is already in `out_dir` is not run again: a killed run resumes at
  the stage it was in. `lm_keep_steps`: after that many LM-adaptation steps, also save
  `lm_adapted_intermediate/checkpoint_<span_steps + n>` (the LM-adaptation-length ablation).
  Since the stage's learning rate and data order depend only on the steps taken so far, never
  on `lm_steps`, the checkpoint after n steps of a longer run is the one a run with
  `lm_steps = n` ends with.
  """
  bad = [n for n in lm_keep_steps if not 0 < n <= lm_steps]
  if bad:
    raise ValueError(f"pretrain.lm_keep_steps: {bad} are not in 1..lm_steps ({lm_steps}).")
  os.makedirs(out_dir, exist_ok=True)
  log_file = open(os.path.join(out_dir, "pretrain.log"), "a")

  def log(msg):
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    log_file.write(line + "\n")
    log_file.flush()

  vocab_path = os.path.join(out_dir, "spiece.model")
  if not os.path.exists(vocab_path):
    data_dir = world.write_super_glue(os.path.join(out_dir, "data"), seed)
    train_vocab(out_dir, world.vocab_sentences(seed, num_docs, data_dir), num_pieces)
    shutil.rmtree(data_dir)  # Regenerated from the seed by prompt_tuning.tasks.synthetic.
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  sp = spm.SentencePieceProcessor(model_file=vocab_path)
  docs = sp.encode(list(world.corpus(seed, num_docs)))
  lengths = np.array([len(d) for d in docs])
  vocab_size = sp.get_piece_size() + EXTRA_IDS  # Sentinels count down from here.
  config = {
      **t5.SIZES[size],
      **(model_overrides or {}),
      "vocab_size": model_vocab_size(sp.get_piece_size()),
  }
  if config["vocab_size"] != t5.SIZES[size].get("vocab_size", config["vocab_size"]):
    log(
        f"WARNING: vocab_size {config['vocab_size']} differs from t5.SIZES[{size!r}]; "
        f"update it there, or models/sizes/{size}.gin will not fit this checkpoint."
    )
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  log(
      f"{len(docs)} docs, tokens/doc mean {lengths.mean():.1f} max {lengths.max()}, "
      f"{sp.get_piece_size()} pieces, config {config}"
  )
  cfg = t5.T5Config(**config, dtype="float32")
  dev = world.boolq_examples(seed, "validation", 200)
  probe_inputs = probe_batch(sp, dev, input_length)
  labels = np.array([ex["label"] for ex in dev], np.int32)
  split_ids = [sp.piece_to_id(p) for p in lm_split_after]
  params, step, path = None, 0, None
  stages = (
      ("span_corruption", "span_corruption", span_steps, span_target_length, None),
      ("lm_adapted", "prefix_lm", lm_steps, lm_target_length, split_ids),
  )
  for index, (stage, objective, steps, target_length, split) in enumerate(stages):
    keep = lm_keep_steps if stage == "lm_adapted" else ()
    path = checkpoints.latest_checkpoint(os.path.join(out_dir, stage))
    if path and keep:
      raise ValueError(
          f"pretrain.lm_keep_steps={list(keep)}: the LM-adaptation stage is already done ({path}) "
          "and would not run again; give a fresh OUT_DIR holding only spiece.model and "
          "span_corruption/."
      )
    if path:
      log(f"{stage}: found {path}, not run again")
      params, step = checkpoints.load_t5x_checkpoint(path), checkpoints.read_step(path)
      continue
    pt = Pretrainer(cfg, stage_schedule(learning_rate, schedule_steps, step), seed, params, step)
    rng = np.random.default_rng(seed if index == 0 else [seed, index])
    batches = _batches(
        docs, objective, batch_size, input_length, target_length, vocab_size, rng, split
    )
    run_stage(
        pt,
        batches,
        steps,
        stage,
        log,
        lambda: probe_accuracy(pt, probe_inputs, labels),
        log_period,
        keep,
        os.path.join(out_dir, INTERMEDIATE),
    )
    path = pt.save(os.path.join(out_dir, stage, f"checkpoint_{int(pt.state.step)}"))
    log(f"saved {path}")
    params, step = pt.params, int(pt.state.step)
  return path


def main(argv: Optional[list[str]] = None) -> str:
  from prompt_tuning import config  # pylint: disable=g-import-not-at-top

  return config.entry_point(
      "prompt_tuning.embedded.pretrain", ("OUT_DIR",), __doc__, fn_name="pretrain"
  )(argv)


def console_main() -> None:
  """The `pt-pretrain` command. Returns None: `sys.exit(main())` would exit 1 on `main`'s result."""
  main()


if __name__ == "__main__":
  main()
