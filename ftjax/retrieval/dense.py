"""Dense retrieval: a Flax BERT sentence encoder and exact top-k search sharded over devices.

The encoder reproduces sentence-transformers' all-MiniLM-L6-v2 pipeline: BERT (post-LN) ->
mean pooling over real tokens -> L2 normalisation. Params are a plain pytree read tensor by tensor
from `model.safetensors`; layers are stacked on a leading `layers` axis (an `nn.scan`).

Inputs longer than `max_seq_length` word pieces (256 for MiniLM, from sentence_bert_config.json)
are truncated like sentence-transformers does (first 254 pieces + [CLS] + [SEP]); `encode`
reports which texts were cut, or raises `InputTooLongError` with `on_overflow="error"`.

Search is exact: scores = queries @ index.T in fixed-size row blocks with a running `lax.top_k`.
The index rows are split over a mesh axis (`shard_map`); each device takes its local top-k and a
final top-k merges the `devices * k` candidates, which gives the same ids and scores as the
unsharded search.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ftjax.checkpoints import DEFAULT_ENCODER, CheckpointError, resolve

_NEG_INF = -0.7 * float(np.finfo(np.float32).max)


class InputTooLongError(ValueError):
  """A text has more word pieces than the encoder accepts and `on_overflow="error"`."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
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


_embed_jit = jax.jit(embed, static_argnums=0)


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
  config: EncoderConfig
  params: Any
  tokenizer: Any
  name: str


def load_encoder(name_or_path: str | os.PathLike = DEFAULT_ENCODER, dtype: str = "float32"
                 ) -> Encoder:
  """Loads a BERT sentence encoder (registered name, local folder or hub id)."""
  from transformers import AutoTokenizer
  folder = resolve(name_or_path)
  cfg = dataclasses.replace(config_from_folder(folder), dtype=dtype)
  params = jax.tree.map(jnp.asarray, load_params(folder, cfg))
  tokenizer = AutoTokenizer.from_pretrained(str(folder))
  return Encoder(cfg, params, tokenizer, str(name_or_path))


class Encoded(NamedTuple):
  embeddings: np.ndarray  # [n, hidden] float32, unit norm
  num_tokens: np.ndarray  # [n] word pieces before truncation, with [CLS]/[SEP]
  truncated: np.ndarray  # [n] bool


