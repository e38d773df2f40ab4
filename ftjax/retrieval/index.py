"""A retrieval index that is updated in place (add, replace and delete documents) and searched
with BM25, dense or hybrid ranking; its files are kept by `ftjax.retrieval.store`.

An update chunks, encodes and tokenises only the new documents into a new segment and tombstones
the rows of replaced or deleted documents; existing segments are never rewritten (until
`compact()`, which copies live rows without re-encoding). Dense search masks tombstoned rows;
BM25 weights are recomputed from the stored term ids on the first search after an update,
because idf and mean length are corpus-wide. Crash safety and concurrent writers: see `store`.

Access control: chunks carry their document's `acl` (`corpus.visible`). Every search takes the
caller's `groups` and searches only the rows they may see: BM25 weights (idf, mean length) are
built over those rows and dense search masks the others before its top-k, so a caller's hits
and scores are those of an index holding only their documents, and hybrid fuses two such
rankings. `groups=None` is a caller in no group: public documents only.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from ftjax.retrieval import bm25 as bm25_lib
from ftjax.retrieval import dense as dense_lib
from ftjax.retrieval.corpus import Corpus, Document, chunk_documents, visible
from ftjax.retrieval.hybrid import reciprocal_rank_fusion
from ftjax.retrieval.store import (MANIFEST, FaultHook, IndexConfig, IndexStore,
                                   RetrievalIndexError, StoreState, read_config)
from ftjax.errors import UserError

METHODS = ("bm25", "dense", "hybrid")


class EmptyIndexError(RetrievalIndexError):
  """Search on an index with no documents."""


class EmptyQueryError(ValueError, UserError):
  """A query with no text."""


class QueryTruncatedWarning(UserWarning):
  """Queries longer than the encoder's limit were truncated for dense search."""


class Passage(NamedTuple):
  doc_id: str
  chunk_id: str
  text: str
  score: float
  rank: int  # 1-based
  acl: tuple[str, ...] | None = None  # the document's; None: public


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


