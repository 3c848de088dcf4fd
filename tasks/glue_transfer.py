"""Zero-shot transfer between QQP and MRPC: the paper's Table 2 (section 5).

Registered on import, under the original's names (google-research/prompt-tuning
`data/glue_transfer.py`), for (source, target) in (qqp, mrpc) and (mrpc, qqp):
  [taskless_]glue_<target>_from_<source>_v002[_examples]
      the target's validation set in its own format, with predictions in the source's label
      words: `duplicate` is read as `equivalent` (and `not_duplicate` as `not_equivalent`), or
      the reverse, before the target's metrics (F1 of the positive class, accuracy).
  [taskless_]glue_<target>_from_<source>_zeroshot_v002[_examples]
      mixture: train on the source's train split, evaluate on the task above.
`_examples` is the same task (the original's also logged text examples to TensorBoard).

Data: TFDS `glue/<config>:2.0.0`, or GLUE's official TSV files (`QQP/dev.tsv`, `MRPC/dev.tsv`)
under `GLUE_DATA_DIR` (gin macro) or `$PROMPT_TUNING_GLUE_DIR` when set when the data is read.
"""

import functools

from prompt_tuning.data import glue_format
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registration
from prompt_tuning.data import sources
from prompt_tuning.data import vocab

GLUE_DIR_MACRO, GLUE_DIR_ENV_VAR = "GLUE_DATA_DIR", "PROMPT_TUNING_GLUE_DIR"
PAIRS = (("qqp", "mrpc"), ("mrpc", "qqp"))  # (trained on, evaluated on)
_POSITIVE = {"qqp": "duplicate", "mrpc": "equivalent"}


def glue_dir():
  return sources.configured_dir(GLUE_DIR_MACRO, GLUE_DIR_ENV_VAR)


def transfer_task_name(source: str, target: str, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}glue_{target}_from_{source}_v002"


def _glue_task_name(config: str, taskless: bool) -> str:
  """The GLUE task that trains the source (tasks/glue.py's name)."""
  return f"{'taskless_' if taskless else ''}glue_{config}_v002"


def register_glue_transfer() -> list[str]:
  """Registers the transfer tasks and zero-shot mixtures of both directions; returns the names."""
  names = []
  for source, target in PAIRS:
    data = sources.LocalOrTfdsSource(
        f"glue/{target}:{sources.GLUE_TFDS_VERSION}",
        ["validation"],
        glue_dir,
        functools.partial(glue_format.glue_tsv_files, target),
        functools.partial(glue_format.read_glue_tsv, target),
        glue_format.glue_signature(target),
    )
    postprocess_fn = functools.partial(
        postprocessors.translated_label,
        replacements=[(_POSITIVE[source], _POSITIVE[target])],
        label_names=glue_format.GLUE_LABELS[target],
    )
    for taskless in (False, True):
      name = transfer_task_name(source, target, taskless)
      registration.add_task(
          name,
          source=data,
          preprocessors=[
              functools.partial(
                  preprocessors.classification,
                  task_name=None if taskless else target,
                  field_names=glue_format.field_names(target),
                  label_names=glue_format.GLUE_LABELS[target],
              ),
              *registration.tokenize_and_append_eos(),
          ],
          output_features=vocab.get_output_features(),
          postprocess_fn=postprocess_fn,
          # GLUE's metrics for both (as tasks/glue.py): F1 of the positive class, accuracy.
          metric_fns=[metrics.f1_with_invalid, metrics.accuracy],
      )
      registration.add_alias(f"{name}_examples", name)
      train = _glue_task_name(source, taskless)
      for suffix in ("", "_examples"):
        mixture = name.replace("_v002", "_zeroshot_v002") + suffix
        registration.add_mixture(mixture, [train, name + suffix], default_rate=1.0)
        names.append(mixture)
      names.append(name)
  return names


REGISTERED = register_glue_transfer()
