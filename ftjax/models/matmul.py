"""The decoder's weight matmuls: one function, `project`, for every projection, the LM head and
LoRA's two products.

With a bfloat16 compute dtype all three products of a matmul (the forward `x @ w`, and in the
backward pass `dy @ w.T` and `x.T @ dy`) take bf16 inputs and accumulate in fp32
(`preferred_element_type=float32`), through a `jax.custom_vjp`. Why (issue 22): on XLA:CPU a
bf16 x bf16 -> fp32 dot runs on YNNPACK's bf16 kernels (AVX512-BF16), 2-3x the fp32 rate, while a
dot with a bf16 result, or with one fp32 operand, is upcast to fp32 and runs no faster than fp32.
A CPU without bf16 dot-product units (an AVX2-only EPYC) runs the bf16 x bf16 -> fp32 dot at ~0.75x
its fp32 rate (BENCHMARKS.md "On a CPU without bf16 units"); `bf16_speed_note` says so to a run.
JAX's own transpose rule of a bf16 dot gives bf16-result dots in the backward pass, so without
the custom rule only the forward would gain. The weight gradient also comes back unrounded, in
the weight's dtype (fp32 master weights get fp32 gradients, not bf16 ones).

Any other compute dtype (fp32, the default, and fp16) runs exactly the plain `dot_general` the
model ran before, so fp32 results are bit-identical.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def project(x: Array, kernel: Array, num_contract: int, dtype, out_dtype=None,
            kernel_out_first: bool = False) -> Array:
  """Contracts the trailing `num_contract` axes of x with the kernel's input axes.

  x [..., *in]; kernel [*in, *out], or [*out, *in] with `kernel_out_first` (the tied embedding
  used as the LM head). The product runs in `dtype`; the result has `out_dtype` (default `dtype`;
  fp32 for logits). Returns [..., *out].
  """
  if jnp.dtype(dtype) != jnp.bfloat16:
    return plain_project(x, kernel, num_contract, dtype, out_dtype, kernel_out_first)
  out_dtype = jnp.dtype(dtype if out_dtype is None else out_dtype)
  # x is cast outside the custom rule: its residual is then bf16, and the cast's own transpose
  # returns an fp32 input's gradient in fp32.
  return _bf16_dot(x.astype(jnp.bfloat16), kernel, num_contract, kernel_out_first, out_dtype)


_NOTED: list[str] = []


def bf16_speed_note(dtype) -> str | None:
  """The line a run prints once when it computes in bf16 on a CPU without bf16 dot-product units
  (no AVX512-BF16, AMX or Arm BF16 among /proc/cpuinfo's flags), where bf16 products run no
  faster than fp32; None for another dtype, an accelerator, a CPU with the units, or one whose
  flags are unknown (`ftjax.provenance.cpu`)."""
  if jnp.dtype(dtype) != jnp.bfloat16 or jax.default_backend() != "cpu":
    return None
  from ftjax import provenance
  cpu = provenance.cpu()
  if cpu["bf16_units"] is not False:
    return None
  return (f"note: dtype bfloat16 on a CPU without bf16 dot-product units ({cpu['model']}: no "
          "AVX512-BF16 or AMX): bf16 products run no faster than fp32 here, so dtype=float32 "
          "may be the faster run (its results round differently)")


def note_bf16_speed(dtype, say: Callable[[str], None] | None = None) -> None:
  """Prints `bf16_speed_note` (to stderr, or through `say`) the first time a process has one."""
  note = bf16_speed_note(dtype)
  if note is None or note in _NOTED:
    return
  _NOTED.append(note)
  if say is None:
    print(note, file=sys.stderr, flush=True)
  else:
    say(note)


def plain_project(x: Array, kernel: Array, num_contract: int, dtype, out_dtype=None,
                  kernel_out_first: bool = False) -> Array:
  """`project` with JAX's own differentiation of one `dot_general`: the path of every dtype but
  bf16 (and of bf16 too before issue 22, which experiments/bench/bf16_bench.py times)."""
  dtype = jnp.dtype(dtype)
  out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
  return jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                             _dims(x.ndim, kernel.ndim, num_contract, kernel_out_first),
                             preferred_element_type=None if out_dtype == dtype else out_dtype)


def _dims(x_ndim, kernel_ndim, num_contract, kernel_out_first):
  x_axes = tuple(range(x_ndim - num_contract, x_ndim))
  first = kernel_ndim - num_contract if kernel_out_first else 0
  return (x_axes, tuple(range(first, first + num_contract))), ((), ())


def _f32_dot(a, b, dims):
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _transposed_copy(a: Array) -> Array:
  """a [m, n] -> a.T [n, m], laid out row-major in memory.

  YNNPACK takes a dot only when the lhs's contracted axis is its minor one; XLA:CPU folds a plain
  transpose into the dot (contracting the lhs's major axis instead) and then upcasts that dot to
  fp32. A gather of the transpose's elements in order is not folded: XLA turns it into a copy.
  Elsewhere (GPU, TPU) the dot reads transposed operands itself, so a copy would only cost."""
  if jax.default_backend() != "cpu":
    return a.T
  m, n = a.shape
  order = jnp.arange(m * n, dtype=jnp.int32)
  flat = jnp.take(a.T.reshape(m * n), order, indices_are_sorted=True, unique_indices=True,
                  mode="clip")
  return flat.reshape(n, m)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _bf16_dot(x, kernel, num_contract, kernel_out_first, out_dtype):
  dims = _dims(x.ndim, kernel.ndim, num_contract, kernel_out_first)
  return _f32_dot(x, kernel.astype(jnp.bfloat16), dims).astype(out_dtype)


def _bf16_dot_fwd(x, kernel, num_contract, kernel_out_first, out_dtype):
  # Residuals: x (bf16) and the kernel as given (a param the backward pass holds anyway).
  return _bf16_dot(x, kernel, num_contract, kernel_out_first, out_dtype), (x, kernel)


def _bf16_dot_bwd(num_contract, kernel_out_first, out_dtype, residuals, dy):
  x, kernel = residuals
  w = kernel.astype(jnp.bfloat16)
  dy = dy.astype(jnp.bfloat16)
  num_out = kernel.ndim - num_contract
  out_axes = tuple(range(dy.ndim - num_out, dy.ndim))
  w_out = tuple(range(num_out)) if kernel_out_first else tuple(range(num_contract, kernel.ndim))
  dx = _f32_dot(dy, w, ((out_axes, w_out), ((), ()))).astype(x.dtype)  # [..., *in]
  # The weight gradient sums over every leading (token) axis: as one 2-D product whose lhs is a
  # transposed copy, [in, tokens] @ [tokens, out] (or [out, tokens] @ [tokens, in]).
  x2 = x.reshape(-1, math.prod(x.shape[x.ndim - num_contract:]))
  dy2 = dy.reshape(x2.shape[0], -1)
  if kernel_out_first:
    dw = _f32_dot(_transposed_copy(dy2), x2, (((1,), (0,)), ((), ())))
  else:
    dw = _f32_dot(_transposed_copy(x2), dy2, (((1,), (0,)), ((), ())))
  return dx, dw.reshape(kernel.shape).astype(kernel.dtype)


_bf16_dot.defvjp(_bf16_dot_fwd, _bf16_dot_bwd)


def project_quantized(x: Array, codes: Array, scales: Array, num_contract: int, dtype, *,
                      mode: str, block_size: int) -> Array:
  """`project` onto a frozen block-quantized kernel (`ftjax.models.quant`): the kernel is
  dequantized to `dtype` inside the product, in the forward pass and again in the backward pass,
  so what the backward pass keeps is the codes (params held anyway), never a dequantized copy (a
  scan over layers would otherwise stack one per layer: the whole model at full width). The codes
  and scales get zero cotangents: a quantized base is frozen. Returns [..., *out] in `dtype`."""
  return _quantized_dot(x, codes, scales, num_contract, jnp.dtype(dtype), mode, block_size)


def _dequantized(codes, scales, num_contract, dtype, mode, block_size):
  from ftjax.models import quant
  return quant.dequantize(codes, scales, mode=mode, block_size=block_size,
                          axis=num_contract - 1, dtype=dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _quantized_dot(x, codes, scales, num_contract, dtype, mode, block_size):
  w = _dequantized(codes, scales, num_contract, dtype, mode, block_size)
  dims = _dims(x.ndim, w.ndim, num_contract, False)
  if dtype == jnp.bfloat16:
    return _f32_dot(x.astype(dtype), w, dims).astype(dtype)
  return jax.lax.dot_general(x.astype(dtype), w, dims)


def _quantized_dot_fwd(x, codes, scales, num_contract, dtype, mode, block_size):
  y = _quantized_dot(x, codes, scales, num_contract, dtype, mode, block_size)
  return y, (codes, scales, jnp.zeros((0,), x.dtype))  # the empty array carries x's dtype


def _quantized_dot_bwd(num_contract, dtype, mode, block_size, residuals, dy):
  codes, scales, x_dtype = residuals
  w = _dequantized(codes, scales, num_contract, dtype, mode, block_size)
  num_out = w.ndim - num_contract
  out_axes = tuple(range(dy.ndim - num_out, dy.ndim))
  dims = ((out_axes, tuple(range(num_contract, w.ndim))), ((), ()))
  if dtype == jnp.bfloat16:
    dx = _f32_dot(dy.astype(dtype), w, dims)
  else:
    dx = jax.lax.dot_general(dy.astype(dtype), w, dims)
  return (dx.astype(x_dtype.dtype), np.zeros(codes.shape, jax.dtypes.float0),
          jnp.zeros_like(scales))


_quantized_dot.defvjp(_quantized_dot_fwd, _quantized_dot_bwd)
