"""Re-score a finished experiment from its saved answers, without a model.

  rescore(WORKDIR)   # the command line is `python -m ftjax.rescore WORKDIR`

Reads `WORKDIR/experiment.json` (the config), `results.jsonl` (every answer with its metadata),
`measurements.json` (timings and other non-answer measurements) and the config's data files
(gold answers, accepted variants, candidates); recomputes every score, `summary.json` and
`report.md` (with plots). A change to a metric therefore never needs the arms to answer again.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from ftjax.experiment import config as config_lib
from ftjax.experiment import report as report_lib
from ftjax.experiment import summary as summary_lib
from ftjax.experiment.runner import load_data


class ScoreError(ValueError):
  """The workdir lacks a file the re-scoring needs, or a row no longer matches the data."""


def rescore(workdir: str | Path) -> dict:
  """Recompute and rewrite `summary.json` and `report.md` of `workdir`; returns the summary."""
  workdir = Path(workdir)
  for name in ("experiment.json", "results.jsonl", "measurements.json"):
    if not (workdir / name).is_file():
      raise ScoreError(f"{workdir / name}: missing; is {workdir} a finished experiment "
                       "workdir (a sweep's points are under sweep/)?")
  config = config_lib.validate(ml_collections.ConfigDict(
      json.loads((workdir / "experiment.json").read_text())["config"]))
  data = load_data(config)
  settings = summary_lib.scorer(config)
  rows = []
  with (workdir / "results.jsonl").open(encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      row = json.loads(line)
      questions = data.questions.get(row["split"], [])
      if row["index"] >= len(questions) or questions[row["index"]].input != row["question"]:
        raise ScoreError(f"{workdir / 'results.jsonl'}:{line_no}: question {row['index']} of "
                         f"split {row['split']} no longer matches the data files")
      rows.append(summary_lib.score_row(row, questions[row["index"]], settings))
  measured = json.loads((workdir / "measurements.json").read_text())
  summary = summary_lib.build(config, rows, measured)
  summary = json.loads(json.dumps(summary, default=str))
  with (workdir / "results.jsonl").open("w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
  report_lib.write(workdir, config, summary)
  return summary
