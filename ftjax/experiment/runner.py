"""The main job: every arm answers the same held-out questions; the answers are scored and reported.

  python -m ftjax.experiment --config configs/experiments/support.py --workdir runs/support

Reads top to bottom: config -> data (checked before any model loads) -> for each arm: the
model it needs (base, or fine-tuned per seed) and its index -> answers (cached per arm) ->
knowledge updates -> scores (evaluation/, over answers) -> cost -> results, summary, report, plots.
Every stage is cached in `WORKDIR/cache/` under a hash of what determines it (see `cache.py`).
"""

from __future__ import annotations
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import ml_collections

from ftjax.evaluation import qa as scoring
from ftjax.experiment import config as config_lib
from ftjax.experiment import cost as cost_lib
from ftjax.experiment import data as data_lib
from ftjax.experiment import report as report_lib
from ftjax.experiment import security as security_lib
from ftjax.experiment.cache import StageCache, digest
from ftjax.experiment.stages import (Context, Progress, answers_stage, read_answers, score_rows,
                                     train_key, update_finetuned_stage, update_rag_stage)

SUMMARY_METRICS = ("accuracy", "f1", "style_rate", "abstain_rate", "hallucination_rate",
                   "general_accuracy", "prompt_tokens", "new_tokens", "citation_accuracy")


def summarize_seeds(rows: list[dict], seeds: list) -> dict:
  """Per-metric mean over seeds (the value), with std and n alongside."""
  per_seed = [scoring.summarize([r for r in rows if r["seed"] == s]) for s in seeds]
  out, std = {}, {}
  for metric in SUMMARY_METRICS:
    stats = scoring.mean_std([p[metric] for p in per_seed])
    out[metric], std[metric] = stats["mean"], stats["std"]
  out["n_questions"] = per_seed[0]["n_questions"] if per_seed else 0
  out["seeds"] = len(seeds)
  out["std"] = std
  return out


# ----------------------------------------------------------------------------- the run

def provenance(config) -> dict:
  from ftjax.train import _git_commit, _versions
  import jax
  return {"config": config.to_dict(), "versions": _versions(), "git_commit": _git_commit(),
          "machine": {"platform": platform.platform(), "python": platform.python_version(),
                      "processor": platform.processor() or platform.machine(),
                      "cpu_count": __import__("os").cpu_count(),
                      "devices": [str(d) for d in jax.devices()]},
          "command": " ".join(sys.argv)}


def run_single(config: ml_collections.ConfigDict, workdir: str | Path,
               cache: StageCache | None = None, progress: Progress | None = None) -> dict:
  """One experiment (no sweep): answers of every arm, scored, with cost and the report."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  progress = progress or Progress()
  # Before any model loads: `data.audit = error` stops here, `redact` trains on redacted copies.
  audit, config = security_lib.audit(config, workdir, progress)
  data = data_lib.load(config.data, config.knowledge_update.max_unchanged)
  style = scoring.compile_style(config.style.pattern) if config.style.pattern else None
  abstain = tuple(config.abstain_patterns) or None
  ctx = Context(config, data, cache or StageCache(workdir / "cache"), progress)
  started = time.perf_counter()

  rows, arms, skipped, latencies, stages = [], {}, {}, {}, {}
  for arm in config.arms:
    seeds = list(range(config.num_seeds)) if arm in config_lib.TUNED_ARMS else [None]
    arm_latency, arm_rows = [], []
    for seed in seeds:
      folder, result = answers_stage(ctx, arm, seed)
      stages[f"{arm}" + ("" if seed is None else f"/seed{seed}")] = result
      if "skipped" in result:
        skipped[arm] = result["skipped"]
        break
      arm_rows += score_rows(ctx, arm, seed, read_answers(folder), style, abstain)
      arm_latency += result["latency_s"]
    if arm in skipped:
      continue
    rows += arm_rows
    arms[arm] = summarize_seeds(arm_rows, seeds)
    cached = [r["cached_tokens"] for r in arm_rows if r["split"] == "eval"]
    arms[arm]["cached_tokens"] = sum(cached) / len(cached) if cached else 0
    arms[arm]["latency_s"] = {"p50": scoring.percentile(arm_latency, 50),
                              "p95": scoring.percentile(arm_latency, 95)}
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
      urows = score_rows(ctx, "rag", None, read_answers(folder), style, abstain)
      updates["rag"] = _update_summary(result, urows)
    if "finetuned" in config.arms:
      results, urows = [], []
      for seed in range(config.num_seeds):
        folder, result = update_finetuned_stage(ctx, seed)
        results.append(result)
        urows += score_rows(ctx, "finetuned", seed, read_answers(folder), style, abstain)
      updates["finetuned"] = _update_summary(results, urows)

  for key, reason in data.missing.items():
    skipped.setdefault(f"data.{key}", reason)
  cost = cost_lib.compute(ctx, arms, stages)
  security = security_lib.measure(ctx, audit)
  summary = {"arms": arms, "update": updates, "cost": cost, "skipped": skipped,
             **({"security": security} if security else {}),
             "missing_data": data.missing, "stages": stages,
             "cache": {"computed": ctx.cache.computed, "reused": ctx.cache.reused},
             "seconds": time.perf_counter() - started}
  with (workdir / "results.jsonl").open("w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
  (workdir / "experiment.json").write_text(json.dumps(
      {**provenance(config), **({"security": security} if security else {})}, indent=2,
      default=str))
  histories = {}
  for kind in ("finetuned", "raft"):
    for seed in range(config.num_seeds):
      folder = ctx.cache.folder(f"train-{kind}-s{seed}", train_key(ctx, kind, seed))
      if (folder / "history.json").is_file():
        histories[f"{kind} seed {seed}"] = json.loads((folder / "history.json").read_text())
  report_lib.write(workdir, config, summary, histories)
  return summary


def _update_summary(results, rows) -> dict:
  results = results if isinstance(results, list) else [results]
  seeds = sorted({r["seed"] for r in rows}, key=lambda s: -1 if s is None else s)
  per_seed = [scoring.summarize([r for r in rows if r["seed"] == s]) for s in seeds]
  out = {"method": results[0]["method"],
         "seconds": scoring.mean_std([r["seconds"] for r in results])["mean"],
         "update_accuracy": scoring.mean_std([p["update_accuracy"] for p in per_seed])["mean"],
         "unchanged_accuracy": scoring.mean_std([p["unchanged_accuracy"]
                                                 for p in per_seed])["mean"],
         "style_rate": scoring.mean_std([r["style"] for r in rows])["mean"],
         "seeds": len(seeds)}
  if "steps" in results[0]:
    out["steps"] = results[0]["steps"]
    out["flops"] = scoring.mean_std([r["flops"] for r in results])["mean"]
  return out


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
                    **{m: metrics.get(m) for m in SUMMARY_METRICS}})
  report_lib.write_sweep(workdir, config, points, table)
  return {"sweep": table}
