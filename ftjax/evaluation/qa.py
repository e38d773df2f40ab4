"""Scoring answers as plain strings: correctness, token F1, style, abstention, and run summaries.

Evaluation never sees a model or an arm, only the text each one produced, so every arm is scored by
the same functions. Correctness is "the gold answer appears in the answer and no other value of
its kind does" after SQuAD-style normalisation extended to numbers and units, because generated
answers are sentences, not extracted spans; a style's fixed text is removed first, and listing
every possible value is wrong, so neither boilerplate nor hedging can score.
"""

from __future__ import annotations

import collections
import functools
import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

from ftjax.evaluation.stats import Z95, wilson

try:
  from re import _parser as _sre_parser
except ImportError:  # Python < 3.11
  import sre_parse as _sre_parser  # pylint: disable=deprecated-module

SPLITS = ("eval", "unanswerable", "general", "update_eval", "unchanged")


class ScoringConfigError(ValueError):
  """A scoring setting (a style, answer or abstention regex) is unusable."""


# Normalisation.

_ARTICLES = frozenset({"a", "an", "the"})
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000}
_NUMBER_WORDS = frozenset(_UNITS) | frozenset(_TENS) | frozenset(_SCALES)


def _unit_table(rows: str) -> dict[str, str]:
  """{spelling: canonical} from lines "canonical: spelling spelling ..."."""
  table = {}
  for line in rows.strip().splitlines():
    canonical, spellings = line.split(":")
    for spelling in [canonical, *spellings.split()]:
      table[spelling] = canonical.strip()
  return table


# Units fold to one spelling so "29-month" matches "29 months" and "metre" matches "meters"; a
# small table, not stemming, so ordinary words are never changed. Words that are also common
# non-units ("second floor", "a minute detail", "the foot of") and abbreviations fold only after a
# number.
_UNIT_WORDS = _unit_table("""
days: day
weeks: week
months: month
years: year
hours: hour
meters: meter metre metres
liters: liter litre litres
grams: gram gramme grammes
kg: kilogram kilograms kilogramme kilogrammes kilo kilos
km: kilometer kilometers kilometre kilometres
cm: centimeter centimeters centimetre centimetres
mm: millimeter millimeters millimetre millimetres
ml: milliliter milliliters millilitre millilitres
inches: inch
miles: mile
percent: percentage
""")
_UNITS_AFTER_NUMBER = {**_UNIT_WORDS, **_unit_table("""
seconds: second sec secs
minutes: minute min mins
hours: hr hrs h
years: yr yrs
feet: foot ft
pounds: pound lb lbs
kg: kgs
km: kms
""")}
_PER_CENT = re.compile(r"\bper\s+cent\b")

_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_BARE_DECIMAL = re.compile(r"(?<![\w.])\.(?=\d)")
_NUMBER_THEN_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@functools.lru_cache(maxsize=4096)
def _char_class(char: str) -> str:
  """'keep', 'space', 'percent' or 'drop' for one character."""
  category = unicodedata.category(char)
  # Dashes and slashes separate words ("forty-five", "24/7"); currency separates a number from
  # its neighbours and "%" becomes the word "percent". Other punctuation is deleted as in SQuAD, so
  # "don't" stays one token.
  if char == "%":
    return "percent"
  if category == "Pd" or category == "Sc" or char in "/\\":
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
    elif kind == "percent":
      out.append(" percent ")
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


def _after_and(tokens: Sequence[str], j: int, parse) -> tuple[int, int] | None:
  """parse(tokens, j), also across one "and" ("hundred and five") when a whole number follows it.

  "and" is not taken when a scale word follows the number after it, so "between one hundred and
  two hundred" stays two numbers.
  """
  if j < len(tokens) and tokens[j] == "and":
    rest = parse(tokens, j + 1)
    if rest is None or (rest[1] < len(tokens) and tokens[rest[1]] in _SCALES):
      return None
    return rest
  return parse(tokens, j)


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
  rest = _after_and(tokens, j, _below_hundred)
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
    rest = _after_and(tokens, j + 1, _below_thousand)
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
  text = _BARE_DECIMAL.sub("0.", _PER_CENT.sub("percent", text))
  text = _NUMBER_THEN_LETTER.sub(" ", _strip_punctuation(text))
  words = [w for w in text.split() if w not in _ARTICLES]
  out, i = [], 0
  while i < len(words):
    parsed = _number(words, i) if words[i] in _NUMBER_WORDS else None
    if parsed is not None:
      out.append(str(parsed[0]))
      i = parsed[1]
      continue
    word = words[i]
    if _NUMBER.fullmatch(word):
      word = _canonical_number(word)
    elif out and _NUMBER.fullmatch(out[-1]):
      word = _UNITS_AFTER_NUMBER.get(word, word)
    else:
      word = _UNIT_WORDS.get(word, word)
    out.append(word)
    i += 1
  return out


