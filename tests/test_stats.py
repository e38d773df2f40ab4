"""Evaluation statistics: Wilson intervals, the paired bootstrap, exact McNemar, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftjax.evaluation.stats import compare, mcnemar_exact, paired_bootstrap, verdict, wilson


@pytest.mark.parametrize("k, n, expected", [
    # p = 13/48: centre = (p + z²/2n) / (1 + z²/n) = 0.28781 and
    # half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n) = 0.12216.
    (13, 48, (0.16566, 0.40997)),
    (5, 10, (0.23659, 0.76341)),
    # k = 0: lo is 0 and hi = (z²/n) / (1 + z²/n) = 0.38415 / 1.38415.
    (0, 10, (0.0, 0.27753)),
    (10, 10, (0.72247, 1.0)),
    (1, 1, (0.20654, 1.0)),
])
def test_wilson_by_hand(k, n, expected):
  lo, hi = wilson(k, n)
  assert lo == pytest.approx(expected[0], abs=1e-5)
  assert hi == pytest.approx(expected[1], abs=1e-5)


def test_wilson_edges():
  assert wilson(0, 0) == (None, None)
  assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0  # exact, not 1e-17 off
  lo, hi = wilson(3, 10)
  assert lo < 0.3 < hi
  assert wilson(30, 100)[1] - wilson(30, 100)[0] < hi - lo  # more data, narrower
  assert wilson(13, 48, z=1.0)[1] < wilson(13, 48)[1]
  with pytest.raises(ValueError):
    wilson(11, 10)


def test_bootstrap_of_identical_arms_is_zero():
  a = [1, 0, 1, 1, 0, 0, 1, 0.5]
  result = paired_bootstrap(a, list(a), n_resamples=500)
  assert result == {"diff": 0.0, "ci": [0.0, 0.0], "n": 8, "n_groups": 8}


def test_bootstrap_diff_is_the_mean_difference():
  rng = np.random.default_rng(1)
  a, b = rng.random(50), rng.random(50)
  result = paired_bootstrap(a, b, n_resamples=1000)
  assert result["diff"] == pytest.approx(float(np.mean(a) - np.mean(b)))
  assert result["ci"][0] < result["diff"] < result["ci"][1]
  # Grouping does not change the point estimate, only the interval.
  grouped = paired_bootstrap(a, b, groups=[i // 5 for i in range(50)], n_resamples=1000)
  assert grouped["diff"] == pytest.approx(result["diff"])
  assert grouped["n"] == 50 and grouped["n_groups"] == 10


def test_clear_difference_excludes_zero_and_noise_does_not():
  rng = np.random.default_rng(0)
  strong = (rng.random(200) < 0.9).astype(int)
  weak = (rng.random(200) < 0.4).astype(int)
  clear = compare(strong, weak)
  assert clear["ci"][0] > 0.3 and verdict(clear["diff"], clear["ci"]) == "higher"
  assert clear["p"] < 1e-6
  reverse = compare(weak, strong)
  assert verdict(reverse["diff"], reverse["ci"]) == "lower"

  # Two arms that differ on 2 of 40 questions, one each way.
  a = [1] * 20 + [0] * 20
  b = list(a)
  b[0], b[25] = 0, 1
  noisy = compare(a, b)
  assert noisy["diff"] == 0.0 and noisy["ci"][0] < 0 < noisy["ci"][1]
  assert noisy["p"] == 1.0 and verdict(noisy["diff"], noisy["ci"]) == "within noise"
  a[1] = 0  # now b is ahead by one question: still noise
  slight = compare(a, b)
  assert slight["diff"] == pytest.approx(-1 / 40)
  assert verdict(slight["diff"], slight["ci"]) == "within noise"


def test_grouped_bootstrap_keeps_a_question_together():
  # Each question answered under 3 seeds; the arms differ on whole questions, never within one.
  per_question = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
  a = np.repeat(per_question, 3)
  b = np.zeros_like(a)
  groups = np.repeat(np.arange(10), 3)
  grouped = paired_bootstrap(a, b, groups=groups, n_resamples=2000)
  # Resampling whole questions, each resample's diff is (questions drawn with a=1) / 10 exactly.
  assert grouped["diff"] == pytest.approx(0.5)
  draws = np.asarray(grouped["ci"]) * 10
  assert np.allclose(draws, np.round(draws))
  # Treating the 30 items as independent understates the spread.
  independent = paired_bootstrap(a, b, n_resamples=2000)
  assert independent["ci"][1] - independent["ci"][0] < grouped["ci"][1] - grouped["ci"][0]
  # McNemar assumes independent pairs, so clustered comparisons report no p-value.
  assert compare(a, b, groups=groups, n_resamples=200)["p"] is None
  assert compare(a, b, groups=np.arange(30), n_resamples=200)["p"] is not None


def test_bootstrap_is_deterministic_by_seed():
  rng = np.random.default_rng(3)
  a, b = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
  assert paired_bootstrap(a, b, seed=7, n_resamples=500) == paired_bootstrap(a, b, seed=7,
                                                                              n_resamples=500)
  assert paired_bootstrap(a, b, seed=7, n_resamples=500) != paired_bootstrap(a, b, seed=8,
                                                                              n_resamples=500)


def test_bootstrap_rejects_misaligned_and_handles_empty():
  with pytest.raises(ValueError, match="aligned"):
    paired_bootstrap([1, 0], [1])
  with pytest.raises(ValueError, match="missing"):
    paired_bootstrap([1, None], [1, 0])
  with pytest.raises(ValueError, match="groups"):
    paired_bootstrap([1, 0], [1, 0], groups=[0])
  assert paired_bootstrap([], []) == {"diff": None, "ci": None, "n": 0, "n_groups": 0}
  assert compare([], []) == {"diff": None, "ci": None, "p": None, "n": 0}


def _pairs(only_a, only_b, both=0, neither=0):
  a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
  b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
  return a, b


@pytest.mark.parametrize("only_a, only_b, expected", [
    (8, 2, 2 * (1 + 10 + 45) / 2 ** 10),  # 2 * sum_{i<=2} C(10, i) / 2^10 = 0.109375
    (2, 8, 0.109375),  # symmetric
    (5, 5, 1.0),  # 2 * P[X <= 5] > 1 is capped
    (6, 0, 2 / 2 ** 6),  # 0.03125
    (1, 0, 1.0),
    (0, 0, 1.0),  # no discordant pairs
    (15, 3, 2 * sum(math.comb(18, i) for i in range(4)) / 2 ** 18),
])
def test_mcnemar_by_hand(only_a, only_b, expected):
  a, b = _pairs(only_a, only_b, both=7, neither=4)  # concordant pairs do not matter
  assert mcnemar_exact(a, b) == pytest.approx(expected)


def test_mcnemar_value_and_compare_p():
  assert mcnemar_exact(*_pairs(8, 2)) == pytest.approx(0.109375)
  a, b = _pairs(8, 2, both=5)
  assert compare(a, b, n_resamples=200)["p"] == pytest.approx(0.109375)
  assert compare([True, False, True], [False, False, True], n_resamples=200)["p"] == 1.0
  assert compare([0.5, 1.0], [0.0, 1.0], n_resamples=200)["p"] is None  # F1 is not binary
  with pytest.raises(ValueError, match="0/1"):
    mcnemar_exact([0.5, 1.0], [0.0, 1.0])


@pytest.mark.parametrize("diff, ci, expected", [
    (0.1, [0.02, 0.18], "higher"),
    (-0.1, [-0.18, -0.02], "lower"),
    (0.05, [-0.01, 0.11], "within noise"),
    (0.0, [0.0, 0.0], "within noise"),  # covers 0
    (0.05, [0.0, 0.1], "within noise"),  # touches 0
    (None, None, "within noise"),
])
def test_verdict(diff, ci, expected):
  assert verdict(diff, ci) == expected
