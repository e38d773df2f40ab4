"""Dense retrieval: encoding texts in batches for search, and exact top-k sharded over devices.

The encoder itself (a Flax BERT such as all-MiniLM-L6-v2) lives in `ftjax.models.bert`, its
loading (`load_encoder`) in `ftjax.checkpoints.encoder`; their names are re-exported here. `encode` tokenizes, pads
length-sorted batches to a few shapes and runs the jit-compiled `bert.embed`.

Inputs longer than `max_seq_length` word pieces (256 for MiniLM, from sentence_bert_config.json)
are truncated like sentence-transformers does (first 254 pieces + [CLS] + [SEP]); `encode`
reports which texts were cut, or raises `InputTooLongError` with `on_overflow="error"`.

Search is exact (no approximate index): scores = queries @ index.T in fixed-size row blocks with a
running `lax.top_k`. The index rows are split over a mesh axis (`shard_map`); each device takes its
local top-k and a final top-k merges the `devices * k` candidates. This returns the same top-k as
the unsharded search up to float32 rounding, which the math does not pin down: a matmul's last bits
depend on its shape, fusion and the CPU/GPU kernel. So ties are defined on embeddings, not on
score bits: rows with bit-identical embeddings (duplicate passages) are searched once and returned
together, lower row first, with one score (also when they straddle the k-th place), on every
machine and mesh. Distinct rows whose scores agree to within rounding (~1e-6 for unit vectors) may
come in either order.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# The encoder lives in ftjax.models.bert and loads through ftjax.checkpoints.encoder; these names
# stay importable from here.
from ftjax.checkpoints.encoder import config_from_folder, load_encoder, load_params  # noqa: F401
from ftjax.models.bert import (BertEncoder, Encoder, EncoderConfig, EncoderLayer,  # noqa: F401
                               embed)
from ftjax.errors import UserError

_embed_jit = jax.jit(embed, static_argnums=0)


class InputTooLongError(ValueError, UserError):
  """A text has more word pieces than the encoder accepts and `on_overflow="error"`."""


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
  running top-k, so the [q, N] score matrix is never materialised. Equal scores resolve to the
  lower row, as in `lax.top_k`; scores that are equal in exact arithmetic may differ in the last
  bits (see the module docstring), which `place_index` handles for identical rows.
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

  Each shard's rows must be a multiple of `block_rows`. The merge sees candidates in shard (= row)
  order, so equal scores still resolve to the lower row; the result is the unsharded `top_k`'s up
  to float32 rounding of the scores.
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
  valid: jax.Array  # [rows_padded] bool; False for padding, invalid rows and copies
  block_rows: int
  mesh: Mesh
  axis: str
  copies: dict[int, list[int]]  # first row -> later valid rows with a bit-identical embedding


def find_copies(embeddings: np.ndarray, valid: np.ndarray) -> dict[int, list[int]]:
  """First valid row -> the later valid rows whose embedding is bit-identical to it.

  Hashes a few columns' bits (about 0.2 s per million rows) and compares whole rows only within a
  hash bucket, so the cost does not grow with the embedding width.
  """
  rows = np.flatnonzero(valid)
  if len(rows) < 2:
    return {}
  bits = np.ascontiguousarray(embeddings, np.float32).view(np.uint32)
  fingerprint = np.zeros(len(rows), np.uint64)
  for col in np.unique(np.linspace(0, bits.shape[1] - 1, 8).astype(np.int64)):
    fingerprint = fingerprint * np.uint64(0x9E3779B97F4A7C15) + bits[rows, col]
  order = np.argsort(fingerprint, kind="stable")  # rows stay ascending within a bucket
  sorted_fp = fingerprint[order]
  repeats = np.flatnonzero(sorted_fp[1:] == sorted_fp[:-1]) + 1
  groups: dict[bytes, list[int]] = {}
  for pos in np.unique(np.concatenate([repeats - 1, repeats])):  # rows sharing a fingerprint
    row = int(rows[order[pos]])
    groups.setdefault(bits[row].tobytes(), []).append(row)
  return {group[0]: group[1:] for group in groups.values() if len(group) > 1}


def place_index(embeddings: np.ndarray, valid: np.ndarray | None = None,
                mesh: Mesh | None = None, axis: str = "shard", block_rows: int = 4096
                ) -> DeviceIndex:
  """Pads and shards the index rows; blocks shrink (to a multiple of 64) for small indexes.

  Only the first of a set of bit-identical rows goes on the device; `search` puts the others right
  after it (see the module docstring).
  """
  mesh = mesh or default_mesh(axis)
  n, dim = embeddings.shape
  shards = mesh.shape[axis]
  block_rows = min(block_rows, max(64, -(-n // (shards * 64)) * 64))
  padded = max(1, -(-n // (shards * block_rows))) * shards * block_rows
  emb = np.zeros((padded, dim), np.float32)
  emb[:n] = embeddings
  ok = np.zeros(padded, bool)
  ok[:n] = True if valid is None else valid
  copies = find_copies(emb[:n], ok[:n])
  searched = ok.copy()
  for later in copies.values():
    searched[later] = False
  sharding = NamedSharding(mesh, P(axis))
  return DeviceIndex(jax.device_put(emb, sharding), jax.device_put(searched, sharding), block_rows,
                     mesh, axis, copies)


def restrict(index: DeviceIndex, embeddings: np.ndarray, valid: np.ndarray) -> DeviceIndex:
  """`index` searching only the rows where `valid` ([n] bool, n = embeddings rows): the
  embeddings stay where they are on the devices; only the row mask (and the copies among the
  remaining rows) is new. Rows outside `valid` are never returned, and the top-k is taken over
  the remaining rows."""
  n = embeddings.shape[0]
  ok = np.zeros(index.valid.shape[0], bool)
  ok[:n] = valid
  copies = find_copies(embeddings, ok[:n])
  for later in copies.values():
    ok[later] = False
  return index._replace(valid=jax.device_put(ok, index.valid.sharding), copies=copies)


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
  if index.copies:
    scores, rows = _insert_copies(scores, rows, index.copies)
  return scores, rows


def _insert_copies(scores, rows, copies):
  """Puts each hit's copies right after it, with its score, and keeps the first k."""
  scores, rows = scores.copy(), rows.copy()
  k = rows.shape[1]
  for q in np.flatnonzero(np.isin(rows, list(copies)).any(axis=1)):
    hits = [(score, same) for score, row in zip(scores[q], rows[q]) if row >= 0
            for same in [row, *copies.get(int(row), ())]][:k]
    for j, (score, row) in enumerate(hits):
      scores[q, j], rows[q, j] = score, row
  return scores, rows
