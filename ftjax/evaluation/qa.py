"""Scoring answers as plain strings: correctness, token F1, style, abstention, and run summaries.

Evaluation never sees a model or an arm, only the text each one produced, so every arm is scored by
the same functions. Correctness is "the gold answer appears in the prediction" after SQuAD-style
normalisation extended to numbers, because generated answers are sentences, not extracted spans.
"""

from __future__ import annotations

import collections
import functools
import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

SPLITS = ("eval", "unanswerable", "general", "update_eval", "unchanged")


class ScoringConfigError(ValueError):
  """A scoring setting (a style or abstention regex) is unusable."""


# Normalisation.

_ARTICLES = frozenset({"a", "an", "the"})
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000}
_NUMBER_WORDS = frozenset(_UNITS) | frozenset(_TENS) | frozenset(_SCALES)

_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_BARE_DECIMAL = re.compile(r"(?<![\w.])\.(?=\d)")
_NUMBER_THEN_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@functools.lru_cache(maxsize=4096)
def _char_class(char: str) -> str:
  """'keep', 'space' or 'drop' for one character."""
  category = unicodedata.category(char)
  # Dashes and slashes separate words ("forty-five", "24/7"); currency and % separate a number from
  # its neighbours. Other punctuation is deleted as in SQuAD, so "don't" stays one token.
  if category == "Pd" or category == "Sc" or char in "/\\%":
    return "space"
  if category[0] in "PS":
    return "drop"
  return "keep"


def _strip_punctuation(text: str) -> str:
  out = []
  for i, char in enumerate(text):
    if char == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
      out.append(char)
      continue
    kind = _char_class(char)
    if kind == "keep":
      out.append(char)
    elif kind == "space":
      out.append(" ")
  return "".join(out)


def _below_hundred(tokens: Sequence[str], i: int) -> tuple[int, int] | None:
  """Parse "forty five" / "forty" / "twelve" at tokens[i]; (value, next index) or None."""
  if i < len(tokens) and tokens[i] in _TENS:
    value = _TENS[tokens[i]]
    if i + 1 < len(tokens) and 1 <= _UNITS.get(tokens[i + 1], 0) <= 9:
      return value + _UNITS[tokens[i + 1]], i + 2
    return value, i + 1
  if i < len(tokens) and tokens[i] in _UNITS:
    return _UNITS[tokens[i]], i + 1
  return None


def _below_thousand(tokens: Sequence[str], i: int) -> tuple[int, int] | None:
  """Parse "[unit] hundred [below hundred]" or a number below a hundred."""
  if i < len(tokens) and tokens[i] == "hundred":
    head, j = 100, i + 1
  else:
    parsed = _below_hundred(tokens, i)
    if parsed is None:
      return None
    head, j = parsed
    if head >= 10 or j >= len(tokens) or tokens[j] != "hundred":
      return head, j
    head, j = max(head, 1) * 100, j + 1
  rest = _below_hundred(tokens, j)
  if rest is not None and rest[0] > 0:
    return head + rest[0], rest[1]
  return head, j


def _number(tokens: Sequence[str], i: int) -> tuple[int, int] | None:
  """Parse a spelled-out number below a million at tokens[i]; (value, next index) or None."""
  if i < len(tokens) and tokens[i] == "thousand":
    head, j = None, i
  else:
    parsed = _below_thousand(tokens, i)
    if parsed is None:
      return None
    head, j = parsed
  if j < len(tokens) and tokens[j] == "thousand":
    value = (head or 1) * 1000
    rest = _below_thousand(tokens, j + 1)
    if rest is not None and rest[0] > 0:
      return value + rest[0], rest[1]
    return value, j + 1
  return head, j


def _canonical_number(token: str) -> str:
  """'49.50' -> '49.5', '3.0' -> '3'; leading zeros are kept (codes such as '02139')."""
  if "." not in token:
    return token
  whole, fraction = token.split(".", 1)
  fraction = fraction.rstrip("0")
  return f"{whole}.{fraction}" if fraction else whole


