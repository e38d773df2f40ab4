"""Block quantization of frozen projection kernels (QLoRA's base): int8 and 4-bit NormalFloat.

Written here in jnp (a few dozen lines) rather than taken from qwix: the layout must keep the
kernel's logical axes so the sharding rules apply unchanged, and the dequantization must sit
inside `matmul.project_quantized`'s custom VJP, so the backward pass holds codes, not weights.

A kernel [*in, *out] is cut into blocks of `block_size` consecutive entries along its LAST INPUT
axis (`embed` for q/k/v/gate/up, `head_dim` for o_proj, `mlp` for down_proj); each block has one
fp32 scale, its absolute maximum (nf4) or absolute maximum / 127 (int8):

  int8  codes int8  [*in, *out]                      round(w / scale), in [-127, 127]
  nf4   codes uint8 [*in[:-1], in[-1] / 2, *out]     two 4-bit indices into NF4_VALUES per byte
                                                     (entry 2j in the low nibble, 2j+1 high)
  both  scales fp32 [*in[:-1], in[-1] / block_size, *out]

Codes and scales carry the kernel's own logical names (the blocked axis keeps its name), so a
kernel sharded over `embed` has its codes and scales sharded the same way where sizes divide.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("none", "int8", "nf4")

# The 16 NormalFloat levels of QLoRA (Dettmers et al. 2023; bitsandbytes' NF4 table): quantiles
# of N(0, 1) scaled to [-1, 1], with an exact zero.
NF4_VALUES = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)

def bytes_per_weight(mode: str, block_size: int) -> float:
  """Stored bytes per weight, codes plus fp32 scales (for the planner)."""
  return {"int8": 1.0, "nf4": 0.5}[mode] + 4.0 / block_size


def error_bound(mode: str) -> float:
  """The largest |w - dequantize(quantize(w))| as a fraction of its block's absolute maximum."""
  if mode == "int8":
    return 0.5 / 127
  return float(np.max(np.diff(NF4_VALUES))) / 2


