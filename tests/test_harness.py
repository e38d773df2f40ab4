"""The lm-evaluation-harness backend: ftjax's scores equal lm_eval's `hf` backend on one model."""

import functools
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "data" / "lm_eval"  # the yaml's data_files are relative to ROOT


@pytest.fixture(autouse=True)
def _offline_from_root(monkeypatch, tmp_path):
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))


@functools.cache
def _task_manager():
  """One index of lm_eval's tasks (and ours) for every evaluation here: building it takes ~5 s."""
  from lm_eval.tasks import TaskManager
  return TaskManager(include_path=str(TASKS))


def _evaluate(model, model_args, tasks, batch_size=4):
  import lm_eval

  import ftjax.evaluation.harness  # noqa: F401  (registers "ftjax")
  out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                batch_size=batch_size, log_samples=True,
                                task_manager=_task_manager())
  return {task: sorted(samples, key=lambda s: s["doc_id"])
          for task, samples in out["samples"].items()}


@pytest.fixture(scope="module")
def both_backends(tiny_llama_folder, tmp_path_factory):
  """Per-task samples from the ftjax and hf backends on the same tiny fp32 model."""
  saved_cache, cwd = os.environ.get("HF_DATASETS_CACHE"), os.getcwd()
  os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("datasets"))
  os.chdir(ROOT)
  try:
    tasks = ["ftjax_mc", "ftjax_gen", "ftjax_ppl"]
    ours = _evaluate("ftjax", f"model={tiny_llama_folder}", tasks)
    theirs = _evaluate("hf", f"pretrained={tiny_llama_folder},dtype=float32,device=cpu", tasks)
    # Short windows: every text spans several, so the rolling windows are checked too.
    ours["short_ppl"] = _evaluate("ftjax", f"model={tiny_llama_folder},max_length=16",
                                  ["ftjax_ppl"])["ftjax_ppl"]
    theirs["short_ppl"] = _evaluate(
        "hf", f"pretrained={tiny_llama_folder},dtype=float32,device=cpu,max_length=16",
        ["ftjax_ppl"])["ftjax_ppl"]
  finally:
    os.chdir(cwd)
    if saved_cache is None:
      os.environ.pop("HF_DATASETS_CACHE")
    else:
      os.environ["HF_DATASETS_CACHE"] = saved_cache
  return ours, theirs


def test_multiple_choice_loglikelihoods_equal_hf(both_backends):
  ours, theirs = both_backends
  assert len(ours["ftjax_mc"]) == len(theirs["ftjax_mc"]) == 6
  for mine, hf in zip(ours["ftjax_mc"], theirs["ftjax_mc"]):
    assert len(mine["resps"]) == len(hf["resps"]) >= 3  # one (logprob, greedy) per choice
    for [(logprob, greedy)], [(hf_logprob, hf_greedy)] in zip(mine["resps"], hf["resps"]):
      assert logprob == pytest.approx(hf_logprob, abs=1e-4)
      assert greedy == hf_greedy


@pytest.mark.parametrize("task", ["ftjax_ppl", "short_ppl"])
def test_rolling_loglikelihoods_equal_hf(both_backends, task):
  ours, theirs = both_backends
  assert len(ours[task]) == 3
  for mine, hf in zip(ours[task], theirs[task]):
    [[logprob]], [[hf_logprob]] = mine["resps"], hf["resps"]
    assert logprob < 0
    assert logprob == pytest.approx(hf_logprob, abs=1e-4)


def test_generate_until_equals_hf_greedy(both_backends):
  ours, theirs = both_backends
  texts = [s["resps"][0][0] for s in ours["ftjax_gen"]]
  assert len(texts) == 5
  assert all("\n" not in t for t in texts)  # cut at the task's `until`
  assert texts == [s["resps"][0][0] for s in theirs["ftjax_gen"]]


def test_model_args_are_checked(tiny_llama_folder):
  from ftjax.evaluation.harness import FtjaxLM, HarnessArgumentError
  with pytest.raises(HarnessArgumentError, match="max_length"):
    FtjaxLM(model=str(tiny_llama_folder), max_length="long")
  with pytest.raises(HarnessArgumentError, match="model="):
    FtjaxLM()


def test_cli_runs_lm_eval_with_the_ftjax_model(tiny_llama_folder, capsys, monkeypatch):
  from ftjax.harness import main
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() replaces it
  capsys.readouterr()
  try:  # in-process: lm_eval's CLI path without a second interpreter's start-up
    main(["--model", "ftjax", "--model_args", f"model={tiny_llama_folder}",
          "--tasks", "ftjax_mc", "--include_path", str(TASKS), "--limit", "2"])
  except SystemExit as exit_info:
    assert exit_info.code in (0, None), capsys.readouterr().err[-2000:]
  out = capsys.readouterr().out
  assert "ftjax_mc" in out and "acc" in out


def test_cli_unknown_model_is_one_error_line(capsys, monkeypatch):
  from ftjax.harness import main
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() replaces it
  with pytest.raises(SystemExit) as exit_info:  # in-process: the CLI path without a second start
    main(["--model", "ftjax", "--model_args", "model=/nonexistent/model",
          "--tasks", "ftjax_mc", "--include_path", str(TASKS)])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --model_args model: ")