def _tokens(text: str) -> list[str]:
  text = _THOUSANDS_SEPARATOR.sub("", text.lower())
  text = _BARE_DECIMAL.sub("0.", text)
  text = _NUMBER_THEN_LETTER.sub(" ", _strip_punctuation(text))
  words = [w for w in text.split() if w not in _ARTICLES]
  out, i = [], 0
  while i < len(words):
    parsed = _number(words, i) if words[i] in _NUMBER_WORDS else None
    if parsed is not None:
      out.append(str(parsed[0]))
      i = parsed[1]
    else:
      word = words[i]
      out.append(_canonical_number(word) if _NUMBER.fullmatch(word) else word)
      i += 1
  return out


def normalize_answer(text: str) -> str:
  """SQuAD normalisation (lowercase, no punctuation, no articles, single spaces) plus numbers.

  Numbers become canonical digits so that spellings of one value compare equal: thousands
  separators go ("1,299" -> "1299"), trailing fractional zeros go ("49.50" -> "49.5", "3.0" -> "3"),
  a decimal point between digits survives, and number words below a million become digits
  ("twelve" -> "12", "forty-five" -> "45", "two hundred fifty" -> "250"; "and" is not parsed, so
  "one hundred and five" -> "100 and 5"). Currency symbols, "%", dashes and slashes become spaces,
  and a number glued to letters is split from them ("3.5kg" -> "3.5 kg", "12th" -> "12 th").
  """
  return " ".join(_tokens(text))


def contains_answer(prediction: str, gold: str) -> bool:
  """True when the normalised gold tokens appear contiguously in the normalised prediction.

  Matching is on whole tokens: "12" is not found in "112", nor "paris" in "parisian".
  """
  gold_tokens = _tokens(gold)
  if not gold_tokens:
    raise ValueError(f"gold answer {gold!r} is empty after normalisation")
  tokens, n = _tokens(prediction), len(gold_tokens)
  return any(tokens[i:i + n] == gold_tokens for i in range(len(tokens) - n + 1))


def token_f1(prediction: str, gold: str) -> float:
  """SQuAD token-overlap F1 of the normalised texts (1.0 if both are empty, 0.0 if one is)."""
  pred_tokens, gold_tokens = _tokens(prediction), _tokens(gold)
  if not pred_tokens or not gold_tokens:
    return float(pred_tokens == gold_tokens)
  common = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred_tokens), common / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


# Style and abstention.

def compile_style(pattern: str) -> re.Pattern:
  """Compile a style regex (DOTALL, so "." spans the lines of a multi-line answer)."""
  try:
    return re.compile(pattern, re.DOTALL)
  except re.error as e:
    raise ScoringConfigError(f"style.pattern {pattern!r} does not compile: {e}") from None


def matches_style(text: str, pattern: re.Pattern | str) -> bool:
  """Whether the style regex is found (re.search) in the stripped answer."""
  if isinstance(pattern, str):
    pattern = compile_style(pattern)
  return pattern.search(text.strip()) is not None


_APOS = "[’']"
_NOT = rf"(?:\s+not|n{_APOS}?t)"  # "do not" / "don't" / "dont"
_I_AM = rf"I(?:{_APOS}?m|\s+am)"
_SOURCE = (r"(?:(?:the|this|these|my|provided|given|available|retrieved)\s+)*"
           r"(?:context|documents?|documentation|passages?|sources?|text|materials?|manual|"
           r"knowledge\s+base)"
           r"|(?:the\s+)?(?:provided|given|available|retrieved)\s+(?:information|data)")

