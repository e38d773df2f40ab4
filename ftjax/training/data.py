"""The training run's data: `ftjax.data`'s tokenised, packed batches for this process, with the
data report written to the workdir (and named in an error only where it was written)."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np


def make_data(config: ml_collections.ConfigDict, workdir: Path, tokenizer, is_main: bool):
  """Tokenised, packed train and eval batches for this process (TFDS files under the workdir
  unless data.data_dir says otherwise)."""
  from ftjax.data import DataConfigError, build_sft_data  # TF import is slow: only when training
  data_cfg = ml_collections.ConfigDict(
      {k: v for k, v in config.data.to_dict().items() if k != "audit"})  # audited by the gate
  data_cfg.data_dir = config.data.data_dir or str(workdir / "tfds")
  if data_cfg.eval:  # an explicit eval file replaces the carved-out fraction
    data_cfg.eval_fraction = 0.0
  try:
    data = build_sft_data(data_cfg, tokenizer, seq_len=config.seq_len,
                          batch_size=config.batch_size, seed=config.seed,
                          process_index=jax.process_index(), process_count=jax.process_count())
  except DataConfigError as err:
    # Point to the data report only where one is written (an error may carry its report).
    report = getattr(err, "report", None)
    if report is not None and is_main:
      report.write_json(workdir / "data_report.json")
      message = str(err).replace("the data report", f"the data report {workdir}/data_report.json")
    else:
      message = str(err).replace(" (see the data report)", "")
    raise (DataConfigError(message) if message != str(err) else err) from None
  if is_main:
    print(data.report.summary(), flush=True)
    data.report.write_json(workdir / "data_report.json")
  return data


def loss_positions(config: ml_collections.ConfigDict, data) -> int:
  """The train step's `loss_positions` (`config.loss_positions`: "targets" sizes it from the most
  loss tokens in a packed row, over every process's rows; "all", or a saving under a quarter: 0)."""
  from ftjax.training.step import loss_positions_for
  if config.loss_positions != "targets":
    return 0
  most = data.max_row_targets
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    most = int(np.max(multihost_utils.process_allgather(np.int32(most))))
  return loss_positions_for(most, config.seq_len)
