"""Mixed-prompt batches against the ordinary single-prompt model, prompt by prompt."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import decoding
from prompt_tuning import model as model_lib
from prompt_tuning import prompt_library as lib
from prompt_tuning import prompts
from prompt_tuning.models import t5

VOCAB = 50
# Enough buckets that a prompt placed at the wrong offset changes the relative-position biases.
CFG = t5.config_for_size(
    "tiny",
    dtype="float32",
    vocab_size=VOCAB,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=64,
)


@pytest.fixture(scope="module")
def frozen():
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(CFG))
  variables = model.get_initial_variables(jax.random.PRNGKey(0))
  return jax.tree.map(np.asarray, nn.unbox(variables)["params"])


def random_prompts(seed, lengths):
  rng = np.random.default_rng(seed)
  return {
      f"p{i}": rng.uniform(-2, 2, (n, CFG.emb_dim)).astype(np.float32)
      for i, n in enumerate(lengths)
  }


def random_examples(rng, names, n):
  out = []
  # Every prompt appears (cyclically, then shuffled) so each mix holds all of them.
  chosen = rng.permutation([names[i % len(names)] for i in range(n)])
  for name in chosen:
    inputs = rng.integers(2, VOCAB, rng.integers(1, 12)).tolist()
    targets = rng.integers(2, VOCAB, rng.integers(1, 6)).tolist() + [1]
    out.append(lib.Example(str(name), inputs, targets))
  return out


def pad(rows):
  out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
  return out


class Reference:
  """The ordinary prefix-prompt model, one per prompt (its own batch, its own padding)."""

  def __init__(self, params, prompt):
    factory = prompts.prefix_prompt_factory(prompt.shape[0], prompts.from_array(prompt))
    self.model = model_lib.EncoderDecoderModel(
        t5.EncoderDecoder(CFG, prompt_factory=factory), decode_fn=decoding.greedy
    )
    self.params = dict(
        params, encoder=dict(params["encoder"], prompt={"prompt": {"prompt": prompt}})
    )

  def score(self, inputs, targets):
    t = pad(targets)
    batch = {
        "encoder_input_tokens": pad(inputs),
        "decoder_input_tokens": np.pad(t[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": t,
        "decoder_loss_weights": (t > 0).astype(np.float32),
    }
    return np.asarray(jax.jit(self.model.score_batch)(self.params, batch))

  def generate(self, inputs, max_len):
    batch = {
        "encoder_input_tokens": pad(inputs),
        "decoder_input_tokens": np.zeros((len(inputs), max_len), np.int32),
    }
    decodes = jax.jit(self.model.predict_batch)(self.params, batch)
    return [lib.trim_decode(d, 1) for d in np.asarray(decodes)]


def reference_outputs(params, table, examples, max_len):
  """Scores and greedy decodes of every example from its own prompt's ordinary model."""
  scores, decodes = [None] * len(examples), [None] * len(examples)
  for name, prompt in table.items():
    idx = [i for i, e in enumerate(examples) if e.prompt == name]
    if not idx:
      continue
    ref = Reference(params, prompt)
    inputs = [examples[i].inputs for i in idx]
    s = ref.score(inputs, [examples[i].targets for i in idx])
    d = ref.generate(inputs, max_len)
    for j, i in enumerate(idx):
      scores[i], decodes[i] = s[j], d[j]
  return np.asarray(scores), decodes


def test_mixed_batch_equals_each_prompt_alone(frozen):
  table = random_prompts(1, [3, 7, 1, 5])
  library = lib.PromptLibrary(CFG.emb_dim)
  for name, p in table.items():
    library.add(name, p)
  runner = lib.MixedPromptRunner(CFG, frozen, library)
  rng = np.random.default_rng(0)
  for _ in range(3):  # Different mixes, same buckets.
    examples = random_examples(rng, list(table), 7)
    scores = runner.score(examples)
    decodes = runner.generate(examples, max_decode_length=6)
    want_scores, want_decodes = reference_outputs(frozen, table, examples, 6)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert decodes == want_decodes
    # The prompts matter here: naming another prompt changes the scores.
    swapped = [
        lib.Example("p1" if e.prompt != "p1" else "p0", e.inputs, e.targets) for e in examples
    ]
    assert np.all(np.abs(runner.score(swapped) - scores) > 1e-4)
  assert dict(runner.compilations) == {"score": 1, "predict": 1}