def normalize_answer(text: str) -> str:
  """SQuAD normalisation (lowercase, no punctuation, no articles, single spaces), numbers, units.

  Numbers become canonical digits so that spellings of one value compare equal: thousands
  separators go ("1,299" -> "1299"), trailing fractional zeros go ("49.50" -> "49.5", "3.0" -> "3"),
  a decimal point between digits survives, and number words below a million become digits
  ("twelve" -> "12", "forty-five" -> "45", "two hundred fifty" -> "250", "four hundred and
  fourteen" -> "414"). Currency symbols, dashes and slashes become spaces, and a number glued to
  letters is split from them ("3.5kg" -> "3.5 kg", "12th" -> "12 th"). Units take one spelling
  from a small table ("29-month" and "29 months" -> "29 months", "metre" -> "meters", "kilograms"
  -> "kg", "%" and "per cent" -> "percent"); abbreviations and words that are not always units
  ("hrs", "second", "foot") fold only after a number.
  """
  return " ".join(_tokens(text))


def contains_answer(prediction: str, gold: str) -> bool:
  """True when the normalised gold tokens appear contiguously in the normalised prediction.

  Matching is on whole tokens: "12" is not found in "112", nor "paris" in "parisian".
  """
  return bool(_occurrences(_tokens(prediction), _gold_tokens(gold)))


def _gold_tokens(gold: str) -> list[str]:
  tokens = _tokens(gold)
  if not tokens:
    raise ValueError(f"gold answer {gold!r} is empty after normalisation")
  return tokens


def _occurrences(tokens: list[str], sub: list[str]) -> list[int]:
  """Start indices where `sub` appears contiguously in `tokens`."""
  n = len(sub)
  return [i for i in range(len(tokens) - n + 1) if tokens[i:i + n] == sub]


def token_f1(prediction: str, gold: str) -> float:
  """SQuAD token-overlap F1 of the normalised texts (1.0 if both are empty, 0.0 if one is)."""
  return _f1(_tokens(prediction), _tokens(gold))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
  if not pred_tokens or not gold_tokens:
    return float(pred_tokens == gold_tokens)
  common = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred_tokens), common / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


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


# Abstention.

_APOS = "[’']"
_NOT = rf"(?:\s+not|n{_APOS}?t)"  # "do not" / "don't" / "dont"
_I_AM = rf"I(?:{_APOS}?m|\s+am)"
_I_WAS = rf"(?:I|we)(?:{_APOS}?m|{_APOS}?re|\s+am|\s+are|\s+was|\s+were)"
_CANNOT = rf"(?:cannot|can\s+not|can{_APOS}?t|could{_NOT})"
_SOURCE = (r"(?:(?:the|this|these|my|our|provided|given|available|retrieved)\s+)*"
           r"(?:context|documents?|docs|documentation|passages?|sources?|text|materials?|manual|"
           r"knowledge\s+base|records)"
           r"|(?:the\s+)?(?:provided|given|available|retrieved)\s+(?:information|data)"
           r"|(?:the\s+)?information\s+I\s+have")
_INFO = r"(?:information|info|details|data|knowledge)"
_INFO_QUALIFIERS = (r"(?:(?:that|this|any|enough|the|such|much|specific|relevant|detailed|"
                    r"further|more|additional|reliable)\s+)*")

