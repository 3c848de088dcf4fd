"""Prompt tuning (Lester et al., 2021) for a frozen T5 1.1, in JAX/Flax."""

from prompt_tuning import _tf

_tf.install()  # Before anything imports TensorFlow (SeqIO does).
