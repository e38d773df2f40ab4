"""ftjax vs its PyTorch peers on the same machine, in one run: forward, decoding, train steps
(full fine-tuning vs transformers, LoRA vs peft), MiniLM encoding vs sentence-transformers, and
the peak resident memory of a LoRA training run vs peft's.

  python experiments/bench/model_bench.py --out experiments/bench/results/model_cpu.json

Each figure is the median of --repeats timed runs after one warm-up (which includes JAX's
compilation, reported separately as `first_step_s`). Both sides run fp32 with the model and
inputs of the embedded SmolLM2-135M-Instruct; with `--dtype bfloat16` ftjax computes in bf16 (bf16
products with fp32 accumulation, fp32 params, the MiniLM encoder too) and PyTorch runs under
`torch.autocast("cpu", dtype=torch.bfloat16)` (fp32 weights, as ftjax), and decoding also against
transformers with its weights cast to bf16 (`model.to(torch.bfloat16)`), the faster of PyTorch's
two bf16 decoders here. Train steps use `--remat` (default auto, the training default: full
rematerialisation on the CPU). LoRA: rank 16, alpha 32, dropout 0.05, all seven
projections, AdamW over the adapters only, on both sides. Memory: `python -m ftjax.train` with
configs/smollm2_lora.py (3 steps) and a peft loop at the same batch and sequence length, each in
its own process; peak RSS (ru_maxrss) of each.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import ftjax
from ftjax import provenance
from ftjax.checkpoints import resolve
from ftjax.generation import SamplingConfig, encode_prompts, generate_ids
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
  parser.add_argument("--cases", default="forward,decode,train_full,train_lora,encode,memory")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--remat", default="auto", help="ftjax's remat_policy for the train steps")
  parser.add_argument("--peft_child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peft_child:
    return peft_training_run(args.model, batch=8, seq_len=256, steps=3)
  cases = set(args.cases.split(","))

  model = ftjax.load(args.model, dtype=args.dtype)
  cfg, params, tokenizer = model.config, model.params, model.tokenizer
  args.autocast = args.dtype == "bfloat16"
  from transformers import AutoModelForCausalLM
  hf = AutoModelForCausalLM.from_pretrained(str(resolve(args.model)), dtype=torch.float32)
  hf.eval()
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (args.batch, args.seq_len))
  rows = []

  # Forward (logits for every position).
  jt = jnp.asarray(tokens, jnp.int32)
  tt = torch.tensor(tokens)
  first_steps = {}
  if "forward" in cases:
    forward_case(rows, cfg, params, hf, jt, tt, args)
  if "decode" in cases:
    decode_case(rows, cfg, params, tokenizer, hf, args)
  train_cfg = cfg.replace(remat_policy=args.remat)
  if "train_full" in cases:
    first_steps["full"] = train_full_case(rows, train_cfg, params, hf, jt, tt, args)
  if "train_lora" in cases:
    first_steps["lora"] = train_lora_case(rows, train_cfg, params, hf, jt, tt, args)
  if "encode" in cases:
    encode_case(rows, args)
  memory = memory_case(args) if "memory" in cases else {}
  report(rows, first_steps, memory, args)


def forward_case(rows, cfg, params, hf, jt, tt, args):
  jax_fwd = jax.jit(lambda p, t: forward(cfg, p, t))
  with torch.no_grad(), _autocast(args):
    t_jax = timed(lambda: jax_fwd(params, jt).block_until_ready(), args.repeats)
    t_torch = timed(lambda: hf(input_ids=tt).logits, args.repeats)
  n = args.batch * args.seq_len
  rows.append(("forward", f"{args.batch}x{args.seq_len} tokens", n / t_jax, n / t_torch, "tok/s"))


def decode_case(rows, cfg, params, tokenizer, hf, args):
  # Greedy decoding, batched prompts of different lengths, fixed number of new tokens.
  ids = encode_prompts(tokenizer, PROMPTS)
  sampling = SamplingConfig(max_new_tokens=args.new_tokens)
  longest = max(map(len, ids))
  pad = tokenizer.pad_token_id
  inp = torch.tensor([[pad] * (longest - len(p)) + p for p in ids])
  mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in ids])
  def torch_generate(model):
    return lambda: model.generate(input_ids=inp, attention_mask=mask, do_sample=False,
                                  max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, pad_token_id=pad)
  with torch.no_grad():
    t_jax = timed(lambda: generate_ids(cfg, params, ids, sampling, eos_ids=[], pad_id=pad),
                  args.repeats)
    with _autocast(args):
      t_torch = timed(torch_generate(hf), args.repeats)
  n = len(ids) * args.new_tokens
  shape = f"{len(ids)} prompts x {args.new_tokens} new"
  rows.append(("greedy decode", shape, n / t_jax, n / t_torch,
               "tok/s vs transformers autocast" if args.autocast else "tok/s"))
  if args.autocast:  # PyTorch's other bf16 decoder: the weights themselves in bf16
    import copy
    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
    with torch.no_grad():
      t_bf16 = timed(torch_generate(hf_bf16), args.repeats)
    rows.append(("greedy decode", shape, n / t_jax, n / t_bf16,
                 "tok/s vs transformers bf16 weights"))
    del hf_bf16


def _autocast(args):
  """PyTorch's CPU mixed precision when the run is bf16 (fp32 weights, bf16 products)."""
  return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast)


