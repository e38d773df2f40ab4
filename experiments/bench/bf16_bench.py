"""bf16 training on the CPU (issue 22): ftjax vs PyTorch train steps at fp32 and bf16, in one run.

  python experiments/bench/bf16_bench.py --out experiments/bench/results/bf16_cpu.json

SmolLM2-135M-Instruct (model_bench's model, shape and inputs), batch 4 x 256 (--batch, --seq_len), full fine-tuning
and LoRA (rank 16, all seven projections), AdamW. ftjax "bf16" is `dtype=bfloat16` with fp32
params; it runs twice: with `ftjax.models.matmul`'s bf16 products (bf16 inputs, fp32 accumulation
in the forward and both backward products) and with the plain `dot_general` JAX differentiates
itself (the path before issue 22); "reference attention" is the bf16 model with attention's
reference einsum (`attention_impl="xla"`) instead of the `cpu_bf16` kernel that "auto" picks on
the CPU (before that kernel, every bf16 case ran the reference). PyTorch "bf16" is the forward under
torch.autocast("cpu", dtype=torch.bfloat16), fp32 params and fp32 loss.

The cases are timed round-robin (one step of each per round, --repeats rounds, after a warm-up
step each), so load from other jobs on a shared machine falls on every case alike; each figure is
the median over rounds. The load average is printed at start and end.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import ftjax
from ftjax import provenance
from ftjax.checkpoints import resolve
from ftjax.models import matmul

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_bench import (ftjax_full_step, ftjax_lora_step, peft_model,  # noqa: E402
                         torch_step_fn)


def ftjax_case(make_step, cfg, params, jt, seq_len, bf16_products=True):
  """Builds and warms up (compiles) a step; `bf16_products=False` traces it with the plain path."""
  saved = matmul.project
  if not bf16_products:
    matmul.project = matmul.plain_project  # what transformer.py calls, looked up at trace time
  try:
    step = make_step(cfg, params, jt, seq_len)
    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start
  finally:
    matmul.project = saved


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="")
  parser.add_argument("--remat", default="auto",
                      help="ftjax's remat_policy (auto, the training default: full on the CPU)")
  parser.add_argument("--only", default="",
                      help="run only the cases whose name contains one of these comma-separated "
                           "strings (e.g. 'bf16' or 'LoRA'); the ratios of missing cases are left out")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  load_start = os.getloadavg()

  from transformers import AutoModelForCausalLM
  model = ftjax.load(args.model, tokenizer=False)
  cfg, params = model.config.replace(remat_policy=args.remat), model.params
  bf16 = cfg.replace(dtype="bfloat16")
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (args.batch, args.seq_len))
  jt, tt = jnp.asarray(tokens, jnp.int32), torch.tensor(tokens)

  def hf_model():
    hf = AutoModelForCausalLM.from_pretrained(str(resolve(args.model)), dtype=torch.float32)
    return hf.train()

  hf = {}

  def torch_case(kind, lr, autocast=False):
    if kind not in hf:
      hf[kind] = hf_model() if kind == "full" else peft_model(hf_model())
    return torch_step_fn(hf[kind], tt, lr, autocast=autocast), None

  # The bf16 attention before `cpu_bf16` (issue 22): the reference einsum, JAX's own gradient.
  ref_attention = bf16.replace(attention_impl="xla")
  # name -> a builder of (step, compile-and-first-step seconds or None)
  builders = {
      "ftjax full fp32": lambda: ftjax_case(ftjax_full_step, cfg, params, jt, args.seq_len),
      "ftjax full bf16, JAX's dot transpose": lambda: ftjax_case(
          ftjax_full_step, ref_attention, params, jt, args.seq_len, bf16_products=False),
      "ftjax full bf16, reference attention": lambda: ftjax_case(
          ftjax_full_step, ref_attention, params, jt, args.seq_len),
      "ftjax full bf16": lambda: ftjax_case(ftjax_full_step, bf16, params, jt, args.seq_len),
      "transformers fp32": lambda: torch_case("full", 1e-5),
      "transformers autocast bf16": lambda: torch_case("full", 1e-5, autocast=True),
      "ftjax LoRA fp32": lambda: ftjax_case(ftjax_lora_step, cfg, params, jt, args.seq_len),
      "ftjax LoRA bf16, JAX's dot transpose": lambda: ftjax_case(
          ftjax_lora_step, ref_attention, params, jt, args.seq_len, bf16_products=False),
      "ftjax LoRA bf16, reference attention": lambda: ftjax_case(
          ftjax_lora_step, ref_attention, params, jt, args.seq_len),
      "ftjax LoRA bf16": lambda: ftjax_case(ftjax_lora_step, bf16, params, jt, args.seq_len),
      "peft fp32": lambda: torch_case("lora", 1e-4),
      "peft autocast bf16": lambda: torch_case("lora", 1e-4, autocast=True),
  }
  wanted = [w for w in args.only.split(",") if w]
  cases = {name: build() for name, build in builders.items()
           if not wanted or any(w in name for w in wanted)}
  for name, (step, _) in cases.items():
    if name.startswith(("transformers", "peft")):
      step()  # warm-up
  times = {name: [] for name in cases}
  for _ in range(args.repeats):
    for name, (step, _) in cases.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  load_end = os.getloadavg()

  n = args.batch * args.seq_len
  rate = {name: n / statistics.median(t) for name, t in times.items()}
  print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {metadata.version('transformers')}, peft {metadata.version('peft')}")
  print(f"load average (1, 5, 15 min) at start {load_start}, at end {load_end}")
  print(f"{args.model}, {args.batch} x {args.seq_len} tokens, median of {args.repeats} rounds, "
        f"ftjax remat_policy {args.remat}\n")
  print("| case | tok/s | step (s) | first step (s) |\n|---|---|---|---|")
  for name, (_, first) in cases.items():
    first_s = f"{first:.1f}" if first is not None else "-"
    print(f"| {name} | {rate[name]:.0f} | {n / rate[name]:.2f} | {first_s} |")
  ratios = [
      ("ftjax full bf16 / transformers autocast bf16", "ftjax full bf16",
       "transformers autocast bf16"),
      ("ftjax full bf16 / transformers fp32", "ftjax full bf16", "transformers fp32"),
      ("ftjax full fp32 / transformers fp32", "ftjax full fp32", "transformers fp32"),
      ("ftjax full bf16 / ftjax full fp32", "ftjax full bf16", "ftjax full fp32"),
      ("ftjax full bf16: bf16 products / JAX's dot transpose", "ftjax full bf16",
       "ftjax full bf16, JAX's dot transpose"),
      ("ftjax full bf16: cpu_bf16 attention / reference attention", "ftjax full bf16",
       "ftjax full bf16, reference attention"),
      ("transformers autocast bf16 / transformers fp32", "transformers autocast bf16",
       "transformers fp32"),
      ("ftjax LoRA bf16 / peft autocast bf16", "ftjax LoRA bf16", "peft autocast bf16"),
      ("ftjax LoRA bf16 / peft fp32", "ftjax LoRA bf16", "peft fp32"),
      ("ftjax LoRA fp32 / peft fp32", "ftjax LoRA fp32", "peft fp32"),
      ("ftjax LoRA bf16 / ftjax LoRA fp32", "ftjax LoRA bf16", "ftjax LoRA fp32"),
      ("ftjax LoRA bf16: bf16 products / JAX's dot transpose", "ftjax LoRA bf16",
       "ftjax LoRA bf16, JAX's dot transpose"),
      ("ftjax LoRA bf16: cpu_bf16 attention / reference attention", "ftjax LoRA bf16",
       "ftjax LoRA bf16, reference attention"),
      ("ftjax LoRA bf16 / ftjax full bf16", "ftjax LoRA bf16", "ftjax full bf16"),
      ("peft autocast bf16 / peft fp32", "peft autocast bf16", "peft fp32"),
  ]
  ratios = [r for r in ratios if r[1] in rate and r[2] in rate]
  print("\n| ratio (tok/s over tok/s) | |\n|---|---|")
  for label, ours, theirs in ratios:
    print(f"| {label} | {rate[ours] / rate[theirs]:.2f}x |")
  if args.out:
    record = {"args": vars(args), **provenance.record(("torch", "peft")),
              "load_avg_start": load_start, "load_avg_end": load_end,
              "step_s": times, "tok_per_s": rate,
              "first_step_s": {name: first for name, (_, first) in cases.items()},
              "ratios": {label: rate[a] / rate[b] for label, a, b in ratios}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
  main()