def _blocks(w, axis: int, block_size: int):
  """[..., D, ...] -> [..., D / block_size, block_size, ...] (the block axis at axis + 1)."""
  return w.reshape(*w.shape[:axis], w.shape[axis] // block_size, block_size, *w.shape[axis + 1:])


def check_block_size(shape, axis: int, block_size: int, mode: str) -> str | None:
  """Why `block_size` cannot quantize a kernel of `shape` blocked along `axis`, or None."""
  dim = shape[axis]
  if dim % block_size:
    return f"{block_size} does not divide the input dim {dim}"
  if mode == "nf4" and dim % 2:
    return f"nf4 packs two codes per byte: the input dim {dim} must be even"
  return None


def quantize(w, *, mode: str, block_size: int, axis: int):
  """A kernel -> (codes, scales), blocked along `axis` (its last input axis). jnp in, jnp out."""
  problem = check_block_size(w.shape, axis, block_size, mode)
  if problem:
    raise ValueError(f"lora.quant_block_size: {problem}")
  blocks = _blocks(jnp.asarray(w, jnp.float32), axis, block_size)
  absmax = jnp.max(jnp.abs(blocks), axis=axis + 1, keepdims=True)
  if mode == "int8":
    scales = absmax / 127.0
    safe = jnp.where(scales > 0, scales, 1.0)
    codes = jnp.clip(jnp.round(blocks / safe), -127, 127).astype(jnp.int8).reshape(w.shape)
  elif mode == "nf4":
    scales = absmax
    normed = blocks / jnp.where(scales > 0, scales, 1.0)
    # Nearest level: the levels are sorted, so count the midpoints below each value.
    midpoints = jnp.asarray((NF4_VALUES[1:] + NF4_VALUES[:-1]) / 2)
    index = jnp.searchsorted(midpoints, normed.reshape(-1)).astype(jnp.uint8).reshape(w.shape)
    pairs = index.reshape(*w.shape[:axis], w.shape[axis] // 2, 2, *w.shape[axis + 1:])
    low = jax.lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
    high = jax.lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)
    codes = (low | (high << 4)).astype(jnp.uint8)
  else:
    raise ValueError(f"lora.base_quant: unknown {mode!r}; choose from {MODES}")
  return codes, jnp.squeeze(scales, axis + 1).astype(jnp.float32)


def dequantize(codes, scales, *, mode: str, block_size: int, axis: int, dtype=jnp.float32):
  """(codes, scales) -> the kernel in `dtype` (the inverse of `quantize`, to its error bound)."""
  if mode == "int8":
    values = codes.astype(jnp.float32)
  elif mode == "nf4":
    low, high = codes & 0xF, codes >> 4
    index = jnp.stack([low, high], axis=axis + 1)
    shape = (*codes.shape[:axis], codes.shape[axis] * 2, *codes.shape[axis + 1:])
    values = jnp.asarray(NF4_VALUES)[index.reshape(shape).astype(jnp.int32)]
  else:
    raise ValueError(f"lora.base_quant: unknown {mode!r}; choose from {MODES}")
  blocks = _blocks(values, axis, block_size) * jnp.expand_dims(scales, axis + 1)
  return blocks.reshape(values.shape).astype(dtype)


def kernel_shape(codes_shape, mode: str, axis: int) -> tuple[int, ...]:
  """The unquantized kernel's shape, from its codes' shape."""
  if mode != "nf4":
    return tuple(codes_shape)
  return (*codes_shape[:axis], codes_shape[axis] * 2, *codes_shape[axis + 1:])


def quantized_shapes(kernel_shape_, mode: str, block_size: int, axis: int):
  """(codes shape, scales shape) of a kernel of `kernel_shape_`."""
  shape = tuple(kernel_shape_)
  codes = shape if mode == "int8" else (*shape[:axis], shape[axis] // 2, *shape[axis + 1:])
  scales = (*shape[:axis], shape[axis] // block_size, *shape[axis + 1:])
  return codes, scales


def quantize_params(params, projections, *, mode: str, block_size: int) -> dict:
  """The params tree with each projection's stacked kernel [layers, *in, *out] replaced by
  {"codes", "scales"}; `projections` maps target -> (group, n_in). Other leaves are shared."""
  out = {**params, "layers": {g: dict(m) for g, m in params["layers"].items()}}
  quantize_one = jax.jit(lambda w, axis: quantize(w, mode=mode, block_size=block_size, axis=axis),
                         static_argnums=1)
  for target, (group, n_in) in projections.items():
    module = dict(out["layers"][group][target])
    kernel = module.pop("kernel")
    # One layer at a time: the fp32 copy of a whole stacked kernel is never made.
    parts = [quantize_one(kernel[i], n_in - 1) for i in range(kernel.shape[0])]
    module["codes"] = np.stack([np.asarray(c) for c, _ in parts])
    module["scales"] = np.stack([np.asarray(s) for _, s in parts])
    out["layers"][group][target] = module
  return out


def dequantize_params(params, projections, *, mode: str, block_size: int, dtype) -> dict:
  """The inverse of `quantize_params` (to the format's error bound): kernels in `dtype`."""
  out = {**params, "layers": {g: dict(m) for g, m in params["layers"].items()}}
  for target, (group, n_in) in projections.items():
    module = dict(out["layers"][group][target])
    codes, scales = module.pop("codes"), module.pop("scales")
    module["kernel"] = np.asarray(dequantize(jnp.asarray(codes), jnp.asarray(scales), mode=mode,
                                             block_size=block_size, axis=n_in, dtype=dtype))
    out["layers"][group][target] = module
  return out


def projections(cfg) -> dict[str, tuple[str, int]]:
  """target -> (module group, number of input axes) for every projection of a model."""
  from ftjax.models.layout import PROJECTIONS
  return {name: (row.group, len(row.in_axes)) for name, row in PROJECTIONS.items()}


def check_model(cfg, mode: str, block_size: int) -> None:
  """ValueError naming `quant_block_size` and the projection whose input dim it does not fit."""
  from ftjax.models.layout import PROJECTIONS, axis_sizes
  if mode not in MODES:
    raise ValueError(f"lora.base_quant: unknown {mode!r}; choose from {', '.join(MODES)}")
  if block_size < 1:
    raise ValueError(f"lora.quant_block_size: must be >= 1, got {block_size}")
  sizes = axis_sizes(cfg)
  for name, row in PROJECTIONS.items():
    axis = row.in_axes[-1]
    problem = check_block_size((sizes[axis],), 0, block_size, mode)
    if problem:
      raise ValueError(f"lora.quant_block_size: {name}: {problem} ({axis}={sizes[axis]})")
