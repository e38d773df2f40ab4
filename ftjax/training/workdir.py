"""The run's working directory: checked writable before anything loads, and the run record
(model.json, run_info.json with provenance, config.json) written once the state exists."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import ml_collections

from ftjax import provenance
from ftjax.training.errors import WorkdirError
from ftjax.training.state import TrainState, run_model


def check_writable(workdir: Path):
  """WorkdirError (one line, no traceback) unless `workdir` exists or can be made, and takes
  files: found now, not after the model and data are loaded."""
  probe = workdir / f".ftjax-write-test-{jax.process_index()}"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as err:
    raise WorkdirError(f"workdir {workdir}: cannot write there "
                       f"({err.strerror or type(err).__name__})") from None


def write_run_record(config: ml_collections.ConfigDict, workdir: Path, mesh, train: TrainState,
                     data):
  """model.json (what `ftjax.load(workdir)` needs), run_info.json and config.json."""
  run_model(config).write(workdir)
  run_info = {"config": config.to_dict(), **provenance.record(), "mesh": dict(mesh.shape),
              "process_count": jax.process_count(), "trainable_params": train.num_trainable,
              "total_params": train.num_total,
              "model_config": dataclasses.asdict(train.model_config),
              "train_examples": data.num_train_examples, "resumed_at_step": train.start_step,
              "init_from_step": train.init_from_step}
  (workdir / "run_info.json").write_text(json.dumps(run_info, indent=2, default=str))
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  print(f"trainable params: {train.num_trainable:,} of {train.num_total:,} "
        f"({100 * train.num_trainable / train.num_total:.2f}%)", flush=True)
