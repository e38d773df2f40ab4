"""LoRA vs QLoRA (int8, nf4) vs DoRA on the shipped recipe: the training loss after a fixed number
of steps of `configs/smollm2_lora.py` (issue 24).

  python experiments/bench/qlora_recipe_bench.py --steps 20 \
      --out experiments/bench/results/qlora_recipe_cpu.json

Each case is `ftjax.training.loop.run` on the recipe as shipped (SmolLM2-135M-Instruct, the
customer-service sample, batch 8 x 256, AdamW 1e-3 with warm-up, rank 16 on all seven projections,
dropout 0.05, the same seed and data order), with only `lora.base_quant` / `lora.variant` changed and the step
count cut to --steps. Reported: the loss at step 1, the mean loss over the last 5 steps (one
step's loss is one batch's), the loss on the recipe's held-out split (the rows `ftjax.train`
holds out for evaluation) after the last step, and the run's wall seconds (the machine's other work included: step
time and peak memory are measured pinned, in qlora_bench.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = {
    "lora": {"base_quant": "none", "variant": "lora"},
    "qlora int8": {"base_quant": "int8", "variant": "lora"},
    "qlora nf4": {"base_quant": "nf4", "variant": "lora"},
    "dora": {"base_quant": "none", "variant": "dora"},
}


def recipe():
  spec = importlib.util.spec_from_file_location("recipe", ROOT / "configs" / "smollm2_lora.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  os.chdir(ROOT)  # the recipe's data path is relative to the repository
  from ftjax import provenance
  from ftjax.training import loop

  rows = []
  for name, case in CASES.items():
    config = recipe()
    config.num_steps = args.steps
    config.checkpoint.every_steps = 10 * args.steps  # no checkpoint inside the timed run
    config.eval_every_steps = 10 * args.steps
    config.lora.base_quant = case["base_quant"]
    config.lora.variant = case["variant"]
    with tempfile.TemporaryDirectory() as workdir:
      started = time.perf_counter()
      result = loop.run(config, workdir)
      seconds = time.perf_counter() - started
    losses = [h["loss"] for h in result.history]
    tail = losses[-5:]
    final_eval = result.eval_history[-1] if result.eval_history else {}
    rows.append({"case": name, **case, "steps": len(losses), "losses": losses,
                 "first_loss": losses[0], "last5_mean_loss": sum(tail) / len(tail),
                 "eval_loss": final_eval.get("eval_loss"), "eval_history": result.eval_history,
                 "wall_seconds": seconds})
    print(f"done: {name}", flush=True)
  print(f"configs/smollm2_lora.py, {args.steps} steps; load average {os.getloadavg()[0]:.2f}")
  print("| case | loss step 1 | mean loss, last 5 steps | held-out loss after the last step | "
        "wall s (run) |")
  print("|---|---|---|---|---|")
  for r in rows:
    held_out = "n/a" if r["eval_loss"] is None else f"{r['eval_loss']:.3f}"
    print(f"| {r['case']} | {r['first_loss']:.3f} | {r['last5_mean_loss']:.3f} | {held_out} | "
          f"{r['wall_seconds']:.0f} |")
  if args.out:
    Path(args.out).write_text(json.dumps({"rows": rows, "provenance": provenance.record()},
                                         indent=2, default=str) + "\n")


if __name__ == "__main__":
  main()
