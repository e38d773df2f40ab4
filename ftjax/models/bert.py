"""BERT sentence encoder in Flax (all-MiniLM-L6-v2 and other BERT checkpoints).

Reproduces sentence-transformers' pipeline: BERT (post-LN) -> mean pooling over real tokens ->
L2 normalisation (`embed`). Params are a plain pytree read tensor by tensor from
`model.safetensors` by `ftjax.checkpoints.encoder` (`load_encoder`); layers are stacked on a
leading `layers` axis (an `nn.scan`). `max_seq_length` comes from sentence_bert_config.json (256
for MiniLM); batching, truncation and search live in `ftjax.retrieval.dense`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import matmul
from ftjax.models.attention import NEG_INF


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """BERT shapes from config.json, plus sentence-transformers' input limit."""
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  max_seq_length: int  # sentence-transformers' limit (<= max_position_embeddings)
  dtype: str = "float32"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


class _Dense(nn.Module):
  """`nn.DenseGeneral`'s params (kernel [*in, *out], bias [*out]) through `matmul.project`: in
  bf16, bf16 inputs with fp32 accumulation (the CPU's bf16 units; a bf16-result product takes
  XLA:CPU's slow path); in fp32, the same `dot_general` as DenseGeneral."""
  features: int | tuple[int, ...]
  num_contract: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        x.shape[x.ndim - self.num_contract:] + features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    return matmul.project(x, kernel, self.num_contract, self.dtype) + bias.astype(self.dtype)


class EncoderLayer(nn.Module):
  """One post-LN BERT block; (carry, mask) -> (carry, None) so it can be scanned."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    h, d = cfg.num_heads, cfg.head_dim
    dense = functools.partial(_Dense, dtype=dt)
    norm = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps, dtype=dt,
                             param_dtype=jnp.float32)
    q = dense((h, d), name="query")(x)  # [batch, seq, heads, head_dim]
    k = dense((h, d), name="key")(x)
    v = dense((h, d), name="value")(x)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * d ** -0.5
    scores = jnp.where(mask[:, None, None, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(dt)
    attn = dense(cfg.hidden_size, num_contract=2, name="attention_out")(attn)
    x = norm(name="attention_norm")(x + attn)
    ff = jax.nn.gelu(dense(cfg.intermediate_size, name="intermediate")(x), approximate=False)
    ff = dense(cfg.hidden_size, name="output")(ff)
    return norm(name="output_norm")(x + ff), None


class BertEncoder(nn.Module):
  """token_ids, mask [batch, seq] -> hidden states [batch, seq, hidden]."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, token_ids, mask):
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    embed = functools.partial(nn.Embed, features=cfg.hidden_size, dtype=dt,
                              param_dtype=jnp.float32)
    positions = jnp.arange(token_ids.shape[1])[None, :]
    x = (embed(cfg.vocab_size, name="word_embeddings")(token_ids)
         + embed(cfg.max_position_embeddings, name="position_embeddings")(positions)
         + embed(cfg.type_vocab_size, name="token_type_embeddings")(jnp.zeros_like(token_ids)))
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, param_dtype=jnp.float32,
                     name="embedding_norm")(x)
    layers = nn.scan(EncoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=nn.broadcast, length=cfg.num_layers)(cfg, name="layers")
    x, _ = layers(x, mask)
    return x


def embed(cfg: EncoderConfig, params, token_ids, mask):
  """Pure sentence embedding: [batch, seq] ids and bool mask -> [batch, hidden] unit vectors."""
  hidden = BertEncoder(cfg).apply({"params": params}, token_ids, mask).astype(jnp.float32)
  weights = mask.astype(jnp.float32)[..., None]
  pooled = jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


class Encoder(NamedTuple):
  """A loaded sentence encoder: config, params pytree, HF tokenizer and the name it was loaded by."""
  config: EncoderConfig
  params: Any
  tokenizer: Any
  name: str
