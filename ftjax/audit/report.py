"""What an audit found, as JSON, as a short table, and as a gate that training can stop on."""

from __future__ import annotations

import collections
import dataclasses
import sys

from ftjax.errors import UserError

KINDS = ("pii", "secret", "duplicate", "near_duplicate", "conflict", "contamination")
BLOCKING = ("pii", "secret", "contamination")  # what gate(mode="error") refuses to train on
GATE_MODES = ("off", "warn", "error", "redact")


class AuditError(ValueError, UserError):
  """The audit gate refused the data; the message names the first findings by file:line."""


def make_finding(row, kind: str, type_: str, field: str, detail: str,
                 span: tuple[int, int] | None = None) -> dict:
  finding = {"file": row.file, "line": row.line, "kind": kind, "type": type_, "field": field,
             "detail": detail}
  if span is not None:
    finding["span"] = [span[0], span[1]]
  return finding


@dataclasses.dataclass
class AuditReport:
  findings: list[dict]  # file order; {"file", "line", "kind", "type", "field", "detail", "span"?}
  rows: int  # rows audited, over all files

  @property
  def counts(self) -> dict[str, int]:
    by_kind = collections.Counter(f["kind"] for f in self.findings)
    return {kind: by_kind.get(kind, 0) for kind in KINDS}

  def to_json(self) -> dict:
    return {"findings": self.findings, "counts": self.counts, "rows": self.rows}

  def of_kinds(self, kinds) -> list[dict]:
    return [f for f in self.findings if f["kind"] in kinds]

  def summary(self) -> str:
    """One line: counts of what was found, and where the first blocking finding is."""
    found = ", ".join(f"{n} {kind}" for kind, n in self.counts.items() if n) or "nothing"
    line = f"audit: {found} in {self.rows} rows"
    first = self.of_kinds(BLOCKING)[:1]
    return line + (f"; first: {describe(first[0])}" if first else "")

  def table(self, show: int = 20) -> str:
    """Counts by kind and type, then the first `show` findings."""
    types = collections.Counter((f["kind"], f["type"]) for f in self.findings)
    lines = [f"{self.rows} rows audited", f"{'kind':<16}{'count':>6}  types"]
    for kind, count in self.counts.items():
      kinds_types = ", ".join(f"{t} {n}" for (k, t), n in sorted(types.items()) if k == kind)
      lines.append(f"{kind:<16}{count:>6}  {kinds_types}".rstrip())
    if self.findings:
      lines.append(f"first {min(show, len(self.findings))} of {len(self.findings)} findings:")
      lines += [f"  {describe(f)}: {f['detail']}" for f in self.findings[:show]]
    return "\n".join(lines)


def describe(finding: dict) -> str:
  where = f"{finding['file']}:{finding['line']}"
  return f"{where} {finding['kind']}/{finding['type']} ({finding['field']})"


def enforce(report: AuditReport, mode: str):
  """Act on an audit before training or an experiment (`gating.gate` calls it).

  "off": nothing. "warn": a one-line summary on stderr, whatever was found. "error": AuditError if
  any pii, secret or contamination finding exists. "redact": the caller trains on redacted copies
  (`redact_file`), which removes pii and secrets but cannot remove contamination: AuditError if
  there is any. Duplicates and conflicts never stop a run; "error" and "redact" print the summary
  line when anything short of blocking was found.
  """
  if mode not in GATE_MODES:
    raise ValueError(f"audit mode {mode!r} is not one of {', '.join(GATE_MODES)}")
  if mode == "off":
    return
  if mode == "warn":
    print(report.summary(), file=sys.stderr)
    return
  refused = report.of_kinds(BLOCKING if mode == "error" else ("contamination",))
  if refused:
    shown = "; ".join(f"{describe(f)}: {f['detail']}" for f in refused[:5])
    more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
    raise AuditError(f"data audit ({mode}) found {len(refused)} blocking findings: {shown}{more}")
  if report.findings:
    print(report.summary(), file=sys.stderr)
