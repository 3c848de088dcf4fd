"""Does prompt tuning work on the embedded default model, and does it need the pretraining?

On a synthetic SuperGLUE task (BoolQ-like by default, in T5's format; RTE- and CB-like in their
own, see prompt_tuning.tasks.synthetic), under the same wall-clock budget each, trains:
  * prompt tuning on the LM-adapted embedded checkpoint (backbone frozen, Adafactor, class-label
    initialisation, constant learning rate 0.3), the paper's recipe, as the main job
    (configs/runs/embedded_default.gin) runs it;
  * model tuning of the same checkpoint (every parameter, Adafactor lr 1e-3, T5's finetuning);
  * prompt tuning on a randomly initialised frozen model of the same shape;
  * prompt tuning with random-uniform initialisation instead of class labels;
  * prompt tuning on the span-corruption-only checkpoint (the pretraining-objective ablation);
and prints the dev accuracy of each, the steps each needed to reach 80%, the ratio prompt/model
tuning and the gap to the random backbone. Accuracy is exact match of the greedy output with
the target (computed with teacher forcing: the greedy output equals the target iff every target
token is the argmax).

  python benchmarks/embedded_default.py --minutes=5
"""

import argparse
import functools
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import checkpoints
from prompt_tuning import embedded
from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import restore
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.data import batches
from prompt_tuning.models import t5

TASKS = ("boolq", "cb", "rte")


def task_arrays(
    task: str, split: str, input_length: int, target_length: int
) -> list[tuple[np.ndarray, np.ndarray]]:
  """(inputs, targets) token pairs of the synthetic task the main job trains on, without EOS."""
  import seqio  # pylint: disable=g-import-not-at-top
  # Importing the task module registers the tasks over the world the model was pretrained on.
  from prompt_tuning.tasks import synthetic as tasks  # pylint: disable=g-import-not-at-top

  name = f"{tasks.PREFIX}taskless_super_glue_{task}_v102"
  ds = seqio.get_mixture_or_task(name).get_dataset(
      {"inputs": input_length, "targets": target_length}, split=split, shuffle=False
  )
  return [
      (
          x["inputs"][:-1] if x["inputs"][-1] == 1 else x["inputs"],
          x["targets"][:-1] if x["targets"][-1] == 1 else x["targets"],
      )
      for x in ds.as_numpy_iterator()
  ]


def make_trainer(
    cfg: t5.T5Config,
    checkpoint: str,
    mode: str,
    labels,
    prompt_length: int,
    input_length: int,
    target_length: int,
    learning_rate: float,
    init: str = "class_labels",
):
  """(trainer, state, frozen) for mode 'prompt' or 'model' tuning from `checkpoint`."""
  if mode == "prompt":
    if init == "class_labels":
      embeddings = checkpoints.load_t5x_checkpoint(checkpoint, regex="token_embedder/.*")[
          "token_embedder"
      ]["embedding"]
      init = prompts.class_labels(np.asarray(embeddings), vocab_lib.get_vocabulary(), labels)
    else:
      init = prompts.random_uniform()
    module = t5.EncoderDecoder(
        cfg, prompt_factory=prompts.prefix_prompt_factory(prompt_length, init)
    )
    patterns = optim.PROMPT_PATTERNS
  else:
    module = t5.EncoderDecoder(cfg)
    patterns = (".*",)
  trainer = trainer_lib.Trainer(
      model_lib.EncoderDecoderModel(module),
      functools.partial(optim.create_optimizer, "adafactor", learning_rate),
      partitioning.Partitioner(),
      trainable_patterns=patterns,
      input_shapes={"inputs": input_length, "targets": target_length},
  )
  params, step = restore.initial_params(
      restore.RestoreConfig(
          initial_checkpoint_path=checkpoint, scratch_patterns=patterns if mode == "prompt" else ()
      ),
      trainer.model,
      trainer.spec,
      trainer.rng,
  )
  state, frozen = trainer.create_state(params, step)
  return trainer, state, frozen


