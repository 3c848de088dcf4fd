"""Prompt tuning vs model tuning: train-step time and trainable/optimizer-state size.

Runs the project's real `Trainer.train_step` (jitted, donated state) on a randomly initialised
T5 1.1 of a given size, for (a) prompt tuning (only `.*prompt.*` trainable) and (b) model tuning
(everything trainable), and prints steps/s, examples/s, their ratio, and the bytes of trainable
parameters and optimizer state. Both runs share one process, so the ratio is robust to noise.

  python benchmarks/train_step.py --size=small --batch=32 --inputs=512 --targets=8
"""

import argparse
import time

import jax
import numpy as np

from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import restore
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.models import t5


def nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def run(cfg, patterns, batch, steps, prompt_length):
  module = t5.EncoderDecoder(
      cfg, prompt_factory=prompts.prefix_prompt_factory(prompt_length, prompts.random_uniform())
  )
  trainer = trainer_lib.Trainer(
      model_lib.EncoderDecoderModel(module),
      optim.create_optimizer,
      partitioning.Partitioner(),
      trainable_patterns=patterns,
      input_shapes={
          "inputs": batch["encoder_input_tokens"].shape[1],
          "targets": batch["decoder_target_tokens"].shape[1],
      },
  )
  params = restore.init_params(trainer.model, trainer.spec, trainer.rng)
  state, frozen = trainer.create_state(params, 0)
  del params
  batch = trainer.partitioner.shard_batch(batch)
  state, m = trainer.train_step(state, frozen, batch)  # Compile.
  jax.block_until_ready(m["loss"])
  start = time.perf_counter()
  for _ in range(steps):
    state, m = trainer.train_step(state, frozen, batch)
  jax.block_until_ready(m["loss"])
  seconds = (time.perf_counter() - start) / steps
  return {
      "step_s": seconds,
      "trainable_bytes": nbytes(state.params),
      "opt_state_bytes": nbytes(state.opt_state),
      "loss": float(m["loss"]),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=8)
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--dtype", default="bfloat16")
  args = parser.parse_args()
  cfg = t5.config_for_size(args.size, dtype=args.dtype)
  rng = np.random.RandomState(0)
  targets = rng.randint(2, cfg.vocab_size, (args.batch, args.targets)).astype(np.int32)
  batch = {
      "encoder_input_tokens": rng.randint(2, cfg.vocab_size, (args.batch, args.inputs)).astype(
          np.int32
      ),
      "decoder_target_tokens": targets,
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_loss_weights": np.ones_like(targets, np.float32),
  }
  print(
      f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  size={args.size} "
      f"batch={args.batch} inputs={args.inputs}+{args.prompt_length} prompt "
      f"targets={args.targets} dtype={args.dtype}"
  )
  results = {}
  for name, patterns in [("prompt tuning", optim.PROMPT_PATTERNS), ("model tuning", (".*",))]:
    r = run(cfg, patterns, batch, args.steps, args.prompt_length)
    results[name] = r
    print(
        f"{name:14s} {1 / r['step_s']:8.2f} steps/s  {args.batch / r['step_s']:9.1f} ex/s  "
        f"trainable {r['trainable_bytes'] / 2**20:10.3f} MiB  "
        f"optimizer state {r['opt_state_bytes'] / 2**20:10.3f} MiB  loss {r['loss']:.1f}"
    )
  ratio = results["model tuning"]["step_s"] / results["prompt tuning"]["step_s"]
  print(
      f"prompt tuning step is {ratio:.2f}x faster than model tuning " f"(same process, same batch)"
  )


if __name__ == "__main__":
  main()
