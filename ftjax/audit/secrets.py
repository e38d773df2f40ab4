"""Secrets in free text, found by detect-secrets' plugins run on in-memory strings.

detect-secrets scans files; its `scan_line` is the entry it offers for an ad-hoc string, and it
runs every plugin with its false-positive filters. Its high-entropy plugins, though, test every
word of a line eagerly there (five times the cost of all other plugins together) and leave the
entropy limit to the caller, so they are left out of `scan_line` and applied here to tokens long
enough to be a key rather than a word or an order id, with the plugins' own entropy measure and
limits and detect-secrets' heuristic filters. `scan_line`'s results carry the secret's value but
not where it is, so the value is located in the text and widened to the whole token (a GitHub
token is reported by its prefix), or to the whole PEM block for a private key.

One extra pattern covers what detect-secrets leaves to code files: a password written in prose
("my password is hunter2", "password Xy7&pQ!2v", "password=..."), which its keyword plugin only
catches when quoted.
"""

from __future__ import annotations

import re

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import scan_line
from detect_secrets.filters import heuristic
from detect_secrets.plugins.high_entropy_strings import (Base64HighEntropyString,
                                                         HexHighEntropyString,
                                                         HighEntropyStringsPlugin)
from detect_secrets.settings import transient_settings

from ftjax.audit.pii import Span

HIGH_ENTROPY_MIN_LENGTH = 20
# The plugins' default limits (bits per character), as `detect-secrets scan` uses them.
HIGH_ENTROPY_PLUGINS = (Base64HighEntropyString(limit=4.5), HexHighEntropyString(limit=3.0))
HIGH_ENTROPY_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{%d,}" % HIGH_ENTROPY_MIN_LENGTH)
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-+/=.]")
PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.DOTALL)
PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")  # what redaction writes; never a secret itself
_KEYWORDS = (r"(?:password|passwd|passcode|pwd|api[_ -]?key|secret[_ -]?key|access[_ -]?token|"
             r"auth[_ -]?token|client[_ -]?secret)")
# "password: x" / "password = x" take any value; "password is x" and "password x" only one that
# mixes letters with digits or holds a symbol, since "your password is case-sensitive" and "the
# password reset link" are ordinary support text.
PROSE_ASSIGNED = re.compile(_KEYWORDS + r"\s*[:=]\s*[\"'`]?([^\s\"'`,;]{4,})", re.IGNORECASE)
PROSE_STATED = re.compile(_KEYWORDS + r"\s+(?:(?:is|was)\s+)?[\"'`]?([^\s\"'`,;]{4,})",
                          re.IGNORECASE)
LOOKS_LIKE_A_PASSWORD = re.compile(r"(?=.*\d)(?=.*[A-Za-z])|.*[!@#$%^&*~]")


def _widen_to_token(text: str, start: int, end: int) -> tuple[int, int]:
  while start > 0 and TOKEN_CHARS.match(text[start - 1]):
    start -= 1
  while end < len(text) and TOKEN_CHARS.match(text[end]):
    end += 1
  while end > start and text[end - 1] in ".=" and not text[start:end].endswith("=="):
    end -= 1  # sentence punctuation, not part of the token
  return start, end


def _locate(text: str, secret_type: str, value: str) -> list[tuple[int, int]]:
  if secret_type == "Private Key":
    return [m.span() for m in PRIVATE_KEY_BLOCK.finditer(text)] or [
        (i, i + len(value)) for i in _occurrences(text, value)]
  if secret_type == "Secret Keyword":
    return [(i, i + len(value)) for i in _occurrences(text, value)]
  return [_widen_to_token(text, i, i + len(value)) for i in _occurrences(text, value)]


def _occurrences(text: str, value: str) -> list[int]:
  found, at = [], text.find(value)
  while value and at >= 0:
    found.append(at)
    at = text.find(value, at + len(value))
  return found


def _prose_passwords(text: str) -> list[Span]:
  spans = []
  for pattern in (PROSE_ASSIGNED, PROSE_STATED):
    for m in pattern.finditer(text):
      value = m.group(1).rstrip(".?")  # sentence punctuation; "!" is common inside passwords
      if pattern is PROSE_STATED and not LOOKS_LIKE_A_PASSWORD.match(value):
        continue
      if PLACEHOLDER.fullmatch(value):
        continue
      spans.append(Span(m.start(1), m.start(1) + len(value), "Secret Keyword",
                        "credential written in text after a keyword like 'password'"))
  return spans


def _high_entropy(text: str) -> list[Span]:
  spans = []
  for m in HIGH_ENTROPY_TOKEN.finditer(text):
    token = m.group().rstrip("=") if not m.group().endswith("==") else m.group()
    if (heuristic.is_sequential_string(token) or heuristic.is_potential_uuid(token) or
        heuristic.is_templated_secret(token) or heuristic.is_likely_id_string(token, text)):
      continue
    for plugin in HIGH_ENTROPY_PLUGINS:
      if (set(token) <= set(plugin.charset) and
          plugin.calculate_shannon_entropy(token) > plugin.entropy_limit):
        spans.append(Span(m.start(), m.start() + len(token), plugin.secret_type,
                          f"detect-secrets: {plugin.secret_type} "
                          f"(entropy above {plugin.entropy_limit})"))
        break
  return spans


def _scan(text: str) -> list[Span]:
  spans = []
  for secret in scan_line(text):
    value = secret.secret_value or ""
    for start, end in _locate(text, secret.type, value):
      if not PLACEHOLDER.fullmatch(text[start:end]):
        spans.append(Span(start, end, secret.type, f"detect-secrets: {secret.type}"))
  return spans + _high_entropy(text) + _prose_passwords(text)


def find_secrets(texts: list[str]) -> list[list[Span]]:
  """The secret spans of each text, in order. detect-secrets keeps its plugin settings in a
  global, so all texts are scanned inside one settings block: every plugin but high entropy."""
  plugins = [{"name": plugin.__name__}
             for plugin in get_mapping_from_secret_type_to_class().values()
             if not issubclass(plugin, HighEntropyStringsPlugin)]
  with transient_settings({"plugins_used": plugins}):
    return [_scan(text) for text in texts]
