"""Metrics to `metrics.jsonl`, TensorBoard event files and the console; FLOPs for MFU."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from ftjax.models.config import ModelConfig

# Dense bf16 peak per device, for MFU. Unknown devices (CPU) report no MFU unless the config
# sets peak_tflops_per_device.
_PEAK_TFLOPS = {
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0,
    "NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0, "NVIDIA L4": 121.0,
}


def peak_flops_per_device() -> float:
  kind = jax.devices()[0].device_kind
  for name, tflops in _PEAK_TFLOPS.items():
    if kind.startswith(name):
      return tflops * 1e12
  return 0.0


def flops_per_token(cfg: ModelConfig, seq_len: int, lora: bool) -> float:
  """Training FLOPs per token: 6N for the matmuls (4N with LoRA: no weight gradients for the
  frozen base) plus attention scores and values (PaLM appendix B)."""
  e, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  matmul_params = layers * (e * q + 2 * e * kv + q * e + 3 * e * f) + e * cfg.vocab_size
  attention = 12 * layers * q * seq_len / 2  # causal: half the score matrix is used
  return (4 if lora else 6) * matmul_params + attention


class MetricWriter:
  def __init__(self, workdir: Path, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      path = Path(workdir) / "metrics.jsonl"
      self._jsonl = open(path, "a")
      if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        self._jsonl.write("\n")  # a run killed mid-line: the resumed run starts a new line
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict, echo: bool = False):
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for key, value in metrics.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)
    if echo:
      # skipped_steps only once a step was skipped (its loss or gradient was NaN/inf)
      shown = {k: v for k, v in metrics.items()
               if k in _SHOWN and not (k == "skipped_steps" and not v)}
      print(f"step {step}: " + "  ".join(_fmt(k, v) for k, v in shown.items()), flush=True)

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


_SHOWN = ("loss", "grad_norm", "learning_rate", "tokens_per_second", "mfu", "epoch", "eval_loss",
          "eval_perplexity", "eval_answer_loss", "skipped_steps")


def _fmt(key, value):
  if key == "tokens_per_second":
    return f"tok/s {value:,.0f}"
  if key == "mfu":
    return f"MFU {100 * value:.1f}%"
  if key == "learning_rate":
    return f"lr {value:.2e}"
  if key == "skipped_steps":
    return f"skipped_steps {value:d}"
  return f"{key} {value:.4g}"
