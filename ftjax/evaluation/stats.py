"""Uncertainty for evaluation numbers: Wilson intervals, paired bootstrap, exact McNemar.

A table of arm accuracies over a few hundred questions differs by noise as often as by method, so
every rate carries an interval and every comparison between two arms is paired by question (both
arms answer the same questions, which removes the between-question variance from the difference).
Pure numpy and math: no JAX, so results can be re-analysed anywhere.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
  """Wilson score interval for k successes in n trials; (None, None) when n is 0.

  Unlike the normal interval it stays inside [0, 1] and is not zero-width at k = 0 or k = n,
  which matters for the small splits (unanswerable, general) an arm is scored on.
  """
  if n < 0 or not 0 <= k <= n:
    raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
  if n == 0:
    return None, None
  p, z2 = k / n, z * z
  centre = (p + z2 / (2 * n)) / (1 + z2 / n)
  half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
  lo = 0.0 if k == 0 else max(0.0, centre - half)
  hi = 1.0 if k == n else min(1.0, centre + half)
  return lo, hi


def _paired(a: Sequence, b: Sequence) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  if a.ndim != 1 or a.shape != b.shape:
    raise ValueError(f"a and b must be aligned 1-d sequences, got shapes {a.shape} and {b.shape}")
  if np.isnan(a).any() or np.isnan(b).any():
    raise ValueError("a and b must not contain missing values (None or NaN)")
  return a, b


def paired_bootstrap(a: Sequence, b: Sequence, *, groups: Sequence | None = None,
                     n_resamples: int = 10000, seed: int = 0, ci: float = 0.95) -> dict:
  """Mean of a minus mean of b, with a percentile bootstrap interval.

  a[i] and b[i] are the two arms' values (0/1 or floats) on the same item. Without `groups` every
  item is one question and the bootstrap draws n items with replacement, keeping each pair
  together. With `groups` (one label per item: the question id when items are (question, seed)
  pairs) it draws len(set(groups)) labels with replacement and takes every item of each drawn
  label, so a question's seeds are resampled together; a resample's diff is the mean difference
  over the items taken. Returns {"diff", "ci", "n", "n_groups"}: diff is the plain mean of a - b
  over all n items, ci is [lo, hi] at level `ci` (percentiles of the resampled diffs), n_groups
  the number of distinct labels (n without groups). Empty input gives diff and ci None.
  """
  a, b = _paired(a, b)
  n = len(a)
  if n == 0:
    return {"diff": None, "ci": None, "n": 0, "n_groups": 0}
  if not 0 < ci < 1:
    raise ValueError(f"ci must be in (0, 1), got {ci}")
  delta = a - b
  if groups is None:
    sums, counts = delta, np.ones(n)
  else:
    if len(groups) != n:
      raise ValueError(f"groups has {len(groups)} labels for {n} items")
    labels: dict = {}
    index = np.array([labels.setdefault(g, len(labels)) for g in groups])
    sums, counts = np.bincount(index, weights=delta), np.bincount(index).astype(np.float64)
  num_groups = len(sums)
  rng = np.random.default_rng(seed)
  diffs = np.empty(n_resamples)
  block = max(1, 4_000_000 // num_groups)  # bound memory at a few million indices per block
  for start in range(0, n_resamples, block):
    stop = min(n_resamples, start + block)
    drawn = rng.integers(0, num_groups, size=(stop - start, num_groups))
    diffs[start:stop] = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
  tail = (1 - ci) / 2
  lo, hi = np.quantile(diffs, [tail, 1 - tail])
  return {"diff": float(delta.mean()), "ci": [float(lo), float(hi)], "n": n,
          "n_groups": num_groups}


def _binary(values: np.ndarray) -> bool:
  return bool(np.isin(values, (0.0, 1.0)).all())


def mcnemar_exact(a: Sequence, b: Sequence) -> float:
  """Two-sided exact McNemar p-value for paired 0/1 outcomes (1.0 with no discordant pairs).

  Under "the arms are equally good" each discordant pair is a fair coin, so with n01 pairs where
  only a is right and n10 where only b is, p = min(1, 2 * P[Binomial(n01 + n10, 1/2) <= min]).
  """
  a, b = _paired(a, b)
  if not (_binary(a) and _binary(b)):
    raise ValueError("mcnemar_exact needs 0/1 values")
  only_a = int(((a == 1) & (b == 0)).sum())
  only_b = int(((a == 0) & (b == 1)).sum())
  discordant = only_a + only_b
  if discordant == 0:
    return 1.0
  tail = sum(math.comb(discordant, i) for i in range(min(only_a, only_b) + 1))
  return min(1.0, 2 * tail / 2 ** discordant)


def compare(a: Sequence, b: Sequence, *, groups: Sequence | None = None,
            n_resamples: int = 10000, seed: int = 0, ci: float = 0.95) -> dict:
  """Arm a against arm b on the same items: {"diff", "ci", "p", "n"}.

  diff and ci come from paired_bootstrap (with `groups` as there). p is mcnemar_exact when every
  value is 0/1 and each item is its own question; it is None for non-binary values, and None when
  `groups` puts several items in one group (several seeds of a question are not independent pairs,
  so McNemar would overstate significance; read the clustered interval instead).
  """
  boot = paired_bootstrap(a, b, groups=groups, n_resamples=n_resamples, seed=seed, ci=ci)
  a_arr, b_arr = _paired(a, b)
  clustered = groups is not None and boot["n_groups"] < boot["n"]
  p = None
  if boot["n"] and not clustered and _binary(a_arr) and _binary(b_arr):
    p = mcnemar_exact(a_arr, b_arr)
  return {"diff": boot["diff"], "ci": boot["ci"], "p": p, "n": boot["n"]}


def verdict(diff: float | None, ci: Sequence[float] | None) -> str:
  """"higher" or "lower" when the interval excludes 0, else "within noise" (also when unknown)."""
  if diff is None or ci is None or ci[0] is None or ci[1] is None:
    return "within noise"
  if ci[0] > 0:
    return "higher"
  if ci[1] < 0:
    return "lower"
  return "within noise"
