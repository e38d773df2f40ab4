"""LoRA vs QLoRA (int8, nf4) vs DoRA on SmolLM2-135M, the planner beside each (issue 24).

  python experiments/bench/qlora_bench.py --out experiments/bench/results/qlora_cpu.json

Each configuration is a `ftjax.planning.measure` run: a fresh process pinned to one core (so its
peak RSS is its own and its CPU-seconds are its compute), rank 16 on all seven projections,
batch 2 x 256 random tokens, AdamW at --learning_rate, --steps timed steps after a compiling one,
all on the same batch (so "loss after N steps" is how fast each variant fits one batch, the same
task for every variant). The prediction is `ftjax.planning.estimate.plan` with the run's own
calibrated matmul rate on one core.
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from ftjax.checkpoints import model_config, resolve
from ftjax.planning import estimate, hardware
from ftjax.planning.measure import measure_many

CASES = {
    "lora": {"lora_variant": "lora", "base_quant": "none"},
    "qlora int8": {"lora_variant": "lora", "base_quant": "int8"},
    "qlora nf4": {"lora_variant": "lora", "base_quant": "nf4"},
    "dora": {"lora_variant": "dora", "base_quant": "none"},
    "dora nf4": {"lora_variant": "dora", "base_quant": "nf4"},
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  load = os.getloadavg()
  runs = measure_many([{"model": args.model, "method": "lora", "batch": args.batch,
                        "seq_len": args.seq_len, "learning_rate": args.learning_rate, **case}
                       for case in CASES.values()], steps=args.steps)
  cfg = model_config(str(resolve(args.model)))
  rows = []
  for name, run in zip(CASES, runs):
    inputs = estimate.PlanInputs(method="lora", train_tokens=1e6, seq_len=args.seq_len,
                                 batch=args.batch, lora_rank=run["lora_rank"],
                                 lora_variant=run["lora_variant"], base_quant=run["base_quant"],
                                 quant_block_size=run["quant_block_size"])
    predicted = estimate.plan(cfg, inputs, hardware.cpu_hardware(run["calibration"], cores=1))
    rows.append({"case": name, "measured": run,
                 "predicted": {"peak_bytes": predicted["memory_bytes"]["train_total"],
                               "params_bytes": predicted["memory_bytes"]["params"],
                               "step_seconds": predicted["train"]["step_seconds"],
                               "trainable_params": predicted["model"]["trainable_params"]}})
  print(f"machine: {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores; load average {load[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end")
  print("| case | peak RSS measured / predicted (GB) | base params predicted (GB) | "
        "step CPU-s measured / predicted | wall s | loss step 0 -> step N |")
  print("|---|---|---|---|---|---|")
  for row in rows:
    m, p = row["measured"], row["predicted"]
    print(f"| {row['case']} | {m['peak_rss_bytes'] / 1e9:.2f} / {p['peak_bytes'] / 1e9:.2f} | "
          f"{p['params_bytes'] / 1e9:.3f} | {m['step_cpu_seconds']:.2f} / "
          f"{p['step_seconds']:.2f} | {m['step_seconds']:.2f} | "
          f"{m['losses'][0]:.3f} -> {m['losses'][-1]:.3f} |")
  if args.out:
    from ftjax import provenance
    Path(args.out).write_text(json.dumps({"argv": sys.argv, "load_average_start": load,
                                          "rows": rows, "provenance": provenance.record()},
                                         indent=2, default=str) + "\n")


if __name__ == "__main__":
  main()
