"""A decoder-only transformer in Flax Linen covering Llama, Mistral, Qwen2 and Gemma (1, 2).

Every parameter and activation carries logical axis names (`embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`, `vocab`, `layers`, `activation_*`); `ftjax.sharding` maps them to mesh axes.
Layers are an `nn.scan`, so params are stacked on a leading `layers` axis and compile time does
not grow with depth.

LoRA adapters, when present, live in a separate `lora` collection (see `ftjax.models.lora`): each
projection adds `dropout(x) @ a @ b * scale` if the collection holds an adapter for it (DoRA
when the adapter also holds a magnitude `m`). With `cfg.base_quant` the projections' kernels are
stored block-quantized (QLoRA: `codes` and `scales`, `ftjax.models.quant`).

The KV cache is an explicit argument and return value (no mutable collections):
  cache = {"k": [layers, batch, kv_heads, max_len, head_dim], "v": same}
(slots next to head_dim: attention's two products read a head's keys/values as they are stored,
with no transposed copy per layer and step)
Decoding may also read a shared prefix (cache-augmented generation): keys/values of tokens that
precede every row, held once without a batch axis and read by all rows (never copied per row):
  prefix = {"k": [layers, kv_heads, prefix_slots, head_dim], "v": same}
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models import attention as attention_lib
from ftjax.models import matmul
from ftjax.models import quant
from ftjax.models.config import ModelConfig
from ftjax.models.rope import apply_rope, rope_tables

Array = jax.Array


def _constrain(x, names):
  return nn.with_logical_constraint(x, names)


def _param(module, name, init, shape, names, dtype):
  return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def _mix32(x: Array) -> Array:
  """A 32-bit integer hash with full avalanche (lowbias32, C. Wellons' hash-prospector)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x21F0AAAD)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0xD35A2D97)
  return x ^ (x >> 15)


def dropout_keep_mask(rng: Array, shape: tuple[int, ...], rate: float) -> Array:
  """Boolean keep-mask, P(keep) = 1 - rate (to 2^-32): a counter-based hash of each element's
  index, seeded from `rng`. `jax.random.bernoulli` (threefry) costs ~7x more on CPU, where LoRA
  dropout masks over every adapted projection's input were a quarter of the step; dropout needs
  independent fair bits, not a cryptographic generator. Elementwise in the index, so it shards
  like the activations it masks."""
  seed = jax.random.bits(rng, (2,), jnp.uint32)
  index = jnp.zeros(shape, jnp.uint32)
  for axis, stride in enumerate(np.cumprod((shape[1:] + (1,))[::-1])[::-1]):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
  words = _mix32(_mix32(index * jnp.uint32(0x9E3779B9) + seed[0]) ^ seed[1])
  return words >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))