def dev_accuracy(trainer, batches):
  """`accuracy(state, frozen)`: exact match of the greedy output on `batches`, via teacher-forced
  argmax over every target token; compiled once per run, not once per evaluation."""

  def correct(params, batch):
    logits = trainer.model.compute_logits(params, batch)
    ok = (jnp.argmax(logits, -1) == batch["decoder_target_tokens"]) | (
        batch["decoder_loss_weights"] == 0
    )
    return jnp.sum(jnp.all(ok, axis=-1))

  correct = trainer.partitioner.jit(correct)
  total = sum(len(b["encoder_input_tokens"]) for b in batches)

  def accuracy(state, frozen) -> float:
    params = optim.merge_params(state.params, frozen)
    return sum(int(correct(params, b)) for b in batches) / total

  return accuracy


def run(
    cfg,
    checkpoint,
    mode,
    train,
    dev,
    labels,
    seconds,
    *,
    init="class_labels",
    prompt_length=20,
    batch_size=32,
    input_length=64,
    target_length=4,
    learning_rate=None,
    eval_every=25,
    seed=0,
    max_steps=None,
    prompt_learning_rate=0.3,
    log=print,
):
  """Trains for `seconds` of wall-clock (compilation included, evaluation excluded), or
  `max_steps` steps if that comes first; evaluates before training, after each of the first 20
  steps and every 5 up to step 100 (so steps-to-80% is measured finely), then every
  `eval_every` steps."""
  lr = learning_rate or (prompt_learning_rate if mode == "prompt" else 1e-3)
  trainer, state, frozen = make_trainer(
      cfg, checkpoint, mode, labels, prompt_length, input_length, target_length, lr, init
  )
  accuracy = dev_accuracy(
      trainer,
      [
          batches.encoder_decoder_batch(dev[i : i + 100], input_length, target_length)
          for i in range(0, len(dev), 100)
      ],
  )
  rng = np.random.default_rng(seed)
  spent, steps, curve = 0.0, 0, [(0, 0, accuracy(state, frozen))]
  log(f"  {mode} tuning: 0 steps, dev accuracy {curve[0][2]:.3f}")
  while spent < seconds and steps < (max_steps or float("inf")):
    start = time.time()
    idx = rng.integers(0, len(train), batch_size)
    batch = batches.encoder_decoder_batch([train[i] for i in idx], input_length, target_length)
    state, m = trainer.train_step(state, frozen, trainer.partitioner.shard_batch(batch))
    jax.block_until_ready(m["loss"])
    spent += time.time() - start
    steps += 1
    last = spent >= seconds or steps == max_steps
    if steps <= 20 or steps % (5 if steps <= 100 else eval_every) == 0 or last:
      acc = accuracy(state, frozen)
      curve.append((steps, round(spent), acc))
      if (steps > 100 and steps % 100 == 0) or steps in (25, 50) or last:
        log(
            f"  {mode} tuning: {steps} steps, {spent:.0f}s, loss {float(m['loss']):.3f}, "
            f"dev accuracy {acc:.3f}"
        )
  return {
      "accuracy": curve[-1][2],
      "best": max(c[2] for c in curve),
      "worst_last5": min(c[2] for c in curve[-5:]),
      "steps": steps,
      "curve": curve,
  }


def steps_to(curve, threshold: float):
  """(steps, seconds) of the first evaluation at or above `threshold`, else None."""
  return next(((s, t) for s, t, a in curve if a >= threshold), None)


