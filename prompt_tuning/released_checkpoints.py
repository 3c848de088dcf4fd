"""Where Google's released T5 1.1 checkpoints (T5X format) are, by size and pretraining objective.

The paper's Figure 3 (c) compares backbones pretrained with span corruption alone (T5 1.1 as
released, step 1,000,000) and after 100,000 more steps of LM adaptation ("lm100k", step
1,100,000, the paper's default); `configs/models/released_t5_1_1_checkpoint.gin` points
INITIAL_CHECKPOINT_PATH here by MODEL_SIZE, so one grid serves every size. The intermediate
LM-adaptation lengths of Figure 3 (d) were not released.
"""

ROOT = "gs://t5-data/pretrained_models/t5x"
SIZES = ("small", "base", "large", "xl", "xxl")
# objective -> (directory name pattern, step)
RELEASES = {
    "span_corruption": ("t5_1_1_{size}", 1_000_000),
    "lm_adapted": ("t5_1_1_lm100k_{size}", 1_100_000),
}


def checkpoint_path(size: str, objective: str = "lm_adapted", root: str = ROOT) -> str:
  """`<root>/<release>/checkpoint_<step>` of T5 1.1 `size` pretrained with `objective`."""
  if size not in SIZES:
    raise ValueError(f"No released T5 1.1 checkpoint of size {size!r}; sizes: {SIZES}.")
  if objective not in RELEASES:
    raise ValueError(
        f"No released T5 1.1 checkpoint for objective {objective!r}; objectives: "
        f"{tuple(RELEASES)}."
    )
  pattern, step = RELEASES[objective]
  return f"{root}/{pattern.format(size=size)}/checkpoint_{step}"
