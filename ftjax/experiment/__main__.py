"""python -m ftjax.experiment --config configs/experiments/NAME.py --workdir DIR [--config.KEY=V]"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (data pipeline) start-up chatter


def _user_errors():
  from ftjax.checkpoints import CheckpointError
  from ftjax.config import ConfigError
  from ftjax.data import DataConfigError
  from ftjax.evaluation import ScoringConfigError
  from ftjax.models.config import UnsupportedModelError
  from ftjax.retrieval import CorpusError, RetrievalIndexError
  return (ConfigError, CheckpointError, DataConfigError, ScoringConfigError,
          UnsupportedModelError, CorpusError, RetrievalIndexError)


def main(argv=None):
  from absl import app, flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file("config", None, "experiment file "
                                                "(configs/experiments/*.py)", lock_config=True)
  flags.DEFINE_string("workdir", None, "where results, report, plots and the stage cache go")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(_):
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from ftjax.experiment import report, run
    try:
      summary = run(config_flag.value, flags.FLAGS.workdir)
    except _user_errors() as err:
      print(f"error: {err}", file=sys.stderr)
      sys.exit(2)
    report.print_summary(flags.FLAGS.workdir, summary)

  def parse(argv):
    try:  # overrides of keys that do not exist fail inside absl: one clear line instead
      return flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error) as err:
      key = next((a.split("=")[0][len("--config."):] for a in argv[1:]
                  if a.startswith("--config.") and str(err).strip("'\"") in a), None)
      print(f"error: config key {key}: not an experiment config key ({err})" if key else
            f"error: {err}", file=sys.stderr)
      sys.exit(2)

  app.run(_main, argv=argv, flags_parser=parse)


if __name__ == "__main__":
  main()
