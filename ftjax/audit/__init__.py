"""Data audit: personal data, secrets, duplicates, conflicting labels and train/eval contamination
in training, eval and docs files, with a gate the trainer and the experiment runner call.

  report = audit_files(train_files, eval_files=(), docs_files=())
  gate(report, mode)              # "off" | "warn" | "error" | "redact"
  redact_file(src, dst)           # a copy with [EMAIL], [PHONE], ..., [SECRET] placeholders

The command line is `python -m ftjax.audit FILE... [--eval FILE] [--docs FILE] [--json OUT]`.
"""

from ftjax.audit.checks import audit_files, audit_rows
from ftjax.audit.fix import drop_rows, redact_file
from ftjax.audit.report import BLOCKING, GATE_MODES, KINDS, AuditError, AuditReport, gate
from ftjax.audit.rows import AuditInputError

__all__ = ["AuditError", "AuditInputError", "AuditReport", "BLOCKING", "GATE_MODES", "KINDS",
           "audit_files", "audit_rows", "drop_rows", "gate", "redact_file"]
