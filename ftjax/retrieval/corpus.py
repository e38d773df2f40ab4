"""Corpus ingestion: documents from JSONL, a folder of text/Markdown files or TFDS; token chunks.

Every reader returns a `Corpus`: the documents plus the items it skipped (empty texts) with
where and why, so nothing is dropped silently. Malformed input (bad JSON, a missing key, a
duplicate id, a non-UTF-8 file) raises `CorpusError` naming the file and line.

Chunks are windows of `chunk_tokens` word pieces (of the dense encoder's tokenizer, so every chunk
fits the encoder) that overlap by `overlap` pieces. Windows start and end at whitespace and
a chunk's text is the exact substring of its document, so chunk ids `"{doc_id}#{i}"` and offsets
point back to the source.

Access control: a document may carry `acl`, the groups allowed to see it (`"acl": ["hr", "legal"]`
in JSONL). A document without one is public. `visible(acl, groups)` is the one rule every search
path applies; its chunks carry the same ACL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from ftjax.errors import UserError


class CorpusError(ValueError, UserError):
  """Malformed corpus input; the message names the file, line or key."""


def check_acl(acl) -> tuple[str, ...] | None:
  """None (public) or a non-empty tuple of group names; raises ValueError otherwise."""
  if acl is None:
    return None
  if isinstance(acl, (str, bytes)) or not isinstance(acl, Sequence):
    raise ValueError(f"acl must be a list of group names, got {type(acl).__name__}")
  if not acl:
    raise ValueError("acl is empty (no one could see the document); leave it out for a public "
                     "document")
  for group in acl:
    if not isinstance(group, str) or not group.strip():
      raise ValueError(f"acl group names must be non-empty strings, got {group!r}")
  return tuple(acl)


def visible(acl: Sequence[str] | None, groups: frozenset[str]) -> bool:
  """A caller in `groups` may see a document with `acl` (None: public)."""
  return acl is None or not groups.isdisjoint(acl)


@dataclasses.dataclass(frozen=True)
class Document:
  doc_id: str
  text: str
  title: str = ""
  acl: tuple[str, ...] | None = None  # groups that may see it; None: public

  def __post_init__(self):
    object.__setattr__(self, "acl", check_acl(self.acl))

  @property
  def content_hash(self) -> str:
    # The ACL is part of the content (a changed ACL is a replacement); public documents hash as
    # they did before ACLs existed, so older indexes see no change.
    acl = "" if self.acl is None else "\0acl:" + ",".join(sorted(self.acl))
    return hashlib.sha1(f"{self.title}\0{self.text}{acl}".encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Chunk:
  doc_id: str
  chunk_index: int  # position within the document
  text: str
  start_char: int  # text == document.text[start_char:end_char]
  end_char: int
  doc_hash: str = ""
  acl: tuple[str, ...] | None = None  # the document's; None: public

  @property
  def chunk_id(self) -> str:
    return f"{self.doc_id}#{self.chunk_index}"


class QAPair(NamedTuple):
  question: str
  answer: str
  doc_id: str  # the gold (oracle) document


class Corpus(NamedTuple):
  documents: list[Document]
  skipped: list[tuple[str, str]]  # (where, why) for every item not turned into a document

  def report(self) -> str:
    lines = [f"{len(self.documents)} documents, {len(self.skipped)} skipped"]
    lines += [f"  skipped {where}: {why}" for where, why in self.skipped[:20]]
    if len(self.skipped) > 20:
      lines.append(f"  ... and {len(self.skipped) - 20} more")
    return "\n".join(lines)


def _check_unique(documents: list[Document], where: list[str]):
  seen: dict[str, str] = {}
  for doc, loc in zip(documents, where):
    if doc.doc_id in seen:
      raise CorpusError(f"{loc}: duplicate document id {doc.doc_id!r} "
                        f"(first at {seen[doc.doc_id]})")
    seen[doc.doc_id] = loc


def from_records(records: Iterable[Mapping[str, Any]], *, id_key: str | None = "id",
                 text_key: str = "text", title_key: str | None = None,
                 source: str = "records") -> Corpus:
  """Documents from dicts. Without `id_key` (None) ids are `"{source}:{index}"`."""
  located = ((i, f"{source}[{i}]", record) for i, record in enumerate(records))
  return _collect(located, id_key, text_key, title_key, source)


def _collect(located, id_key, text_key, title_key, source) -> Corpus:
  """(index, location, record) triples -> Corpus; empty texts are skipped and reported."""
  documents, where, skipped = [], [], []
  for index, loc, record in located:
    doc = _record_to_document(record, index, loc, id_key, text_key, title_key, source)
    if isinstance(doc, str):
      skipped.append((loc, doc))
    else:
      documents.append(doc)
      where.append(loc)
  _check_unique(documents, where)
  return Corpus(documents, skipped)


def _record_to_document(record, index, loc, id_key, text_key, title_key, source):
  if not isinstance(record, Mapping):
    raise CorpusError(f"{loc}: expected an object, got {type(record).__name__}")
  for key in (id_key, text_key, title_key):
    if key is not None and key not in record:
      raise CorpusError(f"{loc}: missing key {key!r} (keys: {', '.join(map(str, record))})")
  text = _as_str(record[text_key], loc, text_key)
  doc_id = _as_str(record[id_key], loc, id_key) if id_key is not None else f"{source}:{index}"
  title = _as_str(record[title_key], loc, title_key) if title_key is not None else ""
  if not doc_id:
    raise CorpusError(f"{loc}: empty document id in key {id_key!r}")
  try:
    acl = check_acl(record.get("acl"))
  except ValueError as err:
    raise CorpusError(f"{loc}: {err}") from None
  if not text.strip():
    return f"document {doc_id!r} has empty text"
  return Document(doc_id, text, title, acl)


def _as_str(value, loc, key) -> str:
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if isinstance(value, (int, str)) and not isinstance(value, bool):
    return str(value)
  raise CorpusError(f"{loc}: key {key!r} must be a string, got {type(value).__name__}")


def read_jsonl(path: str | os.PathLike, *, id_key: str | None = "id", text_key: str = "text",
               title_key: str | None = None) -> Corpus:
  """One JSON object per line (with an optional "acl" list); blank lines are ignored."""
  path = Path(path)
  if not path.is_file():
    raise CorpusError(f"{path}: no such file")

  def rows():
    with path.open("rb") as f:
      for lineno, raw in enumerate(f, 1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
          raise CorpusError(f"{path}:{lineno}: not UTF-8 text (byte {err.start} of the line)"
                            ) from None
        if not line.strip():
          continue
        try:
          yield lineno, json.loads(line.rstrip("\r\n"))  # the column on this line
        except json.JSONDecodeError as err:
          raise CorpusError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})"
                            ) from None

  located = ((lineno, f"{path}:{lineno}", record) for lineno, record in rows())
  return _collect(located, id_key, text_key, title_key, str(path))


def read_folder(path: str | os.PathLike, suffixes: tuple[str, ...] = (".txt", ".md")) -> Corpus:
  """Every matching file under `path` (recursively) is a document; its id is the relative path
  and its title the first Markdown heading, if any."""
  root = Path(path)
  if not root.is_dir():
    raise CorpusError(f"{root}: no such folder")
  documents, skipped = [], []
  for file in sorted(p for p in root.rglob("*") if p.is_file()):
    rel = file.relative_to(root).as_posix()
    if file.suffix.lower() not in suffixes:
      skipped.append((str(file), f"suffix {file.suffix!r} not in {suffixes}"))
      continue
    try:
      text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
      raise CorpusError(f"{file}: not UTF-8 text (byte {err.start})") from None
    if not text.strip():
      skipped.append((str(file), "empty file"))
      continue
    title = next((line.lstrip("#").strip() for line in text.splitlines()
                  if line.startswith("#")), "")
    documents.append(Document(rel, text, title))
  return Corpus(documents, skipped)


def read_tfds(name: str, *, split: str = "train", text_key: str = "text",
              id_key: str | None = None, title_key: str | None = None,
              data_dir: str | os.PathLike | None = None, download: bool = False) -> Corpus:
  """A prepared TFDS dataset (`download=False` by default: no network). Without `id_key`,
  ids are `"{name}/{split}:{index}"`."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    if download:
      builder.download_and_prepare()
    dataset = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  except Exception as err:  # DatasetNotFoundError, AssertionError for unprepared data, ...
    raise CorpusError(f"tfds {name!r} split {split!r}: could not open ({type(err).__name__}: "
                      f"{err})") from err
  return from_records(dataset, id_key=id_key, text_key=text_key, title_key=title_key,
                      source=f"{name}/{split}")


