"""Decoding and scoring throughput: the key/value cache against re-running the decoder each step.

On a prompted T5 1.1 with random weights (default: small, batch 8, 128 input tokens + 100 prompt
positions, 32 decoded tokens, float32), times:
  * greedy and beam search (4 beams) with the model's key/value cache (`predict_batch`, the
    project's decoding path);
  * the same algorithms re-running the whole decoder over every position so far at each step
    (the cost the cache avoids): the "cache" handed to the decoding loop is then the token
    history, which beam search reorders like any cache;
  * rank classification (`score_batch` of every candidate target, 2 classes).
EOS is disabled (id -1) so every run decodes the full length. Prints one JSON line per case
(median seconds over `--repeats` runs after compilation, output tokens/s or examples/s) and a
summary line with the cache's speed-up per algorithm.

  python benchmarks/decoding.py
"""

import argparse
import json
import statistics
import sys
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning import host_memory
from prompt_tuning import model as model_lib
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import restore
from prompt_tuning.models import t5

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def no_cache_decode(model, decode_fn, num_decodes, eos_id):
  """`(params, batch) -> decodes`: `decode_fn` re-running the full decoder at every step."""
  module = model.module

  def run(params, batch):
    enc = batch["encoder_input_tokens"]
    dec_inputs = jnp.zeros_like(batch["decoder_input_tokens"])
    length = dec_inputs.shape[1]
    encoded = module.apply({"params": params}, enc, method=module.encode)
    encoded_n = decoding.flat_batch_beam_expand(encoded, num_decodes)
    enc_n = decoding.flat_batch_beam_expand(enc, num_decodes)

    def tokens_to_logits(state):
      tokens = lax.dynamic_update_slice_in_dim(
          state.cache["tokens"], state.cur_token[:, None], state.cur_index, axis=1
      )
      logits = module.apply(
          {"params": params},
          encoded_n,
          enc_n,
          tokens,
          jnp.ones_like(tokens),  # Every position is a query; the causal mask does the rest.
          method=module.decode,
      )
      return lax.dynamic_index_in_dim(logits, state.cur_index, 1, keepdims=False), {
          "tokens": tokens
      }

    history = {"tokens": jnp.zeros((enc.shape[0], length), jnp.int32)}
    decodes, _ = decode_fn(
        dec_inputs,
        history,
        tokens_to_logits,
        eos_id=eos_id,
        num_decodes=num_decodes,
        max_decode_len=length,
    )
    return decodes

  return run


def timed(fn, args, repeats):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--decode_length", type=int, default=32)
  parser.add_argument("--beams", type=int, default=4)
  parser.add_argument("--classes", type=int, default=2, help="Candidates of rank classification.")
  parser.add_argument("--targets", type=int, default=4, help="Target length when scoring.")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  for name in ("batch", "inputs", "decode_length", "beams", "classes", "targets", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1.")

  host_memory.configure()  # As the entry points do, before JAX starts its threads.
  eos_id = -1  # Never produced: every decode runs the full length.
  cfg = t5.config_for_size(args.size, dtype=args.dtype)
  module = t5.EncoderDecoder(
      cfg,
      prompt_factory=prompts.prefix_prompt_factory(args.prompt_length, prompts.random_uniform()),
  )
  partitioner = partitioning.Partitioner()
  base = model_lib.EncoderDecoderModel(module, eos_id=eos_id)
  spec = restore.ParamSpec.of(
      base, partitioner, {"inputs": args.inputs, "targets": args.decode_length}
  )
  params = train_step.random_params(spec)
  batch = partitioner.shard_batch(
      train_step.random_batch(cfg.vocab_size, args.batch, args.inputs, args.decode_length)
  )
  common = dict(size=args.size, batch=args.batch, inputs=args.inputs, dtype=args.dtype)
  common.update(prompt_length=args.prompt_length, decode_length=args.decode_length)
  results = []
  for algo, decode_fn, n in [
      ("greedy", decoding.greedy, 1),
      ("beam", decoding.beam_search, args.beams),
  ]:
    model = model_lib.EncoderDecoderModel(
        module, decode_fn=decode_fn, decode_kwargs={"num_decodes": n}, eos_id=eos_id
    )
    for cached in (True, False):
      fn = model.predict_batch if cached else no_cache_decode(model, decode_fn, n, eos_id)
      first, seconds = timed(partitioner.jit(fn), (params, batch), args.repeats)
      r = dict(
          case=f"{algo}_{'cache' if cached else 'no_cache'}",
          beams=n,
          seconds=seconds,
          first_call_s=first,
          output_tokens_per_s=args.batch * args.decode_length / seconds,
          **common,
      )
      results.append(r)
      print(json.dumps(r), flush=True)

  # Rank classification: every example scored against each candidate target.
  rows = args.batch * args.classes
  score_batch = partitioner.shard_batch(
      train_step.random_batch(cfg.vocab_size, rows, args.inputs, args.targets)
  )
  first, seconds = timed(partitioner.jit(base.score_batch), (params, score_batch), args.repeats)
  r = dict(
      case="rank_classification",
      classes=args.classes,
      targets=args.targets,
      seconds=seconds,
      first_call_s=first,
      examples_per_s=args.batch / seconds,
      **common,
  )
  results.append(r)
  print(json.dumps(r), flush=True)
  by_case = {r["case"]: r["seconds"] for r in results}
  summary = {
      "case": "summary",
      "greedy_cache_speedup": by_case["greedy_no_cache"] / by_case["greedy_cache"],
      "beam_cache_speedup": by_case["beam_no_cache"] / by_case["beam_cache"],
      "load_average": list(np.round(np.array(__import__("os").getloadavg()), 2)),
  }
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  main()