# Declining is recognised by phrasing about the speaker or the sources, never by negation alone:
# "The warranty does not cover water damage", "not available in the basic plan" and "the app
# stores no information about you" are answers.
DEFAULT_ABSTAIN_PATTERNS: tuple[str, ...] = (
    rf"\b(?:I|we)\s+(?:really\s+|simply\s+)?do{_NOT}\s+know\b",
    rf"\b{_I_AM}\s+(?:not\s+(?:entirely\s+|completely\s+|quite\s+|really\s+)?"
    r"(?:sure|certain|aware)|unsure)\b",
    r"^\W*(?:not\s+sure|unsure)\b",
    rf"\b(?:I|we)\s+(?:cannot|can\s+not|can{_APOS}?t|could{_NOT})\s+answer\b",
    rf"^\W*(?:cannot|can\s+not|can{_APOS}?t|unable\s+to)\s+answer\b",
    rf"\b(?:cannot|can\s+not|can{_APOS}?t|unable\s+to)\s+answer\s+(?:this|that|the|your)\s+"
    r"question\b",
    rf"\b(?:I|we)(?:{_APOS}?m|{_APOS}?re|\s+am|\s+are|\s+was|\s+were)\s+unable\s+to\s+"
    r"(?:find|answer|locate|determine)\b",
    r"^\W*unable\s+to\s+(?:find|answer|locate|determine)\b",
    rf"\b(?:I|we)\s+(?:could{_NOT}|cannot|can\s+not|can{_APOS}?t)\s+(?:find|locate|determine)\b",
    rf"(?:^\W*|\bthere\s+(?:is|was)\s+|\bthere{_APOS}s\s+|\b(?:I|we)\s+(?:have|found)\s+|"
    r"\b(?:has|have|contains?|provides?|gives?|includes?)\s+)"
    r"no\s+(?:specific\s+|relevant\s+|available\s+|such\s+)?information\b",
    r"\bnot\s+enough\s+information\b|\binsufficient\s+information\b",
    rf"\b(?:do|does){_NOT}\s+have\s+(?:that|this|any|enough|the|such)\s+"
    r"(?:specific\s+|relevant\s+)?(?:information|details)\b",
    r"\bI\s+have\s+no\s+(?:idea|knowledge|details|records?|data)\b",
    rf"\b(?:{_SOURCE})\s+(?:do|does){_NOT}\s+(?:cover|mention|say|specify|state|include|contain|"
    r"provide|address)\b",
    r"\bnot\s+(?:covered|mentioned|available|specified|stated|provided|found|included|given)\s+"
    rf"(?:in|by)\s+(?:{_SOURCE})\b",
    rf"\b(?:{_I_AM}\s+)?sorry,?\s+(?:but\s+)?I\s+(?:can{_APOS}?t|cannot|can\s+not|do{_NOT}|"
    rf"am\s+not|{_APOS}?m\s+not|have\s+no)\b",
    r"\bthere\s+(?:is|are)\s+no\s+(?:records?|details|mention)\s+(?:of|about|on|regarding)\b",
    r"\b(?:I|we)\s+(?:have|found|see|could\s+find|can\s+find)\s+no\s+(?:records?|details|"
    r"mention)\s+(?:of|about|on|regarding)\b",
)


@functools.lru_cache(maxsize=64)
def _compile_abstain(patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern, re.IGNORECASE))
    except re.error as e:
      raise ScoringConfigError(f"abstain pattern {pattern!r} does not compile: {e}") from None
  return tuple(compiled)


def abstains(text: str, patterns: Sequence[str] | None = None) -> bool:
  """Whether the answer declines: any of `patterns` (default DEFAULT_ABSTAIN_PATTERNS) is found."""
  compiled = _compile_abstain(tuple(DEFAULT_ABSTAIN_PATTERNS if patterns is None else patterns))
  return any(p.search(text) for p in compiled)


# Aggregates.

def _present(values: Iterable) -> list[float]:
  return [float(v) for v in values if v is not None]


def percentile(values: Iterable[float | None], q: float) -> float | None:
  """The q-th percentile (linear interpolation) of the non-None values; None when there are none."""
  present = _present(values)
  return float(np.percentile(present, q)) if present else None


