"""Every check over every row: the one place that turns files into an `AuditReport`."""

from __future__ import annotations

import os
from typing import Iterable

from ftjax.audit.duplicates import RowText, find_contamination, find_duplicates
from ftjax.audit.pii import Span, find_pii
from ftjax.audit.report import KINDS, AuditReport, make_finding
from ftjax.audit.rows import Row, field_name, read_rows
from ftjax.audit.secrets import find_secrets

PII_TYPES = ("email", "phone", "card", "iban", "ssn", "pesel")
HIGH_ENTROPY = ("Base64 High Entropy String", "Hex High Entropy String")
MIN_SCANNED_CHARS = 6  # "user", "yes": nothing shorter holds an address or a key


def resolve_overlaps(secrets: list[Span], pii: list[Span]) -> list[Span]:
  """One span per stretch of text: named secrets first (an AWS key, a PEM block), then personal
  data in `pii.FINDERS` order, and a bare high-entropy string only where nothing else matched."""
  ranked = ([s for s in secrets if s.type not in HIGH_ENTROPY] + pii +
            [s for s in secrets if s.type in HIGH_ENTROPY])
  kept: list[Span] = []
  for span in ranked:
    if all(span.end <= other.start or span.start >= other.end for other in kept):
      kept.append(span)
  return sorted(kept)


def text_findings(rows: list[Row]) -> list[dict]:
  """pii and secret findings, each with its span in its field."""
  located = [(row, path, text) for row in rows for path, text in row.strings()
             if len(text) >= MIN_SCANNED_CHARS]
  secrets = find_secrets([text for _, _, text in located])
  return [make_finding(row, "pii" if span.type in PII_TYPES else "secret", span.type,
                       field_name(path), span.detail, (span.start, span.end))
          for (row, path, text), row_secrets in zip(located, secrets)
          for span in resolve_overlaps(row_secrets, find_pii(text))]


def audit(train: list[Row], evals: list[Row] = (), docs: list[Row] = ()) -> AuditReport:
  every_row = [*train, *evals, *docs]
  findings = text_findings(every_row)
  train_texts, eval_texts = [RowText.of(r) for r in train], [RowText.of(r) for r in evals]
  findings += find_duplicates(train_texts)
  findings += find_duplicates(eval_texts)
  findings += find_duplicates([RowText.of(r) for r in docs])
  if eval_texts:
    findings += find_contamination(train_texts, eval_texts)
  file_order: dict[str, int] = {}
  for row in every_row:
    file_order.setdefault(row.file, len(file_order))
  findings.sort(key=lambda f: (file_order[f["file"]], f["line"], KINDS.index(f["kind"]),
                               f["field"], f.get("span", [0])[0]))
  return AuditReport(findings, len(every_row))


def _as_list(files) -> list[str]:
  if isinstance(files, (str, os.PathLike)):
    return [os.fspath(files)]
  return [os.fspath(f) for f in files]


def audit_files(train_files: Iterable[str] | str, eval_files: Iterable[str] | str = (),
                docs_files: Iterable[str] | str = ()) -> AuditReport:
  """Audit training files (JSONL/CSV), eval files (same shapes; checked for contamination) and
  docs files (retrieval corpus JSONL). Raises AuditInputError on a file it cannot read."""
  def read(files):
    return [row for path in _as_list(files) for row in read_rows(path)]
  return audit(read(train_files), read(eval_files), read(docs_files))


def audit_rows(rows: list[dict], source: str = "rows") -> AuditReport:
  """Audit in-memory training rows; findings name them `source` with line = index + 1."""
  return audit([Row(source, i + 1, record) for i, record in enumerate(rows)])
