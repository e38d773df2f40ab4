"""LoRA as a transformation: adapters are a separate pytree, the base params stay frozen.

The adapter tree mirrors the params tree under `layers` (stacked over layers like the kernels):
  {"layers": {"self_attn": {"q_proj": {"a": [layers, embed, rank], "b": [layers, rank, heads, hd]}}}}
`Transformer` adds `dropout(x) @ a @ b * alpha / rank` to each adapted projection when the
`lora` collection is passed; `b` starts at zero so the adapted model starts identical to the base.
DoRA (`variant="dora"`) adds a magnitude per output unit, `m` [layers, *out], initialised to the
base kernel's column norm, so it too starts at the base.

The base may be block-quantized (QLoRA, `ftjax.models.quant`): a projection then holds
{"codes", "scales"} instead of "kernel"; `base_kernel` reads either (the format follows from the
codes' dtype and the scales' shape).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ftjax.models import quant
from ftjax.models.layout import PROJECTIONS
from ftjax.models.config import ModelConfig

# target -> (module group, in logical names, out logical names), from the one layout table (the
# HF/PEFT module names q_proj ... down_proj).
TARGETS = {name: (row.group, row.in_axes, row.out_axes) for name, row in PROJECTIONS.items()}
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_TARGETS = tuple(TARGETS)
VARIANTS = ("lora", "dora")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """The hyper-parameters that travel with a set of adapters: the scale is alpha / rank."""
  rank: int
  alpha: float
  dropout: float = 0.0
  targets: tuple[str, ...] = ATTENTION_TARGETS
  variant: str = "lora"  # lora | dora
  # The base the adapters were trained on (QLoRA): none | int8 | nf4, and its block size.
  base_quant: str = "none"
  quant_block_size: int = 64

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def to_json(self) -> dict:
    return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
            "targets": list(self.targets), "variant": self.variant,
            "base_quant": self.base_quant, "quant_block_size": self.quant_block_size}

  @classmethod
  def from_json(cls, obj: dict) -> "LoraSpec":
    return cls(rank=int(obj["rank"]), alpha=float(obj["alpha"]),
               dropout=float(obj.get("dropout", 0.0)), targets=tuple(obj["targets"]),
               variant=str(obj.get("variant", "lora")),
               base_quant=str(obj.get("base_quant", "none")),
               quant_block_size=int(obj.get("quant_block_size", 64)))


@dataclasses.dataclass(frozen=True)
class Adapters:
  """Trained adapters with their hyper-parameters, so nothing applies them at a default scale."""
  spec: LoraSpec
  params: Any  # the adapter pytree (see the module docstring)

  def model_config(self, cfg: ModelConfig) -> ModelConfig:
    """`cfg` with this spec's scale (inference: no dropout)."""
    return cfg.replace(lora_scale=self.spec.scale, lora_dropout=0.0)


def validate_targets(targets: Sequence[str]) -> tuple[str, ...]:
  targets = tuple(targets)
  unknown = [t for t in targets if t not in TARGETS]
  if unknown or not targets:
    raise ValueError(f"lora.targets: unknown {unknown or 'empty list'}; choose from {ALL_TARGETS}")
  return targets


def base_quant_of(module: dict, n_in: int) -> tuple[str, int]:
  """(mode, block size) of one projection's stacked params: ("none", 0) for a plain kernel."""
  if "kernel" in module:
    return "none", 0
  codes, scales = module["codes"], module["scales"]
  mode = "int8" if codes.dtype == jnp.int8 else "nf4"
  dim = quant.kernel_shape(codes.shape, mode, n_in)[n_in]
  return mode, dim // scales.shape[n_in]


def base_kernel(params, target: str, dtype=jnp.float32) -> jax.Array:
  """The stacked kernel [layers, *in, *out] of `target`, dequantized if the base is quantized."""
  group, in_names, _ = TARGETS[target]
  module = params["layers"][group][target]
  mode, block = base_quant_of(module, len(in_names))
  if mode == "none":
    return jnp.asarray(module["kernel"]).astype(dtype)
  return quant.dequantize(jnp.asarray(module["codes"]), jnp.asarray(module["scales"]), mode=mode,
                          block_size=block, axis=len(in_names), dtype=dtype)


def kernel_shape(params, target: str) -> tuple[int, ...]:
  group, in_names, _ = TARGETS[target]
  module = params["layers"][group][target]
  if "kernel" in module:
    return tuple(module["kernel"].shape)
  return quant.kernel_shape(module["codes"].shape, base_quant_of(module, len(in_names))[0],
                            len(in_names))


def column_norms(params, target: str) -> np.ndarray:
  """||W|| over the input axes, [layers, *out] fp32: one layer dequantized at a time, so a large
  quantized base is never held at full width."""
  group, in_names, _ = TARGETS[target]
  module = params["layers"][group][target]
  n_in = len(in_names)
  mode, block = base_quant_of(module, n_in)

  def layer_norm(i):
    if mode == "none":
      kernel = jnp.asarray(module["kernel"][i], jnp.float32)
    else:
      kernel = quant.dequantize(jnp.asarray(module["codes"][i]), jnp.asarray(module["scales"][i]),
                                mode=mode, block_size=block, axis=n_in - 1)
    return np.asarray(jnp.sqrt(jnp.sum(jnp.square(kernel), axis=tuple(range(n_in)))))
  layers = (module["kernel"] if mode == "none" else module["codes"]).shape[0]
  return np.stack([layer_norm(i) for i in range(layers)])


