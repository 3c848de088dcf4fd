"""Train a prompt (or a whole model) from a gin command line, T5X style.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_prompt.gin --gin_file=models/sizes/base.gin \
    --gin_file=prompts/class_labels.gin --gin_file=runs/prompt_finetune.gin \
    --gin.MIXTURE_OR_TASK_NAME="'taskless_super_glue_rte_v102'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
    --gin.TRAIN_STEPS=1130000 --gin.MODEL_DIR="'/tmp/rte'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://.../checkpoint_1100000'"

`TRAIN_STEPS` is the global step to stop at, counted from the initial checkpoint's step. The loop
itself is `prompt_tuning.training.run`.
"""

from prompt_tuning import config

REQUIRED = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")

main = config.entry_point("prompt_tuning.training", REQUIRED, __doc__)


def console_main() -> None:
  """The `pt-train` command. Returns None: `sys.exit(main())` would exit 1 on `main`'s result."""
  main()


if __name__ == "__main__":
  main()
