"""The cost model: FLOPs, memory, time and money of fine-tuning, and of retrieval instead.

Counts, from the ModelConfig (e: hidden, f: MLP, q = heads*head_dim, kv = kv_heads*head_dim,
L: layers, V: vocab, T = batch*seq_len tokens per step):
  matmul params  N = L(2eq + 2e kv + 3ef) + eV
  train FLOPs    (6N, or 4N with LoRA: no weight gradients for the frozen base) + attention
                 12 L q seq / 2 per token (`ftjax.training.metrics.flops_per_token`); LoRA adds
                 6 per adapter param, remat `full` the layers' forward again (2 N_layers + 4 L q
                 seq / 2); `dots` saves the matmuls, so recomputes no FLOPs worth counting
  inference      2N per token read or generated + attention over its context (4 L q context)
Memory (bytes; b = activation dtype bytes):
  params         every weight, in param_dtype; with a quantized base (QLoRA) the projections'
                 (N - eV) at 1 (int8) or 0.5 (nf4) bytes + 4 bytes of fp32 scale per block, and
                 while one layer runs its projections dequantized in the compute dtype
  gradients      trainable x 4 x 2: one micro-batch's gradient and the fp32 accumulator
  optimizer      trainable x 4 x 2: AdamW's two moments
  activations    T x L x b x (elements saved per token and layer, by remat policy):
                   none  6e + 2q + 3kv + 4f + 2 heads seq  (norms, q/k/v with and without RoPE,
                         attention scores and probabilities, MLP gate/up/act/product)
                   dots  2e + 2q + 2kv + 2f + heads seq   (matmul outputs only)
                   full  e (each layer's input), plus one layer's `none` set while recomputed
                 DoRA (remat none | dots) adds 2 x the adapted projections' outputs (the base's
                 and the adapter's, which the magnitude's gradient reads)
  logits         T x V x 4 x 3 (fp32 logits, their softmax and their gradient)
  runtime        (cpu) the process before any array: Python, JAX/XLA, libraries
  KV cache       2 L kv b per token of context, for serving `batch` sequences of seq_len
Time: step = FLOPs / (rate x efficiency) + optimizer passes over trainable params / bandwidth,
with rate and bandwidth from `ftjax.planning.hardware` (datasheet, or measured for cpu).
Retrieval instead: index the same tokens (chunks of `chunk_tokens`, MiniLM-sized embeddings),
then every query reads top_k chunks more; break-even = (training - indexing cost) / added
per-query cost.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ftjax.models.config import ModelConfig
from ftjax.planning.hardware import OPTIMIZER_PASSES, Hardware
from ftjax.training.metrics import flops_per_token

REMAT_POLICIES = ("none", "dots", "full")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGIT_COPIES = 3
# A fresh `python -c "import jax, ftjax"` process holding a small array: measured on the
# development machine (jax 0.10, CPU) at 0.40-0.45 GB resident.
CPU_RUNTIME_BYTES = 0.45e9
# The retrieval side: a MiniLM-L6-sized encoder (22.7M params, 384-d fp32 embeddings).
ENCODER_PARAMS = 22.7e6
EMBEDDING_BYTES = 384 * 4
TEXT_BYTES_PER_TOKEN = 4.0  # stored chunk text, ~4 characters per token


def matmul_params(cfg: ModelConfig) -> float:
  e, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  return layers * (e * q + 2 * e * kv + q * e + 3 * e * f) + e * cfg.vocab_size


def param_count(cfg: ModelConfig) -> int:
  """Every weight: embedding, layers (projections, biases, norms), final norm, lm_head."""
  e, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  per_layer = e * q + 2 * e * kv + q * e + 3 * e * f + 2 * e
  per_layer += (q + 2 * kv) * cfg.qkv_bias + e * cfg.o_bias + (2 * f + e) * cfg.mlp_bias
  per_layer += 2 * e * cfg.post_norms + 2 * cfg.head_dim * cfg.qk_norm
  head = 0 if cfg.tie_word_embeddings else e * cfg.vocab_size
  return int(cfg.vocab_size * e + layers * per_layer + e + head)


def lora_param_count(cfg: ModelConfig, rank: int, targets=None) -> int:
  """Adapter params: rank x (fan_in + fan_out) per adapted projection and layer."""
  from ftjax.models.lora import ALL_TARGETS
  e, f = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  sizes = {"q_proj": (e, q), "k_proj": (e, kv), "v_proj": (e, kv), "o_proj": (q, e),
           "gate_proj": (e, f), "up_proj": (e, f), "down_proj": (f, e)}
  return int(cfg.num_layers * sum(rank * sum(sizes[t]) for t in (targets or ALL_TARGETS)))


def dora_param_count(cfg: ModelConfig, targets=None) -> int:
  """DoRA's magnitudes: one per output unit of each adapted projection and layer."""
  from ftjax.models.lora import ALL_TARGETS
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  out = {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": cfg.hidden_size,
         "gate_proj": cfg.intermediate_size, "up_proj": cfg.intermediate_size,
         "down_proj": cfg.hidden_size}
  return int(cfg.num_layers * sum(out[t] for t in (targets or ALL_TARGETS)))


