"""Decode a task split or a text / JSONL file of inputs to JSONL.

  python -m prompt_tuning.infer --gin_file=... --gin_file=runs/prompt_infer.gin \
    --gin.INFER_INPUT_FILE="'questions.txt'" --gin.INFER_OUTPUT_FILE="'/tmp/out.jsonl'"

The work is `prompt_tuning.inference.run`.
"""

from prompt_tuning import config

REQUIRED = ("TASK_FEATURE_LENGTHS", "INITIAL_CHECKPOINT_PATH")

main = config.entry_point("prompt_tuning.inference", REQUIRED, __doc__)


def console_main() -> None:
  """The `pt-infer` command. Returns None: `sys.exit(main())` would exit 1 on `main`'s result."""
  main()


if __name__ == "__main__":
  main()
