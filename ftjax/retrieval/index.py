"""A retrieval index on disk that is updated in place: add, replace and delete documents.

Layout of an index folder:
  manifest.json        config, the ordered list of segments, tombstoned rows (the commit point)
  bm25_vocab.json      the BM25 word -> term id map (append-only)
  segments/NAME/       one folder per update: chunks.jsonl, embeddings.npy [rows, hidden],
                       terms.npy + term_offsets.npy (CSR term ids per chunk)

Rows are numbered across segments in manifest order. An update chunks, encodes and tokenises only
the new documents into a new segment and tombstones the rows of replaced or deleted documents;
existing segments are never rewritten (until `compact()`, which copies live rows without
re-encoding). Dense search masks tombstoned rows; BM25 weights are recomputed from the stored
term ids on the first search after an update, because idf and mean length are corpus-wide.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from ftjax.checkpoints import DEFAULT_ENCODER
from ftjax.retrieval import bm25 as bm25_lib
from ftjax.retrieval import dense as dense_lib
from ftjax.retrieval.corpus import Chunk, Corpus, Document, chunk_documents
from ftjax.retrieval.hybrid import reciprocal_rank_fusion

FORMAT_VERSION = 1
METHODS = ("bm25", "dense", "hybrid")


class RetrievalIndexError(ValueError):
  """A bad index folder, or an update that names unknown or duplicate documents."""


class EmptyIndexError(RetrievalIndexError):
  """Search on an index with no documents."""


class EmptyQueryError(ValueError):
  """A query with no text."""


class QueryTruncatedWarning(UserWarning):
  """Queries longer than the encoder's limit were truncated for dense search."""


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  encoder: str = DEFAULT_ENCODER  # its tokenizer chunks text; its embeddings serve dense search
  dense: bool = True  # False: BM25 only (no encoder weights loaded)
  chunk_tokens: int = 200
  chunk_overlap: int = 32
  bm25_k1: float = 1.5
  bm25_b: float = 0.75
  rrf_k: float = 60.0


class Passage(NamedTuple):
  doc_id: str
  chunk_id: str
  text: str
  score: float
  rank: int  # 1-based


class Hits(NamedTuple):
  scores: np.ndarray  # [q, k] float32; -inf in empty slots
  rows: np.ndarray  # [q, k] int64; -1 in empty slots
  truncated: np.ndarray  # [q] bool: the query was cut to the encoder's limit (dense, hybrid)


class UpdateReport(NamedTuple):
  added: int  # documents
  replaced: int
  deleted: int
  unchanged: int  # replacements whose text was identical: nothing was done
  chunks_added: int  # = chunks encoded: the only encoder work an update does
  chunks_removed: int


def _write_json_atomic(path: Path, obj):
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


