"""Evaluate one prompt on a transfer suite and print the paper's Table 1 or 2 (section 5).

  python -m prompt_tuning.transfer --suite=mrqa \
    --gin_file=models/t5_1_1_base_prompt.gin --gin.PROMPT_FILE="'squad.npy'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 32}" \
    --gin.MRQA_DATA_DIR="'/data/mrqa'"

`--suite` is `mrqa`, `qqp_mrpc` or `mrpc_qqp` (it sets the macro TRANSFER_SUITE);
`runs/prompt_transfer.gin` is added unless given. The prompt comes as for the eval command
(PROMPT_FILE, CHECKPOINT_PATH or MODEL_DIR). The work is `prompt_tuning.domain_transfer.run`.
"""

import os
import sys
from typing import Optional, Sequence

from prompt_tuning import config

REQUIRED = ("TRANSFER_SUITE", "TASK_FEATURE_LENGTHS", "INITIAL_CHECKPOINT_PATH")
RUN_FILE = "runs/prompt_transfer.gin"

_run = config.entry_point("prompt_tuning.domain_transfer", REQUIRED, __doc__)


def command_line(argv: Sequence[str]) -> list[str]:
  """`argv` with `--suite=X` as the binding TRANSFER_SUITE='X', and the run file added."""
  out, args = [], list(argv)
  while args:
    arg = args.pop(0)
    if arg == "--suite" and args:  # `--suite mrqa`
      arg = f"--suite={args.pop(0)}"
    if arg.startswith("--suite="):
      out.append(f"--gin.TRANSFER_SUITE={arg[len('--suite='):]!r}")
    else:
      out.append(arg)
  gin_files = [a[len("--gin_file=") :] for a in out if a.startswith("--gin_file=")]
  if not any(os.path.basename(f) == os.path.basename(RUN_FILE) for f in gin_files):
    out.append(f"--gin_file={RUN_FILE}")
  return out


def main(argv: Optional[Sequence[str]] = None):
  return _run(command_line(sys.argv[1:] if argv is None else argv))


def console_main() -> None:
  """The `pt-transfer` command. Returns None: `sys.exit(main())` would exit 1 on `main`'s result."""
  main()


if __name__ == "__main__":
  main()