def trainable_count(cfg: ModelConfig, inputs: "PlanInputs") -> int:
  if inputs.method == "full":
    return param_count(cfg)
  dora = dora_param_count(cfg) if inputs.lora_variant == "dora" else 0
  return lora_param_count(cfg, inputs.lora_rank) + dora


def projection_params(cfg: ModelConfig) -> float:
  """The weights of the seven projections over all layers (what QLoRA quantizes)."""
  return matmul_params(cfg) - cfg.hidden_size * cfg.vocab_size


def inference_flops(cfg: ModelConfig, prompt_tokens: float, new_tokens: float,
                    cached_tokens: float = 0.0) -> float:
  """Forward FLOPs to read the uncached prompt and generate `new_tokens`."""
  q = cfg.num_heads * cfg.head_dim
  read = max(prompt_tokens - cached_tokens, 0.0) + new_tokens
  context = prompt_tokens + new_tokens / 2  # mean context each processed token attends to
  return read * (2 * matmul_params(cfg) + 4 * cfg.num_layers * q * context)


def train_flops_per_token(cfg: ModelConfig, inputs: PlanInputs) -> float:
  """Matmul and attention FLOPs of one trained token (forward, backward, recomputation)."""
  lora = inputs.method == "lora"
  flops = flops_per_token(cfg, inputs.seq_len, lora=lora)
  if lora:  # x @ a @ b forward; gradients for the input and for a and b backward
    flops += 6 * lora_param_count(cfg, inputs.lora_rank)
  if inputs.remat == "full":
    layer_params = projection_params(cfg)
    q = cfg.num_heads * cfg.head_dim
    flops += 2 * layer_params + 4 * cfg.num_layers * q * inputs.seq_len / 2
  return flops


def break_even(upfront_a: float, per_question_a: float, upfront_b: float,
               per_question_b: float) -> float | None:
  """Questions after which A (more upfront, cheaper per question) is cheaper than B; None if A
  is never cheaper per question, 0 if A is not more expensive up front."""
  saving = per_question_b - per_question_a
  extra = upfront_a - upfront_b
  if extra <= 0:
    return 0.0
  if saving <= 0:
    return None
  return extra / saving


def activation_elements(cfg: ModelConfig, seq_len: int, remat: str) -> tuple[float, float]:
  """(elements saved per token and layer, elements live per token for one recomputed layer)."""
  e, f = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  everything = 6 * e + 2 * q + 3 * kv + 4 * f + 2 * cfg.num_heads * seq_len
  if remat == "none":
    return everything, 0.0
  if remat == "dots":
    return 2 * e + 2 * q + 2 * kv + 2 * f + cfg.num_heads * seq_len, everything
  if remat == "full":
    return e, everything
  raise ValueError(f"remat {remat!r} is not one of {', '.join(REMAT_POLICIES)}")


@dataclasses.dataclass(frozen=True)
class PlanInputs:
  method: str  # lora | full
  train_tokens: float
  seq_len: int
  batch: int
  lora_rank: int = 16
  lora_variant: str = "lora"  # lora | dora (adds a magnitude per output unit)
  base_quant: str = "none"  # none | int8 | nf4: the frozen base's projections (QLoRA)
  quant_block_size: int = 64
  remat: str = "none"
  dtype: str = "float32"  # compute (activation) dtype
  param_dtype: str = "float32"
  queries_per_day: float | None = None
  prompt_tokens: int = 128  # a query's own prompt, without retrieved text
  new_tokens: int = 64
  top_k: int = 3  # retrieved chunks per query
  chunk_tokens: int = 256


