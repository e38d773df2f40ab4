"""Scoring answers as plain strings: correctness, token F1, style, abstention, and run summaries.

Evaluation never sees a model or an arm, only the text each one produced, so every arm is scored by
the same functions. Correctness is "the gold answer appears in the answer and no other value of
its kind does" after SQuAD-style normalisation extended to numbers and units, because generated
answers are sentences, not extracted spans; a style's fixed text is removed first, and listing
every possible value is wrong, so neither boilerplate nor hedging can score.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence

import numpy as np

from ftjax.evaluation.declines import abstains
from ftjax.evaluation.matching import (ScoringConfigError, answer_tokens, contains_answer,
                                       gold_tokens, occurrences, tokens_f1)
from ftjax.evaluation.stats import Z95, wilson

try:
  from re import _parser as _sre_parser
except ImportError:  # Python < 3.11
  import sre_parse as _sre_parser  # pylint: disable=deprecated-module

SPLITS = ("eval", "unanswerable", "general", "update_eval", "unchanged")


# Style and answer extraction.

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


@functools.lru_cache(maxsize=64)
def _compile_answer_pattern(pattern: str) -> re.Pattern:
  try:
    compiled = re.compile(pattern, re.DOTALL)
  except re.error as e:
    raise ScoringConfigError(f"scoring.answer_pattern {pattern!r} must have exactly one group; "
                             f"it does not compile: {e}") from None
  return compile_answer_pattern(compiled)


def compile_answer_pattern(pattern: re.Pattern | str) -> re.Pattern:
  """Compile scoring.answer_pattern (DOTALL); its one group is the answer inside a styled reply."""
  if isinstance(pattern, str):
    return _compile_answer_pattern(pattern)
  if pattern.groups != 1:
    raise ScoringConfigError(f"scoring.answer_pattern {pattern.pattern!r} must have exactly one "
                             f"group; it has {pattern.groups}")
  return pattern


_MIN_LITERAL = 3  # shorter runs ("!", ". ") are as likely to be part of the answer
_REPEATS = tuple(getattr(_sre_parser, name) for name in
                 ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_sre_parser, name))


def _collect_literals(parsed, out: list[str]) -> None:
  run: list[str] = []

  def flush():
    if len(run) >= _MIN_LITERAL:
      out.append("".join(run))
    run.clear()

  for op, arg in parsed:
    if op is _sre_parser.LITERAL:
      run.append(chr(arg))
      continue
    flush()
    if op is _sre_parser.SUBPATTERN:
      _collect_literals(arg[-1], out)
    elif op is _sre_parser.BRANCH:
      for alternative in arg[1]:
        _collect_literals(alternative, out)
    elif op in _REPEATS:
      _collect_literals(arg[2], out)
    elif op is getattr(_sre_parser, "ATOMIC_GROUP", None):
      _collect_literals(arg, out)
    # Lookarounds consume nothing, and classes, "." and anchors are not fixed text.
  flush()


@functools.lru_cache(maxsize=64)
def _style_literals(pattern: str, flags: int) -> tuple[str, ...]:
  out: list[str] = []
  _collect_literals(_sre_parser.parse(pattern, flags), out)
  return tuple(out)


def extract_answer(prediction: str, *, answer_pattern: re.Pattern | str | None = None,
                   style: re.Pattern | str | None = None) -> str:
  """The part of a reply that answers the question, so boilerplate can neither help nor hurt.

  With `answer_pattern` (one group): the group of its first match, or the whole text when it does
  not match. Otherwise, with `style`: the reply without the style's fixed text. The style regex is
  parsed (re._parser) into runs of consecutive literal characters; each run of at least three
  characters (inside groups, alternatives and repeats too, case-insensitively if the style is) has
  its first occurrence removed, in pattern order. So `^Hi there! .+ Anything else\\? — Quillory
  Care$` turns "Hi there! The warranty is 29 months. Anything else? — Quillory Care" into "The
  warranty is 29 months." Runs are the parser's: it factors common prefixes out of alternatives
  ("Hi|Hello" is "H" then "i|ello"), so alternatives are removed only in part. The result is
  stripped.
  """
  if answer_pattern is not None:
    found = compile_answer_pattern(answer_pattern).search(prediction)
    if found is not None and found.group(1) is not None:
      return found.group(1).strip()
    return prediction.strip()
  if style is None:
    return prediction.strip()
  if isinstance(style, str):
    style = compile_style(style)
  flags = re.IGNORECASE if style.flags & re.IGNORECASE else 0
  text = prediction
  for literal in _style_literals(style.pattern, style.flags):
    text = re.sub(re.escape(literal), "", text, count=1, flags=flags)
  return text.strip()


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



def score_answer(prediction: str, gold: str | None, *, answers: Sequence[str] = (),
                 candidates: Sequence[str] = (), style: re.Pattern | str | None,
                 abstain_patterns: Sequence[str] | None = None,
                 answer_pattern: re.Pattern | str | None = None) -> dict:
  """Score one reply: {"correct", "em", "f1", "multi_value", "matched_gold", "extracted", "style",
  "abstained"}.

  The accepted golds are `gold` and its variants `answers`; `candidates` are the other values of
  the same kind (the other colours, the other warranty lengths). Content is scored on the
  extracted answer (extract_answer), so a style's fixed text never counts as content:
  - correct: an accepted gold appears in it (whole tokens, contains_answer) and no candidate
    appears outside that gold, so listing every possible value ("amber, violet or cyan") is wrong;
  - multi_value: an accepted gold and some candidate both appear;
  - em: it normalises to exactly an accepted gold; f1: the best token F1 over accepted golds;
  - matched_gold: the first accepted gold found (None if none), which attribution checks against
    the passages.
  `gold` None marks an unanswerable question (correct, em, f1, multi_value are then None).
  `style` None means no style target (style is then None); style and abstention read the whole
  reply. Candidates that normalise to an accepted gold, or to nothing, are ignored.
  """
  extracted = extract_answer(prediction, answer_pattern=answer_pattern, style=style)
  out = {"correct": None, "em": None, "f1": None, "multi_value": None, "matched_gold": None,
         "extracted": extracted,
         "style": None if style is None else matches_style(prediction, style),
         "abstained": abstains(prediction, abstain_patterns)}
  if gold is None:
    return out
  accepted = [(g, gold_tokens(g)) for g in [gold, *answers]]
  accepted_tokens = [tokens for _, tokens in accepted]
  others = [c for c in map(answer_tokens, candidates) if c and c not in accepted_tokens]
  tokens = answer_tokens(extracted)
  gold_spans = [(i, i + len(g)) for g in accepted_tokens for i in occurrences(tokens, g)]
  other_found = any(not any(s <= i and i + len(c) <= e for s, e in gold_spans)
                    for c in others for i in occurrences(tokens, c))
  found = bool(gold_spans)
  out.update(
      correct=found and not other_found,
      em=tokens in accepted_tokens,
      f1=max(tokens_f1(tokens, g) for g in accepted_tokens),
      multi_value=found and other_found,
      matched_gold=next((g for g, t in accepted if occurrences(tokens, t)), None))
  return out


def _count(flags: Iterable) -> tuple[int, int]:
  """(true, total) over the non-None flags."""
  present = [bool(f) for f in flags if f is not None]
  return sum(present), len(present)


def _mean_interval(values: list[float], z: float = Z95) -> list[float] | None:
  """Normal interval of a mean of [0, 1] scores, clipped to [0, 1]; [0, 1] from one value."""
  if not values:
    return None
  if len(values) < 2:
    return [0.0, 1.0]
  mean, half = float(np.mean(values)), z * float(np.std(values, ddof=1)) / len(values) ** 0.5
  return [max(0.0, mean - half), min(1.0, mean + half)]


def summarize(scored: Sequence[dict]) -> dict:
  """Aggregate scored rows into one arm's results; None wherever nothing applies, never zero.

  Each row has "split" (one of SPLITS), the score_answer fields, "prompt_tokens", "new_tokens",
  "passage_doc_ids" (None when the arm does not retrieve) and "doc_id" (the gold document or None);
  optionally "finish_reason" ("length" when generation hit its limit), "passage_texts" (the
  retrieved passages) and "gold".

  Over "eval" (answerable) rows:
  - accuracy, em, f1, style_rate, multi_value_rate: means of the row fields;
  - prompt_tokens, new_tokens, answer_tokens (= new_tokens): token means;
  - truncation_rate: the share with finish_reason "length";
  - refusal_rate: the share that abstained; wrong_rate: the share neither correct nor abstained;
    selective_accuracy: correct / not abstained (None when every row abstained);
  - citation_accuracy: over rows that are correct, have a doc_id and were answered with retrieval
    (passage_doc_ids not None), the share whose doc_id is among passage_doc_ids;
  - attribution_rate: over correct rows with passage_texts, the share where the gold value the
    answer matched (matched_gold, else gold) appears in some passage;
  - n_questions: the number of rows.
  Over "unanswerable" rows: abstain_rate, the share that abstained, and hallucination_rate, the
  share answered without abstaining (a wrong answer to an answerable question is wrong_rate, not a
  hallucination). general_accuracy, update_accuracy, unchanged_accuracy: mean correct over the
  "general", "update_eval" and "unchanged" rows.

  Every rate R (not the token means) also has R_n, its denominator, and R_ci, a 95% interval
  [lo, hi]: Wilson for shares, the normal interval of the mean for f1. Both are None when R is.
  """
  by_split = {split: [] for split in SPLITS}
  for i, row in enumerate(scored):
    if row.get("split") not in by_split:
      raise ValueError(f"row {i} has split {row.get('split')!r}; expected one of {SPLITS}")
    by_split[row["split"]].append(row)
  eval_rows, unanswerable = by_split["eval"], by_split["unanswerable"]
  judged = [r for r in eval_rows if r.get("correct") is not None]
  answered = [r for r in judged if not r.get("abstained")]

  cited = [r["doc_id"] in r["passage_doc_ids"] for r in eval_rows
           if r.get("correct") and r.get("doc_id") is not None
           and r.get("passage_doc_ids") is not None]
  attributed = [any(contains_answer(text, r.get("matched_gold") or r["gold"])
                    for text in r["passage_texts"])
                for r in eval_rows
                if r.get("correct") and r.get("passage_texts") is not None
                and (r.get("matched_gold") or r.get("gold"))]

  counts = {
      "accuracy": _count(r.get("correct") for r in eval_rows),
      "em": _count(r.get("em") for r in eval_rows),
      "style_rate": _count(r.get("style") for r in eval_rows),
      "multi_value_rate": _count(r.get("multi_value") for r in eval_rows),
      "truncation_rate": _count(r.get("finish_reason") == "length" for r in eval_rows),
      "refusal_rate": _count(r.get("abstained") for r in judged),
      "wrong_rate": _count(not r["correct"] and not r.get("abstained") for r in judged),
      "selective_accuracy": _count(r["correct"] for r in answered),
      "abstain_rate": _count(r.get("abstained") for r in unanswerable),
      "hallucination_rate": _count(not r.get("abstained") for r in unanswerable),
      "general_accuracy": _count(r.get("correct") for r in by_split["general"]),
      "update_accuracy": _count(r.get("correct") for r in by_split["update_eval"]),
      "unchanged_accuracy": _count(r.get("correct") for r in by_split["unchanged"]),
      "citation_accuracy": _count(cited),
      "attribution_rate": _count(attributed),
  }
  f1 = _present(r.get("f1") for r in eval_rows)

  def column(rows, key):
    return _mean(r.get(key) for r in rows)

  out = {name: k / n if n else None for name, (k, n) in counts.items()}
  out.update(
      f1=_mean(f1),
      prompt_tokens=column(eval_rows, "prompt_tokens"),
      new_tokens=column(eval_rows, "new_tokens"),
      answer_tokens=column(eval_rows, "new_tokens"),
      n_questions=len(eval_rows))
  for name, (k, n) in counts.items():
    out[f"{name}_ci"] = list(wilson(k, n)) if n else None
    out[f"{name}_n"] = n or None
  out["f1_ci"], out["f1_n"] = _mean_interval(f1), len(f1) or None
  return out
