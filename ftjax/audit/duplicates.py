"""Exact and near duplicates, conflicting labels, and train/eval contamination.

Rows are compared on normalised text (lower case, punctuation and runs of space folded) as sets
of character 5-grams, which also works for one-word answers. MinHash LSH (datasketch) only proposes
candidates; every reported similarity is the exact Jaccard index of the two 5-gram sets, so a
report does not change with the hash seed. Each finding sits on the later row (or, for
contamination, on the training row, which is the one to drop) and names the other in `detail`.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
import unicodedata
import zlib

from datasketch import MinHash, MinHashLSH

from ftjax.audit.report import make_finding
from ftjax.audit.rows import FieldPath, Row, field_name

SHINGLE_CHARS = 5
NUM_PERM = 128
NEAR_DUPLICATE = 0.8  # Jaccard of whole rows (input and output) above which rows are near copies
SAME_INPUT = 0.9  # inputs this similar ask the same thing...
# ...so outputs that share less than this share of the shorter one's 5-grams conflict. Containment
# rather than Jaccard: the same answer with a different greeting around it is no conflict.
DIFFERENT_OUTPUT = 0.4
NEAR_CONTAMINATION = 0.8  # an eval question/answer this similar to a training text leaked
MIN_CONTAINED_CHARS = 20  # shorter eval texts are not searched inside longer training texts
MIN_ANSWER_WORDS = 4  # "Yes", "30 days": short answers recur in training data by nature


def normalize(text: str) -> str:
  text = unicodedata.normalize("NFKC", text).lower()
  return " ".join(re.sub(r"[^\w]+", " ", text).split())


def shingles(normalized: str) -> frozenset[str]:
  if len(normalized) <= SHINGLE_CHARS:
    return frozenset([normalized]) if normalized else frozenset()
  return frozenset(normalized[i:i + SHINGLE_CHARS]
                   for i in range(len(normalized) - SHINGLE_CHARS + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
  return len(a & b) / len(a | b) if a or b else 1.0


def containment(a: frozenset, b: frozenset) -> float:
  """The share of the smaller set that is in the other (the overlap coefficient)."""
  return len(a & b) / min(len(a), len(b)) if a and b else float(a == b)


def numbers(normalized: str) -> frozenset[str]:
  return frozenset(re.findall(r"\b\d+\b", normalized))


def names(text: str) -> frozenset[str]:
  """Capitalised words that do not begin a sentence (raw text, lower-cased): the names a text
  states ("Anna Kowalski", "Lisbon", "Pro"), which normalised text no longer shows."""
  found = set()
  for sentence in re.split(r"(?<=[.!?;:])\s+|\n+", text.strip()):
    for match in re.finditer(r"\b[^\W\d_][\w'-]*", sentence):
      word = match[0]
      if match.start() > 0 and word[0].isupper() and word != "I":
        found.add(word.lower())
  return frozenset(found)


@functools.cache
def _template() -> MinHash:
  return MinHash(num_perm=NUM_PERM, seed=1)  # drawing permutations dominates a small MinHash


def _crc32(shingle: bytes) -> int:
  return zlib.crc32(shingle)  # deterministic like datasketch's sha1, and several times faster


@functools.cache
def _lsh_bands(threshold: float) -> tuple[int, int]:
  lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)  # optimises (bands, rows) numerically
  return lsh.b, lsh.r


@functools.lru_cache(maxsize=4096)  # a row is queried, then added: hash it once
def _minhash(shingle_set: frozenset[str]) -> MinHash:
  template = _template()
  minhash = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=_crc32,
                    permutations=template.permutations, scheme=template.scheme)
  minhash.update_batch([s.encode() for s in shingle_set])
  return minhash


@dataclasses.dataclass
class RowText:
  """A row's input and output, normalised and shingled once for every comparison."""
  row: Row
  input_path: FieldPath
  input: str
  output_path: FieldPath
  output: str
  output_names: frozenset[str] = frozenset()  # names() of the raw output, less the input's words

  def __post_init__(self):
    self.full = f"{self.input} {self.output}".strip()
    self.input_shingles = shingles(self.input)
    self.output_shingles = shingles(self.output)
    self.full_shingles = shingles(self.full)

  @classmethod
  def of(cls, row: Row) -> RowText:
    (input_path, input_), (output_path, output) = row.input_output()
    if not input_ and not output:  # an unknown shape: compare all of its text
      input_ = "\n".join(text for _, text in row.strings())
    input_words = frozenset(normalize(input_).split())
    return cls(row, input_path, normalize(input_), output_path, normalize(output or ""),
               names(output or "") - input_words)


class SimilarityIndex:
  """Shingle sets by key; `similar` returns earlier keys with exact Jaccard >= threshold."""

  def __init__(self, threshold: float):
    self.threshold = threshold
    # LSH at a lower threshold than reported: a pair just above it would otherwise be missed
    # about half the time; the exact Jaccard then drops the extra candidates.
    self.lsh = MinHashLSH(num_perm=NUM_PERM, params=_lsh_bands(round(threshold - 0.15, 2)))
    self.sets: dict[int, frozenset] = {}

  def add(self, key: int, shingle_set: frozenset):
    if shingle_set:
      self.lsh.insert(key, _minhash(shingle_set))
      self.sets[key] = shingle_set

  def similar(self, shingle_set: frozenset) -> list[tuple[float, int]]:
    """[(jaccard, key)], most similar first."""
    if not shingle_set:
      return []
    scored = ((jaccard(shingle_set, self.sets[key]), key)
              for key in self.lsh.query(_minhash(shingle_set)))
    return sorted((item for item in scored if item[0] >= self.threshold),
                  key=lambda item: (-item[0], item[1]))


