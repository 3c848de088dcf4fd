"""The original's names for the GLUE and SuperGLUE tasks, as aliases of the tasks here.

google-research/prompt-tuning (`data/glue.py`, `data/super_glue.py`) registers, besides T5's
names, `_examples` variants (the same task, logging text examples to TensorBoard) and GLUE under
`_v200` (TFDS `glue` 2.0.0, which every GLUE task here reads). Its demo scripts train
`taskless_glue_sst2_v200_examples`; its test configs `taskless_super_glue_boolq_v102_examples`.
Each name below is a copy of the task here with the same text, metrics and data:

  glue_<c>_{v002,v200}_examples                      -> glue_<c>_v002
  taskless_glue_<c>_{v002_examples,v200,v200_examples} -> taskless_glue_<c>_v002
  [taskless_]glue_mnli_and_dev_{v002,v200}_examples    mixture: MNLI train, matched, mismatched
  [taskless_]super_glue_<c>_v102_examples            -> [taskless_]super_glue_<c>_v102
  [taskless_]super_glue_wsc_v102_simple_{train,eval}_examples, and the mixtures
  [taskless_]super_glue_wsc_and_dev_v102_simple[_examples] (WSC-simple train + eval)

Not registered: `task_index_*` (a task-index token before the inputs, for multi-task prompts),
`mt5_*` / `byt5_*` (other vocabularies), `*_dpr_v001_simple` (TFDS definite_pronoun_resolution).
"""

from prompt_tuning.data import registration
from prompt_tuning.tasks import glue
from prompt_tuning.tasks import super_glue

# The original skips WSC in its loop over SuperGLUE configs (WSC-simple has its own names).
_SUPER_GLUE_NAMES = tuple(t.name for t in super_glue.SUPER_GLUE_TASKS if t.name != "wsc_fixed")


def register_aliases() -> list[str]:
  """Registers every alias above; returns the names."""
  aliases = {}
  for t in glue.GLUE_TASKS:
    for taskless in (False, True):
      canonical = glue.task_name(t.config, taskless)
      for version, suffix in (("v002", "_examples"), ("v200", ""), ("v200", "_examples")):
        if version == "v200" and suffix == "" and not taskless:
          continue  # The original leaves `glue_<c>_v200` to T5, which does not define it.
        aliases[canonical.replace("_v002", f"_{version}") + suffix] = canonical
  for name in _SUPER_GLUE_NAMES:
    for taskless in (False, True):
      aliases[super_glue.task_name(name, taskless) + "_examples"] = super_glue.task_name(
          name, taskless
      )
  for taskless in (False, True):
    wsc = super_glue.task_name("wsc", taskless)
    for part in ("_simple_train", "_simple_eval"):
      aliases[wsc + part + "_examples"] = wsc + part
  for alias, canonical in aliases.items():
    registration.add_alias(alias, canonical)

  mixtures = []
  for taskless in (False, True):
    prefix = "taskless_" if taskless else ""
    mnli = [glue.task_name(c, taskless) for c in ("mnli", "mnli_matched", "mnli_mismatched")]
    for version in ("v002", "v200"):
      name = f"{prefix}glue_mnli_and_dev_{version}_examples"
      registration.add_mixture(name, mnli, default_rate=1.0)
      mixtures.append(name)
    wsc = super_glue.task_name("wsc", taskless)
    for suffix in ("", "_examples"):
      name = f"{prefix}super_glue_wsc_and_dev_v102_simple{suffix}"
      registration.add_mixture(
          name, [wsc + "_simple_train", wsc + "_simple_eval"], default_rate=1.0
      )
      mixtures.append(name)
  return list(aliases) + mixtures


REGISTERED = register_aliases()
