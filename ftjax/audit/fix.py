"""Writing a cleaned copy of a data file: personal data and secrets redacted, or flagged rows
dropped. The source is never modified; rows that need no change keep their exact bytes (JSONL)
and every kept row keeps its order.
"""

from __future__ import annotations

import collections
import csv
import json
import os
from pathlib import Path

from ftjax.audit.checks import text_findings
from ftjax.audit.rows import (AuditInputError, Row, field_name, read_csv_table, read_rows,
                              set_field)
from ftjax.data.sources import detect_format


def placeholder(finding: dict) -> str:
  return f"[{finding['type'].upper()}]" if finding["kind"] == "pii" else "[SECRET]"


def check_output_path(dst: str, inputs) -> None:
  """Refuse to write over an input: a fix must leave the original for comparison."""
  target = os.path.realpath(dst)
  for src in inputs:
    if os.path.realpath(src) == target or (Path(dst).exists() and Path(src).exists()
                                          and os.path.samefile(src, dst)):
      raise AuditInputError(f"--out {dst} is an input file; write the fixed copy elsewhere")


def redact_file(src: str, dst: str, findings: list[dict] | None = None) -> int:
  """Copy `src` to `dst` with every pii/secret span replaced by a typed placeholder such as
  [EMAIL] or [SECRET]; returns how many spans were replaced. `findings` are those of an audit
  that already read `src` (the command line passes its report's); by default `src` is scanned."""
  check_output_path(dst, [src])
  rows = read_rows(src)
  if findings is None:
    findings = text_findings(rows)
  spans_by_field = collections.defaultdict(list)
  for finding in findings:
    if finding["file"] == src and finding["kind"] in ("pii", "secret"):
      spans_by_field[(finding["line"], finding["field"])].append(finding)
  changed: dict[int, Row] = {}
  for row in rows:
    for path, text in list(row.strings()):
      spans = spans_by_field.get((row.line, field_name(path)), [])
      for finding in sorted(spans, key=lambda f: f["span"], reverse=True):  # right to left
        start, end = finding["span"]
        text = text[:start] + placeholder(finding) + text[end:]
      if spans:
        set_field(row.record, path, text)
        changed[row.line] = row
  _write(src, dst, replace=changed, drop=set())
  return sum(len(spans) for spans in spans_by_field.values())


def drop_rows(src: str, dst: str, lines: set[int]) -> int:
  """Copy `src` to `dst` without the rows that start on `lines`; returns how many were dropped."""
  check_output_path(dst, [src])
  present = {row.line for row in read_rows(src)}
  _write(src, dst, replace={}, drop=lines)
  return len(lines & present)


def _write(src: str, dst: str, replace: dict[int, Row], drop: set[int]):
  Path(dst).parent.mkdir(parents=True, exist_ok=True)
  if detect_format(src) == "jsonl":
    _write_jsonl(src, dst, replace, drop)
  else:
    _write_csv(src, dst, replace, drop)


def _write_jsonl(src: str, dst: str, replace: dict[int, Row], drop: set[int]):
  with open(src, "rb") as f_in, open(dst, "wb") as f_out:
    for line_no, raw in enumerate(f_in, start=1):
      if line_no in drop:
        continue
      if line_no in replace:
        ending = b"\r\n" if raw.endswith(b"\r\n") else (b"\n" if raw.endswith(b"\n") else b"")
        raw = json.dumps(replace[line_no].record, ensure_ascii=False).encode("utf-8") + ending
      f_out.write(raw)


def _write_csv(src: str, dst: str, replace: dict[int, Row], drop: set[int]):
  header, records = read_csv_table(src)
  columns = [name.strip().lower() for name in header]
  with open(dst, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for line, cells in records:
      if line in drop:
        continue
      if line in replace:
        cells = [replace[line].record[column] for column in columns]
      writer.writerow(cells)
