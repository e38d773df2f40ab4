"""The audit as a gate before a run: `gate(config, workdir)`, called by `ftjax.train` and by the
experiment runner, each naming the data keys it reads.

`data.audit`: "off" does nothing (unless `always`: audit for the record, never stop); "warn"
prints a summary; "error" stops on pii, secrets or contamination; "redact" stops on
contamination and returns a config whose training files (the keys of the "train" group) are
redacted copies at `redacted_path(workdir, key, source)`:

  WORKDIR/audit/process-N/KEY.redacted.SUFFIX

(every process writes its own, identical, copy: no shared-filesystem race). Eval and docs files
are audited (contamination, findings) but never replaced: they are not trained on.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ftjax.audit.checks import audit_files
from ftjax.audit.fix import redact_file
from ftjax.audit.report import AuditReport, enforce

# A training config's audited keys: data.train is trained on, data.eval checked for contamination.
TRAINING_KEYS = {"train": ("train",), "eval": ("eval",)}


@dataclasses.dataclass
class GateResult:
  config: Any  # the config to run: redacted copies in place of the training files ("redact")
  report: AuditReport | None  # None when nothing was audited
  files: dict[str, list[str]]  # group ("train", "eval", "docs") -> the paths audited
  redacted: dict[str, int]  # data key -> spans replaced in its copy ("redact")


def redacted_path(workdir: str | Path, key: str, source: str) -> Path:
  """Where the redacted copy of `config.data[key]` (the file `source`) is written."""
  import jax
  return (Path(workdir) / "audit" / f"process-{jax.process_index()}"
          / f"{key}.redacted{Path(source).suffix}")


def _audited(path: str, skip_missing: bool) -> bool:
  if not path or path.startswith("tfds:"):  # TFDS sources are not audited
    return False
  return not skip_missing or Path(path).is_file()


def gate(config, workdir: str | Path,
         keys: Mapping[str, Sequence[str]] = TRAINING_KEYS, *, skip_missing: bool = False,
         always: bool = False) -> GateResult:
  """Audits the files `config.data[key]` for each group's keys ("train", "eval", "docs"), then
  applies `config.data.audit` (see the module's docstring). `skip_missing`: a path that is not a
  file is an absent optional file, not an error. Raises AuditError when the gate refuses the
  data, AuditInputError when a file cannot be read."""
  mode = config.data.audit
  if mode == "off" and not always:
    return GateResult(config, None, {}, {})
  files = {group: [config.data[key] for key in group_keys
                   if _audited(config.data[key], skip_missing)]
           for group, group_keys in keys.items()}
  if not any(files.values()):
    print(f"data.audit={mode}: nothing to audit (tfds sources are not audited)", file=sys.stderr)
    return GateResult(config, None, files, {})
  report = audit_files(files.get("train", []), files.get("eval", []), files.get("docs", []))
  enforce(report, mode)
  if mode != "redact":
    return GateResult(config, report, files, {})
  import ml_collections
  config = ml_collections.ConfigDict(config.to_dict())
  redacted = {}
  for key in keys.get("train", ()):
    source = config.data[key]
    if source not in files["train"]:
      continue
    target = redacted_path(workdir, key, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    redacted[key] = redact_file(source, str(target), report.findings)
    print(f"data.audit=redact: {source} -> {target} ({redacted[key]} spans replaced)",
          file=sys.stderr)
    config.data[key] = str(target)
  return GateResult(config, report, files, redacted)
