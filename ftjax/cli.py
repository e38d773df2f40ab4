"""What every `python -m ftjax.…` command shares: a user error (a bad option, config key, data row,
checkpoint, index) ends it with one `error: ...` line on stderr and exit status 2, never a
traceback. Here are the argparse parser that reports that way, the one list of user-error types,
the `--config FILE --config.KEY=VALUE` parsing of the config-driven commands (train, experiment)
with its check of override keys, and `run_main`, which turns the errors into that line.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any, Callable, NoReturn

from ftjax.errors import UserError


class Parser(argparse.ArgumentParser):
  """argparse, with a usage error as one `error:` line and exit status 2 (not usage + error)."""

  def error(self, message) -> NoReturn:
    fail(message)


def one_line(message: Any) -> str:
  return " ".join(str(message).split())  # absl's flag errors and some library errors span lines


def fail(message: Any) -> NoReturn:
  """Prints `error: MESSAGE` (on one line) to stderr and exits with status 2."""
  print(f"error: {one_line(message)}", file=sys.stderr)
  sys.exit(2)


def user_errors() -> tuple[type[BaseException], ...]:
  """The exceptions that are the user's to fix (config, data, checkpoint, index, audit,
  divergence): every package's own error class derives from `ftjax.errors.UserError`, so this
  module imports none of the packages that raise them."""
  return (UserError,)


def run_main(fn: Callable[..., Any], *args, errors: tuple[type[BaseException], ...] = (),
             prefix: str = "", exit: bool = True, **kwargs) -> Any:
  """`fn(*args, **kwargs)`, with a user error (`user_errors()` and `errors`) turned into one
  `error: PREFIXMESSAGE` line on stderr and exit status 2. With `exit=False` the status 2 is
  returned instead, for a `main` that returns its status (`sys.exit(main())`)."""
  try:
    return fn(*args, **kwargs)
  except (*user_errors(), *errors) as err:
    if exit:
      fail(f"{prefix}{err}")
    print(f"error: {one_line(f'{prefix}{err}')}", file=sys.stderr)
    return 2


def check_override_keys(argv: list[str], known: set[str], unknown: str = "unknown"):
  """ConfigError naming the first `--config.KEY=VALUE` override whose KEY is not in `known`
  (absl's own message names only the last part of the key), with the closest known key."""
  from ftjax.config import ConfigError
  for arg in argv[1:]:
    match = re.match(r"--?config\.([^=\s]+)", arg)
    if match and match[1] not in known:
      close = difflib.get_close_matches(match[1], sorted(known), n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise ConfigError(f"config key {match[1]}: {unknown}{hint}")


def parse_config_flags(argv: list[str] | None, *, doc: str, config_help: str, workdir_help: str,
                       known_keys: set[str], unknown: str = "unknown"):
  """(config, workdir) from `--config FILE --workdir DIR [--config.KEY=VALUE ...]`. `-h` prints
  `doc` and the flags; a missing flag, a broken recipe file, an unknown key (not in `known_keys`)
  or a value of the wrong type ends the process with one `error:` line. Uses its own absl
  FlagValues, not the global FLAGS, so it can run more than once in a process."""
  from absl import flags
  from ml_collections import config_flags

  from ftjax.config import ConfigError

  argv = list(sys.argv if argv is None else argv)
  flag_values = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file("config", None, config_help,
                                                flag_values=flag_values, lock_config=True,
                                                sys_argv=argv)
  flags.DEFINE_string("workdir", None, workdir_help, flag_values=flag_values)
  if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
    print(f"{doc}\n{flag_values.get_help()}")
    sys.exit(0)
  try:
    check_override_keys(argv, known_keys, unknown)
    flag_values(argv)
    for name in ("config", "workdir"):
      if flag_values[name].value is None:
        raise flags.Error(f"--{name} is required")
    config = config_flag.value
    config.keys()  # a recipe that failed to load raises only when it is first used
  except ConfigError as err:
    fail(err)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as err:
    # Mistyped --config.KEY=VALUE overrides, a missing or broken recipe file.
    message = one_line(err)
    mistyped = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", message)
    if mistyped:
      message = f"config key {mistyped[1]}: cannot use {mistyped[2]!r} ({mistyped[3]})"
    fail(message)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl logging otherwise warns that flags were not parsed
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  return config, flag_values.workdir


def config_keys(config) -> set[str]:
  """The dotted names of every leaf of a ConfigDict: what `--config.KEY` may name."""
  from ftjax.config import _flatten
  return {name for name, _ in _flatten(config)}
