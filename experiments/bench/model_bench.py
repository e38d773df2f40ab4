"""ftjax vs transformers (PyTorch) on the same machine, in one run: forward, decoding, train step.

  python experiments/bench/model_bench.py --out experiments/bench/results/model_cpu.json

Each figure is the median of --repeats timed runs after one warm-up (which includes JAX's
compilation). Both sides run fp32 with the model and inputs of the embedded SmolLM2-135M-Instruct.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import ftjax
from ftjax.checkpoints import resolve
from ftjax.generate import SamplingConfig, encode_prompts, generate_ids
from ftjax.models import forward
from ftjax.training.step import make_step_fns

PROMPTS = ["Write a short story about a robot who learns to paint.",
           "Describe the water cycle in detail.", "Write a poem about the sea.",
           "Explain, step by step and for a beginner, how a bicycle turns pedalling into motion."]


def timed(fn, repeats):
  fn()  # warm-up (compilation for JAX)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  model = ftjax.load(args.model)
  cfg, params, tokenizer = model.config, model.params, model.tokenizer
  from transformers import AutoModelForCausalLM
  hf = AutoModelForCausalLM.from_pretrained(str(resolve(args.model)), dtype=torch.float32)
  hf.eval()
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (args.batch, args.seq_len))
  rows = []

  # Forward (logits for every position).
  jax_fwd = jax.jit(lambda p, t: forward(cfg, p, t))
  jt = jnp.asarray(tokens, jnp.int32)
  tt = torch.tensor(tokens)
  with torch.no_grad():
    t_jax = timed(lambda: jax_fwd(params, jt).block_until_ready(), args.repeats)
    t_torch = timed(lambda: hf(input_ids=tt).logits, args.repeats)
  n = args.batch * args.seq_len
  rows.append(("forward", f"{args.batch}x{args.seq_len} tokens", n / t_jax, n / t_torch, "tok/s"))

  # Greedy decoding, batched prompts of different lengths, fixed number of new tokens.
  ids = encode_prompts(tokenizer, PROMPTS)
  sampling = SamplingConfig(max_new_tokens=args.new_tokens)
  longest = max(map(len, ids))
  pad = tokenizer.pad_token_id
  inp = torch.tensor([[pad] * (longest - len(p)) + p for p in ids])
  mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in ids])
  with torch.no_grad():
    t_jax = timed(lambda: generate_ids(cfg, params, ids, sampling, eos_ids=[], pad_id=pad),
                  args.repeats)
    t_torch = timed(lambda: hf.generate(input_ids=inp, attention_mask=mask, do_sample=False,
                                        max_new_tokens=args.new_tokens,
                                        min_new_tokens=args.new_tokens, pad_token_id=pad),
                    args.repeats)
  n = len(ids) * args.new_tokens
  rows.append(("greedy decode", f"{len(ids)} prompts x {args.new_tokens} new", n / t_jax,
               n / t_torch, "tok/s"))

  # One full fine-tuning step (AdamW), all positions in the loss.
  optimizer = optax.adamw(1e-5)
  fns = make_step_fns(cfg, optimizer, accum_steps=1, lora=False, mesh=None)
  batch = {"inputs": jt, "targets": jnp.roll(jt, -1, axis=1),
           "loss_mask": jnp.ones(jt.shape, jnp.float32), "segment_ids": jnp.ones(jt.shape, jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(args.seq_len), jt.shape)}
  state = {"step": jnp.int32(0), "params": params, "opt_state": optimizer.init(params),
           "rng": jax.random.PRNGKey(0)}
  step = jax.jit(fns.train_step, donate_argnums=(0,))
  box = [state]

  def jax_step():
    box[0], metrics = step(box[0], None, batch)
    jax.block_until_ready(metrics)

  hf.train()
  torch_opt = torch.optim.AdamW(hf.parameters(), lr=1e-5)
  labels = torch.roll(tt, -1, dims=1)

  def torch_step():
    torch_opt.zero_grad()
    logits = hf(input_ids=tt).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1))
    loss.backward()
    torch_opt.step()

  t_jax = timed(jax_step, args.repeats)
  t_torch = timed(torch_step, args.repeats)
  n = args.batch * args.seq_len
  rows.append(("train step (full FT, AdamW)", f"{args.batch}x{args.seq_len} tokens", n / t_jax,
               n / t_torch, "tok/s"))

  print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  print(f"{'what':32} {'shape':26} {'ftjax':>10} {'transformers':>13} {'ratio':>7}")
  for what, shape, ours, theirs, unit in rows:
    print(f"{what:32} {shape:26} {ours:10.1f} {theirs:13.1f} {ours / theirs:6.2f}x  ({unit})")
  if args.out:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    record = {"args": vars(args), "commit": commit, "jax": jax.__version__,
              "torch": torch.__version__, "transformers": metadata.version("transformers"),
              "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
              "rows": [dict(zip(("what", "shape", "ftjax", "transformers", "unit"), r))
                       for r in rows]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
  main()
