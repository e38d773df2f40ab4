"""An answer against its gold, as plain strings: SQuAD-style normalisation extended to numbers
(digits, separators, number words) and units (one spelling per unit, "29-month" = "29 months"),
containment of the gold and token F1."""

from __future__ import annotations

import collections
import functools
import re
import unicodedata
from typing import Sequence

from ftjax.errors import UserError



class ScoringConfigError(ValueError, UserError):
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


def answer_tokens(text: str) -> list[str]:
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
  return " ".join(answer_tokens(text))


def contains_answer(prediction: str, gold: str) -> bool:
  """True when the normalised gold tokens appear contiguously in the normalised prediction.

  Matching is on whole tokens: "12" is not found in "112", nor "paris" in "parisian".
  """
  return bool(occurrences(answer_tokens(prediction), gold_tokens(gold)))


def gold_tokens(gold: str) -> list[str]:
  tokens = answer_tokens(gold)
  if not tokens:
    raise ValueError(f"gold answer {gold!r} is empty after normalisation")
  return tokens


def occurrences(tokens: list[str], sub: list[str]) -> list[int]:
  """Start indices where `sub` appears contiguously in `tokens`."""
  n = len(sub)
  return [i for i in range(len(tokens) - n + 1) if tokens[i:i + n] == sub]


def token_f1(prediction: str, gold: str) -> float:
  """SQuAD token-overlap F1 of the normalised texts (1.0 if both are empty, 0.0 if one is)."""
  return tokens_f1(answer_tokens(prediction), answer_tokens(gold))


def tokens_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
  if not pred_tokens or not gold_tokens:
    return float(pred_tokens == gold_tokens)
  common = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred_tokens), common / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)
