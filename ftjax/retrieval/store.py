"""The files of a retrieval index, written so that no crash or concurrent writer can damage them.

Layout of an index folder:
  manifest.json        config, the ordered list of segments, tombstoned rows, the BM25 vocabulary
                       size and a generation number: the commit point
  bm25_vocab.json      the BM25 word -> term id map (append-only)
  segments/NAME/       one folder per update: chunks.jsonl, embeddings.npy [rows, hidden],
                       terms.npy + term_offsets.npy (CSR term ids per chunk)
  write.lock           held (flock) by the one process writing; holds its pid

Rows are numbered across segments in manifest order. Existing segments are never rewritten
(until `IndexStore.compact`, which copies live rows into one new segment).

Crash safety and concurrency. Writers take `write.lock` (waiting up to `lock_timeout_s`), re-read
the manifest under it and apply their update on top of what is on disk, so concurrent updates
from several processes all land. Every file is written under a temporary name in its final
folder, fsync'd and renamed into place; the manifest is replaced last. Segments are immutable
once published and the vocabulary only grows (the manifest records how many of its words are
committed), so a crash at any point leaves the index as it was before the interrupted update:
files not named by the manifest are ignored and removed by the next writer. Readers take no
lock: they read the manifest, then the files it names.

Fault injection: a store calls its `fault_hook(label)` before every step of a write that reaches
the disk; tests pass a hook that raises (or ends the process) there, as a crash would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ftjax.checkpoints import DEFAULT_ENCODER
from ftjax.retrieval import bm25 as bm25_lib
from ftjax.retrieval.corpus import Chunk
from ftjax.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "bm25_vocab.json"
LOCK = "write.lock"
SEGMENTS = "segments"
SEGMENT_FILES = ("chunks.jsonl", "terms.npy", "term_offsets.npy", "embeddings.npy")
READ_ATTEMPTS = 20

FaultHook = Callable[[str], None]  # called with the label of each write step, before it


class RetrievalIndexError(ValueError, UserError):
  """A bad index folder, or an update that names unknown or duplicate documents."""


class IndexLockedError(RetrievalIndexError):
  """Another process held the index's write lock for longer than the timeout."""


class Vanished(Exception):
  """A file named by the manifest disappeared while reading: a writer moved on (compaction)."""


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  encoder: str = DEFAULT_ENCODER  # its tokenizer chunks text; its embeddings serve dense search
  dense: bool = True  # False: BM25 only (no encoder weights loaded)
  chunk_tokens: int = 200
  chunk_overlap: int = 32
  bm25_k1: float = 1.5
  bm25_b: float = 0.75
  rrf_k: float = 60.0


@dataclasses.dataclass
class StoreState:
  """What a manifest names, loaded: replaced as a whole, so a failed load or write changes
  nothing."""
  generation: int = 0
  segments: list[str] = dataclasses.field(default_factory=list)
  chunks: list[Chunk] = dataclasses.field(default_factory=list)
  terms: list[np.ndarray] = dataclasses.field(default_factory=list)  # BM25 term ids per row
  live: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))  # [rows]
  embeddings: np.ndarray | None = None  # [rows, hidden]; None for a BM25-only index
  bm25_tokenizer: object = dataclasses.field(default_factory=bm25_lib.make_tokenizer)

  def copy(self) -> StoreState:
    """A copy whose lists and tombstones an update may change (arrays are shared)."""
    return dataclasses.replace(self, segments=list(self.segments), chunks=list(self.chunks),
                               terms=list(self.terms), live=self.live.copy())


def fsync_dir(folder: Path):
  """Makes a rename in `folder` durable (best effort: some file systems cannot sync a folder)."""
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def inside(folder: Path, path: Path) -> bool:
  """`path` resolves (symlinks followed) to somewhere strictly under `folder`."""
  root = os.path.realpath(folder)
  return os.path.realpath(path).startswith(root + os.sep)


@contextlib.contextmanager
def locked(folder: Path, timeout_s: float):
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
        or not inside(segment_root, segment_root / name)):
      raise RetrievalIndexError(f"{manifest_path}: segment {name!r} is outside the index folder "
                                f"{path}")
  return manifest


def read_config(path: Path) -> IndexConfig:
  """The config recorded in the manifest of the index in `path`."""
  try:
    return IndexConfig(**read_manifest(path)["config"])
  except TypeError as err:
    raise RetrievalIndexError(f"{path / MANIFEST}: bad config ({err})") from None


