"""Training that cannot silently go wrong: non-finite steps are skipped and a diverged run stops
with an error; damaged checkpoints are set aside; bad configs and files fail with one `error:`
line naming the key or file, exit status 2."""

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import ftjax
import ftjax.train
from ftjax.training import loop as train_loop
from ftjax.data.pipeline import SFTData
from ftjax.checkpoints.orbax_store import all_finite, latest_step, restore_params
from ftjax.training.step import make_step_fns

from conftest import SAMPLE_DATA, tiny_train_config

REPO = Path(__file__).resolve().parent.parent


def _config(folder, **changes):
  """The shared tiny run on one device, 4 steps, a checkpoint every step."""
  return tiny_train_config(folder, **{"num_steps": 4, "checkpoint.every_steps": 1,
                                      "mesh.data": 1, "mesh.num_devices": 1, **changes})


def _argv(workdir, folder, *overrides):
  return ["ftjax.train", "--config", str(REPO / "configs" / "smollm2_full.py"),
          "--workdir", str(workdir), f"--config.model={folder}",
          f"--config.data.train={SAMPLE_DATA}", "--config.seq_len=128", "--config.batch_size=8",
          "--config.num_steps=4", "--config.eval_every_steps=0", "--config.mesh.data=1",
          "--config.mesh.num_devices=1", *overrides]


