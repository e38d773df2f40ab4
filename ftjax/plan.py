"""What a fine-tuning run will need and cost, before running it; and what retrieval costs instead.

  python -m ftjax.plan --model smollm2-135m-instruct --method lora --train_tokens 2e6 \\
      --seq_len 256 --hardware cpu [--batch 4] [--lora_rank 16] [--remat none|dots|full] \\
      [--queries_per_day 1000] [--price USD_PER_DEVICE_HOUR] [--json]

The model is in `ftjax.planning.estimate` (formulas) and `ftjax.planning.hardware` (rates and
prices); `--hardware cpu` measures this machine once (a few seconds) and caches it.
"""

from __future__ import annotations

import dataclasses
import json

from ftjax import cli
from ftjax.planning.estimate import REMAT_POLICIES, PlanInputs, plan
from ftjax.planning.hardware import HARDWARE_NAMES, get_hardware


def _fail(option: str, message: str):
  cli.fail(f"{option}: {message}")


def _gb(n: float) -> str:
  return f"{n / 1e9:8.2f} GB"


def _duration(seconds: float) -> str:
  for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
    if seconds >= size:
      return f"{seconds / size:.1f} {unit}"
  return f"{seconds:.2f} s"


def render(result: dict) -> str:
  m, inp, hw = result["model"], result["inputs"], result["hardware"]
  mem, train, rag = result["memory_bytes"], result["train"], result["retrieval"]
  lines = [
      f"model      {m['family']}, {m['params'] / 1e6:.1f}M params, {m['layers']} layers; "
      f"{inp['method']}: {m['trainable_params'] / 1e6:.2f}M trainable",
      f"hardware   {hw['name']} x{hw['devices']}: {hw['note']}; efficiency {hw['efficiency']:.2f}, "
      f"{hw['price_per_device_hour']:.2f} USD/device-hour",
      f"run        {inp['train_tokens']:.3g} tokens, batch {inp['batch']} x seq {inp['seq_len']}, "
      f"remat {inp['remat']}, {inp['dtype']} activations"
      + (f", {inp['lora_variant']}" if inp["method"] == "lora" else "")
      + (f", {inp['base_quant']} base (blocks of {inp['quant_block_size']})"
         if inp["method"] == "lora" and inp["base_quant"] != "none" else ""),
      "",
      "memory per device (train step)",
  ]
  for key in ("params", "gradients", "optimizer_state", "activations", "logits", "runtime"):
    lines.append(f"  {key:<16}{_gb(mem[key])}")
  if mem["dequantized_layer"]:
    lines.append(f"  {'dequantized':<16}{_gb(mem['dequantized_layer'])}   "
                 f"(one layer, {inp['base_quant']} base)")
  lines.append(f"  {'total':<16}{_gb(mem['train_total'])}   "
               f"({'fits' if result['fits'] else 'does NOT fit'} in "
               f"{hw['memory_per_device'] / 1e9:.0f} GB)")
  lines.append(f"  {'KV cache (serve)':<16}{_gb(mem['kv_cache_serving'])}   "
               f"({mem['kv_cache_per_token'] / 1e3:.1f} kB/token, {inp['batch']} x {inp['seq_len']})")
  lines += [
      "",
      f"time       {train['step_seconds']:.3g} s/step (compute {train['compute_seconds_per_step']:.3g}"
      f" + optimizer {train['optimizer_seconds_per_step']:.3g}) x {train['steps']} steps = "
      f"{_duration(train['total_seconds'])}  ({train['total_flops']:.3g} FLOPs)",
      f"cost       {train['cost']:.4g} USD ({train['device_hours']:.3g} device-hours)",
      "",
      f"retrieval  index {rag['chunks']} chunks, {rag['index_bytes'] / 1e6:.1f} MB, "
      f"{_duration(rag['index_seconds'])}, {rag['index_cost']:.3g} USD",
      f"           +{rag['added_prompt_tokens_per_query']} prompt tokens per query: "
      f"+{rag['added_seconds_per_query']:.3g} s, +{rag['added_cost_per_query']:.3g} USD per query",
  ]
  be = rag["break_even_queries"]
  if be is None:
    lines.append("break-even never: retrieval is not dearer per query")
  else:
    days = f" = {rag['break_even_days']:.1f} days at {inp['queries_per_day']:g}/day" \
        if "break_even_days" in rag else ""
    lines.append(f"break-even fine-tuning pays after {be:,.0f} queries{days}")
  return "\n".join(lines)


def main(argv=None):
  parser = cli.Parser(prog="python -m ftjax.plan", description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="registered name, folder, hub id or workdir")
  parser.add_argument("--method", choices=("lora", "full"), required=True)
  parser.add_argument("--train_tokens", type=float, required=True)
  parser.add_argument("--seq_len", type=int, required=True)
  parser.add_argument("--hardware", choices=HARDWARE_NAMES, required=True)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--lora_rank", type=int, default=16)
  parser.add_argument("--lora_variant", choices=("lora", "dora"), default="lora")
  parser.add_argument("--base_quant", choices=("none", "int8", "nf4"), default="none",
                      help="QLoRA: the frozen base's projections stored block-quantized")
  parser.add_argument("--quant_block_size", type=int, default=64)
  parser.add_argument("--remat", choices=REMAT_POLICIES, default="none")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="activation dtype (params stay float32, as ftjax trains)")
  parser.add_argument("--queries_per_day", type=float)
  parser.add_argument("--price", type=float, help="USD per device-hour (default: the table's)")
  parser.add_argument("--top_k", type=int, default=3, help="retrieved chunks per query")
  parser.add_argument("--chunk_tokens", type=int, default=256)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  for option in ("train_tokens", "seq_len", "batch", "lora_rank", "top_k", "chunk_tokens",
                 "quant_block_size"):
    if getattr(args, option) <= 0:
      _fail(f"--{option}", f"must be > 0, got {getattr(args, option):g}")
  for option in ("queries_per_day", "price"):
    if getattr(args, option) is not None and getattr(args, option) < 0:
      _fail(f"--{option}", f"must be >= 0, got {getattr(args, option):g}")

  if args.method == "full" and (args.base_quant != "none" or args.lora_variant != "lora"):
    _fail("--base_quant" if args.base_quant != "none" else "--lora_variant",
          "applies to --method lora (a quantized base is frozen)")
  from ftjax.checkpoints import model_config
  cfg = cli.run_main(model_config, args.model, errors=(OSError, ValueError), prefix="--model: ")
  if args.seq_len > cfg.max_position_embeddings:
    _fail("--seq_len", f"{args.seq_len} exceeds the model's context of "
          f"{cfg.max_position_embeddings}")
  hardware = get_hardware(args.hardware)
  if args.price is not None:
    hardware = dataclasses.replace(hardware, price_per_device_hour=args.price)
  inputs = PlanInputs(method=args.method, train_tokens=args.train_tokens, seq_len=args.seq_len,
                      batch=args.batch, lora_rank=args.lora_rank, remat=args.remat,
                      lora_variant=args.lora_variant, base_quant=args.base_quant,
                      quant_block_size=args.quant_block_size,
                      dtype=args.dtype, queries_per_day=args.queries_per_day,
                      top_k=args.top_k, chunk_tokens=args.chunk_tokens)
  result = plan(cfg, inputs, hardware)
  print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
  main()
