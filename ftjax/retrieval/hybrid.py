"""Hybrid retrieval: reciprocal-rank fusion (Cormack et al., 2009) of several rankings.

score(row) = sum over rankings of 1 / (rrf_k + rank), rank counted from 1. Only ranks matter, so
BM25 scores and cosine similarities need no calibration against each other.
"""

from __future__ import annotations

import numpy as np


def reciprocal_rank_fusion(rankings: list[np.ndarray], k: int, rrf_k: float = 60.0
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Fuses [q, depth_i] row rankings (-1 = empty slot) into ([q, k] scores, [q, k] rows).

  Ties are broken by the lower row so the result is deterministic.
  """
  if not rankings:
    raise ValueError("reciprocal_rank_fusion needs at least one ranking")
  num_q = rankings[0].shape[0]
  scores = np.full((num_q, k), -np.inf, np.float32)
  rows = np.full((num_q, k), -1, np.int64)
  for q in range(num_q):
    fused: dict[int, float] = {}
    for ranking in rankings:
      for rank, row in enumerate(ranking[q]):
        if row >= 0:
          fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (rrf_k + rank + 1)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    for j, (row, score) in enumerate(best):
      rows[q, j], scores[q, j] = row, score
  return scores, rows
