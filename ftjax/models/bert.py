"""BERT sentence encoder in Flax (all-MiniLM-L6-v2 and other BERT checkpoints).

Reproduces sentence-transformers' pipeline: BERT (post-LN) -> mean pooling over real tokens ->
L2 normalisation (`embed`). Params are a plain pytree read tensor by tensor from
`model.safetensors` (`load_params`, one HF -> Flax mapping); layers are stacked on a leading
`layers` axis (an `nn.scan`). `max_seq_length` comes from sentence_bert_config.json (256 for
MiniLM); batching, truncation and search live in `ftjax.retrieval.dense`.

`ftjax.checkpoints` (name -> folder, `CheckpointError`) is imported inside the loaders, not at the
top: checkpoints imports models, so a top-level import would make a cycle.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF = -0.7 * float(np.finfo(np.float32).max)


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


def config_from_folder(folder: Path) -> EncoderConfig:
  """Reads config.json (+ sentence_bert_config.json and 1_Pooling when present)."""
  from ftjax.checkpoints import CheckpointError
  hf = json.loads((folder / "config.json").read_text())
  if hf.get("model_type") != "bert":
    raise CheckpointError(f"{folder}: model_type {hf.get('model_type')!r}; only BERT encoders "
                          "are supported")
  if hf.get("position_embedding_type", "absolute") != "absolute" or hf.get("hidden_act") != "gelu":
    raise CheckpointError(f"{folder}: only absolute positions and exact GELU are supported")
  pooling = folder / "1_Pooling" / "config.json"
  if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
    raise CheckpointError(f"{pooling}: only mean pooling is supported")
  st = folder / "sentence_bert_config.json"
  max_seq = json.loads(st.read_text())["max_seq_length"] if st.is_file() else None
  return EncoderConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf["max_position_embeddings"],
      type_vocab_size=hf["type_vocab_size"], layer_norm_eps=hf["layer_norm_eps"],
      max_seq_length=min(max_seq or hf["max_position_embeddings"], hf["max_position_embeddings"]))


class EncoderLayer(nn.Module):
  """One post-LN BERT block; (carry, mask) -> (carry, None) so it can be scanned."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    h, d = cfg.num_heads, cfg.head_dim
    dense = functools.partial(nn.DenseGeneral, dtype=dt, param_dtype=jnp.float32)
    norm = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps, dtype=dt,
                             param_dtype=jnp.float32)
    q = dense((h, d), name="query")(x)  # [batch, seq, heads, head_dim]
    k = dense((h, d), name="key")(x)
    v = dense((h, d), name="value")(x)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * d ** -0.5
    scores = jnp.where(mask[:, None, None, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    attn = dense(cfg.hidden_size, axis=(-2, -1), name="attention_out")(attn)
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


def _hf_layer_map(cfg: EncoderConfig) -> dict[str, tuple[str, Any]]:
  """HF per-layer tensor name -> (param path under `layers`, HF->Flax transform)."""
  e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  m = {}
  for name in ("query", "key", "value"):
    m[f"attention.self.{name}.weight"] = (f"{name}/kernel", lambda w: w.T.reshape(e, h, d))
    m[f"attention.self.{name}.bias"] = (f"{name}/bias", lambda w: w.reshape(h, d))
  m["attention.output.dense.weight"] = ("attention_out/kernel", lambda w: w.T.reshape(h, d, e))
  m["attention.output.dense.bias"] = ("attention_out/bias", lambda w: w)
  m["attention.output.LayerNorm.weight"] = ("attention_norm/scale", lambda w: w)
  m["attention.output.LayerNorm.bias"] = ("attention_norm/bias", lambda w: w)
  m["intermediate.dense.weight"] = ("intermediate/kernel", lambda w: w.T)
  m["intermediate.dense.bias"] = ("intermediate/bias", lambda w: w)
  m["output.dense.weight"] = ("output/kernel", lambda w: w.T)
  m["output.dense.bias"] = ("output/bias", lambda w: w)
  m["output.LayerNorm.weight"] = ("output_norm/scale", lambda w: w)
  m["output.LayerNorm.bias"] = ("output_norm/bias", lambda w: w)
  return m


def load_params(folder: Path, cfg: EncoderConfig) -> dict:
  """BERT weights from model.safetensors (read tensor by tensor, no pickle) -> params pytree."""
  from safetensors import safe_open
  from ftjax.checkpoints import CheckpointError
  path = folder / "model.safetensors"
  if not path.is_file():
    raise CheckpointError(f"{folder}: no model.safetensors (pickle checkpoints are refused)")
  with safe_open(str(path), framework="numpy") as f:
    names = set(f.keys())
    # Some exports prefix every tensor with "bert.".
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in names else ""

    def get(name):
      if prefix + name not in names:
        raise CheckpointError(f"{path}: missing tensor {prefix + name}")
      return np.asarray(f.get_tensor(prefix + name), np.float32)

    params = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embedding_norm": {"scale": get("embeddings.LayerNorm.weight"),
                           "bias": get("embeddings.LayerNorm.bias")},
        "layers": {},
    }
    for hf_name, (path_in_layer, fn) in _hf_layer_map(cfg).items():
      module, leaf = path_in_layer.split("/")
      stacked = np.stack([fn(get(f"encoder.layer.{i}.{hf_name}")) for i in range(cfg.num_layers)])
      params["layers"].setdefault(module, {})[leaf] = stacked
  return params


class Encoder(NamedTuple):
  """A loaded sentence encoder: config, params pytree, HF tokenizer and the name it was loaded by."""
  config: EncoderConfig
  params: Any
  tokenizer: Any
  name: str


def load_encoder(name_or_path: str | os.PathLike | None = None, dtype: str = "float32"
                 ) -> Encoder:
  """Loads a BERT sentence encoder (registered name, local folder or hub id); None loads
  `checkpoints.DEFAULT_ENCODER`."""
  from transformers import AutoTokenizer
  from ftjax.checkpoints import DEFAULT_ENCODER, resolve
  name_or_path = DEFAULT_ENCODER if name_or_path is None else name_or_path
  folder = resolve(name_or_path)
  cfg = dataclasses.replace(config_from_folder(folder), dtype=dtype)
  params = jax.tree.map(jnp.asarray, load_params(folder, cfg))
  tokenizer = AutoTokenizer.from_pretrained(str(folder))
  return Encoder(cfg, params, tokenizer, str(name_or_path))
