"""Rematerialisation policies on the CPU train step, side by side in one run (issue 22).

XLA:CPU stacks a scanned decoder layer's residuals (the activations saved for the backward pass)
into [layers, ...] buffers with a dynamic-update-slice per layer and zero-fills them first; on
this project's 2-core CPU that costs more than recomputing the layer in the backward pass. This
times the same jitted step (SmolLM2-135M-Instruct, AdamW; LoRA rank 16 on all seven projections
or full fine-tuning) under each `remat_policy`, round-robin on the same state and batch (loss on
40% of positions, at random spots), and prints each policy's median step and its ratio to none.

  python experiments/bench/remat_bench.py --shape 2x512 --lora      # the demo's LoRA shape
  python experiments/bench/remat_bench.py --shape 4x256 --no-lora   # issue 22's full-FT shape
"""

import argparse
import dataclasses
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
  parser.add_argument("--shape", default="2x512", help="batch x seq_len")
  parser.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--policies", default="none,full,dots,dots_no_batch")
  parser.add_argument("--repeats", type=int, default=3)
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

  b, t = (int(x) for x in args.shape.split("x"))
  base = ftjax.load(args.model, tokenizer=False, dtype=args.dtype)
  frozen = base.params
  cfg = base.config
  trainable = frozen
  if args.lora:
    cfg = lora_lib.with_lora(cfg, rank=16, alpha=32.0, dropout=0.0)
    trainable = lora_lib.init_lora(frozen, rank=16, targets=lora_lib.ALL_TARGETS,
                                   rng=jax.random.PRNGKey(1))
  optimizer = optax.adamw(1e-4)
  state = {"step": jnp.int32(0), "params": trainable, "opt_state": optimizer.init(trainable),
           "rng": jax.random.PRNGKey(0)}
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (b, t + 1), dtype=np.int32)
  mask = np.zeros((b, t), np.float32)
  for r in range(b):
    mask[r, rng.choice(t, int(0.4 * t), replace=False)] = 1
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
           "segment_ids": np.ones((b, t), np.int32), "loss_mask": mask}
  n = loss_positions_for(int(mask.sum(1).max()), t)

  steps, compile_s, losses = {}, {}, {}
  for policy in args.policies.split(","):
    step = make_step_fns(dataclasses.replace(cfg, remat_policy=policy), optimizer, accum_steps=1,
                         lora=args.lora, mesh=None, loss_positions=n).train_step
    started = time.perf_counter()
    steps[policy] = jax.jit(step).lower(state, frozen, batch).compile()
    compile_s[policy] = time.perf_counter() - started
    losses[policy] = float(jax.block_until_ready(steps[policy](state, frozen, batch))[1]["loss"])
  times = {p: [] for p in steps}
  for _ in range(args.repeats):
    for policy, step in steps.items():
      started = time.perf_counter()
      jax.block_until_ready(step(state, frozen, batch))
      times[policy].append(time.perf_counter() - started)
  medians = {p: float(np.median(v)) for p, v in times.items()}
  reference = medians.get("none")
  kind = "LoRA r16" if args.lora else "full FT"
  print(f"{args.model} {args.dtype} {kind}, batch {b} x {t}, median of {args.repeats}:")
  for policy, median in medians.items():
    ratio = f"  {reference / median:.2f}x of none" if reference else ""
    print(f"  remat {policy:14s} {median:6.2f} s/step ({b * t / median:5.0f} tok/s), compile "
          f"{compile_s[policy]:.1f} s, loss {losses[policy]:.5f}{ratio}", flush=True)
  if args.out:
    Path(args.out).write_text(json.dumps(
        {"args": vars(args), "median_s": medians, "times": times, "compile_s": compile_s,
         "losses": losses, "provenance": provenance_record()}, indent=1, default=str))


if __name__ == "__main__":
  main()