def find_duplicates(texts: list[RowText]) -> list[dict]:
  """Exact copies, near copies and conflicting labels among `texts` (one group of files)."""
  findings = []
  first_copy: dict[str, int] = {}
  by_full, by_input = SimilarityIndex(NEAR_DUPLICATE), SimilarityIndex(SAME_INPUT)
  for i, text in enumerate(texts):
    if not text.full:
      continue
    key = f"{text.input}\x1f{text.output}"
    if key in first_copy:
      other = texts[first_copy[key]].row
      findings.append(make_finding(
          text.row, "duplicate", "exact", "row",
          f"same text as {other.where} (ignoring case, punctuation and spacing)"))
      continue
    first_copy[key] = i
    conflict = _conflict(text, by_input, texts)
    if conflict is not None:
      findings.append(conflict)
    elif near := by_full.similar(text.full_shingles):
      score, j = near[0]
      findings.append(make_finding(text.row, "near_duplicate", "near", "row",
                                   f"near copy of {texts[j].row.where} (jaccard {score:.2f})"))
    by_full.add(i, text.full_shingles)
    if text.output:
      by_input.add(i, text.input_shingles)
  return findings


def _conflict(text: RowText, by_input: SimilarityIndex, texts: list[RowText]) -> dict | None:
  if not text.input or not text.output:
    return None
  for score, j in by_input.similar(text.input_shingles):
    other = texts[j]
    same = "same" if score == 1.0 else f"near-same (jaccard {score:.2f})"
    if containment(text.output_shingles, other.output_shingles) < DIFFERENT_OUTPUT:
      return make_finding(text.row, "conflict", "label", field_name(text.output_path),
                          f"{same} input as {other.row.where} but a different output")
    # The same answer stating other facts ("30 days" against "14 days"); numbers that repeat the
    # row's own input (an order id, a version asked about) are not facts of the answer.
    ours = numbers(text.output) - numbers(text.input)
    theirs = numbers(other.output) - numbers(other.input)
    if ours != theirs:
      return make_finding(text.row, "conflict", "numbers", field_name(text.output_path),
                          f"{same} input as {other.row.where} but other numbers in the output "
                          f"({', '.join(sorted(ours - theirs)) or 'none'} against "
                          f"{', '.join(sorted(theirs - ours)) or 'none'})")
    # The same answer naming someone or something else ("Anna Kowalski" against "Brian Smith").
    if text.output_names and other.output_names and text.output_names != other.output_names:
      ours, theirs = text.output_names, other.output_names
      return make_finding(text.row, "conflict", "names", field_name(text.output_path),
                          f"{same} input as {other.row.where} but other names in the output "
                          f"({', '.join(sorted(ours - theirs)) or 'none'} against "
                          f"{', '.join(sorted(theirs - ours)) or 'none'})")
  return None


class _Haystack:
  """All training texts joined, so a substring search runs once in C instead of once per row."""

  def __init__(self, texts: list[RowText]):
    self.starts, parts, offset = [], [], 0
    for text in texts:
      self.starts.append(offset)
      parts.append(text.full)
      offset += len(text.full) + 1
    self.joined = "\n".join(parts)  # normalised text has no newline, so no match spans two rows

  def rows_containing(self, needle: str) -> list[int]:
    found, at = [], self.joined.find(needle)
    while at >= 0:
      row = bisect.bisect_right(self.starts, at) - 1
      found.append(row)
      next_row = self.starts[row + 1] if row + 1 < len(self.starts) else len(self.joined)
      at = self.joined.find(needle, next_row)
    return found


def find_contamination(train: list[RowText], evals: list[RowText]) -> list[dict]:
  """Training rows that hold an eval question or answer, verbatim or nearly."""
  haystack = _Haystack(train)
  by_input, by_output = SimilarityIndex(NEAR_CONTAMINATION), SimilarityIndex(NEAR_CONTAMINATION)
  first_with_input: dict[str, int] = {}
  for i, text in enumerate(train):
    by_input.add(i, text.input_shingles)
    by_output.add(i, text.output_shingles)
    first_with_input.setdefault(text.input, i)
  findings, reported = [], set()

  def report(j: int, kind: str, eval_text: RowText, how: str):
    if (j, kind, eval_text.row.where) in reported:
      return
    reported.add((j, kind, eval_text.row.where))
    target = train[j]
    path = target.input_path if kind == "eval_question" else target.output_path
    detail = f"{kind.replace('_', ' ')} at {eval_text.row.where} appears {how}"
    findings.append(make_finding(target.row, "contamination", kind, field_name(path), detail))

  for eval_text in evals:
    question, answer = eval_text.input, eval_text.output
    if question:
      exact = [first_with_input[question]] if question in first_with_input else []
      if len(question) >= MIN_CONTAINED_CHARS:
        exact += haystack.rows_containing(question)
      for j in exact:
        report(j, "eval_question", eval_text, "verbatim")
      for score, j in by_input.similar(eval_text.input_shingles):
        report(j, "eval_question", eval_text, f"nearly (jaccard {score:.2f})")
    if len(answer) >= MIN_CONTAINED_CHARS and len(answer.split()) >= MIN_ANSWER_WORDS:
      for j in haystack.rows_containing(answer):
        report(j, "eval_answer", eval_text, "verbatim")
      for score, j in by_output.similar(eval_text.output_shingles):
        report(j, "eval_answer", eval_text, f"nearly (jaccard {score:.2f})")
  return findings