def memory(cfg: ModelConfig, inputs: PlanInputs, hardware: Hardware) -> dict[str, float]:
  """Bytes per device of a train step (params, gradients and optimizer sharded FSDP-style and
  the batch split over devices when there are several), plus the serving KV cache."""
  devices = hardware.devices
  act_bytes = DTYPE_BYTES[inputs.dtype]
  total = param_count(cfg)
  trainable = trainable_count(cfg, inputs)
  param_bytes = total * DTYPE_BYTES[inputs.param_dtype]
  dequantized = 0.0
  if inputs.method == "lora" and inputs.base_quant != "none":
    from ftjax.models.quant import bytes_per_weight
    projections = projection_params(cfg)
    param_bytes += projections * (bytes_per_weight(inputs.base_quant, inputs.quant_block_size)
                                  - DTYPE_BYTES[inputs.param_dtype])
    # One layer's projections dequantized at a time (forward, and again in the backward pass).
    dequantized = projections / cfg.num_layers * act_bytes
  tokens = inputs.batch * inputs.seq_len / devices
  saved, recomputed = activation_elements(cfg, inputs.seq_len, inputs.remat)
  dora_saved = 0.0
  if inputs.method == "lora" and inputs.lora_variant == "dora" and inputs.remat != "full":
    # The magnitude's gradient reads each projection's base and adapter outputs: both are kept.
    dora_saved = 2 * dora_param_count(cfg) / cfg.num_layers
  out = {
      "params": param_bytes / devices,
      "dequantized_layer": dequantized / devices,
      "gradients": trainable * 4 * 2 / devices,
      "optimizer_state": trainable * 4 * 2 / devices,
      "activations": tokens * act_bytes * (cfg.num_layers * (saved + dora_saved) + recomputed),
      "logits": tokens * cfg.vocab_size * 4 * LOGIT_COPIES,
      "runtime": CPU_RUNTIME_BYTES if hardware.name == "cpu" else 0.0,
  }
  out["train_total"] = sum(out.values())
  kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * act_bytes
  out["kv_cache_per_token"] = kv_per_token
  out["kv_cache_serving"] = kv_per_token * inputs.seq_len * inputs.batch
  return out


def plan(cfg: ModelConfig, inputs: PlanInputs, hardware: Hardware) -> dict[str, Any]:
  """Memory, step time, total time and cost of training; retrieval's costs; the break-even."""
  lora = inputs.method == "lora"
  trainable = trainable_count(cfg, inputs)
  tokens_per_step = inputs.batch * inputs.seq_len
  steps = math.ceil(inputs.train_tokens / tokens_per_step)
  step_flops = train_flops_per_token(cfg, inputs) * tokens_per_step
  if lora and inputs.lora_variant == "dora":  # ||W + s·ab|| once per step: a·b, add, square
    step_flops += projection_params(cfg) * (2 * inputs.lora_rank + 3)
  compute_seconds = step_flops / hardware.flops
  optimizer_seconds = OPTIMIZER_PASSES * 4 * trainable / hardware.devices / hardware.memory_bandwidth
  step_seconds = compute_seconds + optimizer_seconds
  train_seconds = steps * step_seconds
  price = hardware.price_per_device_hour
  device_hours = train_seconds / 3600 * hardware.devices
  mem = memory(cfg, inputs, hardware)

  # Retrieval instead of training: embed every chunk once; each query then reads top_k chunks.
  chunks = math.ceil(inputs.train_tokens / inputs.chunk_tokens)
  index_flops = 2 * ENCODER_PARAMS * inputs.train_tokens
  index_seconds = index_flops / hardware.flops
  index_bytes = chunks * EMBEDDING_BYTES + inputs.train_tokens * TEXT_BYTES_PER_TOKEN
  added_tokens = inputs.top_k * inputs.chunk_tokens
  base_query = inference_flops(cfg, inputs.prompt_tokens, inputs.new_tokens)
  rag_query = inference_flops(cfg, inputs.prompt_tokens + added_tokens, inputs.new_tokens)
  query_embed = 2 * ENCODER_PARAMS * inputs.prompt_tokens

  def money(seconds):
    return seconds / 3600 * hardware.devices * price

  per_query_added_seconds = (rag_query - base_query + query_embed) / hardware.flops
  be = break_even(money(train_seconds), 0.0, money(index_seconds),
                  money(per_query_added_seconds))
  retrieval = {
      "chunks": chunks, "index_bytes": index_bytes, "index_flops": index_flops,
      "index_seconds": index_seconds, "index_cost": money(index_seconds),
      "added_prompt_tokens_per_query": added_tokens,
      "flops_per_query_finetuned": base_query, "flops_per_query_rag": rag_query + query_embed,
      "added_seconds_per_query": per_query_added_seconds,
      "added_cost_per_query": money(per_query_added_seconds),
      "break_even_queries": be}
  if inputs.queries_per_day and be is not None:
    retrieval["break_even_days"] = be / inputs.queries_per_day
  return {
      "model": {"family": cfg.family, "params": param_count(cfg), "trainable_params": trainable,
                "layers": cfg.num_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size},
      "inputs": dataclasses.asdict(inputs),
      "hardware": dataclasses.asdict(hardware),
      "memory_bytes": mem,
      "fits": mem["train_total"] <= hardware.memory_per_device,
      "train": {"steps": steps, "tokens_per_step": tokens_per_step, "step_flops": step_flops,
                "total_flops": step_flops * steps, "compute_seconds_per_step": compute_seconds,
                "optimizer_seconds_per_step": optimizer_seconds, "step_seconds": step_seconds,
                "total_seconds": train_seconds, "device_hours": device_hours,
                "cost": money(train_seconds)},
      "retrieval": retrieval,
  }
