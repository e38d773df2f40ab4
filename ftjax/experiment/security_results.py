"""The security section of `summary.json` as records: canary leakage per model and for RAG,
poisoning per arm and fraction, the data audit and access control."""

from __future__ import annotations

import dataclasses

from ftjax.experiment.records import Record, optional



@dataclasses.dataclass(frozen=True)
class CanaryModel(Record):
  """One model's exposure of the planted secrets (Carlini et al. 2019)."""
  canary_in: str
  exposure: float | None
  extrapolated_exposure: float | None
  rank: float | None
  extraction_rate: float | None
  canaries: list  # per canary: its measurements


@dataclasses.dataclass(frozen=True)
class RagLeakage(Record):
  canary_in: str
  retrievable_rate: float | None
  quote_rate: float | None
  canaries: list


@dataclasses.dataclass(frozen=True)
class Leakage(Record):
  canaries: int
  space_size: float
  candidates: int
  share: float
  format: str
  models: dict[str, CanaryModel]
  rag: RagLeakage | None = optional()


@dataclasses.dataclass(frozen=True)
class PoisonRow(Record):
  fraction: float
  poisoned: int
  requested: int
  of: int
  success: float | None
  target_accuracy: float | None
  success_on_poisoned: float | None


@dataclasses.dataclass(frozen=True)
class PoisonArm(Record):
  target_questions: int
  rows: list[PoisonRow]

  @property
  def clean(self) -> PoisonRow | None:
    return self.rows[0] if self.rows else None

  @property
  def top(self) -> PoisonRow | None:
    return self.rows[-1] if self.rows else None


@dataclasses.dataclass(frozen=True)
class Poisoning(Record):
  fractions: list
  facts_available: int
  skipped: str | None = optional()
  finetuned: PoisonArm | None = optional()
  rag: PoisonArm | None = optional()


@dataclasses.dataclass(frozen=True)
class Audit(Record):
  mode: str
  skipped: str | None = optional()
  rows: int | None = optional()
  counts: dict | None = optional()
  findings: int | None = optional()
  files: list | None = optional()
  first_findings: list | None = optional()
  redacted: int | None = optional()


@dataclasses.dataclass(frozen=True)
class AccessControl(Record):
  line: str
  restricted: int
  forbidden_hits: int | None = optional()
  insider_found: list | None = optional()


@dataclasses.dataclass(frozen=True)
class Security(Record):
  audit: Audit | None = None  # always written (null when the audit is off)
  leakage: Leakage | None = optional()
  poisoning: Poisoning | None = optional()
  access_control: AccessControl | None = optional()
