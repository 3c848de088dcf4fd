"""Prompt tuning, model tuning and scoring steps, measured against the machine's own matmul rate.

Each mode runs in its own process (this script re-invokes itself with `--mode=X`), so peak
memory is per mode:
  prompt: the project's real `Trainer.train_step` (jitted, donated state), only the prompt
          trainable (Adafactor), the backbone frozen;
  model:  model tuning, no prompt, every parameter trainable, at equal encoder length
          (inputs + prompt_length);
  score:  inference scoring with the prompt (`model.score_batch`, no gradient).
on a T5 1.1 with random weights and a batch of random tokens. Each prints one JSON line on stdout
(a readable table goes to stderr): median step time over `--steps` steps after the first, steps/s,
examples/s, tokens/s (encoder + decoder positions), time to the first step (compilation
included), peak host memory (ru_maxrss; and the device's peak on a GPU), XLA's temporary bytes
per execution (`memory_analysis()`: activations, deterministic), trainable, gradient and
optimizer-state bytes (and the optimizer bytes held for frozen parameters, which must be 0), the
step's FLOPs from XLA's cost analysis and from an analytic count of the matmuls, and the fraction
of the dense float32 matmul rate measured in the same process that the analytic FLOPs achieve.

Analytic FLOPs: 2 * m * n * k for every matmul of the forward pass (projections, attention
scores and mixing, MLP, output layer; the embedding lookup is a gather and costs none). The
backward pass of prompt tuning computes gradients of activations only (the frozen weights get
none): one matmul per forward matmul with a weight, two per matmul between two activations (the
attention's scores and mixing: both operands need their gradient); model tuning also computes
the weights' gradients, one more per weight matmul.

A last JSON line (`"mode": "summary"`) gives the ratios of this run: prompt step / scoring step
time (and the two programs' FLOP ratio, what that time ratio is at equal FLOP rates), the prompt
step's fraction of the matmul rate, and the prompt-vs-model peak memory
difference against the backbone's gradient + optimizer-state bytes.

  python benchmarks/train_step.py                      # small, batch 8, 128 + 100 prompt, 4
  python benchmarks/train_step.py --size=base --dtype=bfloat16 --inputs=512 --modes=prompt,score
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_START = time.perf_counter()

MODES = ("prompt", "model", "score")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--size", default="small", help="T5 1.1 size (models/t5.py SIZES).")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=128, help="Encoder input tokens.")
  parser.add_argument("--targets", type=int, default=4, help="Decoder target tokens.")
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--dtype", default="float32", help="Activation dtype.")
  parser.add_argument(
      "--remat",
      default="none",
      help="Activation rematerialisation of each layer (models/t5.py REMAT_POLICIES).",
  )
  parser.add_argument("--steps", type=int, default=10, help="Timed steps after the first.")
  parser.add_argument("--modes", default=",".join(MODES), help=f"Comma-separated: {MODES}.")
  parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # One mode, in-process.
  args = parser.parse_args(argv)
  modes = [m for m in args.modes.split(",") if m]
  unknown = sorted(set(modes) - set(MODES))
  if unknown or not modes:
    parser.error(f"--modes: unknown {unknown}; choose from {MODES}.")
  if args.mode is not None and args.mode not in MODES:
    parser.error(f"--mode: {args.mode!r} is not one of {MODES}.")
  for name in ("batch", "inputs", "targets", "steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1.")
  if args.prompt_length < 0:
    parser.error("--prompt_length must be >= 0.")
  return args


def analytic_forward_flops(cfg, batch: int, enc_len: int, dec_len: int) -> tuple[int, int]:
  """Matmul FLOPs (2 m n k each) of one T5 1.1 forward pass: (with a weight, between
  activations). The second are the attention's scores and mixing, whose backward pass needs the
  gradients of both operands."""
  d, hk, f, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  gates = len(cfg.mlp_activations)
  s, t = enc_len, dec_len
  mlp = lambda n: 2 * n * d * f * gates + 2 * n * f * d
  encoder = (4 * 2 * s * d * hk + mlp(s), 2 * 2 * s * s * hk)
  decoder = (
      4 * 2 * t * d * hk  # self-attention q, k, v, out
      + 2 * 2 * t * d * hk  # cross-attention q, out
      + 2 * 2 * s * d * hk  # cross-attention k, v of the encoder output
      + mlp(t),
      2 * 2 * t * t * hk + 2 * 2 * t * s * hk,
  )
  logits = 2 * t * d * v
  weights = cfg.num_encoder_layers * encoder[0] + cfg.num_decoder_layers * decoder[0] + logits
  activations = cfg.num_encoder_layers * encoder[1] + cfg.num_decoder_layers * decoder[1]
  return batch * weights, batch * activations


def analytic_backward_flops(mode: str, weights: int, activations: int) -> int:
  """Backward matmul FLOPs. Every mode that trains needs the gradient of each activation: one
  matmul per forward matmul with a weight, two per matmul between activations (one per operand).
  Model tuning also computes the weights' gradients (one more per weight matmul); prompt tuning's
  frozen weights get none."""
  return {
      "prompt": weights + 2 * activations,
      "model": 2 * weights + 2 * activations,
      "score": 0,
  }[mode]


def matmul_timer(m: int, k: int, n: int, dtype: str):
  """(flops, time_one) for a jitted dense [m, k] x [k, n] matmul; `time_one()` runs it once
  (already compiled) and returns its seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (m, k), dtype)
  b = jax.random.normal(kb, (k, n), dtype)
  mm = jax.jit(jnp.dot)
  mm(a, b).block_until_ready()

  def time_one() -> float:
    start = time.perf_counter()
    mm(a, b).block_until_ready()
    return time.perf_counter() - start

  return 2 * m * k * n, time_one


