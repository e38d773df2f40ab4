"""The one table of parameter names and layouts: Hugging Face name <-> ftjax path, both directions.

Import (`hf_import`), export (`export`: HF, PEFT, GGUF) and LoRA's target names
(`ftjax.models.lora`) all read `LAYOUT`, so export cannot drift from import. A row names the HF tensor, the ftjax
param path and the logical axes of the ftjax array; the layout (`linear`, `bias`, `copy`) fixes
the transform and its inverse:

  linear  HF [out, in]  <->  ftjax [*in_axes, *out_axes]   (a kernel: transposed, then split)
  bias    HF [out]      <->  ftjax [*out_axes]
  copy    the same array

Per-layer rows are relative to `model.layers.{i}.` and `layers/`; ftjax stacks them over layers.
Shapes come from the logical axes (`embed` -> hidden_size, `heads` -> num_heads, ...).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator

import numpy as np

from ftjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Row:
  hf: str
  path: str
  layout: str  # linear | bias | copy
  in_axes: tuple[str, ...] = ()
  out_axes: tuple[str, ...] = ()
  when: Callable[[ModelConfig], bool] = lambda cfg: True

  @property
  def module(self) -> str:
    """The HF module name (`q_proj`, `down_proj`): LoRA targets are named by it."""
    return self.hf.rsplit(".", 2)[-2]

  @property
  def group(self) -> str:
    return self.path.split("/")[0]


def _linear(hf, path, in_axes, out_axes, when=lambda cfg: True):
  return Row(hf, path, "linear", in_axes, out_axes, when)


def _bias(hf, path, out_axes, when):
  return Row(hf, path, "bias", (), out_axes, when)


def _norm(hf, path, when=lambda cfg: True):
  return Row(hf, path, "copy", (), ("norm",), when)


# Rows outside the layer stack: full HF name -> ftjax path.
GLOBAL = (
    Row("model.embed_tokens.weight", "embedding", "copy", (), ("vocab", "embed")),
    _norm("model.norm.weight", "final_norm/scale"),
    _linear("lm_head.weight", "lm_head", ("embed",), ("vocab",),
            when=lambda cfg: not cfg.tie_word_embeddings),
)

_attn_in, _q_out, _kv_out = ("embed",), ("heads", "head_dim"), ("kv_heads", "head_dim")
# Rows of one decoder layer: HF name under model.layers.{i}. -> ftjax path under layers/.
LAYER = (
    _linear("self_attn.q_proj.weight", "self_attn/q_proj/kernel", _attn_in, _q_out),
    _linear("self_attn.k_proj.weight", "self_attn/k_proj/kernel", _attn_in, _kv_out),
    _linear("self_attn.v_proj.weight", "self_attn/v_proj/kernel", _attn_in, _kv_out),
    _linear("self_attn.o_proj.weight", "self_attn/o_proj/kernel", ("heads", "head_dim"),
            ("embed",)),
    _linear("mlp.gate_proj.weight", "mlp/gate_proj/kernel", ("embed",), ("mlp",)),
    _linear("mlp.up_proj.weight", "mlp/up_proj/kernel", ("embed",), ("mlp",)),
    _linear("mlp.down_proj.weight", "mlp/down_proj/kernel", ("mlp",), ("embed",)),
    _norm("input_layernorm.weight", "input_layernorm/scale"),
    _norm("post_attention_layernorm.weight", "post_attention_layernorm/scale"),
    _bias("self_attn.q_proj.bias", "self_attn/q_proj/bias", _q_out, lambda cfg: cfg.qkv_bias),
    _bias("self_attn.k_proj.bias", "self_attn/k_proj/bias", _kv_out, lambda cfg: cfg.qkv_bias),
    _bias("self_attn.v_proj.bias", "self_attn/v_proj/bias", _kv_out, lambda cfg: cfg.qkv_bias),
    _bias("self_attn.o_proj.bias", "self_attn/o_proj/bias", ("embed",), lambda cfg: cfg.o_bias),
    _bias("mlp.gate_proj.bias", "mlp/gate_proj/bias", ("mlp",), lambda cfg: cfg.mlp_bias),
    _bias("mlp.up_proj.bias", "mlp/up_proj/bias", ("mlp",), lambda cfg: cfg.mlp_bias),
    _bias("mlp.down_proj.bias", "mlp/down_proj/bias", ("embed",), lambda cfg: cfg.mlp_bias),
    _norm("self_attn.q_norm.weight", "self_attn/q_norm/scale", lambda cfg: cfg.qk_norm),
    _norm("self_attn.k_norm.weight", "self_attn/k_norm/scale", lambda cfg: cfg.qk_norm),
    _norm("pre_feedforward_layernorm.weight", "pre_feedforward_layernorm/scale",
          lambda cfg: cfg.post_norms),
    _norm("post_feedforward_layernorm.weight", "post_feedforward_layernorm/scale",
          lambda cfg: cfg.post_norms),
)

# The projections LoRA can adapt, named as HF (and PEFT) name them.
PROJECTIONS = {row.module: row for row in LAYER if row.layout == "linear"}


def axis_sizes(cfg: ModelConfig) -> dict[str, int]:
  return {"embed": cfg.hidden_size, "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads,
          "head_dim": cfg.head_dim, "mlp": cfg.intermediate_size, "vocab": cfg.vocab_size}


def _shape(cfg: ModelConfig, axes: tuple[str, ...]) -> tuple[int, ...]:
  sizes = axis_sizes(cfg)
  return tuple(sizes[a] for a in axes)


def to_ftjax(cfg: ModelConfig, row: Row, w: np.ndarray) -> np.ndarray:
  """One HF tensor (one layer's) -> the ftjax array."""
  if row.layout == "linear":
    return w.T.reshape(*_shape(cfg, row.in_axes), *_shape(cfg, row.out_axes))
  if row.layout == "bias":
    return w.reshape(_shape(cfg, row.out_axes))
  return w


def to_hf(cfg: ModelConfig, row: Row, x: np.ndarray) -> np.ndarray:
  """The inverse of `to_ftjax`: one ftjax array (one layer's) -> the HF tensor."""
  if row.layout == "linear":
    n_in = math.prod(_shape(cfg, row.in_axes))
    return np.ascontiguousarray(x.reshape(n_in, -1).T)
  if row.layout == "bias":
    return x.reshape(-1)
  return x


def rows(cfg: ModelConfig) -> Iterator[tuple[str, str, Row, int | None]]:
  """(HF name, ftjax path, row, layer index or None) for every tensor of a model, in order."""
  for row in GLOBAL:
    if row.when(cfg):
      yield row.hf, row.path, row, None
  for row in LAYER:
    if row.when(cfg):
      for i in range(cfg.num_layers):
        yield f"model.layers.{i}.{row.hf}", f"layers/{row.path}", row, i


def expected_tensor_names(cfg: ModelConfig) -> list[str]:
  return [name for name, *_ in rows(cfg)]


def get_path(tree: dict, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def set_path(tree: dict, path: str, value):
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def from_hf(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray]) -> dict:
  """HF tensors (pulled one at a time by name) -> the ftjax params tree (numpy)."""
  params: dict = {}
  for row in GLOBAL:
    if row.when(cfg):
      set_path(params, row.path, to_ftjax(cfg, row, get_tensor(row.hf)))
  for row in LAYER:
    if row.when(cfg):
      stacked = np.stack([to_ftjax(cfg, row, get_tensor(f"model.layers.{i}.{row.hf}"))
                          for i in range(cfg.num_layers)])
      set_path(params, "layers/" + row.path, stacked)
  return params


def to_hf_state(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  """The ftjax params tree (host numpy) -> {HF name: tensor}, in `rows` order."""
  state = {}
  for name, path, row, layer in rows(cfg):
    x = np.asarray(get_path(params, path))
    state[name] = to_hf(cfg, row, x if layer is None else x[layer])
  return state


# PEFT's names for one adapter matrix, and its layouts: A is [rank, in], B is [out, rank].
PEFT_PREFIX = "base_model.model."


def peft_key(layer: int, target: str, matrix: str) -> str:
  """`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (matrix: A or B), or
  `....q_proj.lora_magnitude_vector` (matrix: magnitude, DoRA's m [out])."""
  module = PROJECTIONS[target].hf.rsplit(".", 1)[0]
  if matrix == "magnitude":
    return f"{PEFT_PREFIX}model.layers.{layer}.{module}.lora_magnitude_vector"
  return f"{PEFT_PREFIX}model.layers.{layer}.{module}.lora_{matrix}.weight"


def lora_to_peft(target: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One layer's ftjax (a [*in, rank], b [rank, *out]) -> PEFT (A [rank, in], B [out, rank])."""
  rank = a.shape[-1]
  return (np.ascontiguousarray(a.reshape(-1, rank).T),
          np.ascontiguousarray(b.reshape(rank, -1).T))


def lora_from_peft(cfg: ModelConfig, target: str, lora_a: np.ndarray, lora_b: np.ndarray):
  """The inverse of `lora_to_peft`."""
  row = PROJECTIONS[target]
  rank = lora_a.shape[0]
  return (lora_a.T.reshape(*_shape(cfg, row.in_axes), rank),
          lora_b.T.reshape(rank, *_shape(cfg, row.out_axes)))
