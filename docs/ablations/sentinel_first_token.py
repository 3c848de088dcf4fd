"""Does the embedded span-corruption checkpoint start every output with `<extra_id_0>`?

The premise of the "span corruption + sentinel" ablation (paper section 3.2): a model pretrained
only on span corruption has only ever produced targets that begin with a sentinel, so before any
prompt tuning it should answer anything with `<extra_id_0>`. Greedy-decodes 4 tokens, without a
prompt, for the CB-like task's 400 dev inputs (task format) and for their premises alone (plain
corpus text), on the span-corruption and the LM-adapted checkpoints. Output: docs/ablations.md.

  python docs/ablations/sentinel_first_token.py
"""

import collections
import json
import os

import jax
import numpy as np
import sentencepiece as spm

from prompt_tuning import checkpoints
from prompt_tuning import decoding
from prompt_tuning import embedded
from prompt_tuning import model as model_lib
from prompt_tuning.data import batches
from prompt_tuning.models import t5
from prompt_tuning.tasks import synthetic

EXTRA_IDS = 100  # The embedded vocabulary's, as T5's: <extra_id_0> is the highest id.


def main():
  sp = spm.SentencePieceProcessor(model_file=embedded.vocab_path())
  sentinel = sp.get_piece_size() + EXTRA_IDS - 1
  piece = lambda t: f"<extra_id_{sentinel - t}>" if t >= sp.get_piece_size() else sp.id_to_piece(t)
  data = synthetic.ensure_data(synthetic.data_dir())
  with open(os.path.join(data, "CB", "val.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  texts = {
      "CB-like dev inputs": [
          f"premise: {r['premise']} question: does it follow that {r['hypothesis']}?" for r in rows
      ],
      "their premises (plain text)": [r["premise"] for r in rows],
  }
  model = model_lib.EncoderDecoderModel(
      module=t5.EncoderDecoder(embedded.load_config()), decode_fn=decoding.greedy
  )
  predict = jax.jit(model.predict_batch)
  for stage in ("span_corruption", "lm_adapted"):
    params = checkpoints.load_t5x_checkpoint(embedded.checkpoint_path(stage))
    for name, inputs in texts.items():
      batch = batches.encoder_decoder_batch([(sp.encode(x), [0]) for x in inputs], 64, 4)
      first = np.asarray(predict(params, batch))[:, 0]
      common = collections.Counter(piece(int(t)) for t in first).most_common(3)
      print(
          f"{stage}, {name}: <extra_id_0> first in {100 * np.mean(first == sentinel):.1f}% "
          f"of {len(first)}; most common first tokens {common}"
      )


if __name__ == "__main__":
  main()