class RetrievalIndex:
  """Chunks of a corpus with BM25 term ids and dense embeddings, kept in `path`.

  `fault_hook` (tests only) is called with the label of every write step before it reaches the
  disk; a hook that raises or ends the process there simulates a crash (see `store`)."""

  lock_timeout_s: float = 600.0  # how long an update waits for another writer

  def __init__(self, path: Path, config: IndexConfig, encoder=None, mesh=None,
               fault_hook: FaultHook | None = None):
    self.store = IndexStore(path, config, fault_hook)
    self.path = self.store.path
    self.config = config
    self.mesh = mesh
    self._encoder = encoder
    self._chunk_tokenizer = encoder.tokenizer if encoder is not None else None
    self._set_state(self.store.empty())

  def _set_state(self, state: StoreState):
    self.state = state
    self._bm25 = None  # derived, rebuilt lazily after updates
    self._device_index = None
    self._visible: dict[frozenset[str], np.ndarray] = {}  # caller groups -> visible live rows
    # Caller groups -> BM25 weights and device index over their visible rows only.
    self._restricted: dict[frozenset[str], dict[str, object]] = {}

  # What the state holds, by name: rows are numbered across segments in manifest order.
  segments = property(lambda self: self.state.segments)
  chunks = property(lambda self: self.state.chunks)  # [rows]
  terms = property(lambda self: self.state.terms)  # [rows] BM25 term ids
  live = property(lambda self: self.state.live)  # [rows] bool: not tombstoned
  embeddings = property(lambda self: self.state.embeddings)  # [rows, hidden] or None
  bm25_tokenizer = property(lambda self: self.state.bm25_tokenizer)

  @classmethod
  def create(cls, path: str | os.PathLike, config: IndexConfig = IndexConfig(), *,
             encoder=None, mesh=None, overwrite: bool = False,
             fault_hook: FaultHook | None = None) -> RetrievalIndex:
    """A new empty index folder. `encoder` (from `dense.load_encoder`) is loaded if not given."""
    path = Path(path)
    if (path / MANIFEST).exists() and not overwrite:
      raise RetrievalIndexError(f"{path}: an index already exists (pass overwrite=True)")
    index = cls(path, config, encoder, mesh, fault_hook)
    index._check_encoder()
    if config.dense and config.chunk_tokens + 2 > index.encoder.config.max_seq_length:
      raise ValueError(f"chunk_tokens={config.chunk_tokens} does not fit the encoder's limit of "
                       f"{index.encoder.config.max_seq_length} word pieces (with [CLS]/[SEP])")
    index.store.create(overwrite, cls.lock_timeout_s)
    return index

  @classmethod
  def open(cls, path: str | os.PathLike, *, encoder=None, mesh=None,
           fault_hook: FaultHook | None = None) -> RetrievalIndex:
    index = cls(path, read_config(Path(path)), encoder, mesh, fault_hook)
    index._check_encoder()
    index._set_state(index.store.read())
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
    """Live document id -> its chunk rows (derived from chunks and tombstones), whatever their
    ACL: for updates. Callers answering a user use `visible_rows`."""
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

  def visible_rows(self, groups: Iterable[str] | None = None) -> np.ndarray:
    """[rows] bool: the live rows a caller in `groups` may see (None: public rows only)."""
    groups = _as_groups(groups)
    if groups not in self._visible:
      acls = {c.acl for c in self.chunks if c.acl is not None}
      if not acls:
        mask = self.live
      else:
        allowed = {acl for acl in acls if visible(acl, groups)}
        mask = self.live & np.array([c.acl is None or c.acl in allowed for c in self.chunks],
                                    bool)
      self._visible[groups] = mask
    return self._visible[groups]

  @contextlib.contextmanager
  def _writing(self):
    """One writer at a time, catching up first with what other writers committed."""
    with self.store.writing(self.state, self.lock_timeout_s) as state:
      self._set_state(state)
      yield

  def add(self, documents: Iterable[Document] | Corpus) -> UpdateReport:
    """Adds new documents; an id already in the index is an error (use `replace`)."""
    documents = _as_documents(documents)
    _check_unique(documents)
    with self._writing():
      existing = self.doc_rows()
      clash = [d.doc_id for d in documents if d.doc_id in existing]
      if clash:
        raise RetrievalIndexError(f"{len(clash)} document id(s) already indexed (use replace): "
                                  f"{_shown(clash)}")
      return self._update(documents, [], added=len(documents))

  def replace(self, documents: Iterable[Document] | Corpus) -> UpdateReport:
    """Replaces indexed documents by id; only the changed ones are re-chunked and re-encoded.

    A replacement without an `acl` keeps the document's ACL (a restricted document never
    becomes public by omission; delete and add it to make it public)."""
    documents = _as_documents(documents)
    _check_unique(documents)
    with self._writing():
      existing = self.doc_rows()
      missing = [d.doc_id for d in documents if d.doc_id not in existing]
      if missing:
        raise RetrievalIndexError(f"{len(missing)} document id(s) not in the index (use add): "
                                  f"{_shown(missing)}")
      documents = [d if d.acl is not None else
                   dataclasses.replace(d, acl=self.chunks[existing[d.doc_id][0]].acl)
                   for d in documents]
      changed = [d for d in documents
                 if self.chunks[existing[d.doc_id][0]].doc_hash != d.content_hash]
      stale = [row for d in changed for row in existing[d.doc_id]]
      return self._update(changed, stale, replaced=len(changed),
                          unchanged=len(documents) - len(changed))

  def delete(self, doc_ids: Iterable[str]) -> UpdateReport:
    doc_ids = list(doc_ids)
    with self._writing():
      existing = self.doc_rows()
      missing = [d for d in doc_ids if d not in existing]
      if missing:
        raise RetrievalIndexError(f"{len(missing)} document id(s) not in the index: "
                                  f"{_shown(missing)}")
      stale = [row for d in dict.fromkeys(doc_ids) for row in existing[d]]
      return self._update([], stale, deleted=len(set(doc_ids)))

  def _update(self, documents: list[Document], stale_rows: list[int], added=0, replaced=0,
              deleted=0, unchanged=0) -> UpdateReport:
    chunks = chunk_documents(documents, self.chunk_tokenizer, self.config.chunk_tokens,
                             self.config.chunk_overlap)
    state = self.state.copy()
    vocab_grew = False
    if chunks:
      # Words are added to a copy: the vocabulary in use changes only once the update commits.
      tokenizer = state.bm25_tokenizer = _extendable_copy(self.bm25_tokenizer)
      texts = [c.text for c in chunks]
      terms = bm25_lib.term_ids(tokenizer, texts, update_vocab=True)
      embeddings = dense_lib.encode(self.encoder, texts).embeddings if self.config.dense else None
      self.store.publish_segment(state, chunks, terms, embeddings)
      vocab_grew = bm25_lib.vocab_size(tokenizer) != bm25_lib.vocab_size(self.bm25_tokenizer)
    state.live[np.asarray(stale_rows, np.int64)] = False
    state.generation += 1
    self.store.commit(state, write_vocab=vocab_grew)
    self._set_state(state)
    return UpdateReport(added, replaced, deleted, unchanged, len(chunks), len(stale_rows))

  def compact(self):
    """Rewrites the live rows into one segment (no re-encoding) and drops tombstones."""
    with self._writing():
      self._set_state(self.store.compact(self.state))

  def search_rows(self, queries: Sequence[str], k: int = 5, method: str = "hybrid",
                  candidates: int = 50, on_overflow: str = "truncate",
                  groups: Iterable[str] | None = None) -> Hits:
    """Top-k chunk rows per query. Hybrid fuses the top `candidates` of BM25 and dense.

    Only rows a caller in `groups` may see take part (None: public documents only); they are
    masked before the top-k, so a caller gets k hits whenever k visible rows match.

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
    if not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"k must be an integer >= 1, got {k!r}")
    groups = _as_groups(groups)
    allowed = self.visible_rows(groups)
    restricted = allowed is not self.live
    truncated = np.zeros(len(queries), bool)
    if not allowed.any():  # nothing this caller may see
      return Hits(np.full((len(queries), k), -np.inf, np.float32),
                  np.full((len(queries), k), -1, np.int64), truncated)
    if method == "bm25":
      scores, rows = self._bm25_search(queries, k, groups)
    elif method == "dense":
      (scores, rows), truncated = self._dense_search(queries, k, on_overflow, groups)
    else:
      depth = max(k, candidates)
      _, bm25_rows = self._bm25_search(queries, depth, groups)
      (_, dense_rows), truncated = self._dense_search(queries, depth, on_overflow, groups)
      scores, rows = reciprocal_rank_fusion([bm25_rows, dense_rows], k, self.config.rrf_k)
    if restricted:
      scores, rows = _keep_allowed(scores, rows, allowed)  # never relied on; never skipped
    return Hits(scores, rows, truncated)

  def search(self, queries: Sequence[str], k: int = 5, method: str = "hybrid",
             candidates: int = 50, on_overflow: str = "truncate",
             groups: Iterable[str] | None = None) -> list[list[Passage]]:
    """Like `search_rows`, as passages (doc id, chunk id, text, score, rank, acl) per query."""
    hits = self.search_rows(queries, k, method, candidates, on_overflow, groups)
    return [[Passage(self.chunks[r].doc_id, self.chunks[r].chunk_id, self.chunks[r].text,
                     float(s), rank, self.chunks[r].acl)
             for rank, (s, r) in enumerate(zip(scores, rows), 1) if r >= 0]
            for scores, rows in zip(hits.scores, hits.rows)]

  def _restricted_view(self, groups: frozenset[str], what: str, make: Callable):
    """BM25 weights or a device index over the rows `groups` may see, cached per caller."""
    views = self._restricted.setdefault(groups, {})
    if what not in views:
      if len(self._restricted) > 32:  # many distinct callers: keep memory bounded
        self._restricted = {groups: views}
      views[what] = make(self.visible_rows(groups))
    return views[what]

  def _bm25_search(self, queries, k, groups):
    def build(rows):
      return bm25_lib.build(self.terms, rows, bm25_lib.vocab_size(self.bm25_tokenizer),
                            self.config.bm25_k1, self.config.bm25_b)

    if self.visible_rows(groups) is self.live:
      if self._bm25 is None:
        self._bm25 = build(np.flatnonzero(self.live))
      weights = self._bm25
    else:
      # Weights from the visible rows alone: idf and mean length count no hidden document, so
      # scores are those of an index holding only what the caller may see.
      weights = self._restricted_view(groups, "bm25", lambda mask: build(np.flatnonzero(mask)))
    query_terms = bm25_lib.term_ids(self.bm25_tokenizer, queries, update_vocab=False)
    return bm25_lib.search(weights, query_terms, k)

  def _dense_search(self, queries, k, on_overflow, groups):
    encoded = dense_lib.encode(self.encoder, list(queries), on_overflow=on_overflow)
    if encoded.truncated.any():
      warnings.warn(
          f"{int(encoded.truncated.sum())} quer(ies) longer than the encoder's limit of "
          f"{self.encoder.config.max_seq_length} word pieces were truncated for dense search "
          f"(longest: {int(encoded.num_tokens.max())})", QueryTruncatedWarning, stacklevel=3)
    if self._device_index is None:
      self._device_index = dense_lib.place_index(self.embeddings, self.live, self.mesh)
    device_index = self._device_index
    if self.visible_rows(groups) is not self.live:
      device_index = self._restricted_view(
          groups, "dense", lambda mask: dense_lib.restrict(self._device_index, self.embeddings,
                                                           mask))
    return dense_lib.search(device_index, encoded.embeddings, k), encoded.truncated


def _keep_allowed(scores: np.ndarray, rows: np.ndarray, allowed: np.ndarray):
  """Drops any row outside `allowed` (keeping the order of the rest)."""
  ok = (rows >= 0) & allowed[np.maximum(rows, 0)]
  if (ok == (rows >= 0)).all():
    return scores, rows
  out_scores = np.full_like(scores, -np.inf)
  out_rows = np.full_like(rows, -1)
  for q in range(rows.shape[0]):
    keep = np.flatnonzero(ok[q])
    out_scores[q, :len(keep)], out_rows[q, :len(keep)] = scores[q, keep], rows[q, keep]
  return out_scores, out_rows


def _as_groups(groups) -> frozenset[str]:
  if groups is None:
    return frozenset()
  if isinstance(groups, (str, bytes)):
    raise TypeError("groups must be a list of group names, not one string")
  groups = frozenset(groups)
  if not all(isinstance(g, str) for g in groups):
    raise TypeError(f"group names must be strings, got {sorted(map(repr, groups))}")
  return groups


def _extendable_copy(tokenizer):
  """A copy of a BM25 tokenizer whose vocabulary can grow without changing the original's."""
  tokenizer = copy.copy(tokenizer)
  for key in ("word_to_id", "word_to_stem", "stem_to_sid"):
    setattr(tokenizer, key, dict(getattr(tokenizer, key)))
  return tokenizer


def _check_unique(documents: list[Document]):
  ids = [d.doc_id for d in documents]
  if len(set(ids)) != len(ids):
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    raise RetrievalIndexError(f"duplicate document id(s) in one update: {_shown(dupes)}")


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

