"""ModelConfig: the one description of a decoder that ftjax's model code reads.

Built from a Hugging Face config (`from_hf_config`) so every family maps onto the same fields;
the model module branches on fields (`norm_offset`, `qkv_bias`, ...), never on family names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ftjax.errors import UserError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text")


class UnsupportedModelError(ValueError, UserError):
  """The checkpoint's architecture or one of its options is not implemented."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # Llama-3 style frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_pos).
  rope_llama3_scaling: tuple[float, float, float, int] | None = None
  rope_linear_factor: float = 1.0
  # Gemma 3: sliding-window layers use their own, unscaled RoPE base.
  rope_local_theta: float | None = None
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  activation: str = "silu"  # silu | gelu_tanh | gelu
  norm_offset: float = 0.0  # Gemma stores norm weights as (scale - 1).
  embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(hidden_size).
  post_norms: bool = False  # Gemma 2/3: extra norms after attention and around the MLP.
  qk_norm: bool = False  # Gemma 3: RMSNorm over head_dim on queries and keys before RoPE.
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  query_scale: float | None = None  # None -> head_dim ** -0.5
  sliding_window: int | None = None
  # One entry per layer: True where the layer uses the sliding window.
  sliding_layers: tuple[bool, ...] = ()
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  # Numerics: params are stored in param_dtype; matmuls run in dtype.
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"  # auto | none | full | dots | dots_no_batch (auto: full on CPU)
  # Training/scoring attention kernel (ftjax.models.attention): auto | xla | cudnn | pallas_gpu
  # | splash. "auto" picks the backend's fused kernel where it applies, else the reference.
  attention_impl: str = "auto"
  # Training loss: logits are computed this many positions at a time (and recomputed in the
  # backward pass), so [batch, seq, vocab] fp32 logits never exist at once. 0: all at once.
  loss_chunk: int = 0
  # LoRA (training-time): adapters live in the `lora` collection; these say how they are applied.
  lora_scale: float = 1.0  # alpha / rank
  lora_dropout: float = 0.0
  # QLoRA: the projections' kernels are stored block-quantized (none | int8 | nf4), blocks of
  # quant_block_size along the last input axis (ftjax.models.quant); a quantized base is frozen.
  base_quant: str = "none"
  quant_block_size: int = 64

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise UnsupportedModelError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.sliding_layers and len(self.sliding_layers) != self.num_layers:
      raise UnsupportedModelError("sliding_layers must have one entry per layer")

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def layer_is_sliding(self) -> tuple[bool, ...]:
    return self.sliding_layers or (False,) * self.num_layers


def _get(hf: dict, *keys, default=None):
  for key in keys:
    if hf.get(key) is not None:
      return hf[key]
  return default


def _as_tuple_ids(value) -> tuple[int, ...]:
  if value is None:
    return ()
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value)
  return (int(value),)


def _rope_fields(hf: dict) -> dict:
  params = hf.get("rope_parameters") or {}
  if "full_attention" in params:  # per layer type (Gemma 3): global layers may be scaled
    local = params.get("sliding_attention") or {}
    if local and local.get("rope_type", "default") != "default":
      raise UnsupportedModelError(
          f"rope_type {local['rope_type']!r} on sliding-window layers is not supported")
    fields = _rope_fields({"rope_parameters": params["full_attention"]})
    if local:
      fields["rope_local_theta"] = float(local["rope_theta"])
    return fields
  legacy = hf.get("rope_scaling") or {}
  params = {**legacy, **params}
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default")) or "default"
  fields: dict[str, Any] = {"rope_theta": float(theta)}
  if rope_type == "default":
    pass
  elif rope_type == "linear":
    fields["rope_linear_factor"] = float(params["factor"])
  elif rope_type == "llama3":
    fields["rope_llama3_scaling"] = (
        float(params["factor"]), float(params["low_freq_factor"]),
        float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]))
  else:
    raise UnsupportedModelError(
        f"rope_type {rope_type!r} is not supported (supported: default, linear, llama3)")
  return fields


def from_hf_config(hf: dict | Any, **overrides) -> ModelConfig:
  """Translates a Hugging Face config (dict or PretrainedConfig) into a ModelConfig."""
  if not isinstance(hf, dict):
    hf = hf.to_dict()
  family = hf.get("model_type")
  if family not in SUPPORTED_ARCHITECTURES:
    archs = hf.get("architectures") or []
    raise UnsupportedModelError(
        f"model_type {family!r} (architectures {archs}) is not supported; "
        f"supported model types: {', '.join(SUPPORTED_ARCHITECTURES)}")
  num_layers = int(hf["num_hidden_layers"])
  num_heads = int(hf["num_attention_heads"])
  hidden = int(hf["hidden_size"])
  head_dim = int(_get(hf, "head_dim", default=hidden // num_heads))
  fields: dict[str, Any] = dict(
      family=family,
      vocab_size=int(hf["vocab_size"]),
      hidden_size=hidden,
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=int(_get(hf, "num_key_value_heads", default=num_heads)),
      head_dim=head_dim,
      rms_norm_eps=float(_get(hf, "rms_norm_eps", default=1e-6)),
      max_position_embeddings=int(_get(hf, "max_position_embeddings", default=2048)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=_as_tuple_ids(hf.get("eos_token_id")),
      pad_token_id=hf.get("pad_token_id"),
      **_rope_fields(hf),
  )
  act = _get(hf, "hidden_activation", "hidden_act", default="silu")
  fields["activation"] = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                          "gelu": "gelu", "gelu_new": "gelu_tanh"}.get(act)
  if fields["activation"] is None:
    raise UnsupportedModelError(f"hidden activation {act!r} is not supported")

  if family in ("llama", "mistral"):
    bias = bool(hf.get("attention_bias", False))
    fields.update(qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))
  if family == "qwen2":
    fields["qkv_bias"] = True
  if family in ("gemma", "gemma2", "gemma3_text"):
    fields.update(norm_offset=1.0, embed_scale=True)
    # Gemma 1 configs say hidden_act="gelu" but HF runs the tanh approximation.
    fields["activation"] = "gelu_tanh"
  if family == "gemma3_text":
    fields["qk_norm"] = True
  if family in ("gemma2", "gemma3_text"):
    fields.update(
        post_norms=True,
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        query_scale=float(hf["query_pre_attn_scalar"]) ** -0.5,
    )

  window = hf.get("sliding_window")
  layer_types = hf.get("layer_types")
  if family == "qwen2" and not hf.get("use_sliding_window", False):
    window, layer_types = None, None
  if window:
    if layer_types:
      sliding = tuple(t == "sliding_attention" for t in layer_types)
    else:
      sliding = (True,) * num_layers
    if any(sliding):
      fields.update(sliding_window=int(window), sliding_layers=sliding)
  fields.update(overrides)
  return ModelConfig(**fields)