def mean_std(values: Iterable[float | None]) -> dict:
  """{"mean", "std", "n"} over the non-None values; std is the sample std (ddof=1), 0.0 for one."""
  present = _present(values)
  n = len(present)
  if n == 0:
    return {"mean": None, "std": None, "n": 0}
  std = float(np.std(present, ddof=1)) if n > 1 else 0.0
  return {"mean": float(np.mean(present)), "std": std, "n": n}


def _mean(values: Iterable) -> float | None:
  return mean_std(values)["mean"]


def score_answer(prediction: str, gold: str | None, *, style: re.Pattern | str | None,
                 abstain_patterns: Sequence[str] | None = None) -> dict:
  """Score one answer: {"correct", "f1", "style", "abstained"}.

  `gold` is None for an unanswerable question (correct and f1 are then None); `style` None means
  the run has no style target (style is then None).
  """
  return {
      "correct": None if gold is None else contains_answer(prediction, gold),
      "f1": None if gold is None else token_f1(prediction, gold),
      "style": None if style is None else matches_style(prediction, style),
      "abstained": abstains(prediction, abstain_patterns),
  }


def summarize(scored: Sequence[dict]) -> dict:
  """Aggregate scored rows into one arm's results; None wherever nothing applies, never zero.

  Each row has "split" (one of SPLITS), the score_answer fields, "prompt_tokens", "new_tokens",
  "passage_doc_ids" (None when the arm does not retrieve) and "doc_id" (the gold document or None).

  - accuracy, f1, style_rate, prompt_tokens, new_tokens: means over "eval" rows.
  - abstain_rate: share of "unanswerable" rows where the answer abstained.
  - hallucination_rate: (eval rows answered wrongly without abstaining + unanswerable rows answered
    without abstaining) / (eval rows + unanswerable rows). An abstention is never a hallucination;
    a wrong answer or an answer to an unanswerable question is.
  - general_accuracy, update_accuracy, unchanged_accuracy: mean correct over "general",
    "update_eval" and "unchanged" rows.
  - citation_accuracy: over eval rows that are correct, have a doc_id and were answered with
    retrieval (passage_doc_ids not None), the share whose doc_id is among passage_doc_ids.
  - n_questions: the number of eval rows.
  """
  by_split = {split: [] for split in SPLITS}
  for i, row in enumerate(scored):
    if row.get("split") not in by_split:
      raise ValueError(f"row {i} has split {row.get('split')!r}; expected one of {SPLITS}")
    by_split[row["split"]].append(row)
  eval_rows, unanswerable = by_split["eval"], by_split["unanswerable"]

  judged = [r for r in eval_rows if r.get("correct") is not None]
  hallucinated = (sum(not r["correct"] and not r.get("abstained") for r in judged)
                  + sum(not r.get("abstained") for r in unanswerable))
  denominator = len(judged) + len(unanswerable)

  cited = [r["doc_id"] in r["passage_doc_ids"] for r in eval_rows
           if r.get("correct") and r.get("doc_id") is not None
           and r.get("passage_doc_ids") is not None]

  def column(rows, key):
    return _mean(r.get(key) for r in rows)

  return {
      "accuracy": column(eval_rows, "correct"),
      "f1": column(eval_rows, "f1"),
      "style_rate": column(eval_rows, "style"),
      "abstain_rate": column(unanswerable, "abstained"),
      "hallucination_rate": hallucinated / denominator if denominator else None,
      "general_accuracy": column(by_split["general"], "correct"),
      "update_accuracy": column(by_split["update_eval"], "correct"),
      "unchanged_accuracy": column(by_split["unchanged"], "correct"),
      "prompt_tokens": column(eval_rows, "prompt_tokens"),
      "new_tokens": column(eval_rows, "new_tokens"),
      "citation_accuracy": _mean(cited),
      "n_questions": len(eval_rows),
  }
