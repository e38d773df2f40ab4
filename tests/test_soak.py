"""A LoRA run killed (SIGKILL) at 5 random moments, some of them while a checkpoint is being
written, and restarted each time, ends where an uninterrupted run ends: the same losses at every
step and the same adapters."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import ftjax
import ftjax.train

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = str(REPO / "data" / "samples" / "customer_service.jsonl")
NUM_STEPS = 30
NUM_KILLS = 5


def _cli(workdir, folder):
  return [sys.executable, "-m", "ftjax.train", "--config", str(REPO / "configs" / "smollm2_lora.py"),
          "--workdir", str(workdir), f"--config.model={folder}", f"--config.data.train={SAMPLE_DATA}",
          "--config.seq_len=128", "--config.batch_size=2", f"--config.num_steps={NUM_STEPS}",
          "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2",
          "--config.eval_every_steps=0", "--config.log_every_steps=1",
          "--config.lora.rank=4", "--config.optimizer.learning_rate=0.01",
          "--config.optimizer.warmup_steps=2", "--config.mesh.data=1",
          "--config.mesh.num_devices=1"]


def _losses(workdir) -> dict[int, float]:
  """The last logged loss per step (a resumed run logs again the steps after its checkpoint)."""
  losses = {}
  for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by SIGKILL
      continue
    if "loss" in row:
      losses[row["step"]] = row["loss"]
  return losses


def _logged_steps(workdir) -> int:
  path = Path(workdir) / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


def _saving(workdir) -> bool:
  """An Orbax save in progress: its temporary folder exists."""
  directory = Path(workdir) / "checkpoints"
  return directory.is_dir() and any("tmp" in p.name for p in directory.iterdir())


@pytest.mark.slow
def test_lora_run_killed_5_times_ends_like_an_uninterrupted_run(tiny_llama_folder, tmp_path):
  reference = tmp_path / "reference"
  # The uninterrupted reference runs in-process (the same CLI, without a process's start-up).
  assert ftjax.train.main(["ftjax.train", *_cli(reference, tiny_llama_folder)[3:]]) is None
  expected = _losses(reference)
  assert sorted(expected) == list(range(1, NUM_STEPS + 1))

  rng = random.Random(0)
  interrupted = tmp_path / "interrupted"
  kills = during_save = 0
  while kills < NUM_KILLS:
    proc = subprocess.Popen(_cli(interrupted, tiny_llama_folder), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    logged = _logged_steps(interrupted)
    want_save = kills % 2 == 0  # every other kill lands while a checkpoint is being written
    wait_steps = rng.randint(0, 3)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
      if _logged_steps(interrupted) >= logged + wait_steps and (not want_save
                                                                or _saving(interrupted)):
        time.sleep(rng.uniform(0, 0.05))
        break
      time.sleep(0.002)
    if proc.poll() is not None:  # finished before it could be killed: the run is done
      break
    during_save += _saving(interrupted)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    kills += 1
  if proc.poll() is None or kills == NUM_KILLS:
    finished = subprocess.run(_cli(interrupted, tiny_llama_folder), capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
  assert kills >= 3 and during_save >= 1, (kills, during_save)

  after = _losses(interrupted)
  assert sorted(after) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([after[s] for s in sorted(after)],
                             [expected[s] for s in sorted(expected)], rtol=1e-6)
  trained = ftjax.load(str(interrupted), tokenizer=False)
  uninterrupted = ftjax.load(str(reference), tokenizer=False)
  for got, want in zip(jax.tree.leaves(trained.adapters.params),
                       jax.tree.leaves(uninterrupted.adapters.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
  assert not [p for p in (interrupted / "checkpoints").iterdir() if "damaged" in p.name]
