"""Evaluation: metrics over answers as plain strings, never over the arms that produced them.

  row = score_answer(answer, gold, answers=variants, candidates=other_values,
                     style=compile_style(r"^Hi"), abstain_patterns=None)
  results = summarize([{**row, "split": "eval", "prompt_tokens": 120, ...}, ...])
  verdict(**{k: v for k, v in compare(arm_a_correct, arm_b_correct).items() if k in ("diff", "ci")})
"""

from ftjax.evaluation.declines import DEFAULT_ABSTAIN_PATTERNS, abstains
from ftjax.evaluation.matching import (ScoringConfigError, contains_answer, normalize_answer,
                                       token_f1)
from ftjax.evaluation.qa import (SPLITS, compile_answer_pattern, compile_style, extract_answer,
                                 matches_style, mean_std, percentile, score_answer, summarize)
from ftjax.evaluation.stats import compare, mcnemar_exact, paired_bootstrap, verdict, wilson

__all__ = [
    "DEFAULT_ABSTAIN_PATTERNS", "SPLITS", "ScoringConfigError", "abstains", "compare",
    "compile_answer_pattern", "compile_style", "contains_answer", "extract_answer",
    "matches_style", "mcnemar_exact", "mean_std", "normalize_answer", "paired_bootstrap",
    "percentile", "score_answer", "summarize", "token_f1", "verdict", "wilson",
]
