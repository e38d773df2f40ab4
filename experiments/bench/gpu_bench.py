"""Accelerator benchmark for issue 13: training throughput / MFU / memory and decoding against the
memory-bandwidth bound, ftjax and its PyTorch peers side by side in one run.

  XLA_PYTHON_CLIENT_PREALLOCATE=false python experiments/bench/gpu_bench.py \
      --out experiments/bench/results/gpu.json

`--cases` (comma-separated prefixes) picks a subset; `--smoke` runs every case on tiny shapes (on
CPU too) to check the script itself. Each case's figures are printed and written to --out as it
finishes; a case that fails records its error and the run goes on.

Training (Llama-3.2-1B shape, random weights, bf16 compute with fp32 master weights, AdamW):
  ftjax_full:*   full fine-tuning, `batch x seq` tokens per step, sequence packing on (every row
                 holds several documents; segment ids reach the attention kernel); attention
                 "auto" (cuDNN on GPU, splash on TPU), remat dots_no_batch, loss in vocab chunks.
  ftjax_lora:*   LoRA rank 16 on all seven projections, same shape.
  torch_*        transformers (sdpa, autocast, fused AdamW), eager and torch.compile, and peft
                 LoRA — unpacked rows (they take no segment ids): the same tokens and FLOPs.
MFU = (6 * matmul params + causal attention FLOPs) * tokens/s / the device's bf16 peak.

Decoding (greedy, 128-token prompt, 256 new tokens, bf16): tokens/s, and bytes/s read per step
(all weights + the KV cache filled so far) against the device's measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

LLAMA_1B = dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                rms_norm_eps=1e-5, max_position_embeddings=16384, tie_word_embeddings=True,
                rope_theta=500000.0, bos_token_id=1, eos_token_id=2)
SMOL = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
            num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
            rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
            rope_theta=100000.0, bos_token_id=1, eos_token_id=2)
TINY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            rms_norm_eps=1e-5, max_position_embeddings=1024, tie_word_embeddings=True,
            rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
# Dense bf16 peak, TFLOP/s per device (datasheets, no sparsity).
PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "TPU v5 lite": 197.0,
         "TPU v5": 459.0, "TPU v4": 275.0}
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def flops_per_token(h, seq):
  """(6 * matmul params + causal attention, matmul params) per token."""
  e, f, layers, vocab = (h["hidden_size"], h["intermediate_size"], h["num_hidden_layers"],
                         h["vocab_size"])
  q = h["num_attention_heads"] * h["head_dim"]
  kv = h["num_key_value_heads"] * h["head_dim"]
  matmul = layers * (e * q + 2 * e * kv + q * e + 3 * e * f) + e * vocab
  return 6 * matmul + 12 * layers * q * seq / 2, matmul


def peak_flops(kind: str, override: float) -> float:
  if override:
    return override * 1e12
  for name, tflops in PEAKS.items():
    if name.lower() in kind.lower():
      return tflops * 1e12
  return 0.0


def packed_batch(batch, seq, vocab, seed=0, mean_doc=None):
  """Rows of several documents each (lengths random, mean seq/4): ids, positions restarting per
  document, segment ids 1.., the last few slots padding (segment 0)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  mean_doc = mean_doc or max(seq // 4, 8)
  inputs = rng.integers(3, vocab, (batch, seq), dtype=np.int32)
  targets = rng.integers(3, vocab, (batch, seq), dtype=np.int32)
  positions = np.zeros((batch, seq), np.int32)
  segments = np.zeros((batch, seq), np.int32)
  for row in range(batch):
    start, segment = 0, 1
    while start < seq - 8:
      length = int(min(seq - start, max(8, rng.exponential(mean_doc))))
      positions[row, start:start + length] = np.arange(length)
      segments[row, start:start + length] = segment
      start, segment = start + length, segment + 1
  return {"inputs": inputs, "targets": targets, "positions": positions, "segment_ids": segments,
          "loss_mask": (segments != 0).astype(np.int32)}


def _sync(tree):
  import jax
  jax.block_until_ready(tree)


def ftjax_train(h, batch, seq, *, remat="dots_no_batch", attention="auto", loss_chunk=1024,
                lora_rank=0, steps=8, peak=0.0):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from types import SimpleNamespace

  from ftjax.models import lora as lora_lib
  from ftjax.models.attention import resolve
  from ftjax.models.config import from_hf_config
  from ftjax.models.transformer import init_params
  from ftjax.training.step import make_optimizer, make_step_fns

  cfg = from_hf_config(h, dtype="bfloat16", param_dtype="float32", remat_policy=remat,
                       attention_impl=attention, loss_chunk=loss_chunk)
  params = init_params(cfg, jax.random.PRNGKey(0))
  opt_cfg = SimpleNamespace(learning_rate=1e-5, warmup_steps=0, min_lr_ratio=0.1,
                            schedule="cosine", grad_clip_norm=1.0, b1=0.9, b2=0.95, eps=1e-8,
                            weight_decay=0.0)
  optimizer, _ = make_optimizer(opt_cfg, 1000)
  if lora_rank:
    cfg = lora_lib.with_lora(cfg, rank=lora_rank, alpha=2.0 * lora_rank, dropout=0.0)
    trainable = lora_lib.init_lora(params, rank=lora_rank, targets=ALL_TARGETS,
                                   rng=jax.random.PRNGKey(2))
    frozen = params
  else:
    trainable, frozen = params, None
  fns = make_step_fns(cfg, optimizer, accum_steps=1, lora=bool(lora_rank), mesh=None)
  state = {"step": jnp.zeros((), jnp.int32), "params": trainable,
           "opt_state": optimizer.init(trainable), "rng": jax.random.PRNGKey(1)}
  data = {k: jnp.asarray(v) for k, v in packed_batch(batch, seq, h["vocab_size"]).items()}
  step = jax.jit(fns.train_step, donate_argnums=(0,))
  started = time.perf_counter()
  state, metrics = step(state, frozen, data)
  float(metrics["loss"])
  compile_s = time.perf_counter() - started
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    state, metrics = step(state, frozen, data)
    float(metrics["loss"])
    times.append(time.perf_counter() - started)
  t = sorted(times)[len(times) // 2]
  real_tokens = int(np.sum(np.asarray(data["segment_ids"]) != 0))
  fpt, _ = flops_per_token(h, seq)
  mem = jax.devices()[0].memory_stats() or {}
  kernel = resolve(attention, dtype=jnp.bfloat16, softcap=None, seq_len=seq,
                   head_dim=h["head_dim"])
  return dict(tok_s=batch * seq / t, real_tok_s=real_tokens / t, step_s=t,
              mfu=fpt * batch * seq / t / peak if peak else None, compile_s=compile_s,
              loss=float(metrics["loss"]), nonfinite=float(metrics["nonfinite"]),
              peak_gb=mem.get("peak_bytes_in_use", 0) / 2**30, attention_kernel=kernel,
              remat=remat, loss_chunk=loss_chunk, lora_rank=lora_rank)


def copy_bandwidth(gigabytes=2.0):
  """Bytes/s of `x + 1` on a bf16 array (read + write), best of 5."""
  import jax
  import jax.numpy as jnp
  n = int(gigabytes * 2**30 / 2)
  x = jnp.ones((n,), jnp.bfloat16)
  f = jax.jit(lambda a: a + 1)
  _sync(f(x))
  best = math.inf
  for _ in range(5):
    started = time.perf_counter()
    _sync(f(x))
    best = min(best, time.perf_counter() - started)
  return dict(bytes_per_s=2 * n * 2 / best, gigabytes=gigabytes)


def decode_bytes_per_step(h, batch, prompt, new):
  """Average bytes read per decode step: every weight once (bf16) + each row's KV cache so far."""
  e, layers, vocab = h["hidden_size"], h["num_hidden_layers"], h["vocab_size"]
  q = h["num_attention_heads"] * h["head_dim"]
  kv = h["num_key_value_heads"] * h["head_dim"]
  weights = layers * (e * q + 2 * e * kv + q * e + 3 * e * h["intermediate_size"]) + e * vocab
  if not h.get("tie_word_embeddings"):
    weights += e * vocab
  average_len = prompt + new / 2
  cache = batch * layers * 2 * kv * average_len
  return 2 * (weights + cache)


def ftjax_decode(h, batch, prompt, new, bandwidth=0.0):
  import jax
  import numpy as np
  from ftjax.generation import SamplingConfig
  from ftjax.generation.decoding import generate_ids
  from ftjax.models.config import from_hf_config
  from ftjax.models.transformer import init_params
  cfg = from_hf_config(h, dtype="bfloat16", param_dtype="bfloat16")
  params = init_params(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  ids = [rng.integers(3, h["vocab_size"], prompt).tolist() for _ in range(batch)]
  sampling = SamplingConfig(max_new_tokens=new, greedy=True)
  started = time.perf_counter()
  out = generate_ids(cfg, params, ids, sampling, [])
  compile_s = time.perf_counter() - started
  times = []
  for _ in range(3):
    started = time.perf_counter()
    out = generate_ids(cfg, params, ids, sampling, [])
    times.append(time.perf_counter() - started)
  t = min(times)
  assert all(len(o) == new for o in out), [len(o) for o in out]
  achieved = decode_bytes_per_step(h, batch, prompt, new) * new / t
  return dict(tok_s=batch * new / t, s=t, compile_s=compile_s, bytes_per_s=achieved,
              of_copy_bandwidth=achieved / bandwidth if bandwidth else None)


def _torch_device():
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_model(h, dtype):
  import torch
  import transformers
  cfg = transformers.LlamaConfig(**{k: v for k, v in h.items() if k != "model_type"},
                                 attn_implementation="sdpa")
  torch.manual_seed(0)
  return transformers.LlamaForCausalLM(cfg).to(device=_torch_device(), dtype=dtype)


def torch_train(h, batch, seq, *, compile_=False, lora_rank=0, steps=8, peak=0.0):
  import torch
  device = _torch_device()
  model = _torch_model(h, torch.float32)
  if lora_rank:
    import peft
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=list(ALL_TARGETS)))
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95), fused=device == "cuda")
  toks = torch.randint(0, h["vocab_size"], (batch, seq), device=device)
  fwd = torch.compile(model) if compile_ else model
  autocast = torch.autocast(device, dtype=torch.bfloat16)

  def step():
    with autocast:
      loss = fwd(input_ids=toks, labels=toks).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  started = time.perf_counter()
  step().item()
  sync()
  compile_s = time.perf_counter() - started
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    step().item()
    sync()
    times.append(time.perf_counter() - started)
  t = sorted(times)[len(times) // 2]
  fpt, _ = flops_per_token(h, seq)
  result = dict(tok_s=batch * seq / t, step_s=t, compile_s=compile_s,
                mfu=fpt * batch * seq / t / peak if peak else None,
                peak_gb=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None)
  del model, opt
  if device == "cuda":
    torch.cuda.empty_cache()
  return result


def torch_decode(h, batch, prompt, new):
  import torch
  device = _torch_device()
  model = _torch_model(h, torch.bfloat16).eval()
  toks = torch.randint(3, h["vocab_size"], (batch, prompt), device=device)
  kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  with torch.no_grad():
    model.generate(toks, **kw)
    sync()
    times = []
    for _ in range(3):
      started = time.perf_counter()
      model.generate(toks, **kw)
      sync()
      times.append(time.perf_counter() - started)
  del model
  if device == "cuda":
    torch.cuda.empty_cache()
  return dict(tok_s=batch * new / min(times), s=min(times))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="experiments/bench/results/gpu.json")
  parser.add_argument("--cases", default="", help="comma-separated name prefixes; empty: all")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes: check the script")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="bf16 peak per device for MFU; 0: from the device kind")
  parser.add_argument("--no_torch", action="store_true", help="ftjax cases only")
  args = parser.parse_args(argv)

  import jax
  device = jax.devices()[0]
  peak = peak_flops(device.device_kind, args.peak_tflops)
  from ftjax import provenance
  results = {"env": {**provenance.record(("torch",)), "peak_tflops": peak / 1e12}}
  if results["env"]["versions"]["torch"] is None:
    args.no_torch = True
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  wanted = [c for c in args.cases.split(",") if c]

  def run(name, fn, *a, **k):
    if wanted and not any(name.startswith(w) for w in wanted):
      return
    if args.no_torch and name.startswith("torch"):
      return
    started = time.perf_counter()
    try:
      results[name] = fn(*a, **k)
    except Exception as err:  # noqa: BLE001  (record, go on with the next case)
      traceback.print_exc()
      results[name] = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
    results[name]["wall_s"] = time.perf_counter() - started
    print(name, json.dumps(results[name]), flush=True)
    out.write_text(json.dumps(results, indent=1))

  if args.smoke:
    big, small, b, s, long_s, prompt, new, steps = TINY, TINY, 2, 128, 512, 16, 8, 2
  else:
    big, small, b, s, long_s, prompt, new, steps = LLAMA_1B, SMOL, 4, 2048, 8192, 128, 256, 8
  bw = 0.0
  run("copy_bandwidth", copy_bandwidth, 0.01 if args.smoke else 2.0)
  bw = results.get("copy_bandwidth", {}).get("bytes_per_s", 0.0)
  # PyTorch first: JAX keeps the memory it has used for the rest of the process.
  run("torch_train_compile:full_b4", torch_train, big, b, s, compile_=True, steps=steps,
      peak=peak)
  run("torch_train:full_b4", torch_train, big, b, s, steps=steps, peak=peak)
  run("torch_train:lora16_b4", torch_train, big, b, s, lora_rank=16, steps=steps, peak=peak)
  run("torch_decode:smol_b1", torch_decode, small, 1, prompt, new)
  run("torch_decode:smol_b16", torch_decode, small, 16, prompt, new)
  run("torch_decode:1b_b1", torch_decode, big, 1, prompt, new)
  run("torch_decode:1b_b16", torch_decode, big, 16, prompt, new)
  run("ftjax_full:b4_packed", ftjax_train, big, b, s, steps=steps, peak=peak)
  run("ftjax_full:b4_packed_pallas", ftjax_train, big, b, s, attention="pallas_gpu",
      steps=steps, peak=peak)
  run("ftjax_full:b4_packed_xla_full_remat", ftjax_train, big, b, s, attention="xla",
      remat="full", loss_chunk=0, steps=steps, peak=peak)
  run("ftjax_full:b8_packed", ftjax_train, big, 2 * b, s, steps=steps, peak=peak)
  run("ftjax_full:b1_s8192_packed", ftjax_train, big, 1, long_s, steps=steps, peak=peak)
  run("ftjax_lora:r16_b4_packed", ftjax_train, big, b, s, lora_rank=16, steps=steps, peak=peak)
  run("ftjax_lora:r16_b4_packed_dots", ftjax_train, big, b, s, lora_rank=16, remat="dots",
      steps=steps, peak=peak)
  run("ftjax_decode:smol_b1", ftjax_decode, small, 1, prompt, new, bw)
  run("ftjax_decode:smol_b16", ftjax_decode, small, 16, prompt, new, bw)
  run("ftjax_decode:1b_b1", ftjax_decode, big, 1, prompt, new, bw)
  run("ftjax_decode:1b_b16", ftjax_decode, big, 16, prompt, new, bw)

  def ratio(a, b_):
    ra, rb = results.get(a, {}).get("tok_s"), results.get(b_, {}).get("tok_s")
    return round(ra / rb, 3) if ra and rb else None

  results["ratios"] = {
      "full vs torch.compile": ratio("ftjax_full:b4_packed", "torch_train_compile:full_b4"),
      "full vs torch eager": ratio("ftjax_full:b4_packed", "torch_train:full_b4"),
      "lora vs peft": ratio("ftjax_lora:r16_b4_packed", "torch_train:lora16_b4"),
      "lora vs own full": ratio("ftjax_lora:r16_b4_packed", "ftjax_full:b4_packed"),
      "decode 1b b1 vs transformers": ratio("ftjax_decode:1b_b1", "torch_decode:1b_b1"),
      "decode 1b b16 vs transformers": ratio("ftjax_decode:1b_b16", "torch_decode:1b_b16"),
  }
  out.write_text(json.dumps(results, indent=1))
  print("\n| case | tok/s | MFU | peak GB | note |\n|---|---|---|---|---|")
  for name, r in results.items():
    if name in ("env", "ratios"):
      continue
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
    note = r.get("error", "") or (f"{100 * r['of_copy_bandwidth']:.0f}% of copy bandwidth"
                                  if r.get("of_copy_bandwidth") else r.get("attention_kernel", ""))
    tok = f"{r['tok_s']:,.0f}" if "tok_s" in r else ""
    gb = f"{r['peak_gb']:.1f}" if r.get("peak_gb") else ""
    print(f"| {name} | {tok} | {mfu} | {gb} | {note} |")
  print("\nratios:", json.dumps(results["ratios"], indent=1))


if __name__ == "__main__":
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  main()
