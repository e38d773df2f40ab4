"""Data audit: personal data, secrets, duplicates, conflicting labels and train/eval contamination
in training, eval and docs files, with a gate the trainer and the experiment runner call.

  report = audit_files(train_files, eval_files=(), docs_files=())
  enforce(report, mode)           # "off" | "warn" | "error" | "redact"
  redact_file(src, dst)           # a copy with [EMAIL], [PHONE], ..., [SECRET] placeholders
  result = gate(config, workdir)  # all of it before a run, by `data.audit`; redacted copies at
                                  # WORKDIR/audit/process-N/KEY.redacted.jsonl

The command line is `python -m ftjax.audit FILE... [--eval FILE] [--docs FILE] [--json OUT]`.
"""

from ftjax.audit.checks import audit_files, audit_rows
from ftjax.audit.fix import drop_rows, redact_file
from ftjax.audit.gating import GateResult, gate, redacted_path
from ftjax.audit.report import BLOCKING, GATE_MODES, KINDS, AuditError, AuditReport, enforce
from ftjax.audit.rows import AuditInputError

__all__ = ["AuditError", "AuditInputError", "AuditReport", "BLOCKING", "GATE_MODES", "KINDS",
           "GateResult", "audit_files", "audit_rows", "drop_rows", "enforce", "gate", "redact_file",
           "redacted_path"]
