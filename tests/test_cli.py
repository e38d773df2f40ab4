import pytest

from ftjax import cli
from ftjax.checkpoints import CheckpointError
from ftjax.config import ConfigError


def _exits_with_one_error_line(capsys, fn, *args, **kwargs) -> str:
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    fn(*args, **kwargs)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
  return err.strip()


def test_parser_reports_a_usage_error_as_one_line(capsys):
  parser = cli.Parser(prog="x")
  parser.add_argument("--k", type=int, required=True)
  err = _exits_with_one_error_line(capsys, parser.parse_args, ["--k", "three"])
  assert "--k" in err and "three" in err and "usage" not in err


def test_run_main_turns_user_errors_into_one_line(capsys):
  def broken(path):
    raise CheckpointError(f"{path}: no such model folder\n(registered: a, b)")

  err = _exits_with_one_error_line(capsys, cli.run_main, broken, "/m", prefix="--model: ")
  assert err == "error: --model: /m: no such model folder (registered: a, b)"
  assert cli.run_main(broken, "/m", exit=False) == 2
  assert "no such model folder" in capsys.readouterr().err
  assert cli.run_main(lambda x: x + 1, 1) == 2  # a normal return passes through
  with pytest.raises(KeyError):  # a bug is not a user error: it keeps its traceback
    cli.run_main(lambda: {}["missing"])
  err = _exits_with_one_error_line(capsys, cli.run_main, lambda: open("/no/such/file"),
                                   errors=(OSError,))
  assert "/no/such/file" in err


def test_override_keys_name_the_whole_key_and_the_closest():
  known = {"lora.rank", "lora.alpha", "seq_len"}
  cli.check_override_keys(["prog", "--config.lora.rank=4", "--workdir=x"], known)
  with pytest.raises(ConfigError, match=r"^config key lora\.rnak: unknown \(did you mean "
                                        r"lora\.rank\?\)$"):
    cli.check_override_keys(["prog", "--config.lora.rnak=4"], known)
  with pytest.raises(ConfigError, match=r"^config key zzz: not an experiment config key$"):
    cli.check_override_keys(["prog", "--config.zzz=1"], known, "not an experiment config key")


def test_every_package_error_is_a_user_error_and_keeps_its_builtin_base():
  from ftjax.audit import AuditError, AuditInputError
  from ftjax.data import DataConfigError
  from ftjax.errors import UserError
  from ftjax.evaluation import ScoringConfigError
  from ftjax.models.config import UnsupportedModelError
  from ftjax.retrieval import (CorpusError, EmptyQueryError, InputTooLongError,
                               RetrievalIndexError)
  from ftjax.sharding import MeshConfigError
  from ftjax.training.errors import TrainingDiverged, WorkdirError
  classes = (ConfigError, CheckpointError, DataConfigError, UnsupportedModelError,
             MeshConfigError, TrainingDiverged, WorkdirError, AuditError, AuditInputError,
             ScoringConfigError, CorpusError, RetrievalIndexError, EmptyQueryError,
             InputTooLongError)
  for cls in classes:
    assert issubclass(cls, UserError), cls
  # `except ValueError` / `except OSError` in callers still catch them.
  assert issubclass(ConfigError, ValueError) and issubclass(WorkdirError, OSError)
  assert issubclass(TrainingDiverged, RuntimeError)
  assert cli.user_errors() == (UserError,)


def test_the_command_line_module_imports_no_package_that_raises_errors():
  import ast
  import inspect
  tree = ast.parse(inspect.getsource(cli))
  imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  assert {m for m in imported if m and m.startswith("ftjax")} <= {"ftjax.errors", "ftjax.config"}
