"""A retrieval index on disk that is updated in place: add, replace and delete documents.

Layout of an index folder:
  manifest.json        config, the ordered list of segments, tombstoned rows, the BM25 vocabulary
                       size and a generation number: the commit point
  bm25_vocab.json      the BM25 word -> term id map (append-only)
  segments/NAME/       one folder per update: chunks.jsonl, embeddings.npy [rows, hidden],
                       terms.npy + term_offsets.npy (CSR term ids per chunk)
  write.lock           held (flock) by the one process writing; holds its pid

Rows are numbered across segments in manifest order. An update chunks, encodes and tokenises only
the new documents into a new segment and tombstones the rows of replaced or deleted documents;
existing segments are never rewritten (until `compact()`, which copies live rows without
re-encoding). Dense search masks tombstoned rows; BM25 weights are recomputed from the stored
term ids on the first search after an update, because idf and mean length are corpus-wide.

Crash safety and concurrency. Writers take `write.lock` (waiting up to `lock_timeout_s`), re-read
the manifest under it and apply their update on top of what is on disk, so concurrent updates
from several processes all land. Every file is written under a temporary name in its final
folder, fsync'd and renamed into place; the manifest is replaced last. Segments are immutable
once published and the vocabulary only grows (the manifest records how many of its words are
committed), so a crash at any point leaves the index as it was before the interrupted update:
files not named by the manifest are ignored and removed by the next writer. Readers take no
lock: they read the manifest, then the files it names.

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
import fcntl
import io
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from ftjax.checkpoints import DEFAULT_ENCODER
from ftjax.retrieval import bm25 as bm25_lib
from ftjax.retrieval import dense as dense_lib
from ftjax.retrieval.corpus import Chunk, Corpus, Document, chunk_documents, visible
from ftjax.retrieval.hybrid import reciprocal_rank_fusion

FORMAT_VERSION = 1
METHODS = ("bm25", "dense", "hybrid")
MANIFEST = "manifest.json"
VOCAB = "bm25_vocab.json"
LOCK = "write.lock"
SEGMENTS = "segments"
SEGMENT_FILES = ("chunks.jsonl", "terms.npy", "term_offsets.npy", "embeddings.npy")

# Fault injection for tests: every step of a write that reaches the disk first calls
# `write_step_hook(label)` (a test raises there to stop the write as a crash would), and with
# FTJAX_INDEX_CRASH_AT=N in the environment the process dies (os._exit, no clean-up) at step N.
write_step_hook: Callable[[str], None] | None = None
CRASH_AT_ENV = "FTJAX_INDEX_CRASH_AT"
_write_steps = 0


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


class IndexLockedError(RetrievalIndexError):
  """Another process held the index's write lock for longer than the timeout."""


class _Vanished(Exception):
  """A file named by the manifest disappeared while reading: a writer moved on (compaction)."""


def _write_step(label: str):
  global _write_steps
  _write_steps += 1
  if write_step_hook is not None:
    write_step_hook(label)
  if os.environ.get(CRASH_AT_ENV) == str(_write_steps):
    os._exit(99)


def _fsync_dir(folder: Path):
  """Makes a rename in `folder` durable (best effort: some file systems cannot sync a folder)."""
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _write_new_file(path: Path, data: bytes):
  """Writes `data` to `path`, which must not exist, and fsyncs it."""
  _write_step(f"create {path.name}")
  with open(path, "xb") as f:
    half = len(data) // 2
    f.write(data[:half])
    f.flush()
    _write_step(f"write {path.name}")  # a crash here leaves a truncated file
    f.write(data[half:])
    f.flush()
    _write_step(f"fsync {path.name}")
    os.fsync(f.fileno())


