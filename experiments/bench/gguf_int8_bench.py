"""Loading a Q8_0 GGUF as the int8 QLoRA base: as stored vs through an fp32 folder (issue 24).

  python experiments/bench/gguf_int8_bench.py --out experiments/bench/results/gguf_int8_cpu.json

SmolLM2-135M-Instruct is exported to a Q8_0 GGUF (`ftjax.export --format gguf --gguf_type q8_0`),
then loaded with `ftjax.load(gguf, quant="int8", quant_block_size=32)` three ways, each in a
fresh process (peak resident memory is the process's): "as stored" (this change: the Q8_0 codes
and scales taken from the file), "fp32 folder, cold" (the path before it: transformers
dequantizes the file into a cached fp32 folder, which is loaded in fp32 and quantized) and
"fp32 folder, cached" (the same with the folder already written). The logits of the first and
the last on the same tokens are compared (the weights are the same values).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
import numpy as np, jax.numpy as jnp
import ftjax
from ftjax.models import forward
from ftjax.checkpoints.registry import resolve
gguf, way = sys.argv[1], sys.argv[2]
def rss_gb():
  for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 2**20
before = rss_gb()
start = time.perf_counter()
if way == "stored":
  model = ftjax.load(gguf, quant="int8", quant_block_size=32, tokenizer=False)
else:
  model = ftjax.load(str(resolve(gguf)), quant="int8", quant_block_size=32, tokenizer=False)
seconds = time.perf_counter() - start
loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
grown = rss_gb() - before
tokens = jnp.asarray(np.arange(3, 3 + 64).reshape(2, 32), jnp.int32)
np.save(sys.argv[3], np.asarray(forward(model.config, model.params, tokens)))
print(json.dumps({"seconds": seconds, "peak_rss_after_load_gb": loaded_rss,
                  "rss_growth_by_load_gb": grown,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run(gguf, way, logits, env):
  out = subprocess.run([sys.executable, "-c", CHILD, str(gguf), way, str(logits)], env=env,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  import os
  import numpy as np
  from ftjax import provenance
  from ftjax.checkpoints import export
  work = Path(tempfile.mkdtemp(prefix="gguf_int8_"))
  env = {**os.environ, "FTJAX_CACHE": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
  os.environ["FTJAX_CACHE"] = str(work / "export_cache")
  export(args.model, work / "q8", "gguf", gguf_type="q8_0")
  gguf = work / "q8" / "model.gguf"
  rows = {}
  for way, label in (("stored", "as stored"), ("folder", "fp32 folder, cold"),
                     ("folder", "fp32 folder, cached")):
    rows[label] = run(gguf, way, work / f"{way}.npy", env)
    print(label, rows[label], flush=True)
  folder_mb = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file()) / 2**20
  print(f"fp32 folder written by the cold path: {folder_mb:.0f} MB; the Q8_0 file "
        f"{gguf.stat().st_size / 2**20:.0f} MB")
  diff = float(np.abs(np.load(work / "stored.npy") - np.load(work / "folder.npy")).max())
  print("\n| load of a Q8_0 GGUF as the int8 base | seconds | peak RSS after load (GB) | "
        "peak RSS after a forward (GB) | RSS grown by the load (GB) |\n|---|---|---|---|---|")
  for label, r in rows.items():
    print(f"| {label} | {r['seconds']:.1f} | {r['peak_rss_after_load_gb']:.2f} | "
          f"{r['peak_rss_gb']:.2f} | {r['rss_growth_by_load_gb']:.2f} |")
  base = rows["fp32 folder, cached"]
  print(f"\nas stored / fp32 folder (cached): peak RSS after load "
        f"{rows['as stored']['peak_rss_after_load_gb'] / base['peak_rss_after_load_gb']:.2f}x, time "
        f"{rows['as stored']['seconds'] / base['seconds']:.2f}x; max |logit difference| {diff:.2e}")
  if args.out:
    Path(args.out).write_text(json.dumps({"rows": rows, "max_abs_logit_diff": diff,
                                          "gguf_mb": gguf.stat().st_size / 2**20,
                                          "fp32_folder_mb": folder_mb,
                                          **provenance.record()}, indent=1))
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
