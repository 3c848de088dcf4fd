# %% [markdown]
# # A tour of prompt tuning with this codebase
#
# Percent-format notebook (open it in Jupyter with jupytext, or run it as a script). It loads a
# real T5X checkpoint, builds the prompted T5 1.1, initialises a prompt from class labels, takes a
# few prompt-only training steps, and compares rank-classification scores and greedy decodes.
# `tests/test_notebooks.py` executes it headless. Set `PROMPT_TUNING_SHARED` to the folder that
# holds `fixtures/` (the repository's `../shared` by default).

# %%
import os
import pathlib

import jax
import numpy as np
import optax

from prompt_tuning import checkpoints, decoding, model as model_lib, optim, prompts
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.models import t5

SHARED = pathlib.Path(
    os.environ.get("PROMPT_TUNING_SHARED", pathlib.Path.cwd().resolve().parent / "shared")
)
CHECKPOINT = SHARED / "fixtures/t5x_checkpoints/t5_1_1_tiny/checkpoint_3"
vocab_lib.set_default_vocab_path(SHARED / "fixtures/t5_vocab/spiece.model")
vocab = vocab_lib.get_vocabulary()

# %% [markdown]
# The backbone: every parameter of the T5X checkpoint, names unchanged.

# %%
backbone = checkpoints.load_t5x_checkpoint(CHECKPOINT)
print(f"{len(optim.flatten(backbone))} parameters, global step {checkpoints.read_step(CHECKPOINT)}")

# %% [markdown]
# A 6-position prompt initialised from the class labels' embeddings (the rest sampled from the
# 5,000 most frequent tokens), prepended to the embedded encoder input.

# %%
labels = ["positive", "negative"]
init = prompts.class_labels(prompts.load_embeddings(str(CHECKPOINT)), vocab, labels)
module = t5.EncoderDecoder(
    t5.config_for_size("tiny", dtype="float32"),
    prompt_factory=prompts.prefix_prompt_factory(6, init),
)
model = model_lib.EncoderDecoderModel(
    module, decode_fn=decoding.greedy, decode_kwargs={"num_decodes": 1}
)
prompt = init(jax.random.PRNGKey(0), (6, 4))
params = dict(backbone, encoder=dict(backbone["encoder"], prompt={"prompt": {"prompt": prompt}}))


# %%
def encode(texts, length):
  out = np.zeros((len(texts), length), np.int32)
  for i, t in enumerate(texts):
    ids = list(vocab.encode(t))[: length - 1] + [1]
    out[i, : len(ids)] = ids
  return out


def batch_for(inputs, targets):
  tgt = encode(targets, 4)
  return {
      "encoder_input_tokens": encode(inputs, 12),
      "decoder_target_tokens": tgt,
      "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
      "decoder_loss_weights": (tgt > 0).astype(np.float32),
  }


train = batch_for(
    ["a wonderful film", "a dull film", "truly great fun", "so boring"],
    ["positive", "negative", "positive", "negative"],
)

# %% [markdown]
# Prompt-only training: the gradient is taken with respect to the prompt alone, and the
# optimizer (T5X Adafactor, lr 0.3) keeps state for it alone.

# %%
trainable, frozen = optim.split_params(params)
tx = optim.adafactor(0.3)
opt_state = tx.init(trainable)


@jax.jit
def step(trainable, opt_state, step_number):
  loss_fn = lambda t: model.loss_fn(optim.merge_params(t, frozen), train)[0]
  loss, grads = jax.value_and_grad(loss_fn)(trainable)
  updates, opt_state = tx.update(grads, opt_state, trainable, step=step_number)
  return optax.apply_updates(trainable, updates), opt_state, loss


losses = []
for i in range(20):
  trainable, opt_state, loss = step(trainable, opt_state, 3 + i)
  losses.append(float(loss))
print("loss", [round(l, 2) for l in losses[::5]], "->", round(losses[-1], 2))
params = optim.merge_params(trainable, frozen)

# %% [markdown]
# Rank classification: score every candidate label for each input; pick the most likely.

# %%
inputs = ["a wonderful film", "a dull film"]
scores = np.stack(
    [np.asarray(model.score_batch(params, batch_for(inputs, [c] * len(inputs)))) for c in labels],
    axis=1,
)
print("scores [input, label]:\n", scores.round(2))
print("rank classification:", [labels[i] for i in scores.argmax(1)])
print(
    "greedy decodes:",
    [vocab.decode(d.tolist()) for d in model.predict_batch(params, batch_for(inputs, labels))],
)
