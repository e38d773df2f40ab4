"""lm-evaluation-harness with the `ftjax` model registered: lm_eval's CLI, its flags unchanged.

  python -m ftjax.harness --model ftjax --model_args model=runs/lora \\
      --batch_size 8 --tasks ftjax_mc --include_path tests/data/lm_eval

The model is `ftjax.evaluation.harness.FtjaxLM`; bad ftjax model_args are one `error:` line, exit 2.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
  """lm_eval's CLI with the `ftjax` model registered; bad ftjax model_args exit 2."""
  from lm_eval.__main__ import cli_evaluate

  from ftjax import cli
  from ftjax.checkpoints import CheckpointError
  from ftjax.evaluation.harness import HarnessArgumentError  # registers "ftjax"
  from ftjax.models.config import UnsupportedModelError
  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  try:
    cli_evaluate()
  except HarnessArgumentError as err:
    cli.fail(err)
  except (CheckpointError, UnsupportedModelError) as err:
    cli.fail(f"--model_args model: {err}")


if __name__ == "__main__":
  main()