def _batch(jt, seq_len):
  return {"inputs": jt, "targets": jnp.roll(jt, -1, axis=1),
          "loss_mask": jnp.ones(jt.shape, jnp.float32),
          "segment_ids": jnp.ones(jt.shape, jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(seq_len), jt.shape)}


def _first_then_timed(jax_step, repeats):
  start = time.perf_counter()
  jax_step()
  first = time.perf_counter() - start
  return first, timed(jax_step, repeats)


def ftjax_full_step(cfg, params, jt, seq_len):
  """One full fine-tuning step (AdamW, all positions in the loss), as a blocking call."""
  optimizer = optax.adamw(1e-5)
  fns = make_step_fns(cfg, optimizer, accum_steps=1, lora=False, mesh=None)
  batch = _batch(jt, seq_len)
  trained = jax.tree.map(jnp.copy, params)  # the step donates its state; keep `params`
  state = {"step": jnp.int32(0), "params": trained, "opt_state": optimizer.init(trained),
           "rng": jax.random.PRNGKey(0)}
  step = jax.jit(fns.train_step, donate_argnums=(0,))
  box = [state]

  def jax_step():
    box[0], metrics = step(box[0], None, batch)
    jax.block_until_ready(metrics)
  return jax_step


def torch_step_fn(model, tt, lr, autocast=False):
  """One AdamW step of a transformers (or peft) model on the trainable params; `autocast` runs
  the forward under torch.autocast("cpu", bfloat16), PyTorch's mixed precision on CPU."""
  torch_opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
  labels = torch.roll(tt, -1, dims=1)

  def torch_step():
    torch_opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      logits = model(input_ids=tt).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1))
    loss.backward()
    torch_opt.step()
  return torch_step


def train_full_case(rows, cfg, params, hf, jt, tt, args):
  jax_step = ftjax_full_step(cfg, params, jt, args.seq_len)
  hf.train()
  torch_step = torch_step_fn(hf, tt, 1e-5, autocast=args.autocast)
  first, t_jax = _first_then_timed(jax_step, args.repeats)
  t_torch = timed(torch_step, args.repeats)
  hf.eval()
  n = args.batch * args.seq_len
  rows.append(("train step (full FT, AdamW)", f"{args.batch}x{args.seq_len} tokens", n / t_jax,
               n / t_torch, "tok/s"))
  return first


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ftjax_lora_step(cfg, params, jt, seq_len):
  """One LoRA step: rank 16 / alpha 32 / dropout 0.05 on all seven projections, AdamW."""
  from ftjax.models import lora as lora_lib
  lcfg = lora_lib.with_lora(cfg, rank=16, alpha=32.0, dropout=0.05)
  adapters = lora_lib.init_lora(params, rank=16, targets=LORA_TARGETS, rng=jax.random.PRNGKey(0))
  optimizer = optax.adamw(1e-4)
  fns = make_step_fns(lcfg, optimizer, accum_steps=1, lora=True, mesh=None)
  state = {"step": jnp.int32(0), "params": adapters, "opt_state": optimizer.init(adapters),
           "rng": jax.random.PRNGKey(1)}
  step = jax.jit(fns.train_step, donate_argnums=(0,))
  batch = _batch(jt, seq_len)
  box = [state]

  def jax_step():
    box[0], metrics = step(box[0], params, batch)
    jax.block_until_ready(metrics)
  return jax_step


def peft_model(hf):
  """`hf` with peft's LoRA (the same rank, alpha, dropout and targets), in train mode; undo with
  `.unload()`."""
  import peft
  model = peft.get_peft_model(hf, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                  target_modules=list(LORA_TARGETS)))
  model.train()
  return model


