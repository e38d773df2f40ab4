"""The training loop, full or LoRA, on any device mesh, resumable from its working directory.

`run(config, workdir)` reads top to bottom as a composition of `ftjax.training` pieces: config ->
mesh -> audit gate (`ftjax.audit.gate`) -> model -> data (`training.data`) -> state
(`training.state`: restore, or init, seeded from `init_from` if set) -> run record
(`training.workdir`) -> jit step (`training.step`) -> loop (log, eval with
`training.evaluation.Evaluator`, checkpoint). Its command line is `python -m ftjax.train`; the
experiment runner calls it as a function.
A step with a NaN/inf loss or gradient is skipped (`skipped_steps` in the metrics);
`train.max_consecutive_nonfinite` of them in a row stop the run with `TrainingDiverged`.
The workdir's model.json says what was trained, so `ftjax.load(workdir)` returns the trained model.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm

from ftjax import audit
from ftjax.checkpoints import Pretrained, load
from ftjax.checkpoints.orbax_store import Checkpointer
from ftjax.config import ConfigError, validate
from ftjax.models import lora as lora_lib, matmul
from ftjax.sharding import shard_batch
from ftjax.training.data import loss_positions, make_data
from ftjax.training.errors import TrainingDiverged
from ftjax.training.evaluation import Evaluator
from ftjax.training.metrics import MetricWriter, flops_per_token, peak_flops_per_device
from ftjax.training.preemption import Preemption
from ftjax.training.state import make_train_mesh, restore_or_init
from ftjax.training.step import jit_step_fns, make_step_fns
from ftjax.training.workdir import check_writable, write_run_record


@dataclasses.dataclass
class TrainResult:
  workdir: Path
  step: int
  history: list[dict]  # one dict per step run in this process: step, loss, lr, ...
  # step, eval_loss, eval_perplexity, eval_tokens (+ eval_answer_loss, eval_answer_tokens where
  # eval rows have answers)
  eval_history: list[dict]
  model_config: Any
  params: Any  # trainable params after training: the full tree, or the LoRA adapters
  base_params: Any  # the frozen base for LoRA runs (None for full fine-tuning)
  adapters: lora_lib.Adapters | None  # LoRA runs: `params` with their spec (rank, alpha, ...)
  trainable_params: int
  total_params: int
  preempted: bool = False


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        on_eval: Callable[[int, Any], bool] | None = None) -> TrainResult:
  """Trains as configured; resumes automatically from the latest checkpoint in `workdir`.

  `on_eval(step, model)`, when given, is called at every `eval_every_steps` and after the last
  step with the model as trained so far (a `Pretrained`: the base, and the adapters for LoRA); it
  returns True to stop training there (early stopping). The experiment uses it to measure
  accuracy on held-out phrasings while training.
  """
  validate(config)
  mesh, rules = make_train_mesh(config)
  workdir = Path(workdir)
  check_writable(workdir)
  is_main = jax.process_index() == 0
  config = audit.gate(config, workdir).config  # data.audit: warn, stop, or redacted copies
  if is_main:
    matmul.note_bf16_speed(config.dtype)

  base = load(config.model, dtype=config.dtype, param_dtype=config.param_dtype,
              device_put=False, remat_policy=config.remat_policy,
              quant=config.lora.base_quant if config.lora.enabled else None,
              quant_block_size=config.lora.quant_block_size,
              attention_impl=config.attention, loss_chunk=config.loss_chunk)
  if base.adapters is not None:
    raise ConfigError(f"config key model: {config.model} is a LoRA run; to continue training its "
                      "adapters, set init_from to it and model to its base")
  data = make_data(config, workdir, base.tokenizer, is_main)
  tokenizer = base.tokenizer
  checkpointer = Checkpointer(workdir / "checkpoints", every_steps=config.checkpoint.every_steps,
                              keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  train = restore_or_init(config, base, mesh, rules, checkpointer, workdir)
  del base  # its params live on the mesh now: host copies would only hold memory
  if is_main:
    if train.start_step:
      print(f"resumed from {workdir / 'checkpoints'} at step {train.start_step}", flush=True)
    elif train.init_from_step is not None:
      print(f"initialised from {config.init_from} at its step {train.init_from_step}", flush=True)
    write_run_record(config, workdir, mesh, train, data)

  model_cfg, state, frozen = train.model_config, train.state, train.frozen
  head_positions = loss_positions(config, data)
  if is_main and head_positions:
    print(f"loss: the LM head at {head_positions} of {config.seq_len} positions a row (the most "
          f"loss tokens in a row: {data.max_row_targets})", flush=True)
  steps = jit_step_fns(make_step_fns(model_cfg, train.optimizer,
                                     accum_steps=config.grad_accum_steps,
                                     lora=train.lora is not None, mesh=mesh,
                                     loss_positions=head_positions), train, mesh)
  writer = MetricWriter(workdir, enabled=is_main)
  evaluate = Evaluator(steps.eval_step, data, mesh, rules, writer)
  history = []
  evaluated_steps = set()

  def call_on_eval(current_state, step) -> bool:
    if on_eval is None or step in evaluated_steps:
      return False
    evaluated_steps.add(step)
    if train.lora is None:
      model = Pretrained(model_cfg, current_state["params"], tokenizer)
    else:
      model = Pretrained(model_cfg, frozen, tokenizer,
                         lora_lib.Adapters(train.lora, current_state["params"]))
    return bool(on_eval(step, model))

  flops = flops_per_token(model_cfg, config.seq_len, lora=train.lora is not None)
  peak = config.peak_tflops_per_device * 1e12 or peak_flops_per_device()
  preemption = Preemption()
  iterator = data.train_iterator(train.data_state)
  # A live bar on a terminal; logs and metrics.jsonl carry the same numbers otherwise.
  progress = tqdm.tqdm(total=config.num_steps, initial=train.start_step, dynamic_ncols=True,
                       disable=not (is_main and sys.stderr.isatty()))
  step = train.start_step
  # Counted over the whole run: saved beside the data position in each checkpoint.
  skipped_steps = int((train.data_state or {}).get("skipped_steps", 0))
  consecutive_nonfinite = 0
  try:
    while step < config.num_steps:
      batch, data_state = next(iterator)
      started = time.perf_counter()
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, metrics = steps.train_step(state, frozen, shard_batch(batch, mesh))
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      seconds = time.perf_counter() - started
      step += 1
      if metrics["nonfinite"]:
        skipped_steps += 1
        consecutive_nonfinite += 1
      else:
        consecutive_nonfinite = 0
      data_state = {**data_state, "skipped_steps": skipped_steps}
      tokens = float(np.sum(batch["segment_ids"] != 0)) * jax.process_count()
      metrics.update(step=step, learning_rate=float(train.schedule(step - 1)),
                     step_seconds=seconds, tokens_per_second=tokens / seconds,
                     epoch=data.epoch(data_state), skipped_steps=skipped_steps)
      if peak:
        metrics["mfu"] = flops * metrics["tokens_per_second"] / (peak * jax.device_count())
      history.append(metrics)
      progress.update(1)
      progress.set_postfix(loss=f"{metrics['loss']:.4f}",
                           tok_s=f"{metrics['tokens_per_second']:,.0f}",
                           mfu=f"{100 * metrics['mfu']:.1f}%" if "mfu" in metrics else "n/a")
      writer.write(step, metrics, echo=step % config.log_every_steps == 0 or step == 1
                   or metrics["nonfinite"])
      if consecutive_nonfinite >= config.train.max_consecutive_nonfinite:
        checkpointer.wait()
        last = checkpointer.latest_step()
        raise TrainingDiverged(
            f"training diverged: {consecutive_nonfinite} consecutive non-finite steps ending at "
            f"step {step} (last finite checkpoint: "
            f"{'none' if last is None else f'step {last}'}); lower optimizer.learning_rate or "
            "check the data")
      stop = False
      if config.eval_every_steps and step % config.eval_every_steps == 0:
        evaluate(state, frozen, step)
        stop = call_on_eval(state, step)
      if not consecutive_nonfinite:  # a skipped step made nothing new: keep the older ones
        checkpointer.save(step, state, data_state, force=stop)
      if stop:
        if is_main:
          print(f"stopped early at step {step} (on_eval)", flush=True)
        break
      if preemption.requested:
        checkpointer.save(step, state, data_state, force=True)
        if is_main:
          print(f"SIGTERM: saved step {step} to {workdir / 'checkpoints'}; exiting", flush=True)
        break
    else:
      evaluate(state, frozen, step)
      call_on_eval(state, step)
      checkpointer.save(step, state, data_state, force=True)
  finally:
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    preemption.restore()

  adapters = None if train.lora is None else lora_lib.Adapters(train.lora, state["params"])
  return TrainResult(workdir=workdir, step=step, history=history, eval_history=evaluate.history,
                     model_config=model_cfg, params=state["params"], base_params=frozen,
                     adapters=adapters, trainable_params=train.num_trainable,
                     total_params=train.num_total, preempted=preemption.requested)

