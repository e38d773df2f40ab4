"""The main job on the embedded default (`make demo`): the support-domain comparison.

Runs configs/experiments/support.py on SmolLM2-135M-Instruct and MiniLM into `runs/demo`
(or the folder given as the first argument), then prints the comparison table and where the
report is. A second run reuses every cached stage and only rebuilds the report.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (data pipeline) start-up chatter

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  workdir = Path(argv[0] if argv else ROOT / "runs" / "demo")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from ftjax import cli
  from ftjax.experiment import report, run
  from ftjax.experiment.config import load_config_file
  config = load_config_file(str(ROOT / "configs" / "experiments" / "support.py"))
  started = time.perf_counter()
  summary = cli.run_main(run, config, workdir)
  report.print_summary(workdir, summary)
  print(f"demo finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
  main()