# name: (backbone, tuning mode, prompt initialisation)
RUNS = {
    "prompt": ("lm_adapted", "prompt", "class_labels"),
    "model": ("lm_adapted", "model", None),
    "random": ("random", "prompt", "class_labels"),
    "uniform": ("lm_adapted", "prompt", "random_uniform"),
    "span": ("span_corruption", "prompt", "class_labels"),
}
DESCRIPTIONS = {
    "prompt": "prompt tuning, LM-adapted, class-label init",
    "model": "model tuning, LM-adapted",
    "random": "prompt tuning, random frozen backbone",
    "uniform": "prompt tuning, LM-adapted, random-uniform init",
    "span": "prompt tuning, span-corruption only",
}


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
      "--model_dir",
      default=embedded.ASSETS_DIR,
      help="Holds spiece.model, config.json and {span_corruption,lm_adapted}/.",
  )
  parser.add_argument("--task", default="boolq", choices=TASKS)
  parser.add_argument("--minutes", type=float, default=5.0)
  parser.add_argument("--prompt_length", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0, help="Order of the training batches.")
  parser.add_argument(
      "--max_steps",
      type=int,
      default=None,
      help="Stop each run after this many steps (if before --minutes).",
  )
  parser.add_argument(
      "--prompt_learning_rate",
      type=float,
      default=0.3,
      help="Adafactor learning rate of the prompt runs (the paper's).",
  )
  parser.add_argument(
      "--runs",
      default="prompt,model,random,uniform,span",
      help=f"Comma-separated, from {sorted(RUNS)}.",
  )
  args = parser.parse_args()
  vocab_lib.set_default_vocab_path(embedded.vocab_path(args.model_dir))
  cfg = embedded.load_config(args.model_dir)
  tmp = tempfile.mkdtemp()
  train = task_arrays(args.task, "train", 64, 4)
  dev = task_arrays(args.task, "validation", 64, 4)
  from prompt_tuning.tasks import synthetic  # pylint: disable=g-import-not-at-top

  labels = list(synthetic.CLASS_LABELS[args.task])  # The targets' words, for class-label init.
  print(
      f"device {jax.devices()[0].device_kind}, {os.cpu_count()} cpus; task {args.task}: "
      f"{len(train)} train / {len(dev)} dev examples; model {args.model_dir}; "
      f"budget {args.minutes} min per run"
  )
  seconds = args.minutes * 60
  results = {}
  for name in args.runs.split(","):
    stage, mode, init = RUNS[name]
    if stage == "random":
      ckpt = embedded.write_random_checkpoint(os.path.join(tmp, "random", "checkpoint_0"), cfg)
    else:
      ckpt = embedded.checkpoint_path(stage, args.model_dir)
    print(f"{name} ({DESCRIPTIONS[name]}, {ckpt}):", flush=True)
    results[name] = run(
        cfg,
        ckpt,
        mode,
        train,
        dev,
        labels,
        seconds,
        init=init,
        prompt_length=args.prompt_length,
        batch_size=args.batch_size,
        seed=args.seed,
        max_steps=args.max_steps,
        prompt_learning_rate=args.prompt_learning_rate,
    )
  print(
      f"\n{args.task} dev accuracy after {args.minutes} min each "
      f"({len(dev)} examples, labels balanced: chance {1 / len(labels):.3f}):"
  )
  for name, r in results.items():
    reached = steps_to(r["curve"], 0.8)
    to80 = f"{reached[0]} steps ({reached[1]} s)" if reached else "never"
    print(
        f"  {DESCRIPTIONS[name]:48s} {r['accuracy']:.3f} (best {r['best']:.3f}, worst of "
        f"last 5 evals {r['worst_last5']:.3f}, {r['steps']} steps; 80% after {to80})"
    )
  if "prompt" in results and "model" in results:
    print(
        f"  prompt / model tuning: "
        f"{results['prompt']['accuracy'] / results['model']['accuracy']:.3f}"
    )
  if "prompt" in results and "random" in results:
    gap = 100 * (results["prompt"]["accuracy"] - results["random"]["accuracy"])
    print(f"  pretrained - random backbone (prompt tuning): {gap:+.1f} points")


if __name__ == "__main__":
  main()
