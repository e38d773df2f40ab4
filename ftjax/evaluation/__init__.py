"""Evaluation: metrics over answers as plain strings, never over the arms that produced them.

  row = score_answer(answer, gold, style=compile_style(r"^Hi"), abstain_patterns=None)
  results = summarize([{**row, "split": "eval", "prompt_tokens": 120, ...}, ...])
"""

from ftjax.evaluation.qa import (DEFAULT_ABSTAIN_PATTERNS, SPLITS, ScoringConfigError, abstains,
                                 compile_style, contains_answer, matches_style, mean_std,
                                 normalize_answer, percentile, score_answer, summarize, token_f1)

__all__ = [
    "DEFAULT_ABSTAIN_PATTERNS", "SPLITS", "ScoringConfigError", "abstains", "compile_style",
    "contains_answer", "matches_style", "mean_std", "normalize_answer", "percentile",
    "score_answer", "summarize", "token_f1",
]
