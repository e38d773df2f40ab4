"""Measured train steps, to check the planner against: peak RSS and step time of a real run.

`measure_here(model, method, batch, seq_len, ...)` runs `ftjax.training.step.make_step_fns` (the
step `ftjax.train` jits) on random tokens in this process, one device, no mesh; its command line
is `python -m ftjax.measure`. `measure_many(...)` runs each configuration in a fresh subprocess
(so the resident-memory high-water mark is the run's own, not the caller's) pinned to one core,
the configurations side by side on different cores. Pinned, XLA runs one thread, so a step's
CPU-seconds are its compute on one core: other tenants of a shared machine changed its wall time
by 1.5-2.5x but its CPU-seconds by about +-10% here, and no thread's spinning at a barrier is
counted. The CPU is calibrated in the same process between the steps (`ftjax.planning.hardware.calibrate_cpu`), so the
prediction's rate is measured under the same conditions as the step, never fitted to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def measure_many(runs: list[dict], *, steps: int = 1, timeout: float = 1200) -> list[dict]:
  """One result dict per run (keys: model, method, batch, seq_len, optional lora_rank and
  remat) with "peak_rss_bytes", "step_cpu_seconds" (median of `steps` timed steps after a
  warm-up one), "step_seconds" (wall), "calibration" (per core), ..."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one host device
  env.setdefault("HF_HUB_OFFLINE", "1")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # Compiled as a fresh run compiles: a persistent-cache hit would skip compilation's memory.
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  cpus = sorted(os.sched_getaffinity(0))
  results = []
  for first in range(0, len(runs), len(cpus)):  # as many at once as there are cores
    started = []
    for cpu, run in zip(cpus, runs[first:first + len(cpus)]):
      # Pinned before anything is imported, so XLA sizes its thread pool to the one core (a
      # preexec_fn would fork this multithreaded process).
      pinned = (f"import json, os; os.sched_setaffinity(0, {{{cpu}}}); "
                "from ftjax.planning.measure import measure_here; "
                f"print(json.dumps(measure_here(**{dict(run, steps=steps)!r})))")
      started.append(subprocess.Popen([sys.executable, "-c", pinned], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in started:
      stdout, stderr = process.communicate(timeout=timeout)
      if process.returncode:
        raise RuntimeError(f"measurement failed ({process.returncode}): {stderr[-2000:]}")
      results.append(json.loads(stdout.strip().splitlines()[-1]))
  return results


def measure(model: str, method: str, batch: int, seq_len: int, *, steps: int = 1,
            lora_rank: int = 16, remat: str = "none", timeout: float = 1200) -> dict:
  """`measure_many` of one configuration."""
  return measure_many([{"model": model, "method": method, "batch": batch, "seq_len": seq_len,
                        "lora_rank": lora_rank, "remat": remat}], steps=steps, timeout=timeout)[0]


def measure_here(model: str, method: str, batch: int, seq_len: int, steps: int = 1,
                 lora_rank: int = 16, remat: str = "none", lora_variant: str = "lora",
                 base_quant: str = "none", quant_block_size: int = 64,
                 learning_rate: float = 1e-5) -> dict:
  """One warm-up step and `steps` timed ones in this process (its peak RSS included)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import ftjax
  from ftjax import provenance
  from ftjax.models import lora as lora_lib
  from ftjax.planning.hardware import calibrate_cpu
  from ftjax.training.step import make_step_fns

  started = time.perf_counter()
  base = ftjax.load(model, tokenizer=False, remat_policy=remat,
                    quant=base_quant if method == "lora" else None,
                    quant_block_size=quant_block_size)
  cfg, params = base.config, base.params
  if method == "lora":
    cfg = lora_lib.with_lora(cfg, rank=lora_rank, alpha=2.0 * lora_rank, dropout=0.0)
    trainable = lora_lib.init_lora(params, rank=lora_rank, targets=lora_lib.ALL_TARGETS,
                                   rng=jax.random.PRNGKey(1), variant=lora_variant)
    frozen = params
  else:
    trainable, frozen = params, None
  del base, params
  optimizer = optax.adamw(learning_rate)
  fns = make_step_fns(cfg, optimizer, accum_steps=1, lora=method == "lora", mesh=None)
  state = {"step": jnp.zeros((), jnp.int32), "params": trainable,
           "opt_state": optimizer.init(trainable), "rng": jax.random.PRNGKey(0)}
  del trainable
  step_fn = jax.jit(fns.train_step, donate_argnums=(0,))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1), dtype=np.int32)
  batch_arrays = {
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
      "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
      "segment_ids": np.ones((batch, seq_len), np.int32),
      "loss_mask": np.ones((batch, seq_len), np.float32)}
  setup_seconds = time.perf_counter() - started
  rss_before_steps = provenance.peak_rss_bytes()

  def matmul_rate():  # ~1 s, sampled around every step: on a shared machine it drifts
    return calibrate_cpu(bandwidth=False)["matmul_flops_per_core"]

  rates = [matmul_rate()]
  started = time.perf_counter()
  state, metrics = step_fn(state, frozen, batch_arrays)  # compiles, and warms the allocator
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - started
  losses = [float(metrics["loss"])]
  times, cpu_times = [], []
  for _ in range(steps):
    rates.append(matmul_rate())
    started, cpu_started = time.perf_counter(), time.process_time()
    state, metrics = step_fn(state, frozen, batch_arrays)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - started)
    cpu_times.append(time.process_time() - cpu_started)
    losses.append(float(metrics["loss"]))
  rates.append(matmul_rate())
  peak_rss = provenance.peak_rss_bytes()
  loss = float(metrics["loss"])
  del state, frozen, metrics
  calibration = calibrate_cpu()  # after the peak is read: its arrays would add to it
  calibration["matmul_flops_per_core"] = float(np.median(rates))
  return {"model": model, "method": method, "batch": batch, "seq_len": seq_len,
          "lora_rank": lora_rank, "remat": remat, "steps": steps, "lora_variant": lora_variant,
          "base_quant": base_quant, "quant_block_size": quant_block_size,
          "cores_used": len(os.sched_getaffinity(0)),
          "peak_rss_bytes": peak_rss, "rss_before_steps_bytes": rss_before_steps,
          "step_cpu_seconds": float(np.median(cpu_times)), "step_cpu_seconds_all": cpu_times,
          "step_seconds": float(np.median(times)), "step_seconds_all": times,
          "matmul_flops_per_core_all": rates,
          "compile_seconds": compile_seconds, "setup_seconds": setup_seconds,
          "loss": loss, "losses": losses, "learning_rate": learning_rate,
          "calibration": calibration}

