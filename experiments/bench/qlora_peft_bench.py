"""ftjax QLoRA vs peft + bitsandbytes QLoRA on SmolLM2-135M, side by side in one run (issue 24).

  pip install --no-deps bitsandbytes   # not a dependency of ftjax; its CPU backend is used here
  python experiments/bench/qlora_peft_bench.py --out experiments/bench/results/qlora_peft_cpu.json

Three pairs: LoRA on the fp32 base, QLoRA with an NF4 base (block 64, fp32 compute) and QLoRA
with an 8-bit base (ftjax: int8 codes with a scale per block of 64; bitsandbytes: LLM.int8, which
on the CPU casts the inputs to fp16). Rank 16 on all seven projections of every layer, AdamW at
--learning_rate, batch 2 x 256 random tokens (the same tokens for both), one compiling / warm-up
step and --steps timed steps on that batch ("loss after N steps" is how fast each fits one batch).

Every case runs in a fresh process pinned to one core (XLA and PyTorch each use one thread), two
cases at once on this 2-core machine, so a case's peak RSS (VmHWM) is its own and its CPU-seconds
per step are its compute. ftjax's side is `ftjax.planning.measure`, the run the planner is checked
against.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = {  # name -> (ftjax base_quant, bitsandbytes quantization)
    "lora (fp32 base)": ("none", None),
    "qlora nf4": ("nf4", "nf4"),
    "qlora 8-bit": ("int8", "int8"),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def peer_run(model: str, quant: str | None, batch: int, seq_len: int, steps: int, rank: int,
             learning_rate: float, block: int) -> dict:
  """transformers + peft (+ bitsandbytes) on one core: the same batch, rank, targets, optimizer."""
  import logging
  import warnings

  import numpy as np
  import torch
  from peft import LoraConfig, get_peft_model
  from transformers import AutoModelForCausalLM, BitsAndBytesConfig

  from ftjax import provenance
  from ftjax.checkpoints import resolve

  warnings.filterwarnings("ignore")
  logging.disable(logging.WARNING)
  torch.set_num_threads(1)
  torch.manual_seed(0)
  started = time.perf_counter()
  kwargs = {}
  if quant == "nf4":
    kwargs["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=False)
  elif quant == "int8":
    kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
  base = AutoModelForCausalLM.from_pretrained(str(resolve(model)), torch_dtype=torch.float32,
                                              device_map="cpu", **kwargs)
  model_ = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                           target_modules=list(TARGETS), task_type="CAUSAL_LM"))
  trainable = [p for p in model_.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
  rng = np.random.default_rng(0)  # the tokens ftjax.planning.measure draws
  tokens = torch.from_numpy(rng.integers(0, base.config.vocab_size, (batch, seq_len + 1),
                                         dtype=np.int64))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  setup_seconds = time.perf_counter() - started

  def step():
    logits = model_(input_ids=inputs).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)

  model_.train()
  losses = [step()]  # warm-up
  times, cpu_times = [], []
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    losses.append(step())
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  return {"peak_rss_bytes": provenance.peak_rss_bytes(), "step_seconds": float(np.median(times)),
          "step_cpu_seconds": float(np.median(cpu_times)), "losses": losses,
          "setup_seconds": setup_seconds,
          "trainable_params": sum(p.numel() for p in trainable)}


def _pinned(cpu: int, args: list[str]) -> subprocess.Popen:
  code = (f"import os, runpy, sys; os.sched_setaffinity(0, {{{cpu}}}); "
          f"sys.argv = [{__file__!r}, *{args!r}]; runpy.run_path({__file__!r}, "
          "run_name='__main__')")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _collect(process: subprocess.Popen, what: str) -> dict:
  stdout, stderr = process.communicate(timeout=1800)
  if process.returncode:
    raise SystemExit(f"error: {what} failed ({process.returncode}): {stderr[-1500:]}")
  return json.loads(stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--block", type=int, default=64)
  parser.add_argument("--out", default="")
  parser.add_argument("--peer", default=None, help=argparse.SUPPRESS)  # one peer case (child)
  args = parser.parse_args()
  if args.peer is not None:
    print(json.dumps(peer_run(args.model, None if args.peer == "none" else args.peer,
                              args.batch, args.seq_len, args.steps, args.rank,
                              args.learning_rate, args.block)))
    return
  try:
    import bitsandbytes
  except ImportError:
    raise SystemExit("error: bitsandbytes is not installed (pip install --no-deps "
                     "bitsandbytes); it is the peer this benchmark measures") from None

  from ftjax import provenance
  from ftjax.planning.measure import measure_many

  cpus = sorted(os.sched_getaffinity(0))
  common = ["--model", args.model, "--batch", str(args.batch), "--seq_len", str(args.seq_len),
            "--steps", str(args.steps), "--rank", str(args.rank), "--learning_rate",
            str(args.learning_rate), "--block", str(args.block)]
  load = os.getloadavg()
  rows = []
  for name, (ours, theirs) in CASES.items():
    # The pair at once, one core each: the same conditions for both sides of the ratio.
    peer = _pinned(cpus[-1], common + ["--peer", theirs or "none"])
    ftjax_run = measure_many([{"model": args.model, "method": "lora", "batch": args.batch,
                               "seq_len": args.seq_len, "lora_rank": args.rank,
                               "learning_rate": args.learning_rate, "base_quant": ours,
                               "quant_block_size": args.block}], steps=args.steps)[0]
    rows.append({"case": name, "ftjax": ftjax_run, "peft": _collect(peer, f"peft {name}")})
    print(f"done: {name}", flush=True)
  record = {"argv": sys.argv, "load_average_start": list(load),
            "load_average_end": list(os.getloadavg()), "rows": rows,
            "provenance": provenance.record(("torch", "peft", "bitsandbytes"))}
  print(f"bitsandbytes {bitsandbytes.__version__}; one core per case, the pair side by side; "
        f"load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
  print("| case | step CPU-s ftjax / peft (ratio) | wall s ftjax / peft | peak RSS GB ftjax / "
        "peft | loss step 0 -> N, ftjax | peft |")
  print("|---|---|---|---|---|---|")
  for row in rows:
    f, p = row["ftjax"], row["peft"]
    print(f"| {row['case']} | {f['step_cpu_seconds']:.2f} / {p['step_cpu_seconds']:.2f} "
          f"({p['step_cpu_seconds'] / f['step_cpu_seconds']:.2f}x) | {f['step_seconds']:.2f} / "
          f"{p['step_seconds']:.2f} | {f['peak_rss_bytes'] / 1e9:.2f} / "
          f"{p['peak_rss_bytes'] / 1e9:.2f} | {f['losses'][0]:.3f} -> {f['losses'][-1]:.3f} | "
          f"{p['losses'][0]:.3f} -> {p['losses'][-1]:.3f} |")
  if args.out:
    Path(args.out).write_text(json.dumps(record, indent=2, default=str) + "\n")


if __name__ == "__main__":
  main()
