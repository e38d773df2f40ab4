"""What made a result: package versions, the git commit and the machine, written with every
result (a training run's run_info.json, an experiment's experiment.json, every benchmark's JSON)
so that a table in a report can be traced to the code and machine that produced it; and the
process's peak resident memory, which the experiment, the planner's measurements and the benchmarks
report with their results."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# Distribution names (what `pip` calls them); numpy and python are always present.
PACKAGES = ("ftjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers",
            "numpy", "tensorflow-datasets", "ml-collections")

_ROOT = Path(__file__).resolve().parent.parent


def versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
  """Installed version of each package in PACKAGES (and `extra`), None where absent; and python."""
  found: dict[str, str | None] = {"python": platform.python_version()}
  for name in (*PACKAGES, *extra):
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = None
  return found


def git_commit(root: str | Path = _ROOT) -> str | None:
  """HEAD of the repository holding ftjax, with "-dirty" when tracked files changed; None outside
  a git repository (an installed wheel) or without git."""
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          timeout=10)
    if head.returncode != 0 or not head.stdout.strip():
      return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head.stdout.strip() + ("-dirty" if dirty else "")


# The CPU features that decide how fast a product runs (issue 22): on a CPU with bf16 dot-product
# units (AVX512-BF16, AMX; Arm's BF16) `dtype=bfloat16` runs several times faster than fp32, on
# one without them (an AVX2-only EPYC) it runs slower, so a timing means little without them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                "bf16")
_BF16_UNITS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
  """{"model", "family", "model_id", "features", "bf16_units"}: the CPU's model name, its x86
  family and model numbers (a VM often names every EPYC "AMD EPYC"; the numbers tell a Zen 3 (25
  / 1), a Zen 4 (25 / 17) and a Zen 5 (26) apart), and which of CPU_FEATURES it has, from
  `cpuinfo` (Linux's x86 "flags" or Arm's "Features" line). Without that file: what `platform`
  knows, and None for the rest."""
  found: dict[str, str] = {}
  try:
    for line in Path(cpuinfo).read_text().splitlines():
      key, _, value = line.partition(":")
      key = key.strip()
      if key in ("model name", "cpu family", "model", "flags", "Features"):
        found.setdefault(key, value.strip())
      elif key == "processor" and found:  # the first processor's block is enough
        break
  except OSError:
    pass
  flags = found.get("flags", found.get("Features"))
  flags = None if flags is None else set(flags.split())

  def number(key):
    return int(found[key]) if found.get(key, "").isdigit() else None
  return {"model": found.get("model name") or platform.processor() or platform.machine(),
          "family": number("cpu family"), "model_id": number("model"),
          "features": None if flags is None else [f for f in CPU_FEATURES if f in flags],
          "bf16_units": None if flags is None else bool(flags & _BF16_UNITS)}


def machine() -> dict:
  """Platform, processor, the CPU (model and the features that set its bf16 speed), the CPU
  cores this process may use, and JAX's devices."""
  import jax
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count()
  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu": cpu(), "cpu_count": os.cpu_count(), "cores_available": cores,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind}


def peak_rss_bytes() -> int:
  """This process's peak resident memory (VmHWM). ru_maxrss is the fallback only: Linux carries it
  over fork and exec, so a child of a large process (a long pytest session) reports its parent's
  peak."""
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def record(extra_packages: tuple[str, ...] = ()) -> dict:
  """{"versions", "git_commit", "machine", "command"}: the one provenance record."""
  return {"versions": versions(extra_packages), "git_commit": git_commit(), "machine": machine(),
          "command": " ".join([Path(sys.executable).name, *sys.argv])}