class IndexStore:
  """The index folder `path`: reads the state its manifest names and commits new states."""

  def __init__(self, path: Path, config: IndexConfig, fault_hook: FaultHook | None = None):
    self.path = Path(path)
    self.config = config
    self.fault_hook = fault_hook

  def empty(self, **fields) -> StoreState:
    return StoreState(embeddings=np.zeros((0, 0), np.float32) if self.config.dense else None,
                      **fields)

  def _step(self, label: str):
    if self.fault_hook is not None:
      self.fault_hook(label)

  def _write_new_file(self, path: Path, data: bytes):
    """Writes `data` to `path`, which must not exist, and fsyncs it."""
    self._step(f"create {path.name}")
    with open(path, "xb") as f:
      half = len(data) // 2
      f.write(data[:half])
      f.flush()
      self._step(f"write {path.name}")  # a crash here leaves a truncated file
      f.write(data[half:])
      f.flush()
      self._step(f"fsync {path.name}")
      os.fsync(f.fileno())

  def _replace_file(self, path: Path, data: bytes):
    """Atomically replaces `path`: a temporary file in the same folder, fsync'd, renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(3).hex()}.tmp")
    self._write_new_file(tmp, data)
    self._step(f"replace {path.name}")
    os.replace(tmp, path)
    fsync_dir(path.parent)

  def create(self, overwrite: bool, lock_timeout_s: float):
    """Makes `path` an empty index (removing the one there with `overwrite`)."""
    self.path.mkdir(parents=True, exist_ok=True)
    with locked(self.path, lock_timeout_s):
      if (self.path / MANIFEST).exists():
        if not overwrite:
          raise RetrievalIndexError(f"{self.path}: an index already exists (pass overwrite=True)")
        # The manifest goes first: an interrupted overwrite leaves no index, not half of one.
        (self.path / MANIFEST).unlink()
        for entry in self.path.iterdir():
          if entry.name != LOCK:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
      (self.path / SEGMENTS).mkdir(exist_ok=True)
      self.commit(self.empty())

  def _check_config(self, manifest: dict):
    if manifest["config"] != dataclasses.asdict(self.config):
      raise RetrievalIndexError(f"{self.path}: the index was re-created with another config; "
                                "open it again")

  def read(self, current: StoreState | None = None) -> StoreState:
    """The state the manifest names now, reading only the segments `current` lacks. Takes no
    lock: a writer that commits meanwhile (removing what the old manifest named) is a retry."""
    for _ in range(READ_ATTEMPTS):
      manifest = read_manifest(self.path)
      self._check_config(manifest)
      try:
        return self._load(manifest, current)
      except (Vanished, RetrievalIndexError) as err:
        # The same manifest twice means the index itself is broken.
        if read_manifest(self.path) == manifest:
          if isinstance(err, Vanished):
            raise RetrievalIndexError(str(err)) from None
          raise
    raise RetrievalIndexError(f"{self.path}: the index changed on every one of {READ_ATTEMPTS} "
                              "attempts to read it")

  @contextlib.contextmanager
  def writing(self, current: StoreState, lock_timeout_s: float) -> Iterator[StoreState]:
    """One writer at a time: takes the lock and yields the state on disk (so checks and row
    numbers are against what other writers committed), having removed what crashed writers
    left behind."""
    with locked(self.path, lock_timeout_s):
      manifest = read_manifest(self.path)
      self._check_config(manifest)
      try:
        state = self._load(manifest, current)
      except Vanished as err:  # nothing else removes files while we hold the lock
        raise RetrievalIndexError(str(err)) from None
      self._remove_orphans(set(state.segments))
      yield state

  def _load(self, manifest: dict, current: StoreState | None) -> StoreState:
    names = manifest["segments"]
    state = current.copy() if current is not None else self.empty()
    if names[:len(state.segments)] != state.segments:  # compacted elsewhere: read it all
      state = self.empty()
    state.bm25_tokenizer = bm25_lib.make_tokenizer()
    vocab_path = self.path / VOCAB
    vocab_size = manifest.get("bm25_vocab_size")
    if vocab_path.is_file() or vocab_size:
      if not inside(self.path, vocab_path):
        raise RetrievalIndexError(f"{vocab_path}: outside the index folder {self.path}")
      try:
        bm25_lib.load_vocab(state.bm25_tokenizer, vocab_path, vocab_size)
      except FileNotFoundError:
        raise Vanished(f"{vocab_path}: missing") from None
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
      raise RetrievalIndexError(f"{self.path / MANIFEST}: deleted row {deleted.max()} beyond "
                                f"the {len(state.chunks)} rows of its segments")
    state.live = np.ones(len(state.chunks), bool)
    state.live[deleted] = False
    state.generation = manifest.get("generation", 0)
    return state

  def _read_segment(self, name: str):
    folder = self.path / SEGMENTS / name
    for file_name in SEGMENT_FILES:
      if (folder / file_name).is_symlink() and not inside(folder, folder / file_name):
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
      raise Vanished(f"{folder}: missing {Path(err.filename).name}") from None
    except (OSError, ValueError, EOFError) as err:  # also truncated .npy files, bad UTF-8
      raise RetrievalIndexError(f"{folder}: corrupt segment ({type(err).__name__}: {err})"
                                ) from None
    if len(offsets) != len(chunks) + 1 or (len(offsets) and offsets[-1] != len(flat)):
      raise RetrievalIndexError(f"{folder}: term offsets do not match its {len(chunks)} chunks")
    terms = [flat[offsets[i]:offsets[i + 1]] for i in range(len(chunks))]
    if emb is not None and emb.shape[0] != len(chunks):
      raise RetrievalIndexError(f"{folder}: {emb.shape[0]} embeddings for {len(chunks)} chunks")
    return chunks, terms, emb

  def _remove_orphans(self, named: set[str]):
    """Temporary files and segments no manifest names: left by interrupted writers."""
    (self.path / SEGMENTS).mkdir(exist_ok=True)
    for entry in (self.path / SEGMENTS).iterdir():
      if entry.name not in named:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in self.path.iterdir():
      if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
        entry.unlink()

  def publish_segment(self, state: StoreState, chunks: list[Chunk], terms: list[np.ndarray],
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
             "terms.npy": npy_bytes(np.concatenate(terms) if terms else np.zeros(0, np.int32)),
             "term_offsets.npy": npy_bytes(np.cumsum([0] + [len(t) for t in terms]))}
    if self.config.dense:
      files["embeddings.npy"] = npy_bytes(np.asarray(embeddings, np.float32))
    self._step(f"mkdir {tmp.name}")
    tmp.mkdir()
    for file_name, data in files.items():
      self._write_new_file(tmp / file_name, data)
    fsync_dir(tmp)
    self._step(f"publish segment {name}")
    os.replace(tmp, segment_root / name)
    fsync_dir(segment_root)
    state.segments.append(name)
    state.chunks += chunks
    state.terms += list(terms)
    state.live = np.concatenate([state.live, np.ones(len(chunks), bool)])
    if self.config.dense:
      embeddings = np.asarray(embeddings, np.float32)
      state.embeddings = (embeddings if state.embeddings is None or state.embeddings.size == 0
                          else np.concatenate([state.embeddings, embeddings]))

  def commit(self, state: StoreState, write_vocab: bool = False):
    """Replaces the manifest (after the vocabulary, if it grew): the one step that makes an
    update visible."""
    if write_vocab:
      self._replace_file(self.path / VOCAB, bm25_lib.vocab_bytes(state.bm25_tokenizer))
    self._replace_file(self.path / MANIFEST, json.dumps({
        "format": FORMAT_VERSION,
        "config": dataclasses.asdict(self.config),
        "segments": state.segments,
        "deleted_rows": np.flatnonzero(~state.live).tolist(),
        "generation": state.generation,
        "bm25_vocab_size": bm25_lib.vocab_size(state.bm25_tokenizer),
    }, indent=1).encode("utf-8"))

  def compact(self, state: StoreState) -> StoreState:
    """Commits the live rows of `state` as one segment (no re-encoding, no tombstones) and
    removes the old segments; call it inside `writing`."""
    rows = np.flatnonzero(state.live)
    compacted = self.empty(generation=state.generation + 1, bm25_tokenizer=state.bm25_tokenizer)
    if len(rows):
      self.publish_segment(compacted, [state.chunks[r] for r in rows],
                           [state.terms[r] for r in rows],
                           state.embeddings[rows] if self.config.dense else None)
    self.commit(compacted)
    for name in state.segments:  # unreferenced now; a crash before this leaves orphans
      shutil.rmtree(self.path / SEGMENTS / name, ignore_errors=True)
    return compacted
