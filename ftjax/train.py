"""Supervised fine-tuning, full or LoRA, on any device mesh, resumable from its working directory.

  python -m ftjax.train --config configs/smollm2_lora.py --workdir runs/lora [--config.key=value]

Reads top to bottom: config -> mesh -> model -> data -> state (`ftjax.training.state`: restore,
or init, seeded from `init_from` if set) -> jit step -> loop (log, eval, checkpoint).
A step with a NaN/inf loss or gradient is skipped (`skipped_steps` in the metrics);
`train.max_consecutive_nonfinite` of them in a row stop the run with `TrainingDiverged`.
`run(config, workdir)` is the same thing as a function, for the experiment runner. The workdir's
model.json says what was trained, so `ftjax.load(workdir)` returns the trained model.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm

from ftjax.models import lora as lora_lib
from ftjax.checkpoints import Pretrained, load
from ftjax.config import ConfigError, validate
from ftjax.sharding import batch_sharding, replicated, shard_batch
from ftjax.checkpoints.orbax_store import Checkpointer
from ftjax.training.metrics import MetricWriter, flops_per_token, peak_flops_per_device
from ftjax.training.state import TrainState, make_train_mesh, restore_or_init, run_model
from ftjax.training.step import make_step_fns


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


class TrainingDiverged(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


class WorkdirError(OSError):
  """The working directory cannot be created or written to."""


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
  _check_writable(workdir)
  is_main = jax.process_index() == 0
  config = _audit_gate(config, workdir)

  base = load(config.model, dtype=config.dtype, param_dtype=config.param_dtype,
              device_put=False, remat_policy=config.remat_policy,
              quant=config.lora.base_quant if config.lora.enabled else None,
              quant_block_size=config.lora.quant_block_size,
              attention_impl=config.attention, loss_chunk=config.loss_chunk)
  if base.adapters is not None:
    raise ConfigError(f"config key model: {config.model} is a LoRA run; to continue training its "
                      "adapters, set init_from to it and model to its base")
  data = _make_data(config, workdir, base.tokenizer, is_main)
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
    _write_run_record(config, workdir, mesh, train, data)

  model_cfg, state, frozen = train.model_config, train.state, train.frozen
  fns = make_step_fns(model_cfg, train.optimizer, accum_steps=config.grad_accum_steps,
                      lora=train.lora is not None, mesh=mesh)
  batch_sh = batch_sharding(mesh)
  train_step = jax.jit(fns.train_step,
                       in_shardings=(train.shardings, train.frozen_shardings, batch_sh),
                       out_shardings=(train.shardings, replicated(mesh)), donate_argnums=(0,))
  eval_step = jax.jit(fns.eval_step,
                      in_shardings=(train.shardings, train.frozen_shardings, batch_sh),
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
    """Held-out loss and perplexity, appended to eval_history and written out; and, where eval
    rows carry an `answer`, the loss on the answer's tokens alone (eval_answer_loss), which the
    reply's boilerplate cannot dilute."""
    if not eval_batches or (eval_history and eval_history[-1]["step"] == step):
      return
    sums = {"loss_sum": 0.0, "target_tokens": 0.0, "answer_loss_sum": 0.0, "answer_tokens": 0.0}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for batch in eval_batches:
        out = jax.device_get(eval_step(current_state, frozen, shard_batch(batch, mesh)))
        sums = {k: v + float(out[k]) for k, v in sums.items()}
    tokens = sums["target_tokens"]
    loss = sums["loss_sum"] / max(tokens, 1.0)
    eval_metrics = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
                    "eval_tokens": tokens}
    if sums["answer_tokens"]:  # absent, not 0 or NaN, when no eval row has a located answer
      eval_metrics.update(eval_answer_loss=sums["answer_loss_sum"] / sums["answer_tokens"],
                          eval_answer_tokens=sums["answer_tokens"])
    eval_history.append({"step": step, **eval_metrics})
    writer.write(step, eval_metrics, echo=True)

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
  preemption = _Preemption()
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
        state, metrics = train_step(state, frozen, shard_batch(batch, mesh))
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
        evaluate(state, step)
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
      evaluate(state, step)
      call_on_eval(state, step)
      checkpointer.save(step, state, data_state, force=True)
  finally:
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    preemption.restore()

  adapters = None if train.lora is None else lora_lib.Adapters(train.lora, state["params"])
  return TrainResult(workdir=workdir, step=step, history=history, eval_history=eval_history,
                     model_config=model_cfg, params=state["params"], base_params=frozen,
                     adapters=adapters, trainable_params=train.num_trainable,
                     total_params=train.num_total, preempted=preemption.requested)


def _check_writable(workdir: Path):
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


