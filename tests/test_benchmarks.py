"""Tests for the benchmarks' own arithmetic: the analytic FLOP count of `benchmarks/train_step.py`
against XLA's cost analysis of the programs it times (an independent count of the same matmuls).

The configuration is chosen so the attention's matmuls between activations are a large share of
the FLOPs (a quarter: long encoder, narrow model); a count that gave their backward pass one
matmul instead of two is 18% short of XLA's for prompt tuning here, outside the test's band.
"""

import importlib.util
import pathlib

import jax
import pytest

from prompt_tuning import model as model_lib
from prompt_tuning import optim
from prompt_tuning import partitioning
from prompt_tuning import prompts
from prompt_tuning import trainer as trainer_lib
from prompt_tuning.models import t5

_BENCHMARK = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
_CFG = dict(
    emb_dim=128,
    num_heads=4,
    head_dim=32,
    mlp_dim=256,
    num_encoder_layers=2,
    num_decoder_layers=2,
    vocab_size=128,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
)
_BATCH, _INPUTS, _PROMPT, _TARGETS = 2, 224, 32, 8


def _benchmark():
  spec = importlib.util.spec_from_file_location("train_step_benchmark", _BENCHMARK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _xla_flops(mode, bench):
  cfg = t5.T5Config(**_CFG)
  prompted = mode != "model"
  inputs = _INPUTS if prompted else _INPUTS + _PROMPT
  factory = prompts.prefix_prompt_factory(_PROMPT, prompts.random_uniform()) if prompted else None
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg, prompt_factory=factory))
  partitioner = partitioning.Partitioner()
  batch = partitioner.shard_batch(bench.random_batch(cfg.vocab_size, _BATCH, inputs, _TARGETS))
  shapes = {"inputs": inputs, "targets": _TARGETS}
  trainer = trainer_lib.Trainer(
      model,
      optim.create_optimizer,
      partitioner,
      trainable_patterns=optim.PROMPT_PATTERNS if prompted else (".*",),
      input_shapes=shapes,
  )
  params = bench.random_params(trainer.spec)
  if mode == "score":
    lowered = partitioner.jit(model.score_batch).lower(params, batch)
  else:
    state, frozen = trainer.create_state(params, 0)
    lowered = trainer.lower_train_step(state, frozen, batch)
  cost = lowered.compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


@pytest.mark.parametrize("mode", ["prompt", "model", "score"])
def test_analytic_flops_match_xla_cost_analysis(mode):
  bench = _benchmark()
  cfg = t5.T5Config(**_CFG)
  weights, activations = bench.analytic_forward_flops(cfg, _BATCH, _INPUTS + _PROMPT, _TARGETS)
  analytic = weights + activations + bench.analytic_backward_flops(mode, weights, activations)
  xla = _xla_flops(mode, bench)
  # XLA also counts elementwise work (softmax, norms, gelu, the optimizer), so it may be a few
  # percent above the matmuls; it is never below them.
  assert analytic <= xla <= 1.08 * analytic, (mode, analytic, xla)
  assert activations >= 0.2 * (weights + activations)  # The configuration tests what it says.
