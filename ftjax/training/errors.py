"""The training run's own user errors (reported by the command line as one `error:` line)."""


class TrainingDiverged(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


class WorkdirError(OSError):
  """The working directory cannot be created or written to."""
