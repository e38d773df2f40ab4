"""Self-attention over packed sequences: one function, a kernel per backend.

`dot_product_attention` is what the decoder calls for training and scoring (no KV cache): causal
attention within each segment of a packed row, segment id 0 being padding. It picks a fused kernel
where one applies and falls back to the reference einsum where none does:

  "xla"         the reference: scores materialised, any mask, soft-capping, every backend.
  "cudnn"       `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16): causal
                and sliding windows in the kernel; packing as a segment mask the kernel reads.
  "pallas_gpu"  `jax.experimental.pallas.ops.gpu.attention.mha` (Triton): segment ids and
                causality in the kernel; no sliding window or soft-capping.
  "splash"      TPU splash attention (what MaxText uses): segment ids, causal and local masks and
                soft-capping in the kernel; grouped heads run as multi-query kernels per KV head.
  "cpu_bf16"    CPU, bfloat16: the reference's math as 2-D products, one row and KV head at a
                time, every product (two forward, four backward, through a `jax.custom_vjp`)
                taking bf16 inputs and accumulating in fp32. XLA:CPU runs only such 2-D
                bf16 x bf16 -> fp32 dots on its bf16 kernels (AVX512-BF16); the reference's
                batched einsums and JAX's transposes of them run at a fraction of that (issue 22).
  "auto"        GPU: cudnn; TPU: splash; CPU: cpu_bf16 for bf16; otherwise xla — each falling
                back to xla per call when the kernel cannot serve it (soft-capping on cudnn and
                cpu_bf16, fp32 on cudnn and cpu_bf16, lengths the kernel's blocks do not tile).

An explicit choice that cannot serve a call raises instead of falling back, so a benchmark never
measures the reference by accident. `interpret=True` runs the Pallas kernels in interpret mode
(CPU), which is how the tests check them against the reference.

Shapes: q [batch, seq, heads, head_dim] (already scaled is NOT assumed: `scale` is applied here),
k, v [batch, seq, kv_heads, head_dim], segment_ids [batch, seq] int32; returns q's shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models.config import ModelConfig

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_gpu", "splash", "cpu_bf16")
NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # a masked score (finite: no NaN rows)


class AttentionUnsupported(ValueError):
  """The requested kernel cannot compute this call (shape, dtype or feature)."""


def reference_mask(segment_ids, sliding_window=None):
  """Boolean [batch, q, k]: causal, same segment, key not padding, within the window if given."""
  seq = segment_ids.shape[1]
  slots = jnp.arange(seq, dtype=jnp.int32)
  causal = slots[:, None] >= slots[None, :]
  mask = causal[None] & (segment_ids[:, :, None] == segment_ids[:, None, :]) \
      & (segment_ids != 0)[:, None, :]
  if sliding_window:
    mask = mask & ((slots[:, None] - slots[None, :]) < sliding_window)[None]
  return mask


def attention_with_mask(q, k, v, mask, *, scale, softcap=None):
  """The reference: q [b, t, h, d], k/v [b, s, kv, d], mask [b, t, s] -> [b, t, h, d]."""
  b, t, h, d = q.shape
  kv = k.shape[2]
  dt = q.dtype
  q = q.reshape(b, t, kv, h // kv, d) * jnp.asarray(scale, dt)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  if softcap:
    scores = jnp.tanh(scores / softcap) * softcap
  scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dt)
  return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def resolve(implementation: str, *, dtype, softcap, seq_len: int, head_dim: int,
            platform: str | None = None) -> str:
  """The kernel that will run: `implementation` itself, or for "auto" the backend's kernel when
  it can serve these settings, else "xla". Raises AttentionUnsupported for an explicit kernel
  that cannot."""
  if implementation not in IMPLEMENTATIONS:
    raise AttentionUnsupported(
        f"attention implementation {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
  platform = platform or jax.default_backend()
  if implementation == "auto":
    candidate = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash", "cpu": "cpu_bf16"}.get(
        platform, "xla")
    if candidate == "xla":
      return "xla"
    try:
      return resolve(candidate, dtype=dtype, softcap=softcap, seq_len=seq_len, head_dim=head_dim,
                     platform=platform)
    except AttentionUnsupported:
      return "xla"
  dtype = jnp.dtype(dtype)
  if implementation == "cudnn":
    if dtype not in (jnp.bfloat16, jnp.float16):
      raise AttentionUnsupported(f"cudnn attention needs bfloat16 or float16, not {dtype}")
    if softcap:
      raise AttentionUnsupported("cudnn attention has no logit soft-capping")
    if head_dim % 8 or head_dim > 256:
      raise AttentionUnsupported(f"cudnn attention needs head_dim % 8 == 0 and <= 256, "
                                 f"not {head_dim}")
  if implementation == "cpu_bf16":
    if dtype != jnp.bfloat16:
      raise AttentionUnsupported(f"cpu_bf16 attention needs bfloat16, not {dtype}")
    if softcap:
      raise AttentionUnsupported("cpu_bf16 attention has no logit soft-capping")
  if implementation == "pallas_gpu" and softcap:
    raise AttentionUnsupported("pallas_gpu attention has no logit soft-capping")
  if implementation == "splash" and seq_len % 128:
    raise AttentionUnsupported(f"splash attention needs a sequence length divisible by 128, "
                               f"not {seq_len}")
  return implementation


def dot_product_attention(q, k, v, segment_ids, *, scale: float, softcap: float | None = None,
                          sliding_window: int | None = None, is_sliding=None,
                          implementation: str = "auto", interpret: bool | None = None):
  """Causal attention within segments. `sliding_window` with `is_sliding` (a traced bool, e.g.
  the layer's flag inside a scan over layers) windows only the layers that slide; with
  `is_sliding=None` a given window applies to every call. `interpret=None` interprets the
  Pallas kernels on CPU, where they cannot compile (the tests run them that way)."""
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  impl = resolve(implementation, dtype=q.dtype, softcap=softcap, seq_len=q.shape[1],
                 head_dim=q.shape[-1])
  if impl == "pallas_gpu" and sliding_window:
    if implementation != "auto":
      raise AttentionUnsupported("pallas_gpu attention has no sliding window")
    impl = "xla"

  def run(window):
    if impl == "xla":
      return attention_with_mask(q, k, v, reference_mask(segment_ids, window), scale=scale,
                                 softcap=softcap)
    if impl == "cpu_bf16":
      return bf16_rows_attention(q, k, v, reference_mask(segment_ids, window), scale)
    if impl == "cudnn":
      return _cudnn(q, k, v, segment_ids, scale, window)
    if impl == "pallas_gpu":
      return _pallas_gpu(q, k, v, segment_ids, scale, interpret)
    return _splash(q, k, v, segment_ids, scale, softcap, window, interpret)

  if not sliding_window:
    return run(None)
  if is_sliding is None:
    return run(sliding_window)
  if impl in ("xla", "cpu_bf16"):  # one masked attention; the layer's flag picks the mask
    mask = jnp.where(is_sliding, reference_mask(segment_ids, sliding_window),
                     reference_mask(segment_ids))
    if impl == "cpu_bf16":
      return bf16_rows_attention(q, k, v, mask, scale)
    return attention_with_mask(q, k, v, mask, scale=scale, softcap=softcap)
  return jax.lax.cond(is_sliding, lambda: run(sliding_window), lambda: run(None))


def _cudnn(q, k, v, segment_ids, scale, window):
  # Packing is a segment mask (cuDNN reads it as a bias); the causal and window parts stay in
  # the kernel, which skips the blocks they exclude.
  same_segment = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [b, 1, t, s]
  return jax.nn.dot_product_attention(
      q, k, v, mask=same_segment, scale=scale, is_causal=True,
      local_window_size=None if window is None else (window - 1, 0), implementation="cudnn")


def _pallas_gpu(q, k, v, segment_ids, scale, interpret):
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  group = q.shape[2] // k.shape[2]
  if group > 1:  # the kernel wants as many KV heads as query heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  block = min(128, q.shape[1])
  sizes = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=block,
                                   block_kv_dkv=block, block_q_dq=block, block_kv_dq=block)
  return gpu_attention.mha(q, k, v, segment_ids, sm_scale=scale, causal=True, block_sizes=sizes,
                           interpret=interpret)


def _splash_kernel(seq_len: int, group: int, window: int | None, softcap: float | None,
                   interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as splash, splash_attention_mask as splash_mask)
  if window:
    one = splash_mask.LocalMask((seq_len, seq_len), window_size=(window - 1, 0), offset=0)
  else:
    one = splash_mask.CausalMask((seq_len, seq_len))
  block = max(b for b in (512, 256, 128) if seq_len % b == 0)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  return splash.make_splash_mqa(splash_mask.MultiHeadMask([one] * group), head_shards=1,
                                q_seq_shards=1, block_sizes=sizes, attn_logits_soft_cap=softcap,
                                interpret=interpret)


def _splash(q, k, v, segment_ids, scale, softcap, window, interpret):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  b, t, h, d = q.shape
  kv = k.shape[2]
  kernel = _splash_kernel(t, h // kv, window, softcap, interpret)
  # [b, t, kv, g, d] -> [b, kv, g, t, d]: one multi-query kernel per (row, KV head).
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kv, s, d]

  def one_row(q_row, k_row, v_row, segments):
    ids = splash.SegmentIds(q=segments, kv=segments)
    return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(q_row, k_row, v_row)

  out = jax.vmap(one_row)(q, k, v, segment_ids)  # [b, kv, g, t, d]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


# ----------------------------------------------------------------------------- cpu_bf16


def _f32_dot(a, b, contract_a: int, contract_b: int):
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _rows(x, j: int, group: int):
  """[t, heads, d] -> the `group` query heads of KV head j as [t * group, d] (rows (t, g))."""
  return x[:, j * group:(j + 1) * group].reshape(-1, x.shape[-1])


def _row_forward(q, k, v, mask, scale):
  """One row: q [t, h, d], k/v [s, kv, d] bf16, mask [t, s] -> (out [t, h, d] bf16, probs
  [kv, t * g, s] fp32)."""
  t, h, d = q.shape
  kv = k.shape[1]
  group = h // kv
  mask = jnp.repeat(mask, group, axis=0)  # rows (t, g)
  outs, probs = [], []
  for j in range(kv):
    scores = _f32_dot(_rows(q, j, group), k[:, j], 1, 1) * scale  # [t * g, s]
    p = jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=-1)
    outs.append(_f32_dot(p.astype(jnp.bfloat16), v[:, j], 1, 0).reshape(t, group, d))
    probs.append(p)
  return jnp.concatenate(outs, axis=1).astype(q.dtype), jnp.stack(probs)


def _row_backward(q, k, v, probs, d_out, scale):
  from ftjax.models.matmul import _transposed_copy
  kv = k.shape[1]
  group = q.shape[1] // kv
  d_out = d_out.astype(jnp.bfloat16)
  dqs, dks, dvs = [], [], []
  for j in range(kv):
    p, do, qj = probs[j], _rows(d_out, j, group), _rows(q, j, group)
    dp = _f32_dot(do, v[:, j], 1, 1)  # [t * g, s]
    ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * scale).astype(jnp.bfloat16)
    # dK and dV sum over query rows: [d, rows] @ [rows, s] with a row-major transposed copy as
    # lhs (see matmul._transposed_copy), transposed back behind a barrier so that XLA does not
    # fold the transpose into the product (a dot XLA:CPU then cannot run in bf16).
    dv = _f32_dot(_transposed_copy(do), p.astype(jnp.bfloat16), 1, 0)
    dk = _f32_dot(_transposed_copy(qj), ds, 1, 0)
    dqs.append(_f32_dot(ds, k[:, j], 1, 0).reshape(q.shape[0], group, -1))
    dks.append(jax.lax.optimization_barrier(dk).T)
    dvs.append(jax.lax.optimization_barrier(dv).T)
  return (jnp.concatenate(dqs, axis=1).astype(q.dtype), jnp.stack(dks, 1).astype(k.dtype),
          jnp.stack(dvs, 1).astype(v.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def bf16_rows_attention(q, k, v, mask, scale: float):
  """The "cpu_bf16" kernel: `attention_with_mask`'s math (no soft-capping) for bf16 q, k, v
  [b, t|s, heads, d] and a boolean mask [b, t, s]; rows one after another (`lax.map`)."""
  return _rows_attention_fwd(q, k, v, mask, scale)[0]


def _rows_attention_fwd(q, k, v, mask, scale):
  out, probs = jax.lax.map(lambda a: _row_forward(*a, scale), (q, k, v, mask))
  return out, (q, k, v, probs)


def _rows_attention_bwd(scale, residuals, d_out):
  q, k, v, probs = residuals
  dq, dk, dv = jax.lax.map(lambda a: _row_backward(*a, scale), (q, k, v, probs, d_out))
  return dq, dk, dv, None


bf16_rows_attention.defvjp(_rows_attention_fwd, _rows_attention_bwd)


def bf16_rows_segments(q, segments):
  """Decoding's attention over several key segments (a shared prefix, the cache, the new
  tokens) in one softmax, as `cpu_bf16` computes it: forward only, rows one after another, 2-D
  bf16 products with fp32 accumulation. q [b, t, kv, g, d] bf16, already scaled; each segment
  (k, v, mask): k, v [b, kv, s, d] (a row's own) or [kv, s, d] (shared by every row), mask
  [b, t, s]. Returns [b, t, kv, g, d] bf16. For prompts (t in the tens or more); a decode step's
  one token is cheaper as the batched einsum."""
  b, t, kv, group, d = q.shape
  own = [(k, v) for k, v, _ in segments if k.ndim == 4]
  shared = [(k, v) for k, v, _ in segments if k.ndim == 3]
  is_own = [k.ndim == 4 for k, _, _ in segments]

  def row(args):
    q_row, own_kv, masks = args
    own_it, shared_it = iter(own_kv), iter(shared)
    kvs = [next(own_it) if o else next(shared_it) for o in is_own]
    masks = [jnp.repeat(m, group, axis=0) for m in masks]  # rows (t, g)
    outs = []
    for j in range(kv):
      qj = q_row[:, j].reshape(t * group, d)
      scores = [jnp.where(m, _f32_dot(qj, k[j], 1, 1), NEG_INF)
                for (k, _), m in zip(kvs, masks)]
      probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1).astype(jnp.bfloat16)
      out, start = None, 0
      for k, v in kvs:
        size = k.shape[1]
        part = _f32_dot(probs[:, start:start + size], v[j], 1, 0)
        out, start = part if out is None else out + part, start + size
      outs.append(out.reshape(t, group, d))
    return jnp.stack(outs, axis=1).astype(q.dtype)

  return jax.lax.map(row, (q, own, [m for _, _, m in segments]))


def attention_masks(cfg: ModelConfig, q_slots, k_slots, k_valid, q_segments=None,
                    k_segments=None):
  """Boolean [batch, q, k] masks (full, sliding-or-None) from slot indices and key validity."""
  causal = q_slots[:, :, None] >= k_slots[:, None, :]
  mask = causal & k_valid[:, None, :]
  if q_segments is not None:
    mask = mask & (q_segments[:, :, None] == k_segments[:, None, :])
  sliding = None
  if cfg.sliding_window and any(cfg.layer_is_sliding):
    sliding = mask & (q_slots[:, :, None] - k_slots[:, None, :] < cfg.sliding_window)
  return mask, sliding


def prefix_attention_masks(cfg: ModelConfig, q_positions, prefix_valid):
  """Boolean [batch, q, prefix_slots] masks (full, sliding-or-None) onto a shared prefix.

  The prefix precedes every query, so causality holds for all its valid slots. The sliding
  window counts positions (prefix slot i holds position i), so it is exact even though padding
  may sit between the prefix and a row's tokens.
  """
  k_positions = jnp.arange(prefix_valid.shape[0], dtype=jnp.int32)
  mask = jnp.broadcast_to(prefix_valid[None, None, :],
                          q_positions.shape + prefix_valid.shape)
  sliding = None
  if cfg.sliding_window and any(cfg.layer_is_sliding):
    sliding = mask & (q_positions[:, :, None] - k_positions[None, None, :] < cfg.sliding_window)
  return mask, sliding