def _main_fails(argv, capsys) -> str:
  """Runs the CLI in-process; asserts exit status 2 and exactly one `error:` line; returns it."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    ftjax.train.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err
  return errors[0]


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def test_nonfinite_step_leaves_params_and_optimizer_state_unchanged(tiny_llama_folder):
  tiny = ftjax.load(str(tiny_llama_folder), tokenizer=False)
  optimizer = optax.adam(1e-2)
  fns = make_step_fns(tiny.config, optimizer, accum_steps=2, lora=False, mesh=None)
  state = {"step": jnp.int32(0), "params": tiny.params, "opt_state": optimizer.init(tiny.params),
           "rng": jax.random.PRNGKey(0)}
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(3, 500, (4, 16)), "targets": rng.integers(3, 500, (4, 16)),
           "segment_ids": np.ones((4, 16), np.int32),
           "positions": np.tile(np.arange(16), (4, 1)), "loss_mask": np.ones((4, 16), np.float32)}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  step = jax.jit(fns.train_step)
  good, good_metrics = step(state, None, batch)
  assert float(good_metrics["nonfinite"]) == 0.0
  assert not np.array_equal(good["params"]["embedding"], state["params"]["embedding"])

  poisoned = dict(batch, loss_mask=batch["loss_mask"].at[3, 5].set(jnp.nan))
  skipped, metrics = step(good, None, poisoned)
  assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  assert int(skipped["step"]) == 2  # the step is still counted
  for after, before in zip(jax.tree.leaves((skipped["params"], skipped["opt_state"])),
                           jax.tree.leaves((good["params"], good["opt_state"]))):
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))


def test_one_nan_batch_is_skipped_counted_and_training_goes_on(tiny_llama_folder, tmp_path,
                                                               monkeypatch):
  original = SFTData.train_batch

  def train_batch(self, n):  # the second batch (step 2) carries a NaN in its loss mask
    batch = original(self, n)
    if n == 1:
      batch["loss_mask"] = batch["loss_mask"].copy()
      batch["loss_mask"][0, 0] = np.nan
    return batch

  monkeypatch.setattr(SFTData, "train_batch", train_batch)
  result = train_loop.run(_config(tiny_llama_folder, num_steps=5), tmp_path)
  assert [h["nonfinite"] for h in result.history] == [0, 1, 0, 0, 0]
  assert [h["skipped_steps"] for h in result.history] == [0, 1, 1, 1, 1]
  assert np.isnan(result.history[1]["loss"])
  losses = [h["loss"] for i, h in enumerate(result.history) if i != 1]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert result.step == 5 and all_finite(result.params)
  # Checkpoints were written for the finite steps only; the skip count survives in them.
  assert _steps(tmp_path) == [3, 4, 5]
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r for r in logged if "loss" in r][-1]["skipped_steps"] == 1


def test_diverging_run_stops_with_an_error_and_keeps_finite_checkpoints(tiny_llama_folder,
                                                                        tmp_path, capsys):
  argv = _argv(tmp_path, tiny_llama_folder, "--config.num_steps=30",
               "--config.checkpoint.every_steps=1", "--config.optimizer.learning_rate=1e30",
               "--config.optimizer.warmup_steps=0", "--config.optimizer.schedule=constant",
               "--config.train.max_consecutive_nonfinite=3")
  line = _main_fails(argv, capsys)
  match = re.fullmatch(r"error: training diverged: 3 consecutive non-finite steps ending at step "
                       r"(\d+) \(last finite checkpoint: step (\d+)\).*", line)
  assert match, line
  stopped_at, last_checkpoint = int(match[1]), int(match[2])
  assert stopped_at < 30
  assert _steps(tmp_path) and max(_steps(tmp_path)) == last_checkpoint < stopped_at
  for step in _steps(tmp_path):
    assert all_finite(restore_params(tmp_path / "checkpoints", step)), step
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["nonfinite"] for r in logged][-3:] == [1.0, 1.0, 1.0]


def _truncate_largest_state_file(step_dir: Path):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 3])


def _delete_largest_state_file(step_dir: Path):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  max(files, key=lambda p: p.stat().st_size).unlink()


def _garble_state_metadata(step_dir: Path):
  (step_dir / "state" / "_METADATA").write_text("{not json")


def _nan_params(step_dir: Path):
  """A checkpoint that reads fine but holds NaN params (as an older ftjax could have written)."""
  directory = step_dir.parent
  step = int(step_dir.name)
  with ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(), data=ocp.args.JsonRestore()))
  state = jax.tree.map(lambda x: np.full_like(x, np.nan) if np.issubdtype(x.dtype, np.floating)
                       else x, dict(restored["state"]))
  shutil.rmtree(step_dir)
  with ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                               data=ocp.args.JsonSave(dict(restored["data"]))))


@pytest.fixture(scope="module")
def four_steps(tiny_llama_folder, tmp_path_factory):
  """A finished 4-step run with checkpoints 2, 3, 4."""
  workdir = tmp_path_factory.mktemp("four_steps")
  train_loop.run(_config(tiny_llama_folder, **{"checkpoint.keep": 3}), workdir)
  assert _steps(workdir) == [2, 3, 4]
  return workdir


@pytest.mark.parametrize("damage", [_truncate_largest_state_file, _delete_largest_state_file,
                                    _garble_state_metadata, _nan_params])
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(
    tiny_llama_folder, four_steps, tmp_path, capsys, damage):
  workdir = tmp_path / "run"
  shutil.copytree(four_steps, workdir)
  damage(workdir / "checkpoints" / "4")
  capsys.readouterr()
  result = train_loop.run(_config(tiny_llama_folder, num_steps=6), workdir)
  out, err = capsys.readouterr()
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "checkpoint step 4" in warnings[0] and "damaged" in warnings[0]
  # The one line, not Orbax's and TensorStore's tracebacks of every array read that failed.
  for noise in ("Traceback", "never retrieved", "Exception ignored", "TensorStore({"):
    assert noise not in err, err[:3000]
  assert "resumed from" in out and "at step 3" in out
  assert json.loads((workdir / "run_info.json").read_text())["resumed_at_step"] == 3
  assert result.step == 6 and [h["step"] for h in result.history] == [4, 5, 6]
  aside = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("4.damaged-")]
  assert len(aside) == 1 and (workdir / "checkpoints" / aside[0] / "state").is_dir()
  assert latest_step(workdir / "checkpoints") == 6


def test_damaged_checkpoint_is_one_warning_line_in_a_process_of_its_own(tiny_llama_folder,
                                                                         four_steps, tmp_path):
  """In-process, pytest turns what Orbax's abandoned reads print into warnings; a process of its
  own shows what a user sees: one `warning:` line, not a traceback per array read that failed."""
  import os
  import subprocess
  import sys
  workdir = tmp_path / "run"
  shutil.copytree(four_steps, workdir)
  _delete_largest_state_file(workdir / "checkpoints" / "4")
  script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from ftjax.training import loop as train_loop\nfrom test_reliability import _config\n"
            f"train_loop.run(_config({str(tiny_llama_folder)!r}, num_steps=5), {str(workdir)!r})")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "checkpoint step 4" in warnings[0], proc.stderr[-3000:]
  assert "TensorStore details" not in warnings[0]  # the reason, not the store's JSON spec
  for noise in ("Traceback", "never retrieved", "Exception ignored", "TensorStore({"):
    assert noise not in proc.stderr, proc.stderr[:3000]
  assert latest_step(workdir / "checkpoints") == 5


def test_resume_with_other_lora_rank_is_refused(tiny_llama_folder, tmp_path, capsys):
  lora = {"lora.enabled": True, "lora.rank": 4, "num_steps": 2}
  train_loop.run(_config(tiny_llama_folder, **lora), tmp_path)
  for model_json in (True, False):  # model.json catches it; without it, the saved shapes do
    if not model_json:
      (tmp_path / "model.json").unlink()
    line = _main_fails(_argv(tmp_path, tiny_llama_folder, "--config.lora.enabled=True",
                             "--config.lora.rank=8"), capsys)
    assert "lora.rank" in line
    if not model_json:
      assert "(2, 64, 4) there, (2, 64, 8) here" in line
    assert _steps(tmp_path) == [1, 2]  # nothing was set aside as damaged
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if "damaged" in p.name]


INVALID = {
    "checkpoint.keep": "0",
    "lora.alpha": "0.0",
    "lora.rank": "0",
    "optimizer.warmup_steps": "-1",
    "optimizer.b1": "2.0",
    "optimizer.b2": "1.0",
    "optimizer.grad_clip_norm": "-1.0",
    "optimizer.eps": "0.0",
    "optimizer.learning_rate": "inf",
    "optimizer.weight_decay": "-0.1",
    "mesh.num_devices": "9",
    "train.max_consecutive_nonfinite": "0",
    "lora.dropout": "1.0",
    "lora.rnak": "4",  # unknown key
    "lora.rank=four": None,  # wrong type
}


@pytest.mark.parametrize("key", INVALID)
def test_invalid_config_value_fails_with_one_error_line_naming_the_key(key, tmp_path, capsys):
  override = f"--config.{key}" if INVALID[key] is None else f"--config.{key}={INVALID[key]}"
  line = _main_fails(_argv(tmp_path / "run", "unused-model", override), capsys)
  assert f"config key {key.split('=')[0]}" in line, line
  assert not (tmp_path / "run").exists()  # refused before anything was written


def test_batch_not_divisible_names_the_key(tmp_path, capsys):
  line = _main_fails(_argv(tmp_path, "unused-model", "--config.batch_size=6",
                           "--config.grad_accum_steps=4"), capsys)
  assert "config key batch_size" in line
  line = _main_fails(_argv(tmp_path, "unused-model", "--config.batch_size=6",
                           "--config.mesh.num_devices=0", "--config.mesh.data=-1"), capsys)
  assert "batch_size" in line and "divisible" in line


def test_unwritable_workdir_fails_with_one_error_line(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  line = _main_fails(_argv(blocker / "run", "unused-model"), capsys)
  assert line.startswith(f"error: workdir {blocker / 'run'}: cannot write")


def test_non_utf8_csv_names_file_and_line(tiny_llama_folder, tmp_path, capsys):
  data = tmp_path / "train.csv"
  data.write_bytes(b"input,output\nhello,world\n\"two\nlines\",ok\ncaf\xe9,ol\xe9\n")
  line = _main_fails(_argv(tmp_path / "run", tiny_llama_folder, f"--config.data.train={data}"),
                     capsys)
  assert line.startswith(f"error: {data}:5: not UTF-8")


def test_data_report_is_named_only_when_written(tiny_llama_folder, tmp_path, capsys):
  # Every example is longer than 16 tokens: none is left to train on.
  line = _main_fails(_argv(tmp_path, tiny_llama_folder, "--config.seq_len=16",
                           "--config.data.on_bad_rows=skip"), capsys)
  assert "no training examples" in line
  assert ("data report" in line) == (tmp_path / "data_report.json").exists()


def test_truncated_safetensors_names_the_file(tiny_llama_folder, tmp_path, capsys):
  model = tmp_path / "model"
  shutil.copytree(tiny_llama_folder, model)
  weights = model / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
  line = _main_fails(_argv(tmp_path / "run", model), capsys)
  assert line.startswith(f"error: {weights}: truncated")


def test_index_json_pointing_outside_its_folder_is_refused(tiny_llama_folder, tmp_path, capsys):
  model = tmp_path / "model"
  shutil.copytree(tiny_llama_folder, model)
  (model / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
  (model / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"model.embed_tokens.weight": "../elsewhere.safetensors"}}))
  line = _main_fails(_argv(tmp_path / "run", model), capsys)
  assert "outside the model folder" in line and "../elsewhere.safetensors" in line


def test_trainer_audit_gate_stops_or_trains_on_a_redacted_copy(tiny_llama_folder, tmp_path,
                                                               capsys):
  rows = [json.loads(line) for line in Path(SAMPLE_DATA).read_text().splitlines()[:16]]
  rows[3]["output"] += " Write to jane.doe@example.com or call +1 415 555 0132."
  data = tmp_path / "train.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  original = data.read_text()
  line = _main_fails(_argv(tmp_path / "stopped", tiny_llama_folder, f"--config.data.train={data}",
                           "--config.data.audit=error"), capsys)
  assert line.startswith("error: data audit (error) found 2 blocking findings") and \
      f"{data}:4" in line, line
  assert not (tmp_path / "stopped" / "checkpoints").exists()

  ftjax.train.main(_argv(tmp_path / "redacted", tiny_llama_folder, f"--config.data.train={data}",
                         "--config.data.audit=redact", "--config.num_steps=1"))
  redacted = tmp_path / "redacted" / "audit" / "process-0" / "train.redacted.jsonl"
  text = redacted.read_text()
  assert "[EMAIL]" in text and "[PHONE]" in text and "jane.doe" not in text
  assert data.read_text() == original  # the original is never modified
  resolved = json.loads((tmp_path / "redacted" / "config.json").read_text())
  assert resolved["data"]["train"] == str(redacted)