def load_corpus(source: str | os.PathLike, **kwargs) -> Corpus:
  """`source` is a .jsonl file, a folder, or `tfds:NAME[:SPLIT]`."""
  source = str(source)
  if source.startswith("tfds:"):
    name, _, split = source[5:].partition(":")
    return read_tfds(name, split=split or "train", **kwargs)
  if os.path.isdir(source):
    return read_folder(source, **kwargs)
  return read_jsonl(source, **kwargs)


def _word_starts(offsets: list[tuple[int, int]]) -> list[bool]:
  """Tokens that follow whitespace (or start the text): the places a chunk may begin or end."""
  return [i == 0 or start > offsets[i - 1][1] for i, (start, _) in enumerate(offsets)]


def chunk_documents(documents: Iterable[Document], tokenizer, chunk_tokens: int = 200,
                    overlap: int = 32) -> list[Chunk]:
  """Splits each document into windows of at most `chunk_tokens` tokens of `tokenizer` (a fast
  HF tokenizer) overlapping by about `overlap` tokens. A title, if any, is kept as the first line
  of every chunk so each chunk says what it is about."""
  if chunk_tokens < 1 or not 0 <= overlap < chunk_tokens:
    raise ValueError(f"need chunk_tokens >= 1 and 0 <= overlap < chunk_tokens, got "
                     f"chunk_tokens={chunk_tokens}, overlap={overlap}")
  documents = list(documents)
  if not documents:
    return []
  encodings = tokenizer([d.text for d in documents], add_special_tokens=False,
                        return_offsets_mapping=True, truncation=False, verbose=False)
  chunks = []
  for i, doc in enumerate(documents):
    offsets = encodings["offset_mapping"][i]
    starts = _word_starts(offsets)
    n = len(offsets)
    if n == 0:
      raise CorpusError(f"document {doc.doc_id!r} has no tokens to index")
    begin, index = 0, 0
    while True:
      end = min(begin + chunk_tokens, n)
      # Back off to a word start so no word is split across chunks (unless one word is longer
      # than a whole chunk).
      while end < n and not starts[end] and end > begin + 1:
        end -= 1
      start_char, end_char = offsets[begin][0], offsets[end - 1][1]
      chunks.append(Chunk(doc.doc_id, index, doc.text[start_char:end_char], start_char, end_char,
                          doc.content_hash, doc.acl))
      if end >= n:
        break
      next_begin = max(end - overlap, begin + 1)
      while next_begin > begin + 1 and not starts[next_begin]:
        next_begin -= 1
      begin, index = next_begin, index + 1
  return chunks
