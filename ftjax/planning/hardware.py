"""Devices the planner prices: datasheet peaks, efficiency factors, prices; and a measured CPU.

Accelerator rates are the datasheet's dense bf16 peak times an efficiency (the MFU a tuned JAX
run reaches: assumed, not measured here). `cpu` has no datasheet: its per-core rates are measured
by a short calibration (an fp32 matmul and an elementwise pass, timed in CPU-seconds so that other
tenants of a shared machine do not count), cached per machine; the machine's rate is the per-core
rate times the cores (perfect scaling: the machine idle).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

# A train step's FLOPs per CPU-second as a fraction of the calibration matmul's. Set once, not
# refitted per run: on the development machine (2-core AMD EPYC VM under other tenants' load,
# SmolLM2-135M, batch 2 and 4 x 256, one pinned core, ten runs) LoRA steps reached 0.48-0.62 of
# the matmul rate (mean 0.53) and full steps 0.57-0.61 (attention, norms, the softmax over the
# vocabulary and LoRA's rank-16 matmuls run below the peak); 0.56 is the mean of all ten.
# tests/test_plan.py measures both again on every run, against fresh calibrations.
CPU_TRAIN_EFFICIENCY = 0.56
# Elementwise passes over trainable params per optimizer step, in 4-byte reads + writes:
# gradient accumulation (zero, add, divide: 5), global norm (1), AdamW (read 4, write 3).
OPTIMIZER_PASSES = 13
CALIBRATION_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  devices: int
  flops_per_device: float  # dense peak, FLOP/s (bf16 on accelerators, fp32 measured on cpu)
  memory_per_device: float  # bytes
  memory_bandwidth: float  # bytes/s per device
  efficiency: float  # fraction of the peak a train step reaches
  price_per_device_hour: float  # USD, on-demand list price (override with --price)
  note: str = ""

  @property
  def flops(self) -> float:
    """Sustained FLOP/s of all devices together."""
    return self.devices * self.flops_per_device * self.efficiency


_GB = 1e9
_GIB = 2.0 ** 30
# Datasheet dense bf16 peaks and HBM; prices are typical on-demand USD per device-hour (2025).
ACCELERATORS = {
    "h100": Hardware("h100", 1, 989e12, 80 * _GIB, 3350 * _GB, 0.40, 3.00,
                     "NVIDIA H100 SXM, 989 TFLOP/s bf16 dense"),
    "a100": Hardware("a100", 1, 312e12, 80 * _GIB, 2039 * _GB, 0.45, 1.80,
                     "NVIDIA A100 80GB SXM, 312 TFLOP/s bf16 dense"),
    "v5e-8": Hardware("v5e-8", 8, 197e12, 16 * _GIB, 819 * _GB, 0.45, 1.20,
                      "8 TPU v5e chips, 197 TFLOP/s bf16 each"),
    "v5p-8": Hardware("v5p-8", 4, 459e12, 95 * _GIB, 2765 * _GB, 0.45, 4.20,
                      "TPU v5p-8: 4 chips, 459 TFLOP/s bf16 each"),
}
HARDWARE_NAMES = ("cpu", *ACCELERATORS)
CPU_PRICE_PER_HOUR = 0.10  # a small cloud VM; the experiment runner's default too


def _cache_file() -> Path:
  root = os.environ.get("FTJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ftjax")
  return Path(root) / "cpu_calibration.json"


def cpu_name() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
  from ftjax import provenance
  return provenance.cpu()["model"]


def _machine_key() -> str:
  return f"{cpu_name()} x{os.cpu_count()}"


def _rate(fn, args, work: float, repeats: int) -> float:
  """`work` per CPU-second of this process (all its threads), median of `repeats` runs of `fn`,
  whose output replaces its last (donated) argument: the buffer is reused, as a train step
  reuses its state's, so no run times the page faults of a fresh output.

  CPU time, not wall time: on a shared machine the wall time measures the other tenants too.
  Even so a short kernel's CPU time varies from second to second on a loaded machine (caches
  refilled after context switches), so the median is taken over many runs."""
  import jax
  import numpy as np
  args = (*args[:-1], jax.block_until_ready(fn(*args)))
  times = []
  for _ in range(repeats):
    started = time.process_time()
    args = (*args[:-1], jax.block_until_ready(fn(*args)))
    times.append(time.process_time() - started)
  return work / max(float(np.median(times)), 1e-9)


def calibrate_cpu(repeats: int = 30, size: int = 1024, bandwidth: bool = True) -> dict:
  """Measured now, per core (per CPU-second): fp32 matmul FLOP/s (size^3 matmuls) and
  elementwise memory bandwidth in bytes/s (y = (x + y) / 2 over 128 MB arrays)."""
  import jax
  import jax.numpy as jnp

  # x @ x / size keeps the values finite however often it is applied to its own output.
  matmul = jax.jit(lambda x: x @ x / size, donate_argnums=0)
  a = jnp.full((size, size), 1.0, jnp.float32)
  out = {"version": CALIBRATION_VERSION, "machine": _machine_key(), "cores": os.cpu_count() or 1,
         "matmul_flops_per_core": _rate(matmul, (a,), 2 * size ** 3, repeats)}
  if bandwidth:
    n = 2 ** 25  # 128 MB per array: far beyond the caches
    x, y = jnp.ones((n,), jnp.float32), jnp.ones((n,), jnp.float32)
    axpy = jax.jit(lambda x, y: 0.5 * x + 0.5 * y, donate_argnums=1)
    out["memory_bandwidth_per_core"] = _rate(axpy, (x, y), 3 * 4 * n, repeats)
  return out


def cpu_calibration(refresh: bool = False) -> dict:
  """The cached calibration of this machine, measured (a few seconds) if absent or stale."""
  path = _cache_file()
  if not refresh and path.is_file():
    try:
      cached = json.loads(path.read_text())
      if (cached.get("machine") == _machine_key()
          and cached.get("version") == CALIBRATION_VERSION):
        return cached
    except (OSError, json.JSONDecodeError):
      pass
  measured = calibrate_cpu()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(measured, indent=2))
  except OSError:
    pass  # a read-only home: measure again next time
  return measured


def cpu_hardware(calibration: dict | None = None, cores: int | None = None) -> Hardware:
  """This machine as one device: `cores` (default: all) times the calibrated per-core rates."""
  import psutil
  calibration = calibration or cpu_calibration()
  cores = cores or calibration["cores"]
  flops = cores * calibration["matmul_flops_per_core"]
  return Hardware("cpu", 1, flops, float(psutil.virtual_memory().total),
                  cores * calibration["memory_bandwidth_per_core"], CPU_TRAIN_EFFICIENCY,
                  CPU_PRICE_PER_HOUR,
                  f"{calibration['machine']}, {cores} cores: {flops / 1e9:.0f} GFLOP/s fp32 "
                  "matmul, measured")


def get_hardware(name: str, calibration: dict | None = None) -> Hardware:
  if name == "cpu":
    return cpu_hardware(calibration)
  if name not in ACCELERATORS:
    raise ValueError(f"unknown hardware {name!r}; choose from {', '.join(HARDWARE_NAMES)}")
  return ACCELERATORS[name]
