"""Lexical retrieval: BM25 through `bm25s`, over term ids that are kept per chunk.

Texts are split into lowercase words with English stop words removed (bm25s' tokenizer), one-
character words kept as Lucene's standard analyzer keeps them: "gate 3", "vitamin C", "Windows 7"
and "Plan B" differ only in that word (bm25s' default pattern drops it). The
vocabulary only grows, so a chunk's term ids stay valid as documents are added, and an index can
store them instead of re-tokenizing. BM25 weights depend on corpus-wide statistics (idf, mean
length), so after any update they are recomputed from the stored term ids (`build`): a pass over
integer arrays, with no text processing and no re-encoding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np


# Every run of word characters, one-character words included (bm25s' default needs two).
WORD_PATTERN = r"(?u)\b\w+\b"


def make_tokenizer(stopwords: str | list[str] | None = "english", stemmer=None):
  """A bm25s word tokenizer; `stemmer` is any str -> str callable (e.g. PyStemmer's)."""
  import bm25s.tokenization
  return bm25s.tokenization.Tokenizer(lower=True, splitter=WORD_PATTERN, stopwords=stopwords,
                                      stemmer=stemmer)


def term_ids(tokenizer, texts: list[str], update_vocab: bool) -> list[np.ndarray]:
  """Per-text int32 term ids. With update_vocab=False unknown words are dropped."""
  ids = tokenizer.tokenize(list(texts), update_vocab=update_vocab, show_progress=False,
                           allow_empty=False)
  return [np.asarray(x, np.int32) for x in ids]


def vocab_size(tokenizer) -> int:
  return len(tokenizer.word_to_id)


def vocab_bytes(tokenizer) -> bytes:
  """The vocabulary as bm25s' `save_vocab` writes it (the caller writes the file atomically)."""
  return json.dumps({"word_to_stem": tokenizer.word_to_stem, "stem_to_sid": tokenizer.stem_to_sid,
                     "word_to_id": tokenizer.word_to_id}, ensure_ascii=False).encode("utf-8")


def load_vocab(tokenizer, path: Path, size: int | None = None):
  """Reads a saved vocabulary, keeping the first `size` term ids (all if None).

  The vocabulary only grows, so its first `size` ids are exactly the vocabulary of the commit
  that recorded `size`: words added by a later (or interrupted) update are dropped. Raises
  ValueError for a file that is not a vocabulary.
  """
  vocab = json.loads(path.read_text(encoding="utf-8"))
  if not isinstance(vocab, dict) or not all(
      isinstance(vocab.get(key), dict) for key in ("word_to_stem", "stem_to_sid", "word_to_id")):
    raise ValueError("not a BM25 vocabulary")
  word_to_id = vocab["word_to_id"]
  if size is not None:
    if len(word_to_id) < size:
      raise ValueError(f"{len(word_to_id)} words, the manifest expects {size}")
    word_to_id = {word: i for word, i in word_to_id.items() if i < size}
  tokenizer.word_to_id = word_to_id
  tokenizer.word_to_stem = {w: s for w, s in vocab["word_to_stem"].items() if w in word_to_id}
  tokenizer.stem_to_sid = {s: i for s, i in vocab["stem_to_sid"].items()
                           if size is None or i < size}


class Bm25(NamedTuple):
  model: object  # bm25s.BM25 over the live rows
  rows: np.ndarray  # [num_live] bm25 document index -> index row
  vocab_size: int


def build(chunk_terms: list[np.ndarray], rows: np.ndarray, vocab_size: int, k1: float = 1.5,
          b: float = 0.75) -> Bm25:
  """BM25 weights over the chunks `rows` (their term ids in `chunk_terms`)."""
  import bm25s
  model = bm25s.BM25(k1=k1, b=b, method="lucene")
  corpus_ids = [chunk_terms[r].tolist() for r in rows]
  # bm25s wants {token: id}; the ids are what matter, so stand-in keys are enough.
  vocab = {i: i for i in range(max(vocab_size, 1))}
  model.index((corpus_ids, vocab), create_empty_token=False, show_progress=False)
  return Bm25(model, np.asarray(rows, np.int64), vocab_size)


def search(index: Bm25, query_terms: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
  """([q, k] float32 scores, [q, k] int64 rows). Chunks sharing no term with the query are not
  hits: their slots hold row -1 and score -inf."""
  scores = np.full((len(query_terms), k), -np.inf, np.float32)
  rows = np.full((len(query_terms), k), -1, np.int64)
  n = len(index.rows)
  for i, terms in enumerate(query_terms):
    terms = terms[terms < index.vocab_size]
    if len(terms) == 0 or n == 0:
      continue
    all_scores = index.model.get_scores_from_ids(terms)
    top = min(k, n)
    best = np.argpartition(-all_scores, top - 1)[:top]
    # Sort by score, ties by row, so results are deterministic.
    best = best[np.lexsort((best, -all_scores[best]))]
    best = best[all_scores[best] > 0]
    scores[i, :len(best)] = all_scores[best]
    rows[i, :len(best)] = index.rows[best]
  return scores, rows