def nbytes(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top

  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def random_params(spec) -> dict:
  """Random float32 weights shaped like `spec`, generated leaf by leaf on the host and placed
  with its shardings, as a checkpoint is loaded. (`restore.init_params` builds every parameter in
  one XLA program, whose random-number temporaries and compilation add about 1 GB to the peak
  host memory at the small size: that would measure the initialiser, not the step.)"""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  shardings = optim.flatten(spec.shardings)
  flat = {}
  for name, shape in optim.flatten(spec.shapes).items():
    x = rng.standard_normal(shape.shape, np.float32)
    if len(shape.shape) == 2:
      x *= np.float32(1 / np.sqrt(shape.shape[0]))  # Fan-in scaling keeps activations finite.
    flat[name] = jax.device_put(x.astype(shape.dtype), shardings[name])
  return optim.unflatten(flat)


def random_batch(vocab_size: int, batch: int, inputs: int, targets: int):
  import numpy as np  # pylint: disable=g-import-not-at-top

  from prompt_tuning.data import batches  # pylint: disable=g-import-not-at-top

  rng = np.random.RandomState(0)
  target_tokens = rng.randint(2, vocab_size, (batch, targets)).astype(np.int32)
  return {
      "encoder_input_tokens": rng.randint(2, vocab_size, (batch, inputs)).astype(np.int32),
      "decoder_target_tokens": target_tokens,
      "decoder_input_tokens": batches.shift_right(target_tokens),
      "decoder_loss_weights": np.ones_like(target_tokens, np.int32),  # As SeqIO's features.
  }


def run_mode(args) -> dict:
  """Measures one mode in this process."""
  from prompt_tuning import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.configure()  # As the entry points do, before JAX starts its threads.
  import jax  # pylint: disable=g-import-not-at-top

  from prompt_tuning import model as model_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optim  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import prompts  # pylint: disable=g-import-not-at-top
  from prompt_tuning import restore  # pylint: disable=g-import-not-at-top
  from prompt_tuning import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top

  mode = args.mode
  overrides = {"dtype": args.dtype}
  if args.remat != "none":
    overrides["remat_policy"] = args.remat
  cfg = t5.config_for_size(args.size, **overrides)
  prompted = mode != "model" and args.prompt_length > 0
  # Model tuning has no prompt, so its encoder reads prompt_length more tokens instead.
  inputs = args.inputs if mode != "model" else args.inputs + args.prompt_length
  factory = (
      prompts.prefix_prompt_factory(args.prompt_length, prompts.random_uniform())
      if prompted
      else None
  )
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg, prompt_factory=factory))
  partitioner = partitioning.Partitioner()
  host_batch = random_batch(cfg.vocab_size, args.batch, inputs, args.targets)
  batch = partitioner.shard_batch(host_batch)
  shapes = {"inputs": inputs, "targets": args.targets}
  result = {"mode": mode}

  if mode == "score":
    spec = restore.ParamSpec.of(model, partitioner, shapes)
    params = random_params(spec)
    step = partitioner.jit(model.score_batch)
    lower = lambda: step.lower(params, batch)
    call = lambda: step(params, batch)
    result.update(trainable_bytes=0, grad_bytes=0, opt_state_bytes=0, frozen_opt_state_bytes=0)
    result["param_bytes"] = nbytes(params)
  else:
    patterns = optim.PROMPT_PATTERNS if mode == "prompt" else (".*",)
    trainer = trainer_lib.Trainer(
        model,
        optim.create_optimizer,
        partitioner,
        trainable_patterns=patterns,
        input_shapes=shapes,
    )
    params = random_params(trainer.spec)
    result["param_bytes"] = nbytes(params)
    state, frozen = trainer.create_state(params, 0)
    del params
    frozen_names = set(optim.flatten(frozen))

    def frozen_slot_bytes(path, slot):
      name = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
      return slot.size * slot.dtype.itemsize if name in frozen_names else 0

    result.update(
        trainable_bytes=nbytes(state.params),
        grad_bytes=nbytes(state.params),  # One gradient per trainable parameter.
        opt_state_bytes=nbytes(state.opt_state),
        frozen_opt_state_bytes=sum(
            jax.tree.leaves(jax.tree_util.tree_map_with_path(frozen_slot_bytes, state.opt_state))
        ),
    )
    holder = {"state": state}

    def call():
      holder["state"], metrics = trainer.train_step(holder["state"], frozen, batch)
      return metrics["loss"]

    lower = lambda: trainer.lower_train_step(holder["state"], frozen, batch)

  start = time.perf_counter()
  if mode != "score":  # As training.run compiles it (and then frees the compiler's memory).
    trainer.compile_ahead(holder["state"], frozen, args.batch, shapes).result()
  jax.block_until_ready(call())
  result["first_step_s"] = time.perf_counter() - start
  result["process_to_first_step_s"] = time.perf_counter() - _START
  # A matmul as large as the model's largest per-layer one (the MLP input projection), timed
  # between the steps for about a quarter of each step's time, so both see the same load from
  # the rest of the machine.
  enc_len = args.inputs + args.prompt_length
  mm_shape = (args.batch * enc_len, cfg.emb_dim, cfg.mlp_dim)
  mm_flops, mm_once = matmul_timer(*mm_shape, args.dtype)
  times, mm_rates = [], []
  for _ in range(args.steps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
    mm_times = [mm_once()]
    while sum(mm_times) < times[-1] / 4 or len(mm_times) < 3:
      mm_times.append(mm_once())
    mm_rates.append(mm_flops * len(mm_times) / sum(mm_times))
  step_s = statistics.median(times)
  rate = statistics.median(mm_rates)
  result["peak_host_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  result["peak_device_bytes"] = (stats or {}).get("peak_bytes_in_use")

  compiled = lower().compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's temporaries per execution: what activations and rematerialisation decide, free of
  # how the host's allocator happens to reuse them (peak_host_bytes is not).
  memory = compiled.memory_analysis()
  weights, activations = analytic_forward_flops(cfg, args.batch, enc_len, args.targets)
  forward = weights + activations
  flops = forward + analytic_backward_flops(mode, weights, activations)
  result.update(
      step_s=step_s,
      step_s_min=min(times),
      steps_per_s=1 / step_s,
      examples_per_s=args.batch / step_s,
      tokens_per_s=args.batch * (enc_len + args.targets) / step_s,
      xla_flops=float(cost.get("flops", float("nan"))) if cost else None,
      xla_temp_bytes=getattr(memory, "temp_size_in_bytes", None),
      analytic_flops=flops,
      analytic_forward_flops=forward,
      matmul_shape=list(mm_shape),
      matmul_flops_per_s=rate,
      matmul_flops_per_s_best=max(mm_rates),
      achieved_flops_per_s=flops / step_s,
      fraction_of_matmul_rate=flops / step_s / rate,
      config=dict(
          size=args.size,
          batch=args.batch,
          inputs=inputs,
          prompt_length=args.prompt_length if prompted else 0,
          encoder_length=enc_len,
          targets=args.targets,
          dtype=args.dtype,
          remat=args.remat,
          steps=args.steps,
          device=device.device_kind,
          devices=jax.device_count(),
          jax=jax.__version__,
          tensorflow_imported="tensorflow" in sys.modules,
      ),
  )
  return result


def summary(results: dict) -> dict:
  out = {"mode": "summary"}
  if "prompt" in results and "score" in results:
    p, s = results["prompt"], results["score"]
    out["prompt_over_score_step"] = p["step_s"] / s["step_s"]
    # What the step ratio would be if both ran at the same FLOP rate.
    out["prompt_over_score_analytic_flops"] = p["analytic_flops"] / s["analytic_flops"]
    if p["xla_flops"] and s["xla_flops"]:
      out["prompt_over_score_xla_flops"] = p["xla_flops"] / s["xla_flops"]
  if "prompt" in results:
    out["prompt_fraction_of_matmul_rate"] = results["prompt"]["fraction_of_matmul_rate"]
  if "prompt" in results and "model" in results:
    p, m = results["prompt"], results["model"]
    out["model_minus_prompt_peak_host_bytes"] = m["peak_host_bytes"] - p["peak_host_bytes"]
    out["backbone_grad_plus_opt_bytes"] = m["grad_bytes"] + m["opt_state_bytes"]
    out["model_over_prompt_step"] = m["step_s"] / p["step_s"]
  return out


def table(results: dict) -> str:
  rows = [
      f"{'mode':7s} {'step ms':>8s} {'steps/s':>8s} {'ex/s':>8s} {'tok/s':>9s} {'first s':>8s}"
      f" {'peak MB':>8s} {'temp MB':>8s} {'GFLOP xla':>10s} {'GFLOP ana':>10s} {'mm GF/s':>8s}"
      f" {'frac':>5s} {'train MB':>9s} {'opt MB':>8s}"
  ]
  for mode, r in results.items():
    rows.append(
        f"{mode:7s} {r['step_s'] * 1e3:8.1f} {r['steps_per_s']:8.2f} {r['examples_per_s']:8.1f}"
        f" {r['tokens_per_s']:9.0f} {r['first_step_s']:8.2f} {r['peak_host_bytes'] / 1e6:8.0f}"
        f" {(r['xla_temp_bytes'] or 0) / 1e6:8.0f}"
        f" {(r['xla_flops'] or 0) / 1e9:10.2f} {r['analytic_flops'] / 1e9:10.2f}"
        f" {r['matmul_flops_per_s'] / 1e9:8.1f} {r['fraction_of_matmul_rate']:5.2f}"
        f" {r['trainable_bytes'] / 1e6:9.3f} {r['opt_state_bytes'] / 1e6:8.3f}"
    )
  return "\n".join(rows)


def main():
  args = parse_args()
  if args.mode is not None:
    print(json.dumps(run_mode(args)), flush=True)
    return
  results = {}
  for mode in args.modes.split(","):
    argv = [a for a in sys.argv[1:] if not a.startswith("--mode=")]
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv, f"--mode={mode}"],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode:
      sys.exit(f"--mode={mode} failed (exit {proc.returncode}).")
    results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(results[mode]), flush=True)
  print(json.dumps(summary(results)), flush=True)
  print(table(results), file=sys.stderr)
  print(json.dumps(summary(results), indent=1), file=sys.stderr)


if __name__ == "__main__":
  main()
