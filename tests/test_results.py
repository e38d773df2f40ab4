"""The typed records of `summary.json` (ftjax.experiment.results) and how the report shows them."""

import pytest

from ftjax.experiment import formatting
from ftjax.experiment.results import (ArmSummary, BreakEven, Comparison, Rate, Summary, find)


def _comparison(**kw):
  return Comparison.from_dict({"a": "rag", "b": "finetuned", "metric": "accuracy", "diff": 0.25,
                               "ci": [0.05, 0.45], "p": 0.03, "n": 33, "verdict": "higher", **kw})


def test_a_comparison_read_the_other_way_is_negated_and_keeps_its_verdict_rule():
  c = _comparison()
  assert find([c], "rag", "finetuned", "accuracy") is c
  flipped = find([c], "finetuned", "rag", "accuracy")
  assert (flipped.a, flipped.b, flipped.diff, flipped.ci) == ("finetuned", "rag", -0.25,
                                                              [-0.45, -0.05])
  assert flipped.verdict == "lower"
  noisy = find([_comparison(ci=[-0.1, 0.3], verdict="within noise")], "finetuned", "rag",
               "accuracy")
  assert noisy.verdict == "within noise" and noisy.ci == [-0.3, 0.1]
  assert find([c], "rag", "finetuned", "em") is None


def test_an_arm_reads_its_flat_rates_back_as_one_rate_each():
  d = {"accuracy": 0.5, "accuracy_ci": [0.3, 0.7], "accuracy_n": 20, "style_rate": None,
       "prompt_tokens": 120.0, "n_questions": 20, "seeds": 2, "std": {"accuracy": 0.1},
       "cached_tokens": 0, "latency_s": {"p50": 1.0, "p95": 2.0, "n": 10},
       "ttft_s": {"p50": 0.2, "p95": 0.3, "n": 10}, "decode_tokens_per_s": 30.0}
  arm = ArmSummary.from_dict(d)
  assert arm.rate("accuracy") == Rate(0.5, [0.3, 0.7], 20, 0.1, 2)
  assert arm.rate("em") == Rate(None, None, None, None, 2)
  assert arm.latency_s.p95 == 2.0 and arm.budget is None
  assert formatting.ci(arm.rate("accuracy")) == "50.0% ± 10.0% [30-70]"
  assert formatting.ci(arm.rate("em")) == "n/a"
  out = arm.to_dict()
  assert {k: out[k] for k in d} == d and out["em"] is None


def test_break_even_knows_when_it_pays_for_worse_answers():
  be = BreakEven.from_dict({"questions_flops": 10.0, "questions_seconds": 5.0,
                            "questions_money": 5.0, "upfront_flops": [1, 0],
                            "upfront_seconds": [1, 0], "accuracy": [0.2, 0.4],
                            "accuracy_ci": [[0.1, 0.3], [0.3, 0.5]]})
  assert be.pays_for_worse_answers
  assert not BreakEven.from_dict({**be.to_dict(), "accuracy": [0.5, 0.4]}).pays_for_worse_answers


def test_a_summary_missing_a_required_section_fails_at_reading():
  with pytest.raises(KeyError):
    Summary.from_dict({"arms": {}})