def train_lora_case(rows, cfg, params, hf, jt, tt, args):
  """LoRA rank 16 / alpha 32 / dropout 0.05 on all seven projections: ftjax vs peft."""
  first, t_jax = _first_then_timed(ftjax_lora_step(cfg, params, jt, args.seq_len), args.repeats)
  model = peft_model(hf)
  t_torch = timed(torch_step_fn(model, tt, 1e-4, autocast=args.autocast), args.repeats)
  model.unload()  # hf back to the plain base
  n = args.batch * args.seq_len
  rows.append(("train step (LoRA r16, all proj.)", f"{args.batch}x{args.seq_len} tokens",
               n / t_jax, n / t_torch, "tok/s vs peft"))
  return first


def encode_case(rows, args):
  """all-MiniLM-L6-v2 over 512 synthetic passages, batch 64: ftjax vs sentence-transformers."""
  from sentence_transformers import SentenceTransformer
  from ftjax.data.synthetic import make_corpus
  from ftjax.retrieval import dense
  from ftjax.checkpoints import load_encoder
  texts = [d.text for d in make_corpus(512, seed=0)[0]][:512]
  encoder = load_encoder("all-minilm-l6-v2", dtype=args.dtype)
  model = SentenceTransformer(str(resolve("all-minilm-l6-v2")), device="cpu")
  t_jax = timed(lambda: dense.encode(encoder, texts, batch_size=64), args.repeats)
  t_torch = timed(lambda: model.encode(texts, batch_size=64), args.repeats)
  shape = f"{len(texts)} passages, batch 64"
  rows.append(("MiniLM encode", shape, len(texts) / t_jax, len(texts) / t_torch,
               "passages/s vs sentence-transformers fp32"))
  if args.autocast:
    with _autocast(args):
      t_auto = timed(lambda: model.encode(texts, batch_size=64), args.repeats)
    rows.append(("MiniLM encode", shape, len(texts) / t_jax, len(texts) / t_auto,
                 "passages/s vs sentence-transformers autocast"))


def peft_training_run(model_name, *, batch, seq_len, steps):
  """The peer of a `python -m ftjax.train` LoRA run, for its peak memory: load, wrap, train."""
  import peft
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(str(resolve(model_name)), dtype=torch.float32)
  model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                     target_modules=list(LORA_TARGETS)))
  model.train()
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
  tokens = torch.randint(3, model.config.vocab_size, (batch, seq_len))
  for _ in range(steps):
    opt.zero_grad()
    model(input_ids=tokens, labels=tokens).loss.backward()
    opt.step()


def _peak_rss_gb(argv) -> float:
  """Peak resident memory of a command run in a fresh Python that only waits for it."""
  wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "assert r.returncode == 0, r.returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
  out = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(out.stderr[-2000:])
  return int(out.stdout.strip().splitlines()[-1]) / 2**20


def memory_case(args) -> dict:
  import tempfile
  repo = Path(__file__).resolve().parents[2]
  with tempfile.TemporaryDirectory() as workdir:
    ftjax_gb = _peak_rss_gb([sys.executable, "-m", "ftjax.train", "--config",
                             str(repo / "configs" / "smollm2_lora.py"), "--workdir", workdir,
                             "--config.num_steps=3", "--config.eval_every_steps=0",
                             "--config.checkpoint.every_steps=3", f"--config.model={args.model}"])
  peft_gb = _peak_rss_gb([sys.executable, __file__, "--peft_child", "--model", args.model])
  return {"ftjax_lora_run_peak_rss_gb": ftjax_gb, "peft_lora_run_peak_rss_gb": peft_gb,
          "shape": "configs/smollm2_lora.py: batch 8 x 256, rank 16, all projections"}


def report(rows, first_steps, memory, args):
  print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.1f}")
  print(f"ftjax dtype {args.dtype}, PyTorch {'autocast bf16' if args.autocast else 'fp32'}; "
        f"train steps: remat_policy {args.remat}")
  print(f"{'what':34} {'shape':26} {'ftjax':>10} {'peer':>10} {'ratio':>7}")
  for what, shape, ours, theirs, unit in rows:
    print(f"{what:34} {shape:26} {ours:10.1f} {theirs:10.1f} {ours / theirs:6.2f}x  ({unit})")
  for kind, seconds in first_steps.items():
    print(f"first {kind} train step (compilation included): {seconds:.1f} s")
  if memory:
    print(f"peak RSS, LoRA run ({memory['shape']}): ftjax {memory['ftjax_lora_run_peak_rss_gb']:.2f}"
          f" GB, peft {memory['peft_lora_run_peak_rss_gb']:.2f} GB")
  if args.out:
    record = {"args": vars(args), **provenance.record(("torch", "peft")),
              "load_avg_1m_end": os.getloadavg()[0],
              "rows": [dict(zip(("what", "shape", "ftjax", "peer", "unit"), r)) for r in rows],
              "first_step_s": first_steps, "memory": memory}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
  main()
