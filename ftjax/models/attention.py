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
  "auto"        GPU: cudnn; TPU: splash; otherwise xla — each falling back to xla per call when
                the kernel cannot serve it (soft-capping on cudnn, fp32 on cudnn, lengths the
                kernel's blocks do not tile).

An explicit choice that cannot serve a call raises instead of falling back, so a benchmark never
measures the reference by accident. `interpret=True` runs the Pallas kernels in interpret mode
(CPU), which is how the tests check them against the reference.

Shapes: q [batch, seq, heads, head_dim] (already scaled is NOT assumed: `scale` is applied here),
k, v [batch, seq, kv_heads, head_dim], segment_ids [batch, seq] int32; returns q's shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_gpu", "splash")
_NEG_INF = -0.7 * float(np.finfo(np.float32).max)


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
  scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
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
    candidate = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")
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
    if impl == "cudnn":
      return _cudnn(q, k, v, segment_ids, scale, window)
    if impl == "pallas_gpu":
      return _pallas_gpu(q, k, v, segment_ids, scale, interpret)
    return _splash(q, k, v, segment_ids, scale, softcap, window, interpret)

  if not sliding_window:
    return run(None)
  if is_sliding is None:
    return run(sliding_window)
  if impl == "xla":  # one masked einsum; the layer's flag picks the mask
    mask = jnp.where(is_sliding, reference_mask(segment_ids, sliding_window),
                     reference_mask(segment_ids))
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
