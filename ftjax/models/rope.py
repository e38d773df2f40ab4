"""Rotary position embeddings: the inverse frequencies (with Llama 3's and linear scaling, and
Gemma 3's unscaled local ones), their cos/sin tables, and the rotate-half rotation of HF
checkpoints."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models.config import ModelConfig

Array = jax.Array


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> np.ndarray:
  """Inverse frequencies; `local` gives the unscaled ones of Gemma 3's sliding-window layers."""
  dim = cfg.head_dim
  theta = cfg.rope_local_theta if local else cfg.rope_theta
  inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
  if local:
    return inv_freq.astype(np.float32)
  if cfg.rope_llama3_scaling is not None:
    factor, low_ff, high_ff, old_len = cfg.rope_llama3_scaling
    low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(is_medium, smoothed, scaled)
  return (inv_freq / cfg.rope_linear_factor).astype(np.float32)


def rope_tables(cfg: ModelConfig, positions: Array, local: bool = False) -> tuple[Array, Array]:
  """cos, sin: [batch, seq, head_dim // 2] in fp32."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg, local))
  return jnp.cos(freqs), jnp.sin(freqs)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  # x: [batch, seq, heads, head_dim]; the rotate-half convention of HF checkpoints.
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
