"""The training run's own user errors (reported by the command line as one `error:` line)."""

from ftjax.errors import UserError


class TrainingDiverged(RuntimeError, UserError):
  """Too many consecutive steps had a non-finite loss or gradient."""


class WorkdirError(OSError, UserError):
  """The working directory cannot be created or written to."""