def tokenize(encoder: Encoder, texts: list[str], on_overflow: str = "truncate"
             ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
  """Word-piece ids with [CLS]/[SEP], cut to max_seq_length; also lengths and truncated flags."""
  if on_overflow not in ("truncate", "error"):
    raise ValueError(f"on_overflow must be 'truncate' or 'error', got {on_overflow!r}")
  limit = encoder.config.max_seq_length
  ids = encoder.tokenizer(list(texts), add_special_tokens=True, truncation=False,
                          verbose=False)["input_ids"]
  num_tokens = np.array([len(x) for x in ids], np.int64)
  truncated = num_tokens > limit
  if truncated.any() and on_overflow == "error":
    bad = np.flatnonzero(truncated)
    raise InputTooLongError(
        f"{len(bad)} text(s) exceed the encoder's limit of {limit} word pieces (first: text "
        f"{bad[0]} with {num_tokens[bad[0]]}); shorten them or use on_overflow='truncate'")
  sep = encoder.tokenizer.sep_token_id
  ids = [x if len(x) <= limit else x[:limit - 1] + [sep] for x in ids]
  return ids, num_tokens, truncated


def _bucket(n: int, cap: int, minimum: int) -> int:
  """Smallest of minimum * (1, 1.5, 2, 3, 4, 6, 8, ...) >= n, at most `cap`: few shapes to
  compile, and at most a third of a batch is padding."""
  for i in itertools.count():
    for size in (minimum << i, (3 * minimum << i) // 2):
      if size >= n:
        return min(cap, size)


def encode(encoder: Encoder, texts: list[str], *, batch_size: int = 64,
           on_overflow: str = "truncate") -> Encoded:
  """Embeds texts with a jit-compiled batched forward pass. Texts are sorted by length, so
  each batch is padded only to the bucket (`_bucket`) of its own longest text."""
  cfg = encoder.config
  if not texts:
    return Encoded(np.zeros((0, cfg.hidden_size), np.float32), np.zeros(0, np.int64),
                   np.zeros(0, bool))
  ids, num_tokens, truncated = tokenize(encoder, texts, on_overflow)
  order = np.argsort([-len(x) for x in ids], kind="stable")
  out = np.zeros((len(ids), cfg.hidden_size), np.float32)
  for start in range(0, len(ids), batch_size):
    rows = order[start:start + batch_size]
    seq = _bucket(max(len(ids[r]) for r in rows), cfg.max_seq_length, 16)
    batch = _bucket(len(rows), batch_size, 1)
    token_ids = np.zeros((batch, seq), np.int32)
    mask = np.zeros((batch, seq), bool)
    for i, r in enumerate(rows):
      token_ids[i, :len(ids[r])] = ids[r]
      mask[i, :len(ids[r])] = True
    out[rows] = np.asarray(_embed_jit(cfg, encoder.params, token_ids, mask))[:len(rows)]
  return Encoded(out, num_tokens, truncated)


def top_k(queries, index, valid, k: int, block_rows: int):
  """Exact inner-product top-k: ([q, k] scores, [q, k] rows); rows with valid=False never win.

  Scores are computed block by block ([q, block_rows] matmuls, N a multiple of block_rows) with a
  running top-k: the [q, N] score matrix is never materialised, and since XLA's matmul rounding
  depends on the matrix shape, fixed blocks make every score independent of how the rows are
  split over devices. Ties resolve to the lower row, as in `lax.top_k`.
  """
  local_k = min(k, block_rows)

  def block_top_k(block):
    # Slicing inside the loop, not before it: `index[block_rows:]` would copy the whole index.
    start = block * block_rows
    block_index = jax.lax.dynamic_slice_in_dim(index, start, block_rows)
    scores = jnp.einsum("qd,nd->qn", queries, block_index, precision=jax.lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
    scores = jnp.where(jax.lax.dynamic_slice_in_dim(valid, start, block_rows)[None, :], scores,
                       -jnp.inf)
    scores, top = jax.lax.top_k(scores, local_k)
    return scores, top + start

  def step(best, block):
    scores, rows = block_top_k(block)
    # The running best (earlier, lower rows) comes first, so ties keep the lower row.
    merged_scores = jnp.concatenate([best[0], scores], axis=1)
    merged_rows = jnp.concatenate([best[1], rows], axis=1)
    top, pos = jax.lax.top_k(merged_scores, k)
    return (top, jnp.take_along_axis(merged_rows, pos, axis=1)), None

  # The first block seeds the running top-k: a carry made from the data (rather than constants)
  # has the right varying-over-devices type inside shard_map.
  scores, rows = block_top_k(0)
  pad = ((0, 0), (0, k - local_k))
  init = (jnp.pad(scores, pad, constant_values=-jnp.inf), jnp.pad(rows, pad, constant_values=-1))
  num_blocks = index.shape[0] // block_rows
  (scores, rows), _ = jax.lax.scan(step, init, jnp.arange(1, num_blocks))
  return scores, rows


def sharded_top_k(queries, index, valid, k: int, block_rows: int, mesh: Mesh,
                  axis: str = "shard"):
  """`top_k` with index rows split over `mesh[axis]`: local top-k per shard, then a merge.

  Each shard's rows must be a multiple of `block_rows`. Gives exactly the ids and scores of the
  unsharded `top_k` with the same `block_rows`: scores come from the same block matmuls, and the
  merge sees candidates in shard (= row) order, so ties still resolve to the lower row.
  """
  shards = mesh.shape[axis]
  rows_per_shard = index.shape[0] // shards

  def local(q, index_shard, valid_shard):
    scores, rows = top_k(q, index_shard, valid_shard, k, block_rows)
    return scores, rows + jax.lax.axis_index(axis) * rows_per_shard

  scores, rows = jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(axis), P(axis)),
      out_specs=(P(None, axis), P(None, axis)))(queries, index, valid)
  best, pos = jax.lax.top_k(scores, k)  # over [q, shards * k] candidates
  return best, jnp.take_along_axis(rows, pos, axis=1)


_sharded_top_k_jit = jax.jit(sharded_top_k, static_argnames=("k", "block_rows", "mesh", "axis"))


def default_mesh(axis: str = "shard") -> Mesh:
  return Mesh(np.array(jax.devices()), (axis,))


class DeviceIndex(NamedTuple):
  """Index embeddings placed on the mesh, padded to a multiple of shards * block_rows."""
  embeddings: jax.Array  # [rows_padded, hidden], sharded over rows
  valid: jax.Array  # [rows_padded] bool
  block_rows: int
  mesh: Mesh
  axis: str


def place_index(embeddings: np.ndarray, valid: np.ndarray | None = None,
                mesh: Mesh | None = None, axis: str = "shard", block_rows: int = 4096
                ) -> DeviceIndex:
  """Pads and shards the index rows; blocks shrink (to a multiple of 64) for small indexes."""
  mesh = mesh or default_mesh(axis)
  n, dim = embeddings.shape
  shards = mesh.shape[axis]
  block_rows = min(block_rows, max(64, -(-n // (shards * 64)) * 64))
  padded = max(1, -(-n // (shards * block_rows))) * shards * block_rows
  emb = np.zeros((padded, dim), np.float32)
  emb[:n] = embeddings
  ok = np.zeros(padded, bool)
  ok[:n] = True if valid is None else valid
  sharding = NamedSharding(mesh, P(axis))
  return DeviceIndex(jax.device_put(emb, sharding), jax.device_put(ok, sharding), block_rows, mesh,
                     axis)


def search(index: DeviceIndex, queries: np.ndarray, k: int, query_batch: int = 256
           ) -> tuple[np.ndarray, np.ndarray]:
  """Top-k rows for each query embedding: ([q, k] float32 scores, [q, k] int64 rows).

  Slots beyond the number of valid rows hold row -1 and score -inf.
  """
  queries = np.asarray(queries, np.float32)
  num_q = queries.shape[0]
  k_eff = min(k, index.embeddings.shape[0])
  scores = np.full((num_q, k), -np.inf, np.float32)
  rows = np.full((num_q, k), -1, np.int64)
  for start in range(0, num_q, query_batch):
    chunk = queries[start:start + query_batch]
    batch = _bucket(len(chunk), query_batch, 1)
    padded = np.zeros((batch, queries.shape[1]), np.float32)
    padded[:len(chunk)] = chunk
    s, r = _sharded_top_k_jit(padded, index.embeddings, index.valid, k=k_eff,
                              block_rows=index.block_rows, mesh=index.mesh, axis=index.axis)
    s, r = np.asarray(s)[:len(chunk)], np.asarray(r)[:len(chunk)]
    scores[start:start + len(chunk), :k_eff] = s
    rows[start:start + len(chunk), :k_eff] = np.where(np.isfinite(s), r, -1)
  return scores, rows
