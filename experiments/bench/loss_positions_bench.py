"""The LM head at the loss positions only vs at every position, on the train step (issue 22).

One process, SmolLM2-135M-Instruct, LoRA rank 16 on all seven projections, AdamW, the demo's
training shape (batch 2 x 512, bf16 compute by default). Each row's loss mask covers a given
share of its positions (the demo's fine-tuning rows: ~40%, its RAFT rows: ~10%), at random spots.
Both steps run round-robin on the same state and batch; median step seconds and the ratio.

  python experiments/bench/loss_positions_bench.py --out experiments/bench/results/loss_positions_cpu.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--shares", default="0.1,0.4")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import ftjax
  from ftjax.models import lora as lora_lib
  from ftjax.provenance import record as provenance_record
  from ftjax.training.step import loss_positions_for, make_step_fns

  base = ftjax.load(args.model, tokenizer=False, dtype=args.dtype)
  cfg = lora_lib.with_lora(base.config, rank=16, alpha=32.0, dropout=0.0)
  frozen = base.params
  adapters = lora_lib.init_lora(frozen, rank=16, targets=lora_lib.ALL_TARGETS,
                                rng=jax.random.PRNGKey(1))
  optimizer = optax.adamw(1e-4)
  state = {"step": jnp.int32(0), "params": adapters, "opt_state": optimizer.init(adapters),
           "rng": jax.random.PRNGKey(0)}
  rng = np.random.default_rng(0)
  b, t = args.batch, args.seq_len
  tokens = rng.integers(0, cfg.vocab_size, (b, t + 1), dtype=np.int32)
  rows = []
  for share in (float(s) for s in args.shares.split(",")):
    mask = np.zeros((b, t), np.float32)
    for r in range(b):
      mask[r, rng.choice(t, int(share * t), replace=False)] = 1
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
             "segment_ids": np.ones((b, t), np.int32), "loss_mask": mask}
    n = loss_positions_for(int(mask.sum(1).max()), t)
    steps = {k: jax.jit(make_step_fns(cfg, optimizer, accum_steps=1, lora=True, mesh=None,
                                      loss_positions=k).train_step) for k in (0, n)}
    losses = {k: float(jax.block_until_ready(f(state, frozen, batch))[1]["loss"])
              for k, f in steps.items()}  # compiles
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
      for k, f in steps.items():
        started = time.perf_counter()
        jax.block_until_ready(f(state, frozen, batch))
        times[k].append(time.perf_counter() - started)
    every, gathered = float(np.median(times[0])), float(np.median(times[n]))
    rows.append({"loss_share": share, "loss_positions": n, "every_position_s": every,
                 "loss_positions_s": gathered, "speedup": every / gathered,
                 "loss_every": losses[0], "loss_gathered": losses[n], "times": times})
    print(f"loss on {share:.0%} of positions: head at every position {every:.2f} s, at {n} of "
          f"{t} {gathered:.2f} s: {every / gathered:.2f}x (loss {losses[0]:.5f} vs "
          f"{losses[n]:.5f})", flush=True)
  if args.out:
    Path(args.out).write_text(json.dumps(
        {"args": vars(args), "rows": rows, "provenance": provenance_record()}, indent=1,
        default=str))


if __name__ == "__main__":
  main()