class RetrievalIndex:
  """Chunks of a corpus with BM25 term ids and dense embeddings, kept in `path`."""

  def __init__(self, path: Path, config: IndexConfig, encoder=None, mesh=None):
    self.path = Path(path)
    self.config = config
    self.mesh = mesh
    self._encoder = encoder
    self._chunk_tokenizer = encoder.tokenizer if encoder is not None else None
    self.bm25_tokenizer = bm25_lib.make_tokenizer()
    self.segments: list[str] = []
    self.chunks: list[Chunk] = []
    self.live = np.zeros(0, bool)
    self.terms: list[np.ndarray] = []
    self.embeddings = np.zeros((0, 0), np.float32) if config.dense else None
    self._bm25 = None  # derived, rebuilt lazily after updates
    self._device_index = None

  @classmethod
  def create(cls, path: str | os.PathLike, config: IndexConfig = IndexConfig(), *,
             encoder=None, mesh=None, overwrite: bool = False) -> RetrievalIndex:
    """A new empty index folder. `encoder` (from `dense.load_encoder`) is loaded if not given."""
    path = Path(path)
    if (path / "manifest.json").exists() and not overwrite:
      raise RetrievalIndexError(f"{path}: an index already exists (pass overwrite=True)")
    index = cls(path, config, encoder, mesh)
    index._check_encoder()
    if config.dense and config.chunk_tokens + 2 > index.encoder.config.max_seq_length:
      raise ValueError(f"chunk_tokens={config.chunk_tokens} does not fit the encoder's limit of "
                       f"{index.encoder.config.max_seq_length} word pieces (with [CLS]/[SEP])")
    if (path / "manifest.json").exists():
      shutil.rmtree(path)
    (path / "segments").mkdir(parents=True, exist_ok=True)
    index._commit()
    return index

  @classmethod
  def open(cls, path: str | os.PathLike, *, encoder=None, mesh=None) -> RetrievalIndex:
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
      raise RetrievalIndexError(f"{path}: no manifest.json (not a retrieval index)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
      raise RetrievalIndexError(f"{manifest_path}: format {manifest.get('format')!r}, "
                                f"expected {FORMAT_VERSION}")
    try:
      config = IndexConfig(**manifest["config"])
    except TypeError as err:
      raise RetrievalIndexError(f"{manifest_path}: bad config ({err})") from None
    index = cls(path, config, encoder, mesh)
    index._check_encoder()
    bm25_lib.load_vocab(index.bm25_tokenizer, path)
    embeddings = []
    for name in manifest["segments"]:
      chunks, terms, emb = index._read_segment(name)
      index.segments.append(name)
      index.chunks += chunks
      index.terms += terms
      embeddings.append(emb)
    index.live = np.ones(len(index.chunks), bool)
    index.live[np.asarray(manifest["deleted_rows"], np.int64)] = False
    if index.config.dense and embeddings:
      index.embeddings = np.concatenate(embeddings)
    return index

  def _check_encoder(self):
    if self._encoder is not None and self._encoder.name != self.config.encoder:
      raise RetrievalIndexError(f"{self.path}: index uses encoder {self.config.encoder!r}, "
                                f"got {self._encoder.name!r}")

  @property
  def encoder(self) -> dense_lib.Encoder:
    if self._encoder is None:
      self._encoder = dense_lib.load_encoder(self.config.encoder)
      self._chunk_tokenizer = self._encoder.tokenizer
    return self._encoder

  @property
  def chunk_tokenizer(self):
    if self._chunk_tokenizer is None:
      if self.config.dense:
        return self.encoder.tokenizer
      from transformers import AutoTokenizer
      from ftjax.checkpoints import resolve
      self._chunk_tokenizer = AutoTokenizer.from_pretrained(str(resolve(self.config.encoder)))
    return self._chunk_tokenizer

  def doc_rows(self) -> dict[str, list[int]]:
    """Live document id -> its chunk rows (derived from chunks and tombstones)."""
    out: dict[str, list[int]] = {}
    for row in np.flatnonzero(self.live):
      out.setdefault(self.chunks[row].doc_id, []).append(int(row))
    return out

  @property
  def num_documents(self) -> int:
    return len(self.doc_rows())

  @property
  def num_chunks(self) -> int:
    return int(self.live.sum())

  def add(self, documents: Iterable[Document] | Corpus) -> UpdateReport:
    """Adds new documents; an id already in the index is an error (use `replace`)."""
    documents = _as_documents(documents)
    existing = self.doc_rows()
    clash = [d.doc_id for d in documents if d.doc_id in existing]
    if clash:
      raise RetrievalIndexError(f"{len(clash)} document id(s) already indexed (use replace): "
                                f"{_shown(clash)}")
    return self._update(documents, [], added=len(documents))

  def replace(self, documents: Iterable[Document] | Corpus) -> UpdateReport:
    """Replaces indexed documents by id; only the changed ones are re-chunked and re-encoded."""
    documents = _as_documents(documents)
    existing = self.doc_rows()
    missing = [d.doc_id for d in documents if d.doc_id not in existing]
    if missing:
      raise RetrievalIndexError(f"{len(missing)} document id(s) not in the index (use add): "
                                f"{_shown(missing)}")
    changed = [d for d in documents
               if self.chunks[existing[d.doc_id][0]].doc_hash != d.content_hash]
    stale = [row for d in changed for row in existing[d.doc_id]]
    return self._update(changed, stale, replaced=len(changed),
                        unchanged=len(documents) - len(changed))

  def delete(self, doc_ids: Iterable[str]) -> UpdateReport:
    doc_ids = list(doc_ids)
    existing = self.doc_rows()
    missing = [d for d in doc_ids if d not in existing]
    if missing:
      raise RetrievalIndexError(f"{len(missing)} document id(s) not in the index: "
                                f"{_shown(missing)}")
    stale = [row for d in dict.fromkeys(doc_ids) for row in existing[d]]
    return self._update([], stale, deleted=len(set(doc_ids)))

  def _update(self, documents: list[Document], stale_rows: list[int], added=0, replaced=0,
              deleted=0, unchanged=0) -> UpdateReport:
    ids = [d.doc_id for d in documents]
    if len(set(ids)) != len(ids):
      dupes = sorted({i for i in ids if ids.count(i) > 1})
      raise RetrievalIndexError(f"duplicate document id(s) in one update: {_shown(dupes)}")
    chunks = chunk_documents(documents, self.chunk_tokenizer, self.config.chunk_tokens,
                             self.config.chunk_overlap)
    if chunks:
      self._write_segment(chunks)
    self.live[np.asarray(stale_rows, np.int64)] = False
    self._commit()
    self._bm25 = self._device_index = None
    return UpdateReport(added, replaced, deleted, unchanged, len(chunks), len(stale_rows))

  def _write_segment(self, chunks: list[Chunk], embeddings=None, terms=None):
    texts = [c.text for c in chunks]
    if terms is None:
      terms = bm25_lib.term_ids(self.bm25_tokenizer, texts, update_vocab=True)
      bm25_lib.save_vocab(self.bm25_tokenizer, self.path)
    if self.config.dense and embeddings is None:
      embeddings = dense_lib.encode(self.encoder, texts).embeddings
    name = f"{len(self.chunks):09d}-{os.urandom(3).hex()}"
    folder = self.path / "segments" / name
    tmp = folder.with_name(name + ".tmp")
    tmp.mkdir(parents=True)
    with (tmp / "chunks.jsonl").open("w", encoding="utf-8") as f:
      for c in chunks:
        f.write(json.dumps(dataclasses.asdict(c), ensure_ascii=False) + "\n")
    np.save(tmp / "terms.npy", np.concatenate(terms) if terms else np.zeros(0, np.int32))
    np.save(tmp / "term_offsets.npy", np.cumsum([0] + [len(t) for t in terms]))
    if self.config.dense:
      np.save(tmp / "embeddings.npy", np.asarray(embeddings, np.float32))
    os.replace(tmp, folder)
    self.segments.append(name)
    self.chunks += chunks
    self.terms += list(terms)
    self.live = np.concatenate([self.live, np.ones(len(chunks), bool)])
    if self.config.dense:
      self.embeddings = (np.asarray(embeddings, np.float32) if self.embeddings.size == 0 else
                         np.concatenate([self.embeddings, embeddings]))

  def _read_segment(self, name: str):
    folder = self.path / "segments" / name
    chunks = []
    with (folder / "chunks.jsonl").open(encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        try:
          chunks.append(Chunk(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as err:
          raise RetrievalIndexError(f"{folder / 'chunks.jsonl'}:{lineno}: bad chunk ({err})"
                                    ) from None
    flat, offsets = np.load(folder / "terms.npy"), np.load(folder / "term_offsets.npy")
    terms = [flat[offsets[i]:offsets[i + 1]] for i in range(len(chunks))]
    emb = None
    if self.config.dense:
      emb = np.load(folder / "embeddings.npy")
      if emb.shape[0] != len(chunks):
        raise RetrievalIndexError(f"{folder}: {emb.shape[0]} embeddings for {len(chunks)} chunks")
    return chunks, terms, emb

  def _commit(self):
    _write_json_atomic(self.path / "manifest.json", {
        "format": FORMAT_VERSION,
        "config": dataclasses.asdict(self.config),
        "segments": self.segments,
        "deleted_rows": np.flatnonzero(~self.live).tolist(),
    })

  def compact(self):
    """Rewrites the live rows into one segment (no re-encoding) and drops tombstones."""
    rows = np.flatnonzero(self.live)
    old = self.segments
    chunks = [self.chunks[r] for r in rows]
    terms = [self.terms[r] for r in rows]
    embeddings = self.embeddings[rows] if self.config.dense else None
    self.segments, self.chunks, self.terms, self.live = [], [], [], np.zeros(0, bool)
    if self.config.dense:
      self.embeddings = np.zeros((0, 0), np.float32)
    if chunks:
      self._write_segment(chunks, embeddings, terms)
    self._commit()
    for name in old:
      shutil.rmtree(self.path / "segments" / name, ignore_errors=True)
    self._bm25 = self._device_index = None

  def search_rows(self, queries: Sequence[str], k: int = 5, method: str = "hybrid",
                  candidates: int = 50, on_overflow: str = "truncate") -> Hits:
    """Top-k chunk rows per query. Hybrid fuses the top `candidates` of BM25 and dense.

    Errors: `EmptyIndexError` if nothing is indexed, `EmptyQueryError` for a blank query.
    Dense queries over the encoder's limit (256 word pieces for MiniLM) are truncated with a
    `QueryTruncatedWarning` (flags in `Hits.truncated`), or raise `dense.InputTooLongError`
    with on_overflow="error".
    """
    if method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "bm25" and not self.config.dense:
      raise RetrievalIndexError(f"{self.path}: BM25-only index (dense=False); use method='bm25'")
    if isinstance(queries, str):
      raise TypeError("queries must be a list of strings, not one string")
    blank = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q.strip()]
    if blank:
      raise EmptyQueryError(f"{len(blank)} empty quer{'y' if len(blank) == 1 else 'ies'} "
                            f"(positions {_shown(blank)}); a query needs some text")
    if self.num_chunks == 0:
      raise EmptyIndexError(f"{self.path}: the index has no documents; add some first")
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    truncated = np.zeros(len(queries), bool)
    if method == "bm25":
      scores, rows = self._bm25_search(queries, k)
    elif method == "dense":
      (scores, rows), truncated = self._dense_search(queries, k, on_overflow)
    else:
      depth = max(k, candidates)
      _, bm25_rows = self._bm25_search(queries, depth)
      (_, dense_rows), truncated = self._dense_search(queries, depth, on_overflow)
      scores, rows = reciprocal_rank_fusion([bm25_rows, dense_rows], k, self.config.rrf_k)
    return Hits(scores, rows, truncated)

  def search(self, queries: Sequence[str], k: int = 5, method: str = "hybrid",
             candidates: int = 50, on_overflow: str = "truncate") -> list[list[Passage]]:
    """Like `search_rows`, as passages (doc id, chunk id, text, score, rank) per query."""
    hits = self.search_rows(queries, k, method, candidates, on_overflow)
    return [[Passage(self.chunks[r].doc_id, self.chunks[r].chunk_id, self.chunks[r].text,
                     float(s), rank)
             for rank, (s, r) in enumerate(zip(scores, rows), 1) if r >= 0]
            for scores, rows in zip(hits.scores, hits.rows)]

  def _bm25_search(self, queries, k):
    if self._bm25 is None:
      self._bm25 = bm25_lib.build(self.terms, np.flatnonzero(self.live),
                                  len(self.bm25_tokenizer.word_to_id), self.config.bm25_k1,
                                  self.config.bm25_b)
    query_terms = bm25_lib.term_ids(self.bm25_tokenizer, queries, update_vocab=False)
    return bm25_lib.search(self._bm25, query_terms, k)

  def _dense_search(self, queries, k, on_overflow):
    encoded = dense_lib.encode(self.encoder, list(queries), on_overflow=on_overflow)
    if encoded.truncated.any():
      warnings.warn(
          f"{int(encoded.truncated.sum())} quer(ies) longer than the encoder's limit of "
          f"{self.encoder.config.max_seq_length} word pieces were truncated for dense search "
          f"(longest: {int(encoded.num_tokens.max())})", QueryTruncatedWarning, stacklevel=3)
    if self._device_index is None:
      self._device_index = dense_lib.place_index(self.embeddings, self.live, self.mesh)
    return dense_lib.search(self._device_index, encoded.embeddings, k), encoded.truncated


def _as_documents(documents) -> list[Document]:
  if isinstance(documents, Corpus):
    documents = documents.documents
  documents = list(documents)
  for i, d in enumerate(documents):
    if not isinstance(d, Document):
      raise TypeError(f"item {i} is a {type(d).__name__}, not a Document")
  return documents


def _shown(items, limit: int = 5) -> str:
  items = list(items)
  head = ", ".join(repr(i) for i in items[:limit])
  return head + (f" (+{len(items) - limit} more)" if len(items) > limit else "")

