"""Where a CPU training step's time goes, ftjax vs PyTorch in one run (issue 13's CPU goals).

  python experiments/bench/cpu_train_profile.py --out experiments/bench/results/cpu_train_profile.json

SmolLM2-135M-Instruct (fp32), batch 4 x 256, median of --repeats runs after a warm-up, both sides
on the same threads. Three tables:
  1. the step in parts: forward, forward + backward (loss gradient), the whole step with AdamW;
  2. the model in parts: the LM head with cross-entropy alone, and the 30-layer decoder stack
     alone (loss = sum(hidden * r)), forward and gradient;
  3. matmul throughput of the MLP's three GEMM forms (x@W, dy@W.T, x.T@dy) at the step's shape;
and then XLA's own per-op profile of the decoder stack's gradient (the heaviest HLO ops by total
time, from `jax.profiler` with `--xla_cpu_enable_xprof_traceme`, which this script sets).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

import ftjax  # noqa: E402
from ftjax import provenance  # noqa: E402
from ftjax.checkpoints import resolve  # noqa: E402
from ftjax.models.transformer import forward, hidden_states  # noqa: E402
from ftjax.planning.hardware import cpu_name  # noqa: E402
from ftjax.training.loss import token_cross_entropy  # noqa: E402
from ftjax.training.step import make_step_fns, masked_loss_sums  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_bench import timed as median_time  # noqa: E402  (one warm-up, then the median)


def jax_timer(fn, repeats):
  return median_time(lambda: jax.block_until_ready(fn()), repeats)


def step_parts(model, hf, ids, repeats):
  cfg, params = model.config, model.params
  batch_size, seq = ids.shape
  t = jnp.asarray(ids, jnp.int32)
  batch = {"inputs": t, "targets": jnp.roll(t, -1, 1),
           "loss_mask": jnp.ones(t.shape, jnp.float32),
           "segment_ids": jnp.ones(t.shape, jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(seq), t.shape)}
  fwd = jax.jit(lambda p: forward(cfg, p, batch["inputs"], batch["positions"],
                                  batch["segment_ids"]))
  grad = jax.jit(jax.value_and_grad(
      lambda p: masked_loss_sums(cfg, p, None, batch, None, None, True)[0]))
  optimizer = optax.adamw(1e-5)
  fns = make_step_fns(cfg, optimizer, accum_steps=1, lora=False, mesh=None)
  trained = jax.tree.map(jnp.copy, params)
  box = [{"step": jnp.int32(0), "params": trained, "opt_state": optimizer.init(trained),
          "rng": jax.random.PRNGKey(0)}]
  step = jax.jit(fns.train_step, donate_argnums=(0,))

  def run_step():
    box[0], metrics = step(box[0], None, batch)
    return metrics

  ours = [jax_timer(lambda: fwd(params), repeats), jax_timer(lambda: grad(params), repeats),
          jax_timer(run_step, repeats)]

  tt = torch.tensor(ids)
  labels = torch.roll(tt, -1, 1)

  def loss():
    logits = hf(input_ids=tt).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1))

  with torch.no_grad():
    t_fwd = median_time(lambda: hf(input_ids=tt).logits, repeats)
  hf.train()

  def backward():
    hf.zero_grad()
    loss().backward()

  torch_opt = torch.optim.AdamW(hf.parameters(), lr=1e-5)

  def torch_step():
    torch_opt.zero_grad()
    loss().backward()
    torch_opt.step()

  theirs = [t_fwd, median_time(backward, repeats), median_time(torch_step, repeats)]
  hf.eval()
  return [("forward (logits)", ours[0], theirs[0]),
          ("forward + backward (loss gradient)", ours[1], theirs[1]),
          ("train step (+ AdamW)", ours[2], theirs[2])]


def model_parts(model, hf, ids, repeats):
  cfg, params = model.config, model.params
  rng = np.random.default_rng(1)
  batch_size, seq = ids.shape
  hidden = rng.standard_normal((batch_size, seq, cfg.hidden_size)).astype(np.float32)
  targets = rng.integers(0, cfg.vocab_size, (batch_size, seq))
  weight = np.asarray(params["embedding"])
  h, tg = jnp.asarray(hidden), jnp.asarray(targets, jnp.int32)

  def head_loss(w, x):
    logits = jnp.einsum("bte,ve->btv", x, w, preferred_element_type=jnp.float32)
    return token_cross_entropy(logits, tg).sum()

  head_f = jax.jit(head_loss)
  head_g = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
  tok = jnp.asarray(ids, jnp.int32)
  r = jnp.asarray(rng.standard_normal(hidden.shape).astype(np.float32))

  def stack_loss(p):
    return jnp.sum(hidden_states(cfg, p, tok) * r)

  stack_f, stack_g = jax.jit(stack_loss), jax.jit(jax.grad(stack_loss))
  ours = [jax_timer(lambda: head_f(params["embedding"], h), repeats),
          jax_timer(lambda: head_g(params["embedding"], h), repeats),
          jax_timer(lambda: stack_f(params), repeats),
          jax_timer(lambda: stack_g(params), repeats)]

  wt = torch.tensor(weight, requires_grad=True)
  ht = torch.tensor(hidden, requires_grad=True)
  tgt = torch.tensor(targets).long()

  def torch_head():
    logits = ht @ wt.T
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             tgt.reshape(-1), reduction="sum")

  def torch_head_grad():
    wt.grad = ht.grad = None
    torch_head().backward()

  tk, rt = torch.tensor(ids), torch.tensor(np.asarray(r))

  def torch_stack():
    return (hf.model(input_ids=tk).last_hidden_state * rt).sum()

  def torch_stack_grad():
    hf.zero_grad()
    torch_stack().backward()

  with torch.no_grad():
    head_fwd, stack_fwd = median_time(torch_head, repeats), median_time(torch_stack, repeats)
  theirs = [head_fwd, median_time(torch_head_grad, repeats), stack_fwd,
            median_time(torch_stack_grad, repeats)]
  names = ["LM head + cross-entropy, forward", "LM head + cross-entropy, gradient",
           f"decoder stack ({cfg.num_layers} layers), forward",
           f"decoder stack ({cfg.num_layers} layers), gradient"]
  return list(zip(names, ours, theirs)), stack_g, params


def matmuls(cfg, tokens, repeats, count=20):
  rng = np.random.default_rng(2)
  e, f = cfg.hidden_size, cfg.intermediate_size
  x = rng.standard_normal((tokens, e)).astype(np.float32)
  w = rng.standard_normal((e, f)).astype(np.float32)
  dy = rng.standard_normal((tokens, f)).astype(np.float32)
  forms = {f"x@W [{tokens},{e}]x[{e},{f}]": (lambda a, b: a @ b, (x, w)),
           f"dy@W.T [{tokens},{f}]x[{f},{e}]": (lambda a, b: a @ b.T, (dy, w)),
           f"x.T@dy [{e},{tokens}]x[{tokens},{f}]": (lambda a, b: a.T @ b, (x, dy))}
  flops = 2 * tokens * e * f * count
  rows = []
  for name, (fn, args) in forms.items():
    # `count` products in one program, each on a distinct input (no common subexpression).
    many = jax.jit(lambda *a, fn=fn: sum(fn(a[0] + i, a[1]) for i in range(count)))
    ja = [jnp.asarray(a) for a in args]
    ta = [torch.tensor(a) for a in args]
    ours = jax_timer(lambda: many(*ja), repeats)
    theirs = median_time(lambda: [fn(ta[0] + i, ta[1]) for i in range(count)], repeats)
    rows.append((name, flops / ours / 1e9, flops / theirs / 1e9))
  return rows


def xla_profile(stack_grad, params, top):
  folder = tempfile.mkdtemp(prefix="ftjax-profile-")
  jax.block_until_ready(stack_grad(params))
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    jax.block_until_ready(stack_grad(params))
  path = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    # HLO ops only: the runtime's own spans and the Python frames are not ops.
    if e.get("ph") == "X" and not name.startswith(("$", "Thunk", "Slinky")):
      total[name] += e.get("dur", 0) / 1e6
      calls[name] += 1
  hlo = stack_grad.lower(params).compile().as_text()
  shapes = {}
  for line in hlo.splitlines():
    line = line.strip()
    if line.startswith("%") and " = " in line:
      name, rest = line[1:].split(" = ", 1)
      shapes[name] = rest.split(" ", 1)[0]
  return [(name, seconds, calls[name], shapes.get(name, "")) for name, seconds in
          total.most_common(top)]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  from transformers import AutoModelForCausalLM
  model = ftjax.load(args.model, tokenizer=False)
  hf = AutoModelForCausalLM.from_pretrained(str(resolve(args.model)), dtype=torch.float32)
  hf.eval()
  ids = np.random.default_rng(0).integers(3, model.config.vocab_size,
                                          (args.batch, args.seq_len))
  steps = step_parts(model, hf, ids, args.repeats)
  parts, stack_grad, params = model_parts(model, hf, ids, args.repeats)
  gemms = matmuls(model.config, args.batch * args.seq_len, args.repeats)
  profile = xla_profile(stack_grad, params, args.top)

  print(f"\n{cpu_name()}, {os.cpu_count()} threads; {args.model} fp32, "
        f"{args.batch} x {args.seq_len} tokens; jax {jax.__version__}, torch {torch.__version__}")
  print("\n| part | ftjax (s) | PyTorch (s) | PyTorch / ftjax |\n|---|---|---|---|")
  for name, ours, theirs in steps + parts:
    print(f"| {name} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}x |")
  print("\n| GEMM | ftjax GFLOP/s | PyTorch GFLOP/s | ftjax / PyTorch |\n|---|---|---|---|")
  for name, ours, theirs in gemms:
    print(f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |")
  print(f"\nXLA ops of the decoder stack's gradient, by total time "
        f"(top {args.top}):\n| op | s | calls | result |\n|---|---|---|---|")
  for name, seconds, n, shape in profile:
    print(f"| {name} | {seconds:.2f} | {n} | `{shape}` |")
  if args.out:
    record = {**provenance.record(("torch",)), "cpu": cpu_name(),
              "shape": [args.batch, args.seq_len],
              "parts_s": [{"part": n, "ftjax": o, "torch": t} for n, o, t in steps + parts],
              "gemm_gflops": [{"form": n, "ftjax": o, "torch": t} for n, o, t in gemms],
              "xla_ops": [{"op": n, "s": s, "calls": c, "result": r} for n, s, c, r in profile]}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(record, f, indent=2)


if __name__ == "__main__":
  main()
