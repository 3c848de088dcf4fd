"""Evaluate a trained prompt (or model) on a task split with its SeqIO metrics.

  python -m prompt_tuning.eval --gin_file=runs/prompt_eval.gin \
    --gin.MIXTURE_OR_TASK_NAME=... --gin.CHECKPOINT_PATH=MODEL_DIR/checkpoint_N ...

The work is `prompt_tuning.evaluation.run`.
"""

from prompt_tuning import config

REQUIRED = ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "INITIAL_CHECKPOINT_PATH")

main = config.entry_point("prompt_tuning.evaluation", REQUIRED, __doc__)


def console_main() -> None:
  """The `pt-eval` command. Returns None: `sys.exit(main())` would exit 1 on `main`'s result."""
  main()


if __name__ == "__main__":
  main()
