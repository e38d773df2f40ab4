"""Generation with trained LoRA adapters: applied at every step, or folded into the kernels once?

In one process, SmolLM2-135M-Instruct at the demo's generation shape (default: batch 28, 64-token
prompts of random ids, 48 new tokens, no EOS so every row decodes every step), bf16 compute:
  base:      the model alone (the peer: the cost of generation without adapters);
  unmerged:  the model with rank-16 adapters on all seven projections applied at every step
             (`generate_ids(..., lora=tree)`: two extra small products per projection per token);
  merged:    the same adapters folded into the kernels once (`lora.merge`), then generated as a
             plain model; the fold's own time is printed beside it.
Cases run round-robin, one call each per round after a compiling call; the median of --repeats.
Prints tokens/s of each and the ratios merged / unmerged and merged / base, and the largest
logit difference between the unmerged and merged models on one prompt (same function, other
rounding).

  python experiments/bench/lora_decode_bench.py --out experiments/bench/results/lora_decode_cpu.json
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--batch", type=int, default=28)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=48)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np

  import ftjax
  from ftjax.generation.decoding import SamplingConfig, generate_ids, prefill
  from ftjax.models import lora as lora_lib
  from ftjax.models.transformer import init_cache
  from ftjax.provenance import record

  model = ftjax.load(args.model, dtype=args.dtype, tokenizer=False)
  cfg = lora_lib.with_lora(model.config, rank=args.rank, alpha=2.0 * args.rank, dropout=0.0)
  targets = tuple(lora_lib.TARGETS)
  tree = lora_lib.init_lora(model.params, rank=args.rank, targets=targets,
                            rng=jax.random.PRNGKey(0))
  # Trained adapters have b != 0: draw it too, at a size that moves the logits.
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  tree = jax.tree.unflatten(treedef, [x if x.ndim and i % 2 == 0 else
                                      0.02 * jax.random.normal(k, x.shape, x.dtype)
                                      for i, (x, k) in enumerate(zip(leaves, keys))])
  started = time.perf_counter()
  merged = jax.block_until_ready(lora_lib.merge(cfg, model.params, tree))
  merge_s = time.perf_counter() - started

  rng = np.random.default_rng(0)
  prompts = [rng.integers(100, cfg.vocab_size, args.prompt_len).tolist()
             for _ in range(args.batch)]
  sampling = SamplingConfig(max_new_tokens=args.new_tokens, batch_size=args.batch, greedy=True)
  cases = {"base": (model.config, model.params, None),
           "unmerged": (cfg, model.params, tree),
           "merged": (model.config, merged, None)}

  def call(name):
    c, params, lora = cases[name]
    started = time.perf_counter()
    out = generate_ids(c, params, prompts, sampling, eos_ids=[-1], pad_id=0, lora=lora)
    seconds = time.perf_counter() - started
    assert all(len(o) == args.new_tokens for o in out)
    return seconds

  for name in cases:
    call(name)  # compiles
  times = {name: [] for name in cases}
  for _ in range(args.repeats):
    for name in cases:
      times[name].append(call(name))

  # Same function, other rounding: next-token logits of one prompt, unmerged vs merged.
  def logits_of(c, params, lora):
    tokens = jnp.asarray([prompts[0]], jnp.int32)
    positions = jnp.arange(args.prompt_len, dtype=jnp.int32)[None]
    valid = jnp.ones((1, args.prompt_len), bool)
    out, _ = prefill(c, params, lora, init_cache(c, 1, args.prompt_len), tokens, positions,
                     valid, jnp.int32(0), cache_empty=True)
    return np.asarray(out, np.float32)
  a, b = logits_of(*cases["unmerged"]), logits_of(*cases["merged"])
  base_logits = logits_of(*cases["base"])
  diff = float(np.max(np.abs(a - b)))
  moved = float(np.max(np.abs(a - base_logits)))

  tokens = args.batch * args.new_tokens
  rows = {name: {"seconds": times[name], "median_s": statistics.median(times[name]),
                 "tokens_per_s": tokens / statistics.median(times[name])} for name in cases}
  print(f"{args.model} {args.dtype}, batch {args.batch} x {args.prompt_len} prompt tokens, "
        f"{args.new_tokens} new tokens, LoRA rank {args.rank} on {len(targets)} projections; "
        f"median of {args.repeats}")
  print("| case | s (median) | tok/s |")
  print("|---|---|---|")
  for name, row in rows.items():
    print(f"| {name} | {row['median_s']:.2f} | {row['tokens_per_s']:.0f} |")
  print(f"merged / unmerged: {rows['merged']['tokens_per_s'] / rows['unmerged']['tokens_per_s']:.2f}x;"
        f" merged / base: {rows['merged']['tokens_per_s'] / rows['base']['tokens_per_s']:.2f}x;"
        f" the fold itself {merge_s:.2f} s")
  print(f"max |logit difference| unmerged vs merged: {diff:.4f} (adapters moved the logits by up "
        f"to {moved:.2f})")
  if args.out:
    Path(args.out).write_text(json.dumps(
        {"args": vars(args), "rows": rows, "merge_s": merge_s, "max_logit_diff": diff,
         "max_logit_moved": moved, "provenance": record()}, indent=1) + "\n")


if __name__ == "__main__":
  main()
