"""Retrieval metrics against gold document ids: recall@k and MRR, over the distinct documents a
retriever ranks (`ranked_doc_ids`).

Retrievers rank chunks; metrics rank documents. A ranked list of doc ids (one per retrieved chunk)
is first reduced to distinct documents in order of first appearance, so k counts documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Sequence

if TYPE_CHECKING:
  from ftjax.retrieval.index import RetrievalIndex


def distinct(doc_ids: Sequence[str]) -> list[str]:
  """Doc ids in order of first appearance (several chunks of one document count once)."""
  return list(dict.fromkeys(doc_ids))


def ranked_doc_ids(index: RetrievalIndex, questions: list[str], method: str,
                   num_docs: int, groups: list[str] | None = None) -> list[list[str]]:
  """The first `num_docs` distinct documents retrieved for each question. Several chunks of one
  document count once, so a question is searched deeper (doubling k) until it has `num_docs`
  documents or the retriever runs out."""
  num_visible = int(index.visible_rows(groups).sum())
  ranked: list[list[str]] = [[] for _ in questions]
  todo, depth = list(range(len(questions))), num_docs
  while todo:
    results = index.search([questions[i] for i in todo], depth, method, groups=groups)
    deeper = []
    for i, passages in zip(todo, results):
      ranked[i] = distinct([p.doc_id for p in passages])[:num_docs]
      cut_off = len(passages) == depth and depth < num_visible  # more may follow
      if len(ranked[i]) < num_docs and cut_off:
        deeper.append(i)
    todo, depth = deeper, min(2 * depth, num_visible)
  return ranked


def _check(retrieved, gold):
  if len(retrieved) != len(gold):
    raise ValueError(f"{len(retrieved)} rankings but {len(gold)} gold sets")
  for i, g in enumerate(gold):
    if not g:
      raise ValueError(f"query {i} has no gold document ids")


def recall_at_k(retrieved: Sequence[Sequence[str]], gold: Sequence[Collection[str]],
                k: int) -> float:
  """Mean over queries of |gold ∩ top-k distinct docs| / |gold|."""
  _check(retrieved, gold)
  if not gold:
    return float("nan")
  total = 0.0
  for ranked, g in zip(retrieved, gold):
    top = set(distinct(ranked)[:k])
    total += len(top & set(g)) / len(set(g))
  return total / len(gold)


def mrr(retrieved: Sequence[Sequence[str]], gold: Sequence[Collection[str]],
        k: int | None = None) -> float:
  """Mean reciprocal rank of the first gold doc among the (top-k) distinct docs; 0 if absent."""
  _check(retrieved, gold)
  if not gold:
    return float("nan")
  total = 0.0
  for ranked, g in zip(retrieved, gold):
    g = set(g)
    for rank, doc_id in enumerate(distinct(ranked)[:k], 1):
      if doc_id in g:
        total += 1.0 / rank
        break
  return total / len(gold)


def evaluate(retrieved: Sequence[Sequence[str]], gold: Sequence[Collection[str]],
             ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  out = {f"recall@{k}": recall_at_k(retrieved, gold, k) for k in ks}
  out["mrr"] = mrr(retrieved, gold)
  return out
