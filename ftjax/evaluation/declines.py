"""Recognising an answer that declines ("I don't have information about ...") by its phrasing
about the speaker or the sources, never by negation alone; the patterns are tested on hand-written
declines and non-declines."""

from __future__ import annotations

import functools
import re
from typing import Sequence


from ftjax.evaluation.matching import ScoringConfigError

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
