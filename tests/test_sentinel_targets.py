"""prompt_tuning.data.sentinel_targets: `<extra_id_0>` before every target, stripped for metrics."""

import seqio
import pytest

from prompt_tuning import embedded
from prompt_tuning.data import sentinel_targets
from prompt_tuning.data import vocab as vocab_lib

CB = "synthetic_taskless_super_glue_cb_v102"
LENGTHS = {"inputs": 64, "targets": 4}  # runs/embedded_base.gin's.


@pytest.fixture
def embedded_vocab(tmp_path, monkeypatch):
  from prompt_tuning.tasks import synthetic  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv(synthetic.DATA_DIR_ENV_VAR, str(tmp_path))
  vocab_lib.set_default_vocab_path(embedded.vocab_path())
  yield vocab_lib.get_vocabulary()
  vocab_lib.set_default_vocab_path(None)


def _examples(name, n=40):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="validation", shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


def test_targets_start_with_the_sentinel_and_metrics_see_the_labels(embedded_vocab):
  from prompt_tuning.tasks import synthetic  # pylint: disable=g-import-not-at-top

  name = sentinel_targets.register(CB, "prompt_tuning.tasks.synthetic")
  assert name == CB + "_sentinel_targets"
  # T5's <extra_id_0> is the vocabulary's last id: 600 pieces + 100 extra ids -> 699.
  sentinel_id = embedded_vocab.vocab_size - 1
  assert sentinel_id == 699
  plain, with_sentinel = _examples(CB), _examples(name)
  words = synthetic.CLASS_LABELS["cb"]
  assert {e["targets_pretokenized"].decode() for e in plain} == set(words)  # All three classes.
  task = seqio.get_mixture_or_task(name)
  for p, s in zip(plain, with_sentinel):
    assert list(s["inputs"]) == list(p["inputs"])
    # Nothing else changes: the sentinel, then the label's own pieces and EOS, within 4 tokens.
    assert list(s["targets"]) == [sentinel_id] + list(p["targets"])
    label = words.index(p["targets_pretokenized"].decode())
    # A model that learned the targets decodes exactly them; the metric sees the label index.
    prediction = embedded_vocab.decode(list(s["targets"]))
    assert prediction.startswith("<extra_id_0>")
    assert task.postprocess_fn(prediction, example=s, is_target=False) == label
    assert task.postprocess_fn(s["targets_pretokenized"], example=s, is_target=True) == label
  # A prediction without the sentinel is judged on its text; a wrong word stays wrong.
  assert task.postprocess_fn("Nobody") == 2
  assert task.postprocess_fn("<extra_id_0> Maybe") == -1


def test_mixtures_are_refused(embedded_vocab):
  seqio.MixtureRegistry.remove("test_sentinel_mixture")
  seqio.MixtureRegistry.add("test_sentinel_mixture", [(CB, 1.0)])
  with pytest.raises(ValueError, match="is a mixture"):
    sentinel_targets.register("test_sentinel_mixture", "prompt_tuning.tasks.synthetic")
  seqio.MixtureRegistry.remove("test_sentinel_mixture")
