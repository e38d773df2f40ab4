"""Retrieval metrics against gold document ids: recall@k and MRR.

Retrievers rank chunks; metrics rank documents. A ranked list of doc ids (one per retrieved chunk)
is first reduced to distinct documents in order of first appearance, so k counts documents.
"""

from __future__ import annotations

from typing import Collection, Sequence


def distinct(doc_ids: Sequence[str]) -> list[str]:
  """Doc ids in order of first appearance (several chunks of one document count once)."""
  return list(dict.fromkeys(doc_ids))


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
