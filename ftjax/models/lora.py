"""LoRA as a transformation: adapters are a separate pytree, the base params stay frozen.

The adapter tree mirrors the params tree under `layers` (stacked over layers like the kernels):
  {"layers": {"self_attn": {"q_proj": {"a": [layers, embed, rank], "b": [layers, rank, heads, hd]}}}}
`Transformer` adds `dropout(x) @ a @ b * alpha / rank` to each adapted projection when the
`lora` collection is passed; `b` starts at zero so the adapted model starts identical to the base.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ftjax.models.layout import PROJECTIONS
from ftjax.models.config import ModelConfig

# target -> (module group, in logical names, out logical names), from the one layout table (the
# HF/PEFT module names q_proj ... down_proj).
TARGETS = {name: (row.group, row.in_axes, row.out_axes) for name, row in PROJECTIONS.items()}
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_TARGETS = tuple(TARGETS)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """The hyper-parameters that travel with a set of adapters: the scale is alpha / rank."""
  rank: int
  alpha: float
  dropout: float = 0.0
  targets: tuple[str, ...] = ATTENTION_TARGETS

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def to_json(self) -> dict:
    return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
            "targets": list(self.targets)}

  @classmethod
  def from_json(cls, obj: dict) -> "LoraSpec":
    return cls(rank=int(obj["rank"]), alpha=float(obj["alpha"]),
               dropout=float(obj.get("dropout", 0.0)), targets=tuple(obj["targets"]))


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


def init_lora(params, *, rank: int, targets: Sequence[str], rng: jax.Array,
              dtype=jnp.float32) -> dict:
  """Adapters for `targets` in every layer: `a` ~ U(±1/sqrt(fan_in)) (as PEFT), `b` = 0."""
  if rank < 1:
    raise ValueError(f"lora.rank must be >= 1, got {rank}")
  adapters: dict = {}
  for i, target in enumerate(validate_targets(targets)):
    group, in_names, _ = TARGETS[target]
    kernel = params["layers"][group][target]["kernel"]  # [layers, *in, *out]
    layers, in_shape = kernel.shape[0], kernel.shape[1:1 + len(in_names)]
    out_shape = kernel.shape[1 + len(in_names):]
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(jax.random.fold_in(rng, i), (layers, *in_shape, rank), dtype,
                           -bound, bound)
    b = jnp.zeros((layers, rank, *out_shape), dtype)
    adapters.setdefault("layers", {}).setdefault(group, {})[target] = {"a": a, "b": b}
  return adapters


def logical_specs(adapters: dict) -> dict:
  """Logical PartitionSpecs for an adapter tree (for `ftjax.sharding.logical_to_shardings`)."""
  specs: dict = {"layers": {}}
  for group, modules in adapters["layers"].items():
    for target in modules:
      _, in_names, out_names = TARGETS[target]
      specs["layers"].setdefault(group, {})[target] = {
          "a": P("layers", *in_names, "lora_rank"), "b": P("layers", "lora_rank", *out_names)}
  return specs


def with_lora(cfg: ModelConfig, *, rank: int, alpha: float, dropout: float) -> ModelConfig:
  """The model config that applies adapters of this rank with scale alpha / rank."""
  if not 0 <= dropout < 1:
    raise ValueError(f"lora.dropout must be in [0, 1), got {dropout}")
  return cfg.replace(lora_scale=alpha / rank, lora_dropout=dropout)


def merge(cfg: ModelConfig, params, adapters) -> dict:
  """Params with adapters folded into the kernels (for export or adapter-free inference)."""
  merged = jax.tree.map(lambda x: x, params)  # a new tree; params are left untouched
  for group, modules in adapters["layers"].items():
    for target, ab in modules.items():
      kernel = params["layers"][group][target]["kernel"]
      delta = _delta(ab["a"], ab["b"], n_in=len(TARGETS[target][1]))
      merged["layers"][group][target] = {
          **params["layers"][group][target],
          "kernel": (kernel + cfg.lora_scale * delta).astype(kernel.dtype)}
  return merged


def _delta(a, b, n_in):
  """a @ b per layer, back in the kernel's [layers, *in, *out] shape."""
  layers, rank = a.shape[0], a.shape[-1]
  in_shape, out_shape = a.shape[1:1 + n_in], b.shape[2:]
  flat = jnp.einsum("lir,lro->lio", a.reshape(layers, -1, rank), b.reshape(layers, rank, -1))
  return flat.reshape(layers, *in_shape, *out_shape)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
