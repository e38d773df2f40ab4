"""The main job: every arm answers the same held-out questions; the answers are scored and reported.

  python -m ftjax.experiment --config configs/experiments/support.py --workdir runs/support

Reads top to bottom: config -> data (checked before any model loads) -> for each arm: the
model it needs (base, or fine-tuned per seed) and its index -> answers (cached per arm) ->
knowledge updates -> scores (evaluation/, over answers) -> cost -> results, summary, report, plots.
Every stage is cached in `WORKDIR/cache/` under a hash of what determines it (see `cache.py`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections

from ftjax.arms import registry as arm_registry
from ftjax.experiment import config as config_lib
from ftjax.experiment import data as data_lib
from ftjax.experiment import report as report_lib
from ftjax.experiment import security as security_lib
from ftjax.experiment.cache import StageCache, digest
from ftjax.experiment import summary as summary_lib
from ftjax.experiment.answering import index_stage
from ftjax.experiment.context import Context, Progress
from ftjax.experiment.stages import (answers_stage, general_mc_stage, read_answers, score_rows,
                                     update_finetuned_stage, update_rag_stage)
from ftjax.experiment.train_stages import train_stage

# ----------------------------------------------------------------------------- the run

def provenance(config) -> dict:
  from ftjax import provenance as provenance_lib
  return {"config": config.to_dict(), **provenance_lib.record()}


def run_single(config: ml_collections.ConfigDict, workdir: str | Path,
               cache: StageCache | None = None, progress: Progress | None = None) -> dict:
  """One experiment (no sweep): answers of every arm, scored, with cost and the report."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  progress = progress or Progress()
  # Before any model loads: `data.audit = error` stops here, `redact` trains on redacted copies.
  audit, config = security_lib.audit(config, workdir, progress)
  data = load_data(config)
  settings = summary_lib.scorer(config)
  ctx = Context(config, data, cache or StageCache(workdir / "cache"), progress)
  started = time.perf_counter()
  notes = data_notes(config, data)
  for note in notes.values():
    progress.say(note)
  from ftjax.models import matmul
  matmul.note_bf16_speed(config.dtype, progress.say)

  rows, skipped, latencies, stages = [], {}, {}, {}
  for arm in config.arms:
    seeds = list(range(config.num_seeds)) if arm in config_lib.TUNED_ARMS else [None]
    arm_latency, arm_rows = [], []
    for seed in seeds:
      folder, result = answers_stage(ctx, arm, seed)
      stages[f"{arm}" + ("" if seed is None else f"/seed{seed}")] = result
      if "skipped" in result:
        skipped[arm] = result["skipped"]
        break
      arm_rows += score_rows(ctx, arm, seed, read_answers(folder), settings)
      arm_latency += result["latency_s"]
    if arm in skipped:
      continue
    rows += arm_rows
    latencies[arm] = arm_latency

  updates, update_missing = {}, [k for k in ("updates", "update_train", "update_eval")
                                 if k in data.missing]
  if update_missing:
    reason = ", ".join(f"data.{k}: {data.missing[k]}" for k in update_missing)
    for arm in ("rag", "finetuned"):
      skipped[f"update_{arm}"] = reason
  else:
    if "rag" in config.arms:
      folder, result = update_rag_stage(ctx)
      rows += [{**r, "stage": "update"} for r in
               score_rows(ctx, "rag", None, read_answers(folder), settings)]
      updates["rag"] = [result]
    if "finetuned" in config.arms:
      updates["finetuned"] = []
      for seed in range(config.num_seeds):
        folder, result = update_finetuned_stage(ctx, seed)
        updates["finetuned"].append(result)
        rows += [{**r, "stage": "update"} for r in
                 score_rows(ctx, "finetuned", seed, read_answers(folder), settings)]

  for key, reason in data.missing.items():
    skipped.setdefault(f"data.{key}", reason)
  trained = {}
  for kind in ("finetuned", "raft"):  # each training recipe once, for every arm it answers
    arm_names = [a for a in config_lib.TUNED_ARMS if arm_registry.get(a).weights == kind]
    if any(a in config.arms and a not in skipped for a in arm_names):
      trained[kind] = [train_stage(ctx, kind, s)[1] for s in range(config.num_seeds)]
  general_mc = {}
  if data.general_mc:  # forgetting on multiple choice, per model the arms answer with
    for weights in ("base", "finetuned", "raft"):
      if any(arm_registry.get(a).weights == weights for a in config.arms if a not in skipped):
        seeds = [None] if weights == "base" else list(range(config.num_seeds))
        general_mc[weights] = [general_mc_stage(ctx, weights, s)[1] for s in seeds]
  index = None
  if any(a in config.arms for a in config_lib.RETRIEVAL_ARMS):
    index = index_stage(ctx)[1]
  security = security_lib.measure(ctx, audit)
  measured = {"stages": stages, "latency": latencies, "train": trained, "index": index,
              "update": updates, "skipped": skipped, "general_mc": general_mc,
              "missing_data": data.missing,
              "data": notes, **({"security": security} if security else {}),
              "cache": {"computed": ctx.cache.computed, "reused": ctx.cache.reused},
              "seconds": time.perf_counter() - started}
  model_cfg = ctx._base.config if ctx._base is not None else None
  summary = summary_lib.build(config, rows, measured, model_cfg)
  with (workdir / "results.jsonl").open("w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  (workdir / "measurements.json").write_text(json.dumps(measured, indent=1, default=str))
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
  (workdir / "experiment.json").write_text(json.dumps(
      {**provenance(config), **({"security": security} if security else {})}, indent=2,
      default=str))
  report_lib.write(workdir, config, summary)
  return summary


def load_data(config) -> data_lib.ExperimentData:
  """The data files of `config`, checked; a dev split when the tuned arms measure learning."""
  need_dev = bool(config.finetune.eval_every_steps) and any(
      a in config.arms for a in config_lib.TUNED_ARMS)
  return data_lib.load(config.data, config.knowledge_update.max_unchanged, need_dev=need_dev,
                       seed=config.seed, train_questions=config.finetune.eval_questions)


def data_notes(config, data: data_lib.ExperimentData) -> dict[str, str]:
  """What a reader must know about which questions were asked (also printed at start)."""
  notes = {}
  limit = config.data.max_eval_questions
  if limit:
    notes["sampled"] = (f"questions sampled: a fixed random {limit} of each question file "
                        f"(data.max_eval_questions = {limit}; eval asks "
                        f"{len(data.questions['eval'])})")
  if data.dev_source:
    notes["dev"] = f"dev questions: {data.dev_source}"
  if "train" in data.questions:
    notes["train"] = (f"train accuracy: {len(data.questions['train'])} training questions "
                      "(rows of data.train with an answer)")
  return notes


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """The experiment, or every point of its sweep (sharing one stage cache)."""
  config_lib.validate(config)
  workdir = Path(workdir)
  points = config_lib.sweep_points(config)
  if not config.sweep:
    return run_single(config, workdir)
  cache = StageCache(workdir / "cache")
  table = []
  for i, overrides in enumerate(points):
    label = ",".join(f"{k}={v}" for k, v in overrides.items())
    print(f"== sweep point {i + 1}/{len(points)}: {label}", flush=True)
    point_cfg = config_lib.validate(config_lib.apply_overrides(config, overrides))
    summary = run_single(point_cfg, workdir / "sweep" / f"{i:02d}-{digest(overrides)[:6]}",
                         cache=cache)
    for arm, metrics in summary["arms"].items():
      table.append({"point": label, **overrides, "arm": arm,
                    **{m: metrics.get(m) for m in summary_lib.SUMMARY_METRICS},
                    **{f"{m}_ci": metrics.get(f"{m}_ci") for m in summary_lib.RATES},
                    "n_questions": metrics.get("n_questions"), "seeds": metrics.get("seeds")})
  report_lib.write_sweep(workdir, config, points, table)
  return {"sweep": table}
