"""Supervised fine-tuning, full or LoRA, on any device mesh, resumable from its working directory.

  python -m ftjax.train --config configs/smollm2_lora.py --workdir runs/lora [--config.key=value]

Reads top to bottom: config -> mesh -> model -> data -> state (init or restore) -> jit step ->
loop (log, eval, checkpoint). `run(config, workdir)` is the same thing as a function, for the
experiment runner.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ftjax import lora as lora_lib
from ftjax.checkpoints import load
from ftjax.config import ConfigError, validate
from ftjax.models.transformer import logical_param_specs
from ftjax.sharding import (DEFAULT_RULES, batch_sharding, logical_to_shardings, make_mesh,
                            replicated, shard_batch)
from ftjax.training.checkpointing import Checkpointer, abstract_like
from ftjax.training.metrics import MetricWriter, flops_per_token, peak_flops_per_device
from ftjax.training.step import make_optimizer, make_step_fns


@dataclasses.dataclass
class TrainResult:
  workdir: Path
  step: int
  history: list[dict]  # one dict per step run in this process: step, loss, lr, ...
  eval_history: list[dict]
  model_config: Any
  params: Any  # trainable params after training: the full tree, or the LoRA adapters
  base_params: Any  # the frozen base for LoRA runs (None for full fine-tuning)
  trainable_params: int
  total_params: int
  preempted: bool = False


def _versions() -> dict[str, str]:
  names = ["ftjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers",
           "tensorflow-datasets", "ml-collections"]
  found = {}
  for name in names:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = "not installed"
  return found


def _git_commit() -> str:
  root = Path(__file__).resolve().parent.parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                            text=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def _put(tree, shardings):
  """Host numpy pytree -> global jax arrays laid out by `shardings` (works across processes)."""
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: np.asarray(x)[index]),
      tree, shardings)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks, so the state is saved before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
  """Trains as configured; resumes automatically from the latest checkpoint in `workdir`."""
  from ftjax.data import build_sft_data  # TF import is slow: only when training

  validate(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0

  mesh_shape = {k: v for k, v in config.mesh.items() if k != "num_devices"}
  devices = jax.devices()[:config.mesh.num_devices or None]
  mesh = make_mesh(mesh_shape, devices)
  rules = tuple(tuple(r) for r in config.logical_axis_rules) + DEFAULT_RULES
  micro_batch = config.batch_size // config.grad_accum_steps
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if micro_batch % batch_shards:
    raise ConfigError(f"micro-batch of {micro_batch} rows (batch_size / grad_accum_steps) is not "
                      f"divisible by the data x fsdp mesh size {batch_shards}")
  if config.batch_size % jax.process_count():
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by "
                      f"{jax.process_count()} processes")

  base = load(config.model, dtype=config.dtype, param_dtype=config.param_dtype,
              device_put=False, remat_policy=config.remat_policy)
  model_cfg = base.config
  if config.lora.enabled:
    model_cfg = lora_lib.with_lora(model_cfg, rank=config.lora.rank, alpha=config.lora.alpha,
                                   dropout=config.lora.dropout)

  data_cfg = ml_collections.ConfigDict(config.data.to_dict())
  data_cfg.data_dir = config.data.data_dir or str(workdir / "tfds")
  if data_cfg.eval:  # an explicit eval file replaces the carved-out fraction
    data_cfg.eval_fraction = 0.0
  data = build_sft_data(data_cfg, base.tokenizer, seq_len=config.seq_len,
                        batch_size=config.batch_size, seed=config.seed,
                        process_index=jax.process_index(), process_count=jax.process_count())
  if is_main:
    print(data.report.summary(), flush=True)
    data.report.write_json(workdir / "data_report.json")

  # Shardings from the model's logical axis names.
  param_shardings = logical_to_shardings(logical_param_specs(model_cfg), base.params, mesh, rules)
  params = _put(base.params, param_shardings)
  rng = jax.random.PRNGKey(config.seed)
  if config.lora.enabled:
    init_rng, rng = jax.random.split(rng)
    adapters = lora_lib.init_lora(base.params, rank=config.lora.rank,
                                  targets=config.lora.targets, rng=init_rng)
    trainable_shardings = logical_to_shardings(lora_lib.logical_specs(adapters), adapters, mesh,
                                               rules)
    trainable = _put(jax.device_get(adapters), trainable_shardings)
    frozen, frozen_shardings = params, param_shardings
  else:
    trainable, trainable_shardings = params, param_shardings
    frozen, frozen_shardings = None, None
  num_trainable = lora_lib.count_params(trainable)
  num_total = lora_lib.count_params(base.params)

  optimizer, schedule = make_optimizer(config.optimizer, config.num_steps)
  abstract_opt = jax.eval_shape(optimizer.init, trainable)
  opt_shardings = _optimizer_shardings(optimizer, abstract_opt, trainable_shardings, mesh)
  state_shardings = {"step": replicated(mesh), "params": trainable_shardings,
                     "opt_state": opt_shardings, "rng": replicated(mesh)}
  state = {
      "step": jnp.zeros((), jnp.int32),
      "params": trainable,
      "opt_state": jax.jit(optimizer.init, out_shardings=opt_shardings)(trainable),
      "rng": rng,
  }
  state = jax.device_put(state, state_shardings)

  checkpointer = Checkpointer(workdir / "checkpoints", every_steps=config.checkpoint.every_steps,
                              keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  data_state = None
  start_step = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(latest, abstract_like(state, state_shardings))
    start_step = int(state["step"])
    if is_main:
      print(f"resumed from {workdir / 'checkpoints'} at step {start_step}", flush=True)

  if is_main:
    run_info = {"config": config.to_dict(), "versions": _versions(), "git_commit": _git_commit(),
                "mesh": dict(mesh.shape), "devices": [str(d) for d in jax.devices()],
                "process_count": jax.process_count(), "trainable_params": num_trainable,
                "total_params": num_total, "model_config": dataclasses.asdict(model_cfg),
                "train_examples": data.num_train_examples, "resumed_at_step": start_step}
    (workdir / "run_info.json").write_text(json.dumps(run_info, indent=2, default=str))
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    print(f"trainable params: {num_trainable:,} of {num_total:,} "
          f"({100 * num_trainable / num_total:.2f}%)", flush=True)

  fns = make_step_fns(model_cfg, optimizer, accum_steps=config.grad_accum_steps,
                      lora=config.lora.enabled, mesh=mesh)
  batch_sh = batch_sharding(mesh)
  train_step = jax.jit(fns.train_step,
                       in_shardings=(state_shardings, frozen_shardings, batch_sh),
                       out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))
  eval_step = jax.jit(fns.eval_step, in_shardings=(state_shardings, frozen_shardings, batch_sh),
                      out_shardings=replicated(mesh))

  writer = MetricWriter(workdir, enabled=is_main)
  history, eval_history = [], []
  # Every host must run the same number of eval steps, though their shards may differ in size.
  eval_batches = data.eval_batches()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    most = int(np.max(multihost_utils.process_allgather(np.int32(len(eval_batches)))))
    eval_batches = data.eval_batches(min_batches=most)

  def evaluate(current_state, step):
    """Held-out loss and perplexity, appended to eval_history and written out."""
    if not eval_batches or (eval_history and eval_history[-1]["step"] == step):
      return
    loss_sum, tokens = 0.0, 0.0
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for batch in eval_batches:
        s, n = eval_step(current_state, frozen, shard_batch(batch, mesh))
        loss_sum, tokens = loss_sum + float(s), tokens + float(n)
    loss = loss_sum / max(tokens, 1.0)
    eval_metrics = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
                    "eval_tokens": tokens}
    eval_history.append({"step": step, **eval_metrics})
    writer.write(step, eval_metrics, echo=True)

  flops = flops_per_token(model_cfg, config.seq_len, lora=config.lora.enabled)
  peak = config.peak_tflops_per_device * 1e12 or peak_flops_per_device()
  preemption = _Preemption()
  iterator = data.train_iterator(data_state)
  # A live bar on a terminal; logs and metrics.jsonl carry the same numbers otherwise.
  progress = tqdm.tqdm(total=config.num_steps, initial=start_step, dynamic_ncols=True,
                       disable=not (is_main and sys.stderr.isatty()))
  step = start_step
  try:
    while step < config.num_steps:
      batch, data_state = next(iterator)
      started = time.perf_counter()
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, metrics = train_step(state, frozen, shard_batch(batch, mesh))
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      seconds = time.perf_counter() - started
      step += 1
      tokens = float(np.sum(batch["segment_ids"] != 0)) * jax.process_count()
      metrics.update(step=step, learning_rate=float(schedule(step - 1)), step_seconds=seconds,
                     tokens_per_second=tokens / seconds, epoch=data.epoch(data_state))
      if peak:
        metrics["mfu"] = flops * metrics["tokens_per_second"] / (peak * jax.device_count())
      history.append(metrics)
      progress.update(1)
      progress.set_postfix(loss=f"{metrics['loss']:.4f}",
                           tok_s=f"{metrics['tokens_per_second']:,.0f}",
                           mfu=f"{100 * metrics['mfu']:.1f}%" if "mfu" in metrics else "n/a")
      writer.write(step, metrics, echo=step % config.log_every_steps == 0 or step == 1)
      if config.eval_every_steps and step % config.eval_every_steps == 0:
        evaluate(state, step)
      checkpointer.save(step, state, data_state)
      if preemption.requested:
        checkpointer.save(step, state, data_state, force=True)
        if is_main:
          print(f"SIGTERM: saved step {step} to {workdir / 'checkpoints'}; exiting", flush=True)
        break
    else:
      evaluate(state, step)
      checkpointer.save(step, state, data_state, force=True)
  finally:
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    preemption.restore()

  return TrainResult(workdir=workdir, step=step, history=history, eval_history=eval_history,
                     model_config=model_cfg, params=state["params"], base_params=frozen,
                     trainable_params=num_trainable, total_params=num_total,
                     preempted=preemption.requested)


def _optimizer_shardings(optimizer, abstract_opt, param_shardings, mesh):
  """Optimizer moments take their parameter's sharding; counters etc. are replicated."""
  import optax
  rep = replicated(mesh)
  return optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt,
                               param_shardings, transform_non_params=lambda _: rep)


def _user_errors():
  from ftjax.checkpoints import CheckpointError
  from ftjax.data import DataConfigError
  from ftjax.models.config import UnsupportedModelError
  from ftjax.sharding import MeshConfigError
  return (ConfigError, CheckpointError, DataConfigError, UnsupportedModelError, MeshConfigError)


def main(argv=None):
  from absl import app, flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file("config", None, "recipe file (configs/*.py)",
                                                lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, resolved config)")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(_):
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    try:
      run(config_flag.value, flags.FLAGS.workdir)
    except _user_errors() as err:
      print(f"error: {err}", file=sys.stderr)
      sys.exit(2)

  app.run(_main, argv=argv)


if __name__ == "__main__":
  main()