def _replace_file(path: Path, data: bytes):
  """Atomically replaces `path`: a temporary file in the same folder, fsync'd, renamed."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(3).hex()}.tmp")
  _write_new_file(tmp, data)
  _write_step(f"replace {path.name}")
  os.replace(tmp, path)
  _fsync_dir(path.parent)


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _inside(folder: Path, path: Path) -> bool:
  """`path` resolves (symlinks followed) to somewhere strictly under `folder`."""
  root = os.path.realpath(folder)
  return os.path.realpath(path).startswith(root + os.sep)


@contextlib.contextmanager
def _locked(folder: Path, timeout_s: float):
  """Holds `folder/write.lock` exclusively (flock: released by the OS if the process dies)."""
  fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    deadline = time.monotonic() + timeout_s
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() >= deadline:
          holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
          raise IndexLockedError(f"index {folder} is locked by pid {holder} (waited "
                                 f"{timeout_s:g} s for it to finish writing)") from None
        time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
  finally:
    os.close(fd)


def read_manifest(path: Path) -> dict:
  """The validated manifest of the index in `path`; every error is a `RetrievalIndexError`."""
  manifest_path = path / MANIFEST
  if not manifest_path.is_file():
    raise RetrievalIndexError(f"{path}: no {MANIFEST} (not a retrieval index)")
  try:
    manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as err:
    raise RetrievalIndexError(f"{manifest_path}: corrupt manifest ({err})") from None
  if not isinstance(manifest, dict):
    raise RetrievalIndexError(f"{manifest_path}: corrupt manifest (not a JSON object)")
  if manifest.get("format") != FORMAT_VERSION:
    raise RetrievalIndexError(f"{manifest_path}: format {manifest.get('format')!r}, "
                              f"expected {FORMAT_VERSION}")

  def bad(what):
    return RetrievalIndexError(f"{manifest_path}: corrupt manifest ({what})")

  if not isinstance(manifest.get("config"), dict):
    raise bad('"config" must be an object')
  segments = manifest.get("segments")
  if not isinstance(segments, list) or not all(isinstance(n, str) for n in segments):
    raise bad('"segments" must be a list of names')
  deleted = manifest.get("deleted_rows")
  if not isinstance(deleted, list) or not all(
      isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in deleted):
    raise bad('"deleted_rows" must be a list of row numbers')
  for key in ("generation", "bm25_vocab_size"):
    value = manifest.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
      raise bad(f'"{key}" must be a count')
  segment_root = path / SEGMENTS
  for name in segments:
    # A plain folder name under segments/: no absolute paths, no "..", no symlink out.
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
        or not _inside(segment_root, segment_root / name)):
      raise RetrievalIndexError(f"{manifest_path}: segment {name!r} is outside the index folder "
                                f"{path}")
  return manifest


@dataclasses.dataclass
class _State:
  """What a manifest names, loaded: replaced as a whole, so a failed load or write changes
  nothing."""
  generation: int = 0
  segments: list[str] = dataclasses.field(default_factory=list)
  chunks: list[Chunk] = dataclasses.field(default_factory=list)
  terms: list[np.ndarray] = dataclasses.field(default_factory=list)
  live: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
  embeddings: np.ndarray | None = None


class RetrievalIndex:
  """Chunks of a corpus with BM25 term ids and dense embeddings, kept in `path`."""

  lock_timeout_s: float = 600.0  # how long an update waits for another writer

  def __init__(self, path: Path, config: IndexConfig, encoder=None, mesh=None):
    self.path = Path(path)
    self.config = config
    self.mesh = mesh
    self._encoder = encoder
    self._chunk_tokenizer = encoder.tokenizer if encoder is not None else None
    self.bm25_tokenizer = bm25_lib.make_tokenizer()
    self._set_state(_State(embeddings=np.zeros((0, 0), np.float32) if config.dense else None))

  def _set_state(self, state: _State):
    self._generation = state.generation
    self.segments, self.chunks, self.terms = state.segments, state.chunks, state.terms
    self.live, self.embeddings = state.live, state.embeddings
    self._bm25 = None  # derived, rebuilt lazily after updates
    self._device_index = None
    self._visible: dict[frozenset[str], np.ndarray] = {}  # caller groups -> visible live rows
    # Caller groups -> BM25 weights and device index over their visible rows only.
    self._restricted: dict[frozenset[str], dict[str, object]] = {}

  def _state(self) -> _State:
    return _State(self._generation, list(self.segments), list(self.chunks), list(self.terms),
                  self.live.copy(), self.embeddings)

  @classmethod
  def create(cls, path: str | os.PathLike, config: IndexConfig = IndexConfig(), *,
             encoder=None, mesh=None, overwrite: bool = False) -> RetrievalIndex:
    """A new empty index folder. `encoder` (from `dense.load_encoder`) is loaded if not given."""
    path = Path(path)
    if (path / MANIFEST).exists() and not overwrite:
      raise RetrievalIndexError(f"{path}: an index already exists (pass overwrite=True)")
    index = cls(path, config, encoder, mesh)
    index._check_encoder()
    if config.dense and config.chunk_tokens + 2 > index.encoder.config.max_seq_length:
      raise ValueError(f"chunk_tokens={config.chunk_tokens} does not fit the encoder's limit of "
                       f"{index.encoder.config.max_seq_length} word pieces (with [CLS]/[SEP])")
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path, cls.lock_timeout_s):
      if (path / MANIFEST).exists():
        if not overwrite:
          raise RetrievalIndexError(f"{path}: an index already exists (pass overwrite=True)")
        # The manifest goes first: an interrupted overwrite leaves no index, not half of one.
        (path / MANIFEST).unlink()
        for entry in path.iterdir():
          if entry.name != LOCK:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
      (path / SEGMENTS).mkdir(exist_ok=True)
      index._commit(index._state())
    return index

  @classmethod
  def open(cls, path: str | os.PathLike, *, encoder=None, mesh=None) -> RetrievalIndex:
    path = Path(path)
    for _ in range(20):
      manifest = read_manifest(path)
      try:
        config = IndexConfig(**manifest["config"])
      except TypeError as err:
        raise RetrievalIndexError(f"{path / MANIFEST}: bad config ({err})") from None
      index = cls(path, config, encoder, mesh)
      index._check_encoder()
      try:
        index._load(manifest)
        return index
      except (_Vanished, RetrievalIndexError) as err:
        # A writer committed (and removed what the old manifest named) while we read: retry
        # with its manifest. The same manifest twice means the index itself is broken.
        if read_manifest(path) == manifest:
          if isinstance(err, _Vanished):
            raise RetrievalIndexError(str(err)) from None
          raise
    raise RetrievalIndexError(f"{path}: the index changed on every one of 20 attempts to read it")

  def _load(self, manifest: dict):
    """Makes this object the index `manifest` describes, reading only segments it lacks."""
    names = manifest["segments"]
    state = self._state()
    if names[:len(state.segments)] != state.segments:  # compacted elsewhere: read it all
      state = _State(embeddings=np.zeros((0, 0), np.float32) if self.config.dense else None)
    tokenizer = bm25_lib.make_tokenizer()
    vocab_path = self.path / VOCAB
    vocab_size = manifest.get("bm25_vocab_size")
    if vocab_path.is_file() or vocab_size:
      if not _inside(self.path, vocab_path):
        raise RetrievalIndexError(f"{vocab_path}: outside the index folder {self.path}")
      try:
        bm25_lib.load_vocab(tokenizer, vocab_path, vocab_size)
      except FileNotFoundError:
        raise _Vanished(f"{vocab_path}: missing") from None
      except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise RetrievalIndexError(f"{vocab_path}: corrupt BM25 vocabulary ({err})") from None
    new_embeddings = []
    for name in names[len(state.segments):]:
      chunks, terms, emb = self._read_segment(name)
      state.segments.append(name)
      state.chunks += chunks
      state.terms += terms
      new_embeddings.append(emb)
    if self.config.dense and new_embeddings:
      old = [state.embeddings] if len(state.embeddings) else []
      state.embeddings = np.concatenate(old + new_embeddings)
    deleted = np.asarray(manifest["deleted_rows"], np.int64)
    if deleted.size and deleted.max() >= len(state.chunks):
      raise RetrievalIndexError(f"{self.path / MANIFEST}: deleted row {deleted.max()} beyond the "
                                f"{len(state.chunks)} rows of its segments")
    state.live = np.ones(len(state.chunks), bool)
    state.live[deleted] = False
    state.generation = manifest.get("generation", 0)
    self.bm25_tokenizer = tokenizer
    self._set_state(state)

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
    """One writer at a time: takes the lock, catches up with what other writers committed
    (so checks and row numbers are against the index on disk) and removes what crashed
    writers left behind."""
    with _locked(self.path, self.lock_timeout_s):
      manifest = read_manifest(self.path)
      if manifest["config"] != dataclasses.asdict(self.config):
        raise RetrievalIndexError(f"{self.path}: the index was re-created with another config; "
                                  "open it again")
      try:
        self._load(manifest)
      except _Vanished as err:  # nothing else removes files while we hold the lock
        raise RetrievalIndexError(str(err)) from None
      self._remove_orphans()
      yield

  def _remove_orphans(self):
    """Temporary files and segments no manifest names: left by interrupted writers."""
    named = set(self.segments)
    (self.path / SEGMENTS).mkdir(exist_ok=True)
    for entry in (self.path / SEGMENTS).iterdir():
      if entry.name not in named:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in self.path.iterdir():
      if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
        entry.unlink()

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
    state = self._state()
    tokenizer = self.bm25_tokenizer
    if chunks:
      # Words are added to a copy: the vocabulary in use changes only once the update commits.
      tokenizer = copy.copy(tokenizer)
      for key in ("word_to_id", "word_to_stem", "stem_to_sid"):
        setattr(tokenizer, key, dict(getattr(tokenizer, key)))
      texts = [c.text for c in chunks]
      terms = bm25_lib.term_ids(tokenizer, texts, update_vocab=True)
      embeddings = dense_lib.encode(self.encoder, texts).embeddings if self.config.dense else None
      self._publish_segment(state, chunks, terms, embeddings)
      if bm25_lib.vocab_size(tokenizer) != bm25_lib.vocab_size(self.bm25_tokenizer):
        _replace_file(self.path / VOCAB, bm25_lib.vocab_bytes(tokenizer))
    state.live[np.asarray(stale_rows, np.int64)] = False
    state.generation += 1
    self._commit(state, tokenizer)
    self.bm25_tokenizer = tokenizer
    self._set_state(state)
    return UpdateReport(added, replaced, deleted, unchanged, len(chunks), len(stale_rows))

  def _publish_segment(self, state: _State, chunks: list[Chunk], terms: list[np.ndarray],
                       embeddings: np.ndarray | None):
    """Writes a new segment folder (complete and fsync'd before it takes its name) and appends
    it to `state`."""
    name = f"{len(state.chunks):09d}-{os.urandom(3).hex()}"
    segment_root = self.path / SEGMENTS
    tmp = segment_root / f".{name}.tmp"
    lines = []
    for c in chunks:
      record = dataclasses.asdict(c)
      if record["acl"] is None:
        del record["acl"]  # files of public chunks stay as they were before ACLs
      lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    files = {"chunks.jsonl": "".join(lines).encode("utf-8"),
             "terms.npy": _npy_bytes(np.concatenate(terms) if terms else np.zeros(0, np.int32)),
             "term_offsets.npy": _npy_bytes(np.cumsum([0] + [len(t) for t in terms]))}
    if self.config.dense:
      files["embeddings.npy"] = _npy_bytes(np.asarray(embeddings, np.float32))
    _write_step(f"mkdir {tmp.name}")
    tmp.mkdir()
    for file_name, data in files.items():
      _write_new_file(tmp / file_name, data)
    _fsync_dir(tmp)
    _write_step(f"publish segment {name}")
    os.replace(tmp, segment_root / name)
    _fsync_dir(segment_root)
    state.segments.append(name)
    state.chunks += chunks
    state.terms += list(terms)
    state.live = np.concatenate([state.live, np.ones(len(chunks), bool)])
    if self.config.dense:
      embeddings = np.asarray(embeddings, np.float32)
      state.embeddings = (embeddings if state.embeddings is None or state.embeddings.size == 0
                          else np.concatenate([state.embeddings, embeddings]))

  def _read_segment(self, name: str):
    folder = self.path / SEGMENTS / name
    for file_name in SEGMENT_FILES:
      if (folder / file_name).is_symlink() and not _inside(folder, folder / file_name):
        raise RetrievalIndexError(f"{folder / file_name}: outside the index folder {self.path}")
    chunks = []
    try:
      with (folder / "chunks.jsonl").open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
          try:
            record = json.loads(line)
            if record.get("acl") is not None:
              record["acl"] = tuple(record["acl"])
            chunks.append(Chunk(**record))
          except (json.JSONDecodeError, TypeError, AttributeError) as err:
            raise RetrievalIndexError(f"{folder / 'chunks.jsonl'}:{lineno}: bad chunk ({err})"
                                      ) from None
      flat, offsets = np.load(folder / "terms.npy"), np.load(folder / "term_offsets.npy")
      emb = np.load(folder / "embeddings.npy") if self.config.dense else None
    except FileNotFoundError as err:
      raise _Vanished(f"{folder}: missing {Path(err.filename).name}") from None
    except (OSError, ValueError, EOFError) as err:  # also truncated .npy files, bad UTF-8
      raise RetrievalIndexError(f"{folder}: corrupt segment ({type(err).__name__}: {err})"
                                ) from None
    if len(offsets) != len(chunks) + 1 or (len(offsets) and offsets[-1] != len(flat)):
      raise RetrievalIndexError(f"{folder}: term offsets do not match its {len(chunks)} chunks")
    terms = [flat[offsets[i]:offsets[i + 1]] for i in range(len(chunks))]
    if emb is not None and emb.shape[0] != len(chunks):
      raise RetrievalIndexError(f"{folder}: {emb.shape[0]} embeddings for {len(chunks)} chunks")
    return chunks, terms, emb

  def _commit(self, state: _State, tokenizer=None):
    """Replaces the manifest: the one step that makes an update visible."""
    tokenizer = tokenizer or self.bm25_tokenizer
    _replace_file(self.path / MANIFEST, json.dumps({
        "format": FORMAT_VERSION,
        "config": dataclasses.asdict(self.config),
        "segments": state.segments,
        "deleted_rows": np.flatnonzero(~state.live).tolist(),
        "generation": state.generation,
        "bm25_vocab_size": bm25_lib.vocab_size(tokenizer),
    }, indent=1).encode("utf-8"))

  def compact(self):
    """Rewrites the live rows into one segment (no re-encoding) and drops tombstones."""
    with self._writing():
      rows = np.flatnonzero(self.live)
      old = self.segments
      state = _State(self._generation + 1,
                     embeddings=np.zeros((0, 0), np.float32) if self.config.dense else None)
      if len(rows):
        self._publish_segment(state, [self.chunks[r] for r in rows], [self.terms[r] for r in rows],
                              self.embeddings[rows] if self.config.dense else None)
      self._commit(state)
      self._set_state(state)
      for name in old:  # unreferenced now; a crash before this leaves orphans for the next writer
        shutil.rmtree(self.path / SEGMENTS / name, ignore_errors=True)

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