def init_lora(params, *, rank: int, targets: Sequence[str], rng: jax.Array,
              dtype=jnp.float32, variant: str = "lora") -> dict:
  """Adapters for `targets` in every layer: `a` ~ U(±1/sqrt(fan_in)) (as PEFT), `b` = 0; DoRA
  adds `m` = the base kernel's norm over its input axes (PEFT's initial magnitude)."""
  if rank < 1:
    raise ValueError(f"lora.rank must be >= 1, got {rank}")
  if variant not in VARIANTS:
    raise ValueError(f"lora.variant: unknown {variant!r}; choose from {VARIANTS}")
  adapters: dict = {}
  for i, target in enumerate(validate_targets(targets)):
    group, in_names, _ = TARGETS[target]
    shape = kernel_shape(params, target)  # [layers, *in, *out]
    layers, in_shape = shape[0], shape[1:1 + len(in_names)]
    out_shape = shape[1 + len(in_names):]
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(jax.random.fold_in(rng, i), (layers, *in_shape, rank), dtype,
                           -bound, bound)
    b = jnp.zeros((layers, rank, *out_shape), dtype)
    adapter = {"a": a, "b": b}
    if variant == "dora":
      adapter["m"] = jnp.asarray(column_norms(params, target), dtype)
    adapters.setdefault("layers", {}).setdefault(group, {})[target] = adapter
  return adapters


def logical_specs(adapters: dict) -> dict:
  """Logical PartitionSpecs for an adapter tree (for `ftjax.sharding.logical_to_shardings`)."""
  specs: dict = {"layers": {}}
  for group, modules in adapters["layers"].items():
    for target in modules:
      _, in_names, out_names = TARGETS[target]
      specs["layers"].setdefault(group, {})[target] = {
          "a": P("layers", *in_names, "lora_rank"), "b": P("layers", "lora_rank", *out_names)}
      if "m" in modules[target]:
        specs["layers"][group][target]["m"] = P("layers", *out_names)
  return specs


def with_lora(cfg: ModelConfig, *, rank: int, alpha: float, dropout: float) -> ModelConfig:
  """The model config that applies adapters of this rank with scale alpha / rank."""
  if not 0 <= dropout < 1:
    raise ValueError(f"lora.dropout must be in [0, 1), got {dropout}")
  return cfg.replace(lora_scale=alpha / rank, lora_dropout=dropout)


def merge(cfg: ModelConfig, params, adapters) -> dict:
  """Params with adapters folded into the kernels (for export or adapter-free inference): LoRA
  `W + s·ab`, DoRA `m * (W + s·ab) / ||W + s·ab||`. A quantized base's adapted kernels come out
  dequantized (in fp32), since `W + s·ab` is no longer on the quantization grid."""
  merged = jax.tree.map(lambda x: x, params)  # a new tree; params are left untouched
  for group, modules in adapters["layers"].items():
    for target, ab in modules.items():
      module = params["layers"][group][target]
      kernel = base_kernel(params, target)
      dtype = module["kernel"].dtype if "kernel" in module else jnp.float32
      n_in = len(TARGETS[target][1])
      adapted = kernel + cfg.lora_scale * _delta(ab["a"], ab["b"], n_in=n_in)
      if "m" in ab:
        norm = jnp.sqrt(jnp.sum(jnp.square(adapted), axis=tuple(range(1, 1 + n_in)),
                                keepdims=True))
        adapted = adapted * (ab["m"].reshape(norm.shape) / norm)
      rest = {k: v for k, v in module.items() if k not in ("kernel", "codes", "scales")}
      merged["layers"][group][target] = {**rest, "kernel": adapted.astype(dtype)}
  for target, (group, _, _) in TARGETS.items():  # projections without adapters
    module = merged["layers"][group][target]
    if "codes" in module:
      rest = {k: v for k, v in module.items() if k not in ("codes", "scales")}
      merged["layers"][group][target] = {**rest, "kernel": base_kernel(params, target)}
  return merged


def _delta(a, b, n_in):
  """a @ b per layer, back in the kernel's [layers, *in, *out] shape."""
  layers, rank = a.shape[0], a.shape[-1]
  in_shape, out_shape = a.shape[1:1 + n_in], b.shape[2:]
  flat = jnp.einsum("lir,lro->lio", a.reshape(layers, -1, rank), b.reshape(layers, rank, -1))
  return flat.reshape(layers, *in_shape, *out_shape)


def count_params(tree) -> int:
  """The number of weights: a quantized kernel's (two per nf4 byte), not its scales."""
  def weights(path, x):
    name = getattr(path[-1], "key", None) if path else None
    if name == "scales":
      return 0
    return int(np.prod(x.shape)) * (2 if name == "codes" and x.dtype == np.uint8 else 1)
  return int(sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(weights, tree))))