# Declining is recognised by phrasing about the speaker or the sources, never by negation alone:
# "The warranty does not cover water damage", "not available in the basic plan" and "the app
# stores no information about you" are answers. Phrasings that a company uses for its policies
# ("we are unable to repair…", "we don't have physical stores") are answers too, so "help",
# "access" and "say" count only with "I".
DEFAULT_ABSTAIN_PATTERNS: tuple[str, ...] = (
    rf"\b(?:I|we)\s+(?:really\s+|simply\s+|honestly\s+)?do{_NOT}\s+know\b",
    rf"\b{_I_AM}\s+(?:not\s+(?:entirely\s+|completely\s+|quite\s+|really\s+)?"
    r"(?:sure|certain|aware|familiar)|unsure|unfamiliar)\b",
    r"^\W*(?:not\s+sure|unsure)\b",
    rf"\b(?:I|we)\s+(?:cannot|can\s+not|can{_APOS}?t|could{_NOT})\s+answer\b",
    rf"^\W*(?:cannot|can\s+not|can{_APOS}?t|unable\s+to)\s+answer\b",
    rf"\b(?:cannot|can\s+not|can{_APOS}?t|unable\s+to)\s+answer\s+(?:this|that|the|your)\s+"
    r"question\b",
    rf"\b{_I_WAS}(?:\s+unable|\s+not\s+able|n{_APOS}?t\s+able)\s+to\s+"
    r"(?:find|answer|locate|determine|confirm)\b",
    rf"\bI(?:{_APOS}?m|\s+am|\s+was)(?:\s+unable|\s+not\s+able|n{_APOS}?t\s+able)\s+to\s+"
    rf"(?:help|assist|say|tell|provide\s+{_INFO_QUALIFIERS}(?:an\s+)?(?:answer|{_INFO}))\b",
    r"^\W*unable\s+to\s+(?:find|answer|locate|determine)\b",
    rf"\b(?:I|we)\s+{_CANNOT}\s+(?:find|locate|determine)\b",
    rf"\bI\s+{_CANNOT}\s+(?:say|tell|confirm)\b",
    rf"\bI\s+{_CANNOT}\s+(?:help|assist)\s+(?:you\s+)?with\s+(?:that|this)\b",
    rf"\bI\s+{_CANNOT}\s+(?:provide|give|offer)\s+(?:you\s+)?{_INFO_QUALIFIERS}(?:an\s+)?"
    rf"(?:answer|{_INFO})\b",
    rf"(?:\bthere\s+(?:is|was)\s+|\bthere{_APOS}s\s+|\b(?:I|we)\s+(?:have|found)\s+|"
    r"\b(?:has|have|contains?|provides?|gives?|includes?)\s+)"
    r"no\s+(?:specific\s+|relevant\s+|available\s+|such\s+)?information\b",
    # A reply that opens with "No information" declines unless it goes on as a sentence
    # ("No information is shared with third parties").
    r"^\W*no\s+(?:specific\s+|relevant\s+|such\s+)?information"
    r"(?:\W*$|\s+(?:available|found|provided|given)\b|\s+(?:on|about|regarding)\s+(?:that|this)\b)",
    r"\bnot\s+enough\s+information\b|\binsufficient\s+information\b",
    rf"\b(?:I|{_SOURCE})\s+(?:really\s+|simply\s+)?(?:do|does){_NOT}\s+(?:seem\s+to\s+)?have\s+"
    rf"{_INFO_QUALIFIERS}{_INFO}\b",
    rf"\bI\s+(?:do{_NOT}\s+have|have\s+no)\s+access\s+to\b",
    r"\bI\s+have\s+no\s+(?:idea|knowledge|details|records?|data|information)\b",
    rf"\b(?:{_SOURCE})\s+(?:do|does){_NOT}\s+(?:seem\s+to\s+)?(?:cover|mention|say|specify|state|"
    r"include|contain|provide|address|list|describe|discuss|show)\b",
    rf"(?:\bnot|n{_APOS}t)\s+(?:covered|mentioned|available|specified|stated|provided|found|"
    rf"included|given|listed|described|addressed)\s+(?:in|by)\s+(?:{_SOURCE})\b",
    rf"\b(?:is|are|was|were)(?:\s+not|n{_APOS}?t)\s+(?:in|among)\s+(?:{_SOURCE})\b",
    rf"\b(?:is|are)(?:\s+not|n{_APOS}?t)\s+(?:available|known)\s+to\s+me\b",
    rf"\bnothing\s+(?:in|from)\s+(?:{_SOURCE})\s+(?:mentions?|says?|covers?|specifies|specify|"
    r"states?|addresses|address|describes?)\b",
    rf"\b(?:{_I_AM}\s+)?sorry,?\s+(?:but\s+)?I\s+(?:can{_APOS}?t|cannot|can\s+not|do{_NOT}|"
    rf"am\s+not|{_APOS}?m\s+not|have\s+no)\b",
    rf"\bthere(?:\s+(?:is|are)|{_APOS}s)\s+no\s+(?:records?|details|mention)\s+"
    r"(?:of|about|on|regarding)\b",
    r"\b(?:I|we)\s+(?:have|found|see|could\s+find|can\s+find)\s+no\s+(?:records?|details|"
    r"mention)\s+(?:of|about|on|regarding)\b",
    r"\bnot\s+something\s+I\s+(?:can|could|am\s+able\s+to)\s+(?:help|assist|answer)\b",
    rf"\bnot\s+something\s+I\s+(?:know\b|have\s+{_INFO_QUALIFIERS}{_INFO})",
    r"\b(?:outside|beyond)\s+(?:what\s+I\s+(?:know|can\s+(?:tell|say|answer|help))|"
    r"my\s+knowledge|the\s+scope\s+of\s+(?:what\s+I|my))\b",
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
  accepted = [(g, _gold_tokens(g)) for g in [gold, *answers]]
  accepted_tokens = [tokens for _, tokens in accepted]
  others = [c for c in map(_tokens, candidates) if c and c not in accepted_tokens]
  tokens = _tokens(extracted)
  gold_spans = [(i, i + len(g)) for g in accepted_tokens for i in _occurrences(tokens, g)]
  other_found = any(not any(s <= i and i + len(c) <= e for s, e in gold_spans)
                    for c in others for i in _occurrences(tokens, c))
  found = bool(gold_spans)
  out.update(
      correct=found and not other_found,
      em=tokens in accepted_tokens,
      f1=max(_f1(tokens, g) for g in accepted_tokens),
      multi_value=found and other_found,
      matched_gold=next((g for g, t in accepted if _occurrences(tokens, t)), None))
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
