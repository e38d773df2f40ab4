"""Re-score a finished experiment from its saved answers, without a model.

  python -m ftjax.rescore WORKDIR

Recomputes every score, `summary.json` and `report.md` (with plots) from the workdir's saved
answers and the config's data files (`ftjax.experiment.rescore`); the arms do not answer again.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv=None) -> int:
  from ftjax import cli
  parser = cli.Parser(prog="python -m ftjax.rescore", description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir", help="a finished experiment's workdir")
  args = parser.parse_args(argv)
  from ftjax.experiment.rescore import ScoreError
  return cli.run_main(_rescore, args.workdir, errors=(ScoreError, OSError), exit=False)


def _rescore(workdir: str) -> int:
  from ftjax.experiment.rescore import rescore
  rescore(workdir)
  print(f"re-scored: {Path(workdir) / 'summary.json'}, {Path(workdir) / 'report.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
