"""Prefill and decode-step time of generation at a few batch x prompt shapes (greedy, no EOS).

For comparing two commits of ftjax's decoding on one machine: run it at each (alternating, so
both see the same machine), and compare the figures; the generated tokens are printed so the
runs can be checked to produce the same output. Default shapes: the runner's batch (28) with
short prompts (the base and fine-tuned arms) and with retrieval-length prompts (the RAG arms),
and batch 1 (latency).

  python experiments/bench/decode_step_bench.py --out experiments/bench/results/decode_step_cpu.json

Each figure is the median of --repeats calls after a compiling call: prefill alone
(`decoding.prefill` into a fresh cache), and `generate_ids` (prefill + --new_tokens decode
steps); a decode step is (generate - prefill) / new_tokens.
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
  parser.add_argument("--shapes", default="28x64,28x320,1x64", help="batch x prompt tokens")
  parser.add_argument("--new_tokens", type=int, default=48)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  import jax.numpy as jnp
  import numpy as np

  import ftjax
  from ftjax.generation.decoding import SamplingConfig, generate_ids, prefill
  from ftjax.models.transformer import init_cache
  from ftjax.provenance import record

  model = ftjax.load(args.model, dtype=args.dtype, tokenizer=False)
  cfg, params = model.config, model.params
  rng = np.random.default_rng(0)
  rows = {}
  for shape in args.shapes.split(","):
    batch, prompt_len = map(int, shape.split("x"))
    prompts = [rng.integers(100, cfg.vocab_size, prompt_len).tolist() for _ in range(batch)]
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, batch_size=batch, greedy=True)
    tokens = jnp.asarray(prompts, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
    valid = jnp.ones((batch, prompt_len + args.new_tokens), bool)

    def prefill_once():
      started = time.perf_counter()
      cache = init_cache(cfg, batch, prompt_len + args.new_tokens)
      logits, _ = prefill(cfg, params, None, cache, tokens, positions, valid, jnp.int32(0),
                          cache_empty=True)
      logits.block_until_ready()
      return time.perf_counter() - started

    def generate_once():
      started = time.perf_counter()
      out = generate_ids(cfg, params, prompts, sampling, eos_ids=[-1], pad_id=0)
      return time.perf_counter() - started, out

    prefill_once()
    _, first = generate_once()  # compiles
    assert all(len(o) == args.new_tokens for o in first)
    prefills, totals = [], []
    for _ in range(args.repeats):
      prefills.append(prefill_once())
      totals.append(generate_once()[0])
    p, g = statistics.median(prefills), statistics.median(totals)
    rows[shape] = {"prefill_s": prefills, "generate_s": totals, "prefill_median_s": p,
                   "generate_median_s": g, "decode_step_ms": (g - p) / args.new_tokens * 1e3,
                   "decode_tok_s": batch * args.new_tokens / (g - p),
                   "first_row_tokens": first[0][:12]}
  print(f"{args.model} {args.dtype}, {args.new_tokens} new tokens, median of {args.repeats}")
  print("| batch x prompt | prefill (s) | prefill + decode (s) | decode step (ms) | decode tok/s |"
        " first row's tokens |")
  print("|---|---|---|---|---|---|")
  for shape, r in rows.items():
    print(f"| {shape} | {r['prefill_median_s']:.2f} | {r['generate_median_s']:.2f} | "
          f"{r['decode_step_ms']:.1f} | {r['decode_tok_s']:.0f} | {r['first_row_tokens'][:6]} |")
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows,
                                          "provenance": record()}, indent=1) + "\n")


if __name__ == "__main__":
  main()
