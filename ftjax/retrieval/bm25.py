"""Lexical retrieval: BM25 through `bm25s`, over term ids that are kept per chunk.

Texts are split into lowercase words with English stop words removed (bm25s' tokenizer). The
vocabulary only grows, so a chunk's term ids stay valid as documents are added, and an index can
store them instead of re-tokenizing. BM25 weights depend on corpus-wide statistics (idf, mean
length), so after any update they are recomputed from the stored term ids (`build`): a pass over
integer arrays, with no text processing and no re-encoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np


def make_tokenizer(stopwords: str | list[str] | None = "english", stemmer=None):
  """A bm25s word tokenizer; `stemmer` is any str -> str callable (e.g. PyStemmer's)."""
  import bm25s.tokenization
  return bm25s.tokenization.Tokenizer(lower=True, stopwords=stopwords, stemmer=stemmer)


def term_ids(tokenizer, texts: list[str], update_vocab: bool) -> list[np.ndarray]:
  """Per-text int32 term ids. With update_vocab=False unknown words are dropped."""
  ids = tokenizer.tokenize(list(texts), update_vocab=update_vocab, show_progress=False,
                           allow_empty=False)
  return [np.asarray(x, np.int32) for x in ids]


def save_vocab(tokenizer, folder: Path):
  tokenizer.save_vocab(str(folder), "bm25_vocab.json")


def load_vocab(tokenizer, folder: Path):
  if (folder / "bm25_vocab.json").is_file():
    tokenizer.load_vocab(str(folder), "bm25_vocab.json")


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
