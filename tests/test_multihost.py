"""Two local processes (jax.distributed on 127.0.0.1) train one model over a 2x2x2 mesh."""

import json
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE_DATA = str(HERE.parent / "data" / "samples" / "customer_service.jsonl")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_together(tiny_llama_folder, tmp_path):
  port = str(_free_port())
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / "multihost_worker.py"), str(i), "2", port, str(tmp_path / "run"),
       str(tiny_llama_folder), SAMPLE_DATA], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    # The JSON right after "RESULT ": Gloo's C++ logging can land on the same line.
    [at] = [i for i in range(len(out)) if out.startswith("RESULT {", i)]
    results.append(json.JSONDecoder().raw_decode(out, at + len("RESULT "))[0])
  assert sorted(r["process_index"] for r in results) == [0, 1]
  assert all(r["device_count"] == 8 for r in results)
  # One global computation: both processes see the same loss at every step.
  assert results[0]["losses"] == results[1]["losses"]
  assert results[0]["eval_loss"] == results[1]["eval_loss"]
  losses = results[0]["losses"]
  assert len(losses) == 3 and losses[-1] < losses[0]
  # Process 0 writes the run record; the checkpoint holds the final step.
  info = json.loads((tmp_path / "run" / "run_info.json").read_text())
  assert info["process_count"] == 2
  assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