def _audit_gate(config: ml_collections.ConfigDict, workdir: Path) -> ml_collections.ConfigDict:
  """`data.audit`: audits the train/eval files (not `tfds:` sources) and applies the gate; for
  "redact" returns a config that trains on redacted copies under <workdir>/audit (every process
  writes its own, identical, copy: no shared-filesystem race)."""
  mode = config.data.audit
  if mode == "off":
    return config
  from ftjax.audit import audit_files, gate, redact_file
  files = {key: config.data[key] for key in ("train", "eval")
           if config.data[key] and not config.data[key].startswith("tfds:")}
  if not files:
    print(f"data.audit={mode}: nothing to audit (tfds sources are not audited)", file=sys.stderr)
    return config
  report = audit_files([files["train"]] if "train" in files else [],
                       [files["eval"]] if "eval" in files else [])
  gate(report, mode)
  if mode != "redact":
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  folder = workdir / "audit" / f"process-{jax.process_index()}"
  folder.mkdir(parents=True, exist_ok=True)
  for key, path in files.items():
    target = folder / f"{key}.redacted{Path(path).suffix}"
    replaced = redact_file(path, str(target), report.findings)
    print(f"data.audit=redact: {path} -> {target} ({replaced} spans replaced)", file=sys.stderr)
    config.data[key] = str(target)
  return config


def _make_data(config: ml_collections.ConfigDict, workdir: Path, tokenizer, is_main: bool):
  """Tokenised, packed train and eval batches for this process (TFDS files under the workdir
  unless data.data_dir says otherwise)."""
  from ftjax.data import DataConfigError, build_sft_data  # TF import is slow: only when training
  data_cfg = ml_collections.ConfigDict(
      {k: v for k, v in config.data.to_dict().items() if k != "audit"})  # audited in run()
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


def _write_run_record(config: ml_collections.ConfigDict, workdir: Path, mesh, train: TrainState,
                      data):
  """model.json (what `ftjax.load(workdir)` needs), run_info.json and config.json."""
  run_model(config).write(workdir)
  run_info = {"config": config.to_dict(), "versions": _versions(), "git_commit": _git_commit(),
              "mesh": dict(mesh.shape), "devices": [str(d) for d in jax.devices()],
              "process_count": jax.process_count(), "trainable_params": train.num_trainable,
              "total_params": train.num_total,
              "model_config": dataclasses.asdict(train.model_config),
              "train_examples": data.num_train_examples, "resumed_at_step": train.start_step,
              "init_from_step": train.init_from_step}
  (workdir / "run_info.json").write_text(json.dumps(run_info, indent=2, default=str))
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  print(f"trainable params: {train.num_trainable:,} of {train.num_total:,} "
        f"({100 * train.num_trainable / train.num_total:.2f}%)", flush=True)


def _user_errors():
  from ftjax.checkpoints import CheckpointError
  from ftjax.data import DataConfigError
  from ftjax.models.config import UnsupportedModelError
  from ftjax.sharding import MeshConfigError
  from ftjax.audit import AuditError, AuditInputError
  return (ConfigError, CheckpointError, DataConfigError, UnsupportedModelError, MeshConfigError,
          TrainingDiverged, WorkdirError, AuditError, AuditInputError)


def _check_override_keys(argv: list[str]):
  """ConfigError naming an unknown key in a `--config.KEY=VALUE` override (absl's own message
  names only the last part of the key)."""
  from ftjax.config import _flatten, base_config
  known = {name for name, _ in _flatten(base_config())}
  for arg in argv[1:]:
    match = re.match(r"--?config\.([^=\s]+)", arg)
    if match and match[1] not in known:
      close = difflib.get_close_matches(match[1], sorted(known), n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      raise ConfigError(f"config key {match[1]}: unknown{hint}")


def _one_line(err: Exception) -> str:
  return " ".join(str(err).split())  # absl's flag errors span lines


def main(argv=None):
  """The command line. Every user error (config, data, checkpoint, divergence) ends it with one
  `error: ...` line on stderr and exit status 2. Callable more than once in a process."""
  from absl import flags, logging
  from ml_collections import config_flags

  argv = list(sys.argv if argv is None else argv)
  flag_values = flags.FlagValues()  # not absl's global FLAGS, so that main can run again
  config_flag = config_flags.DEFINE_config_file("config", None, "recipe file (configs/*.py)",
                                                flag_values=flag_values, lock_config=True,
                                                sys_argv=argv)
  flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, resolved config)",
                      flag_values=flag_values)
  if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
    print(f"{__doc__}\n{flag_values.get_help()}")
    sys.exit(0)
  try:
    _check_override_keys(argv)
    flag_values(argv)
    for name in ("config", "workdir"):
      if flag_values[name].value is None:
        raise flags.Error(f"--{name} is required")
    config = config_flag.value
    config.keys()  # a recipe that failed to load raises only when it is first used
  except ConfigError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as err:
    # Mistyped --config.KEY=VALUE overrides, a missing or broken recipe file.
    message = _one_line(err)
    mistyped = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", message)
    if mistyped:
      message = f"config key {mistyped[1]}: cannot use {mistyped[2]!r} ({mistyped[3]})"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl logging otherwise warns that flags were not parsed
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  try:
    run(config, flag_values.workdir)
  except _user_errors() as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
