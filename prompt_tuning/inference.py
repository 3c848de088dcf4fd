"""Inference: decode a task split, or a text / JSONL file of inputs, to JSONL.

Each output line holds `inputs` (text), `prediction` (decoded text) and `score` (the decode's
log-likelihood score), plus `targets` when the task has them. The infer command
(`python -m prompt_tuning.infer`, see `infer.py`) calls `run`.
"""

import json
import logging
import os
from typing import Mapping, Optional

import jax
import numpy as np
import tensorflow as tf

from prompt_tuning import partitioning
from prompt_tuning import restore
from prompt_tuning.data import pipeline
from prompt_tuning.data import vocab as vocab_lib


def _read_inputs(path: str) -> list[str]:
  """Plain text (one input a line) or JSONL with an `inputs` field."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Inference input file not found: {path}")
  texts = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line.strip():
        continue
      if path.endswith(".jsonl"):
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not valid JSON ({e}).") from None
        if "inputs" not in record:
          raise ValueError(f"{path}:{n}: missing field 'inputs'.")
        texts.append(str(record["inputs"]))
      else:
        texts.append(line)
  return texts


def _text_dataset(texts, vocab, length: int, target_length: int) -> tf.data.Dataset:
  def gen():
    for i, text in enumerate(texts):
      ids = list(vocab.encode(text))[: length - 1] + [vocab.eos_id]
      tokens = np.zeros((length,), np.int32)
      tokens[: len(ids)] = ids
      zeros = np.zeros((target_length,), np.int32)
      yield i, {
          "encoder_input_tokens": tokens,
          "decoder_input_tokens": zeros,
          "decoder_target_tokens": zeros,
          "decoder_loss_weights": zeros,
      }

  spec = {
      k: tf.TensorSpec((n,), tf.int32)
      for k, n in [
          ("encoder_input_tokens", length),
          ("decoder_input_tokens", target_length),
          ("decoder_target_tokens", target_length),
          ("decoder_loss_weights", target_length),
      ]
  }
  return tf.data.Dataset.from_generator(gen, output_signature=(tf.TensorSpec((), tf.int64), spec))


def run(
    model,
    partitioner: partitioning.Partitioner,
    restore_cfg: restore.RestoreConfig,
    task_feature_lengths: Mapping[str, int],
    output_file: Optional[str] = None,
    input_file: Optional[str] = None,
    mixture_or_task_name: Optional[str] = None,
    split: str = "validation",
    mixture_or_task_module=None,
    batch_size: int = 32,
    output_dir: Optional[str] = None,
    use_cached: bool = False,
) -> int:
  """Writes one JSON line per example to `output_file`; returns the number written.

  The parameters are those `restore_cfg` names (see `restore.py`). Instead of `output_file`,
  `output_dir` (T5X's INFER_OUTPUT_DIR) receives `<task or input file>-predict.jsonl-00000-of-00001`,
  the name T5X's infer gives its single shard.
  """
  if bool(input_file) == bool(mixture_or_task_name):
    raise ValueError("Give exactly one of INFER_INPUT_FILE or MIXTURE_OR_TASK_NAME.")
  if bool(output_file) == bool(output_dir):
    raise ValueError("Give exactly one of INFER_OUTPUT_FILE or INFER_OUTPUT_DIR.")
  if output_dir:
    name = mixture_or_task_name or os.path.splitext(os.path.basename(input_file))[0]
    output_file = os.path.join(output_dir, f"{name}-predict.jsonl-00000-of-00001")
  spec = restore.ParamSpec.of(model, partitioner, task_feature_lengths)
  params, _ = restore.load_params(restore_cfg, model, spec, jax.random.PRNGKey(0))
  if input_file:
    vocab = vocab_lib.get_vocabulary()
    texts = _read_inputs(input_file)
    ds = _text_dataset(
        texts, vocab, task_feature_lengths["inputs"], task_feature_lengths["targets"]
    )
    targets = [None] * len(texts)
  else:
    task = pipeline.get_task(mixture_or_task_name, mixture_or_task_module)
    vocab = task.output_features["targets"].vocabulary
    lengths = dict(task_feature_lengths)

    def datasets():
      raw = task.get_dataset(
          lengths, split=split, shuffle=False, num_epochs=1, use_cached=use_cached
      )
      return raw, pipeline.feature_converter()(raw, lengths).enumerate()

    raw, ds = pipeline.build(mixture_or_task_name, datasets)
    examples = list(raw.as_numpy_iterator())
    texts = [vocab.decode(list(e["inputs"])) for e in examples]
    targets = [vocab.decode(list(e["targets"])) for e in examples]
  predict = partitioner.jit(model.predict_batch_with_aux)
  n = 0
  os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  with open(output_file + ".tmp", "w") as f:
    for indices, batch in pipeline.padded_batches(ds, batch_size):
      decodes, aux = jax.device_get(predict(params, batch))
      for row, index in enumerate(indices):
        if index < 0:
          continue
        record = {
            "inputs": texts[index],
            "prediction": vocab.decode(decodes[row].tolist()),
            "score": float(aux["scores"][row]),
        }
        if targets[index] is not None:
          record["targets"] = targets[index]
        f.write(json.dumps(record) + "\n")
        n += 1
  os.replace(output_file + ".tmp", output_file)
  logging.info("Wrote %d predictions to %s.", n, output_file)
  return n
