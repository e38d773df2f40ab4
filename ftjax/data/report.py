"""What the data pipeline kept and rejected: counts per reason, and where (file:line) each was.

Every rejected row goes through `DataReport.add_bad`, so nothing is dropped silently: with
`on_bad_rows="error"` the pipeline raises `BadRowsError` naming the first offenders; with
`"skip"` the rows are skipped and the report says how many, why, and where.

Rows with an `answer` are counted too: `answer_found` where the last reply holds it (its tokens
get an answer mask), `answer_not_found` where it does not. Such a row is kept and trained on like
any other; it only has no answer tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

from ftjax.errors import UserError

# Reasons a row can be rejected; `too_long` is decided after tokenization, the rest while parsing.
REASONS = ("malformed_json", "malformed_csv", "missing_field", "wrong_type", "bad_messages",
           "empty_output", "render_failed", "too_long")


class DataConfigError(ValueError, UserError):
  """The data config, a data file as a whole, or the iterator state is unusable."""


class BadRowsError(DataConfigError):
  """Rows were rejected while `on_bad_rows="error"`; the message names file:line and reason."""


@dataclasses.dataclass(frozen=True)
class BadRow:
  where: str  # "path:line" for files, "tfds:name/split#index" for TFDS datasets
  reason: str  # one of REASONS
  detail: str

  def __str__(self) -> str:
    return f"{self.where}: {self.reason} ({self.detail})"


@dataclasses.dataclass
class DataReport:
  """Counts of kept and rejected examples per split, with the first few rejects of each reason."""
  examples_per_reason: int = 10
  kept: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
  bad_rows: dict[str, list[BadRow]] = dataclasses.field(default_factory=dict)
  stats: dict[str, float] = dataclasses.field(default_factory=dict)
  tfds_specs: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> "tfds:NAME:SPLIT"
  answers: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
  answers_not_found: list[str] = dataclasses.field(default_factory=list)  # the first few, where

  def add_bad(self, split: str, row: BadRow):
    self.skipped.setdefault(split, collections.Counter())[row.reason] += 1
    shown = self.bad_rows.setdefault(row.reason, [])
    if len(shown) < self.examples_per_reason:
      shown.append(row)

  def add_answer(self, split: str, where: str, found: bool):
    """A kept row that has an answer: found or not in its last assistant reply."""
    self.answers.setdefault(split, collections.Counter())[
        "answer_found" if found else "answer_not_found"] += 1
    if not found and len(self.answers_not_found) < self.examples_per_reason:
      self.answers_not_found.append(where)

  def set_kept(self, split: str, count: int):
    self.kept[split] = count

  @property
  def num_skipped(self) -> int:
    return sum(sum(c.values()) for c in self.skipped.values())

  def to_dict(self) -> dict:
    return {
        "kept": dict(self.kept),
        "skipped": {split: dict(c) for split, c in self.skipped.items()},
        "num_skipped": self.num_skipped,
        "bad_rows": {reason: [dataclasses.asdict(r) for r in rows]
                     for reason, rows in self.bad_rows.items()},
        "stats": dict(self.stats),
        "tfds_specs": dict(self.tfds_specs),
        "answers": {split: dict(c) for split, c in self.answers.items()},
        "answers_not_found": list(self.answers_not_found),
    }

  def write_json(self, path: str | os.PathLike):
    Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

  def summary(self) -> str:
    kept = ", ".join(f"{split}={n}" for split, n in self.kept.items()) or "none"
    read = ", ".join(f"{split} from {spec}" for split, spec in self.tfds_specs.items())
    lines = [f"data: kept {kept}; skipped {self.num_skipped}" + (f"; read {read}" if read else "")]
    for split, counts in self.skipped.items():
      reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(counts.items()))
      lines.append(f"  skipped in {split}: {reasons}")
    for reason, rows in self.bad_rows.items():
      for row in rows:
        lines.append(f"    {row}")
    for split, counts in self.answers.items():
      line = f"  answers in {split}: answer_found={counts['answer_found']}"
      if counts["answer_not_found"]:
        line += f", answer_not_found={counts['answer_not_found']} (kept, with no answer tokens)"
      lines.append(line)
    for where in self.answers_not_found:
      lines.append(f"    {where}: answer_not_found")
    if self.stats:
      lines.append("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.stats.items()))
    return "\n".join(lines)


def _fmt(value) -> str:
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def raise_bad_rows(rows: list[BadRow], total: int, shown: int = 5):
  """Raises BadRowsError for `on_bad_rows="error"`: the first rows by file:line, and the count."""
  listed = "\n  ".join(str(r) for r in rows[:shown])
  more = f"\n  (and {total - shown} more)" if total > shown else ""
  raise BadRowsError(
      f"{total} bad row(s) in the training data:\n  {listed}{more}\n"
      "Fix them, or set data.on_bad_rows='skip' to skip them (they are then counted in the "
      "data report).")
