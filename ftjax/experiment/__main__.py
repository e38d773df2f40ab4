"""python -m ftjax.experiment --config configs/experiments/NAME.py --workdir DIR [--config.KEY=V]"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (data pipeline) start-up chatter


def main(argv=None):
  """The command line: one `error:` line and exit status 2 for every user error."""
  from ftjax import cli
  from ftjax.experiment.config import experiment_config
  config, workdir = cli.parse_config_flags(
      argv, doc=__doc__, config_help="experiment file (configs/experiments/*.py)",
      workdir_help="where results, report, plots and the stage cache go",
      known_keys=cli.config_keys(experiment_config()), unknown="not an experiment config key")
  from ftjax.experiment import report, run
  summary = cli.run_main(run, config, workdir)
  report.print_summary(workdir, summary)


if __name__ == "__main__":
  main()
