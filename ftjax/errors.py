"""The base of every error that is the user's to fix (a config key, a data file, a checkpoint, an
index, an audit finding, a diverged run): each package's own error class also derives from
`UserError`, and the command line (`ftjax.cli.run_main`) reports any `UserError` as one `error:`
line, never a traceback, without importing the packages that raise them."""


class UserError(Exception):
  """An error the user fixes by changing their input; its message names the key, file or line."""
