# %% [markdown]
# # One frozen model, many prompts
#
# Percent-format notebook (open it in Jupyter with jupytext, or run it as a script;
# `tests/test_notebooks.py` executes it headless). On the embedded default (the committed small
# T5 1.1 and its synthetic BoolQ-like task) it trains a prompt briefly and plots its learning
# curve, prints the prompt's nearest vocabulary tokens (paper section 7), serves the trained
# prompt and its untrained initialisation in one mixed batch, and ensembles them (section 6).
# Nothing here needs TensorFlow or SeqIO: the examples come from the task's generator and the
# tokens from SentencePiece directly.

# %%
import types

import jax
import matplotlib

matplotlib.use("Agg")  # Headless: the figure goes to a file.
import matplotlib.pyplot as plt
import numpy as np
import optax
import sentencepiece

from prompt_tuning import checkpoints, embedded, model as model_lib, neighbours, optim, prompts
from prompt_tuning import prompt_library as lib
from prompt_tuning import rank_classification as rank
from prompt_tuning.data import batches
from prompt_tuning.embedded import world
from prompt_tuning.models import t5

cfg = embedded.load_config()
backbone = checkpoints.load_t5x_checkpoint(embedded.checkpoint_path())
sp = sentencepiece.SentencePieceProcessor(model_file=embedded.vocab_path())
# What the prompt initialisers and rank classification read of a vocabulary (seqio's names).
vocab = types.SimpleNamespace(
    encode=sp.encode, decode=sp.decode, vocab_size=sp.get_piece_size(), extra_ids=0
)
LABELS = ["False", "True"]  # The task's target words, in the order of its label ids.
INPUT_LENGTH, PROMPT_LENGTH = 64, 20


def boolq(split, n):
  """(token ids of T5's BoolQ input, label word) pairs of the synthetic task."""
  return [
      (sp.encode(f"question: {x['question']} passage: {x['passage']}"), LABELS[x["label"]])
      for x in world.boolq_examples(0, split, n)
  ]


train, dev = boolq("train", 512), boolq("validation", 64)


def batch_of(pairs):
  return batches.encoder_decoder_batch(
      [(x, sp.encode(y)) for x, y in pairs], INPUT_LENGTH, target_length=4
  )


# %% [markdown]
# A 20-position prompt initialised from the class labels' embeddings (the rest sampled from the
# vocabulary), trained alone with the backbone frozen (Adafactor, lr 0.3), as the main job does.

# %%
embeddings = np.asarray(backbone["token_embedder"]["embedding"])[: sp.get_piece_size()]
init = prompts.class_labels(embeddings, vocab, LABELS)
initial_prompt = np.asarray(init(jax.random.PRNGKey(0), (PROMPT_LENGTH, cfg.emb_dim)))
model = model_lib.EncoderDecoderModel(
    t5.EncoderDecoder(cfg, prompt_factory=prompts.prefix_prompt_factory(PROMPT_LENGTH, init))
)
params = dict(
    backbone,
    encoder=dict(backbone["encoder"], prompt={"prompt": {"prompt": initial_prompt}}),
)
trainable, frozen = optim.split_params(params)
tx = optim.adafactor(0.3)
opt_state = tx.init(trainable)


@jax.jit
def step(trainable, opt_state, batch, step_number):
  loss_fn = lambda t: model.loss_fn(optim.merge_params(t, frozen), batch)[0]
  loss, grads = jax.value_and_grad(loss_fn)(trainable)
  updates, opt_state = tx.update(grads, opt_state, trainable, step=step_number)
  return optax.apply_updates(trainable, updates), opt_state, loss


losses = []
for i in range(40):
  chunk = [train[(16 * i + j) % len(train)] for j in range(16)]
  trainable, opt_state, loss = step(trainable, opt_state, batch_of(chunk), i)
  losses.append(float(loss))
print("loss", [round(l, 2) for l in losses[::8]], "->", round(losses[-1], 2))
trained_prompt = np.asarray(trainable["encoder"]["prompt"]["prompt"]["prompt"])

plt.figure(figsize=(5, 3))
plt.plot(losses)
plt.xlabel("step")
plt.ylabel("training loss (model.loss_fn, batch of 16)")
plt.title("Prompt tuning on the embedded default")
plt.tight_layout()
plt.savefig("learning_curve.png")
print("learning curve: learning_curve.png")

# %% [markdown]
# Interpretability (section 7): each prompt position's nearest vocabulary tokens by cosine
# similarity, and how many positions have a class label among them, against a random prompt.

# %%
table = neighbours.report(trained_prompt, embeddings, lambda ids: sp.decode(ids), LABELS, 5)
for row in table["prompt"]["positions"][:8]:
  tokens = ", ".join(n["token"] for n in row["neighbours"])
  print(
      f"position {row['position']:2d}: {tokens}"
      + (f"  <- {row['labels']}" if row["labels"] else "")
  )
print(
    "positions with a label among their neighbours: trained",
    table["prompt"]["positions_with_label"],
    "random control",
    table["random_control"]["positions_with_label"],
)

# %% [markdown]
# Serving: both prompts in one library, one compiled call for a batch whose examples each name
# their prompt. Every answer equals what its prompt alone gives (tests/test_prompt_library.py).

# %%
library = lib.PromptLibrary(cfg.emb_dim)
library.add("trained", trained_prompt)
library.add("initial", initial_prompt)
runner = lib.MixedPromptRunner(cfg, backbone, library)
label_ids = rank.label_targets(vocab, LABELS)
truth = [LABELS.index(y) for _, y in dev]
mixed = [lib.Example(name, x + [1]) for (x, _), name in zip(dev, ["trained", "initial"] * 32)]
results = rank.mixed_rank_classify(runner, mixed, [label_ids] * len(mixed))
for name in ("trained", "initial"):
  hits = [best == t for (best, _), e, t in zip(results, mixed, truth) if e.prompt == name]
  print(f"mixed batch, {name} prompt: accuracy {np.mean(hits):.2f} on {len(hits)} examples")
decodes = runner.generate(mixed[:4], max_decode_length=3)
print("greedy decodes:", [(e.prompt, sp.decode(d)) for e, d in zip(mixed[:4], decodes)])

# %% [markdown]
# Ensembling (section 6): both prompts on every example in one batch; rank classification by
# the summed log-likelihood, reported beside each member.

# %%
inputs = [x + [1] for x, _ in dev]
votes, member_scores = rank.ensemble_rank_classify(
    runner, ["trained", "initial"], inputs, label_ids
)
for name, scores in zip(["trained", "initial"], member_scores):
  print(f"member {name}: rank classification: accuracy {np.mean(scores.argmax(-1) == truth):.2f}")
print(f"ensemble: rank classification: accuracy {np.mean(votes == truth):.2f}")
print(f"mixed-batch compilations: {dict(runner.compilations)}")
