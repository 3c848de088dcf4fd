"""Deep-prompt prefixes that start as the frozen encoder's own keys and values of an input prompt.

`frozen_kv(prompt_init, checkpoint_path)` is an `init` of `deep_prompts.deep_prompt_factory`
(prompts/deep_prompt_frozen_kv.gin): the input prompt [P', D] from `prompt_init` (e.g.
`prompts.class_labels`) is run alone through the frozen encoder of `checkpoint_path` (its
positions attend to each other with the model's relative-position bias), and layer i's prefix is
the keys and values that layer's attention projects from its input at those positions. At the
start every layer thus attends to the prompt as the frozen model computes it for a sequence of its
own. Encoder prefixes only: the decoder's inputs are targets, which an input prompt has no
counterpart of.

A module of its own: it runs the T5 model, which imports `deep_prompts`.
"""

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import checkpoints
from prompt_tuning import deep_prompts
from prompt_tuning import prompts
from prompt_tuning.models import t5

Array = jax.Array


class FrozenKv:
  """A `deep_prompts.StackInitializer`: the frozen keys/values of an input prompt (see above)."""

  def __init__(self, prompt_init: prompts.Initializer, checkpoint_path: str):
    self.prompt_init = prompt_init
    self.checkpoint_path = os.fspath(checkpoint_path)

  def initializer(self, config: Any, stack: str) -> prompts.Initializer:
    if stack != "encoder":
      raise deep_prompts.DeepPromptError(
          "frozen_kv initialises encoder prefixes only (the decoder's inputs are targets, which "
          "an input prompt has no counterpart of): set DEEP_PROMPT_DECODER = False."
      )

    def init(rng, shape, dtype=jnp.float32):
      prompt_PxD = self.prompt_init(rng, (shape[2], config.emb_dim), jnp.float32)
      return encoder_kv(config, _frozen_encoder(self.checkpoint_path), prompt_PxD).astype(dtype)

    return init


def frozen_kv(prompt_init: prompts.Initializer, checkpoint_path: str) -> FrozenKv:
  """The deep prompt's `init` that starts from the frozen keys/values (`FrozenKv`)."""
  return FrozenKv(prompt_init, checkpoint_path)


@functools.lru_cache(maxsize=2)
def _frozen_encoder(checkpoint_path: str) -> dict[str, Any]:
  """The token embedder's and encoder's parameters of a T5X checkpoint (numpy)."""
  return checkpoints.load_t5x_checkpoint(
      checkpoint_path, regex="(token_embedder|encoder)/.*", dtype=np.float32
  )


def encoder_kv(config: Any, params: dict[str, Any], prompt_PxD: Array) -> Array:
  """[layers, 2, P', H, K]: each encoder layer's attention keys and values of its input at the
  positions of `prompt_PxD`, run through the encoder of `params` as the whole sequence."""
  length = prompt_PxD.shape[0]
  model = t5.EncoderDecoder(config, prompts.input_prompt_factory(length))
  variables = {
      "params": {
          "token_embedder": params["token_embedder"],
          "encoder": {**params["encoder"], "prompt": {"prompt": {"prompt": prompt_PxD}}},
      }
  }
  # One padding token after the prompt: masked, so the prompt attends to itself alone.
  tokens = jnp.zeros((1, 1), jnp.int32)
  is_kv = lambda m, method: (
      method == "__call__" and m.name in ("key", "value") and m.scope.path[-2:-1] == ("attention",)
  )
  _, state = model.apply(variables, tokens, method="encode", capture_intermediates=is_kv)
  layers = state["intermediates"]["encoder"]
  shape = (length, config.num_heads, config.head_dim)
  return jnp.stack(
      [
          jnp.stack(
              [
                  layers[f"layers_{i}"]["attention"][kv]["__call__"][0][0, :length].reshape(shape)
                  for kv in ("key", "value")
              ]
          )
          for i in range(config.num_encoder_layers)
      ]
  )