class Projection(nn.Module):
  """`y = einsum(x, kernel) (+ bias)` over the trailing `contract` axes of x, with optional LoRA.
  Every product goes through `matmul.project` (bf16 inputs, fp32 accumulation under bf16).

  With `base_quant` (int8 | nf4) the kernel is stored as block-quantized `codes` and `scales`
  (`ftjax.models.quant`) and dequantized inside the product (`matmul.project_quantized`).
  An adapter with a magnitude `m` is DoRA (Liu et al. 2024, as PEFT's use_dora):
  `m * (W + s·ab) / ||W + s·ab||` with the column norm (over the input axes) held constant in the
  backward pass, as PEFT detaches it."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]
  use_bias: bool
  dtype: Any
  param_dtype: Any
  lora_scale: float = 1.0
  lora_dropout: float = 0.0
  base_quant: str = "none"
  quant_block_size: int = 64

  def _base(self):
    """(x -> x @ W in dtype, () -> W in fp32) for the stored kernel, plain or quantized."""
    n_in = len(self.in_shape)
    names = self.in_names + self.out_names
    if self.base_quant == "none":
      kernel = _param(self, "kernel", nn.initializers.lecun_normal(
          in_axis=tuple(range(n_in)),
          out_axis=tuple(range(n_in, n_in + len(self.out_shape)))),
          self.in_shape + self.out_shape, names, self.param_dtype)
      return (lambda h: matmul.project(h, kernel, n_in, self.dtype),
              lambda: kernel.astype(jnp.float32))
    codes_shape, scales_shape = quant.quantized_shapes(
        self.in_shape + self.out_shape, self.base_quant, self.quant_block_size, n_in - 1)
    codes_dtype = jnp.int8 if self.base_quant == "int8" else jnp.uint8
    codes = _param(self, "codes", nn.initializers.zeros, codes_shape, names, codes_dtype)
    scales = _param(self, "scales", nn.initializers.ones, scales_shape, names, jnp.float32)
    mode, block = self.base_quant, self.quant_block_size
    return (lambda h: matmul.project_quantized(h, codes, scales, n_in, self.dtype, mode=mode,
                                               block_size=block),
            lambda: quant.dequantize(codes, scales, mode=mode, block_size=block, axis=n_in - 1))

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    base, base_weight = self._base()
    n_in = len(self.in_shape)
    y = base(x)
    if self.has_variable("lora", "a"):
      a = self.get_variable("lora", "a")  # [*in_shape, rank]
      b = self.get_variable("lora", "b")  # [rank, *out_shape]
      h = x.astype(self.dtype)
      dropped = not deterministic and self.lora_dropout > 0
      if dropped:
        keep = 1.0 - self.lora_dropout
        mask = dropout_keep_mask(self.make_rng("dropout"), h.shape, self.lora_dropout)
        h = jnp.where(mask, h / keep, 0).astype(self.dtype)
      lora = matmul.project(matmul.project(h, a, n_in, self.dtype), b, 1, self.dtype)
      lora = lora * self.lora_scale
      if self.has_variable("lora", "m"):
        magnitude = self.get_variable("lora", "m")  # [*out_shape]
        norm = jax.lax.stop_gradient(dora_weight_norm(base_weight(), a, b, self.lora_scale))
        mag_scale = (magnitude.astype(jnp.float32) / norm).astype(self.dtype)
        # PEFT: base(x) + (m/||.|| - 1) * (dropout(x) @ W) + m/||.|| * lora(dropout(x)).
        base_h = base(h) if dropped else y
        y = y + (mag_scale - 1) * base_h + mag_scale * lora.astype(self.dtype)
      else:
        y = y + lora.astype(self.dtype)
    if self.use_bias:
      bias = _param(self, "bias", nn.initializers.zeros, self.out_shape, self.out_names,
                    self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def dora_weight_norm(kernel: Array, a: Array, b: Array, scale: float) -> Array:
  """||W + scale · a b|| over the input axes, in fp32: kernel [*in, *out], a [*in, rank],
  b [rank, *out] -> [*out] (PEFT's `weight_norm`, the norm of each output unit's row)."""
  rank = a.shape[-1]
  n_in = a.ndim - 1
  delta = jnp.einsum("ir,ro->io", a.reshape(-1, rank).astype(jnp.float32),
                     b.reshape(rank, -1).astype(jnp.float32)).reshape(kernel.shape)
  return jnp.sqrt(jnp.sum(jnp.square(kernel.astype(jnp.float32) + scale * delta),
                          axis=tuple(range(n_in))))


class RMSNorm(nn.Module):
  dim: int
  eps: float
  offset: float
  dtype: Any
  param_dtype: Any
  names: tuple[str, ...] = ("norm",)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = _param(self, "scale", init, (self.dim,), self.names, self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.offset:  # Gemma scales in fp32 before casting back.
      return (normed * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, cos, sin, mask, layer_cache, deterministic, prefix_kv=None,
               prefix_mask=None, segment_ids=None, is_sliding=None):
    """Training / scoring (no cache): `segment_ids` [batch, seq] and the layer's `is_sliding`
    flag go to `attention.dot_product_attention`, which picks the kernel (`mask` is None).
    Decoding: `mask` [batch, seq, cache_slots] over the cache.

    `prefix_kv` {"k", "v": [kv_heads, prefix_slots, head_dim]} (no batch axis: shared by every
    row) and `prefix_mask` [batch, seq, prefix_slots]: keys that precede the cache's, attended to
    in the same softmax."""
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    proj = functools.partial(Projection, dtype=dt, param_dtype=pdt, lora_scale=cfg.lora_scale,
                             base_quant=cfg.base_quant, quant_block_size=cfg.quant_block_size,
                             lora_dropout=cfg.lora_dropout)
    q = proj((e,), (h, d), ("embed",), ("heads", "head_dim"), cfg.qkv_bias, name="q_proj")(
        x, deterministic)
    k = proj((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias, name="k_proj")(
        x, deterministic)
    v = proj((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias, name="v_proj")(
        x, deterministic)
    if cfg.qk_norm:
      norm = functools.partial(RMSNorm, d, cfg.rms_norm_eps, cfg.norm_offset, dt, pdt,
                               names=("head_dim",))
      q, k = norm(name="q_norm")(q), norm(name="k_norm")(k)
    q = _constrain(apply_rope(q, cos, sin),
                   ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    k = _constrain(apply_rope(k, cos, sin),
                   ("activation_batch", "activation_length", "activation_kv_heads", "head_dim"))
    v = _constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", "head_dim"))

    b, t = q.shape[:2]
    group = h // kv
    scale = cfg.query_scale if cfg.query_scale is not None else d ** -0.5
    if layer_cache is None and prefix_kv is None:
      out = attention_lib.dot_product_attention(
          q, k, v, segment_ids, scale=scale, softcap=cfg.attn_logit_softcap,
          sliding_window=cfg.sliding_window if any(cfg.layer_is_sliding) else None,
          is_sliding=is_sliding, implementation=cfg.attention_impl)
      out = _constrain(out, ("activation_batch", "activation_length", "activation_heads",
                             "head_dim"))
      return proj((h, d), (e,), ("heads", "head_dim"), ("embed",), cfg.o_bias, name="o_proj")(
          out, deterministic), None
    # Decoding: this call's keys/values are returned as they will be stored (the cache's dtype,
    # [b, kv_heads, t, d]) and attended to beside the cache's other slots, which are only read.
    new_kv = {"k": k.astype(layer_cache["k"].dtype).transpose(0, 2, 1, 3),
              "v": v.astype(layer_cache["v"].dtype).transpose(0, 2, 1, 3)}
    old_mask, own_mask = mask
    segments = [(new_kv["k"].astype(dt), new_kv["v"].astype(dt), own_mask)]
    if old_mask is not None:  # None: the cache is empty (a first prefill)
      segments.insert(0, (layer_cache["k"].astype(dt), layer_cache["v"].astype(dt), old_mask))
    if prefix_kv is not None:  # [kv_heads, prefix_slots, head_dim]: no batch axis, shared
      segments.insert(0, (prefix_kv["k"].astype(dt), prefix_kv["v"].astype(dt), prefix_mask))
    out = _attend_segments(cfg, q.reshape(b, t, kv, group, d) * jnp.asarray(scale, dt), segments)
    out = out.reshape(b, t, h, d)
    out = _constrain(out, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    out = proj((h, d), (e,), ("heads", "head_dim"), ("embed",), cfg.o_bias, name="o_proj")(
        out, deterministic)
    return out, new_kv


def _attend_segments(cfg: ModelConfig, q, segments):
  """One softmax over several key segments: q [b, t, kv, g, d] (scaled); each segment (k, v,
  mask) with k, v [b, kv, s, d] (a row's own) or [kv, s, d] (shared by every row, read once for
  the whole batch: the einsums broadcast it, nothing is materialised per row) and mask
  [b, t, s]. Scores accumulate in fp32. Returns [b, t, kv, g, d]."""
  dt = q.dtype
  if q.shape[1] >= 16 and not cfg.attn_logit_softcap and attention_lib.resolve(
      cfg.attention_impl, dtype=dt, softcap=None, seq_len=q.shape[1],
      head_dim=q.shape[-1]) == "cpu_bf16":  # a prefill on the CPU in bf16: 2-D products
    return attention_lib.bf16_rows_segments(q, segments)
  scores, sizes = [], []
  for k, _, mask in segments:
    spec = "btkgd,ksd->bkgts" if k.ndim == 3 else "btkgd,bksd->bkgts"
    score = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32)
    if cfg.attn_logit_softcap:
      score = jnp.tanh(score / cfg.attn_logit_softcap) * cfg.attn_logit_softcap
    scores.append(jnp.where(mask[:, None, None, :, :], score, attention_lib.NEG_INF))
    sizes.append(k.shape[-2])
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1).astype(dt)
  out, start = None, 0
  for (_, v, _), size in zip(segments, sizes):
    # Each product's result in its canonical order (its batch axes first: [b, kv, g, t, d], or
    # [kv, b, g, t, d] for a shared segment, whose only batch axis is kv), transposed after:
    # written straight into another order, XLA:CPU folds the transpose into the product and has
    # no bf16 kernel for it ("Unsupported element type for DotThunk").
    part = probs[..., start:start + size]
    if v.ndim == 3:
      part = jnp.einsum("bkgts,ksd->kbgtd", part, v, preferred_element_type=jnp.float32)
      part = part.transpose(1, 0, 2, 3, 4)
    else:
      part = jnp.einsum("bkgts,bksd->bkgtd", part, v, preferred_element_type=jnp.float32)
    out, start = part if out is None else out + part, start + size
  return out.astype(dt).transpose(0, 3, 1, 2, 4)


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic):
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    e, f = cfg.hidden_size, cfg.intermediate_size
    proj = functools.partial(Projection, dtype=dt, param_dtype=pdt, use_bias=cfg.mlp_bias,
                             lora_scale=cfg.lora_scale, lora_dropout=cfg.lora_dropout,
                             base_quant=cfg.base_quant, quant_block_size=cfg.quant_block_size)
    gate = proj((e,), (f,), ("embed",), ("mlp",), name="gate_proj")(x, deterministic)
    up = proj((e,), (f,), ("embed",), ("mlp",), name="up_proj")(x, deterministic)
    if cfg.activation == "silu":
      act = jax.nn.silu(gate)
    else:
      act = jax.nn.gelu(gate, approximate=cfg.activation == "gelu_tanh")
    hidden = _constrain(act * up, ("activation_batch", "activation_length", "activation_mlp"))
    return proj((f,), (e,), ("mlp",), ("embed",), name="down_proj")(hidden, deterministic)


class DecoderLayer(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, layer_inputs, rope, masks, deterministic):
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = functools.partial(RMSNorm, cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset, dt, pdt)
    is_sliding, layer_cache, layer_prefix = layer_inputs
    full_mask, sliding_mask, prefix_masks, segment_ids = masks
    mask = full_mask  # decoding: (old cache, own tokens) masks
    if sliding_mask is not None:
      mask = jax.tree.map(lambda s, f: jnp.where(is_sliding, s, f), sliding_mask, full_mask)
    prefix_mask = None
    if prefix_masks is not None:
      prefix_full, prefix_sliding = prefix_masks
      prefix_mask = (prefix_full if prefix_sliding is None
                     else jnp.where(is_sliding, prefix_sliding, prefix_full))
    (cos, sin), local_rope = rope
    if local_rope is not None:
      cos, sin = jnp.where(is_sliding, local_rope[0], cos), jnp.where(is_sliding, local_rope[1], sin)

    h = norm(name="input_layernorm")(x)
    h, new_cache = Attention(cfg, name="self_attn")(h, cos, sin, mask, layer_cache, deterministic,
                                                   layer_prefix, prefix_mask, segment_ids,
                                                   is_sliding)
    if cfg.post_norms:
      h = norm(name="post_attention_layernorm")(h)
      x = x + h
      h = norm(name="pre_feedforward_layernorm")(x)
      h = MLP(cfg, name="mlp")(h, deterministic)
      h = norm(name="post_feedforward_layernorm")(h)
    else:
      x = x + h
      h = norm(name="post_attention_layernorm")(x)
      h = MLP(cfg, name="mlp")(h, deterministic)
    x = _constrain(x + h, ("activation_batch", "activation_length", "activation_embed"))
    return x, new_cache


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def resolve_remat(policy: str) -> str:
  """"auto" -> "full" on the CPU (XLA:CPU stacks a scanned layer's residuals slowly: recomputing
  the layer in the backward pass is 1.3-1.4x faster a step, BENCHMARKS.md), "none" elsewhere."""
  if policy == "auto":
    return "full" if jax.default_backend() == "cpu" else "none"
  return policy


class Transformer(nn.Module):
  """tokens [batch, seq] -> logits [batch, seq, vocab] (fp32)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, segment_ids: Array | None = None,
               cache: dict | None = None, cache_index: Array | None = None,
               kv_valid: Array | None = None, deterministic: bool = True,
               last_only: bool = False, prefix: dict | None = None,
               prefix_valid: Array | None = None, return_hidden: bool = False,
               cache_empty: bool = False):
    """Runs the decoder.

    Training / scoring (cache is None): `segment_ids` [batch, seq] (0 = padding) keep packed
    examples from attending to each other; `positions` restart at 0 in every segment.
    Decoding: `cache` holds `max_len` slots; the new tokens are written at `cache_index` and
    `kv_valid` [batch, max_len] says which slots hold real tokens (after this write).
    `last_only` computes logits for the last position only (prefill).
    With `prefix` {"k", "v": [layers, kv_heads, prefix_slots, head_dim]} (decoding only), every
    row also reads those keys, shared by the whole batch: prefix slot i holds position i and
    `prefix_valid` [prefix_slots] says which slots hold real tokens. The cache then holds only
    what follows the prefix; `positions` count on from the prefix's length.
    `cache_empty` (static): the cache holds nothing yet (a first prefill), so only this call's
    tokens are attended to, not the cache's empty slots.
    `return_hidden` returns the final-normed hidden states [batch, seq, hidden] instead of logits
    (the loss then applies `lm_head_weights` in chunks, never holding every position's logits).
    """
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    batch, seq = tokens.shape
    embedding = _param(self, "embedding", nn.initializers.normal(1.0),
                       (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pdt)
    # The lookup reads whole rows: gather the table's `embed` shards first (FSDP's all-gather of a
    # weight before use). Gathering from rows split over `fsdp` left the result split on `embed`,
    # which XLA could only re-split over the batch by replicating it ("involuntary full
    # rematerialization" on a data x fsdp x tensor mesh).
    table = _constrain(embedding, ("vocab", "activation_embed"))
    x = jnp.take(table, tokens, axis=0).astype(dt)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.hidden_size ** 0.5, dt)
    x = _constrain(x, ("activation_batch", "activation_length", "activation_embed"))

    if cache is None:  # the attention function builds its own mask (or none, in a kernel)
      if segment_ids is None:
        segment_ids = jnp.ones((batch, seq), jnp.int32)
      masks = (None, None)
      cache_index = jnp.zeros((), jnp.int32)
    else:
      # Two key segments: the cache as it was (its slots outside this write) and the tokens of
      # this call; the layers read the old cache and return only the new keys/values, written
      # into the cache once after the last layer (in place: no per-step copy of the cache).
      max_len = cache["k"].shape[3]
      q_slots = cache_index + jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
      k_slots = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (batch, max_len))
      outside = (k_slots < cache_index) | (k_slots >= cache_index + seq)
      old = attention_lib.attention_masks(cfg, q_slots, k_slots, kv_valid & outside)
      own_valid = jax.lax.dynamic_slice_in_dim(kv_valid, cache_index, seq, axis=1)
      own = attention_lib.attention_masks(cfg, q_slots, q_slots, own_valid)
      if cache_empty:
        old = (None, None)
      masks = ((old[0], own[0]), None if own[1] is None else (old[1], own[1]))
      segment_ids = None
    prefix_masks = None
    if prefix is not None:
      if cache is None:
        raise ValueError("a shared prefix needs a decoding cache")
      prefix_masks = attention_lib.prefix_attention_masks(cfg, positions, prefix_valid)
    masks = (*masks, prefix_masks, segment_ids)
    rope = (rope_tables(cfg, positions),
            rope_tables(cfg, positions, local=True) if cfg.rope_local_theta else None)

    layer_cls = DecoderLayer
    remat_policy = resolve_remat(cfg.remat_policy)
    if remat_policy != "none":
      layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[remat_policy],
                           prevent_cse=False, static_argnums=(5,))
    layers = nn.scan(
        layer_cls,
        variable_axes={"params": 0, "lora": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="layers")
    is_sliding = jnp.asarray(cfg.layer_is_sliding)
    x, new_kv = layers(x, (is_sliding, cache, prefix), rope, masks, deterministic)
    new_cache = None
    if cache is not None:  # new_kv: {"k", "v": [layers, batch, kv_heads, seq, head_dim]}
      zero = jnp.zeros((), jnp.int32)
      new_cache = {name: jax.lax.dynamic_update_slice(cache[name], new_kv[name],
                                                      (zero, zero, zero, cache_index, zero))
                   for name in ("k", "v")}

    x = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset, dt, pdt, name="final_norm")(x)
    if last_only:
      x = x[:, -1:]
    if return_hidden:
      if not cfg.tie_word_embeddings:  # create the head's param at init time all the same
        _param(self, "lm_head", nn.initializers.lecun_normal(),
               (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pdt)
      return x, new_cache
    if cfg.tie_word_embeddings:
      logits = matmul.project(x, embedding, 1, dt, jnp.float32, kernel_out_first=True)
    else:
      kernel = _param(self, "lm_head", nn.initializers.lecun_normal(),
                      (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pdt)
      logits = matmul.project(x, kernel, 1, dt, jnp.float32)
    if cfg.final_logit_softcap:
      logits = jnp.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
    logits = _constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits, new_cache


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def init_params(cfg: ModelConfig, rng: Array) -> dict:
  """Random params (plain pytree, unboxed). Jitted: run eagerly, Flax's init pass compiles every
  op of the forward separately (about 10 s for a 2-layer model on CPU)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.jit(lambda key: nn.unbox(Transformer(cfg).init(key, tokens, tokens)["params"]))(rng)


def logical_param_specs(cfg: ModelConfig) -> Any:
  """Pytree of logical PartitionSpecs matching the params tree."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), tokens, tokens))
  return nn.get_partition_spec(abstract)["params"]


def lm_head_weights(cfg: ModelConfig, params) -> tuple[Array, str]:
  """The output projection and its einsum subscript: ([vocab, hidden], "ve") when tied to the
  embedding, else ([hidden, vocab], "ev")."""
  if cfg.tie_word_embeddings:
    return params["embedding"], "ve"
  return params["lm_head"], "ev"


def _apply(cfg, params, tokens, positions, segment_ids, lora, deterministic, rngs, **kwargs):
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  variables = {"params": params} if lora is None else {"params": params, "lora": lora}
  out, _ = Transformer(cfg).apply(variables, tokens, positions, segment_ids,
                                  deterministic=deterministic, rngs=rngs, **kwargs)
  return out


def hidden_states(cfg: ModelConfig, params, tokens, positions=None, segment_ids=None, lora=None,
                  deterministic=True, rngs=None):
  """The final-normed hidden states [batch, seq, hidden] (in cfg.dtype), before the head."""
  return _apply(cfg, params, tokens, positions, segment_ids, lora, deterministic, rngs,
                return_hidden=True)


def forward(cfg: ModelConfig, params, tokens, positions=None, segment_ids=None, lora=None,
            deterministic=True, rngs=None):
  """Pure logits function used by training and scoring. Returns [batch, seq, vocab] fp32."""
  return _apply(cfg, params, tokens, positions, segment_ids, lora, deterministic, rngs)
