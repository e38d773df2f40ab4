"""`summary.json` as a pure function of the scored answers and the measurements of a run.

The runner measures (answers, timings, training curves, security runs) and saves two files:
`results.jsonl`, one row per arm x seed x question, and `measurements.json`, everything that is
not an answer (stage results, latencies, the cost inputs). Everything in `summary.json` derives
from those two and the data files, so `python -m ftjax.rescore WORKDIR` recomputes it
(and the report) after a metric changes, without a model.

Uncertainty: every rate carries a 95% Wilson interval (`{metric}_ci`) and its denominator
(`{metric}_n`); every pair of arms is compared per question (`comparisons`: the paired bootstrap
interval of the difference and, for 0/1 outcomes of single-seed arms, the exact McNemar p). A tuned
arm with several seeds enters a comparison with its per-question mean over seeds.
"""

from __future__ import annotations

from ftjax.evaluation import qa as scoring
from ftjax.evaluation import stats
from ftjax.arms import registry as arm_registry
from ftjax.experiment import config as config_lib
from ftjax.experiment.results import MEANS, RATES

# Rates shown per arm (each has `_ci` and `_n` in the summary when it applies) and means: their
# one home is the typed record of an arm's results.
SUMMARY_METRICS = RATES + MEANS
# metric -> (split, per-row value) for paired comparisons between arms.
PAIRED = {
    "accuracy": ("eval", lambda r: r["correct"]),
    "em": ("eval", lambda r: r.get("em")),
    "style_rate": ("eval", lambda r: r.get("style")),
    "refusal_rate": ("eval", lambda r: r.get("abstained")),
    "hallucination_rate": ("unanswerable", lambda r: not r.get("abstained")),
    "general_accuracy": ("general", lambda r: r["correct"]),
}
ANSWER_SPLITS = ("eval", "unanswerable", "general")


def scorer(config) -> dict:
  """The scoring settings of a config: style and answer patterns, decline patterns."""
  style = scoring.compile_style(config.style.pattern) if config.style.pattern else None
  pattern = config.scoring.answer_pattern
  return {"style": style, "abstain_patterns": tuple(config.abstain_patterns) or None,
          "answer_pattern": scoring.compile_answer_pattern(pattern) if pattern else None}


def score_row(row: dict, question, settings: dict) -> dict:
  """`row` (an answer with its metadata) with every score of `question`'s gold recomputed."""
  scores = scoring.score_answer(row["answer"], question.answer, answers=question.answers,
                                candidates=question.candidates, style=settings["style"],
                                abstain_patterns=settings["abstain_patterns"],
                                answer_pattern=settings["answer_pattern"])
  return {**row, "gold": question.answer, **scores}


def _rate_ci(rows: list[dict], key: str) -> tuple[list | None, int]:
  values = [bool(r[key]) for r in rows if r.get(key) is not None]
  lo, hi = stats.wilson(sum(values), len(values))
  return (None if lo is None else [lo, hi]), len(values)


def _arm(rows: list[dict], seeds: list) -> dict:
  """Per-metric mean over seeds, std across seeds, and intervals over the pooled questions."""
  answer_rows = [r for r in rows if r["split"] in scoring.SPLITS]
  per_seed = [scoring.summarize([r for r in answer_rows if r["seed"] == s]) for s in seeds]
  train_rows = [r for r in rows if r["split"] == "train"]
  out, std = {}, {}
  for metric in SUMMARY_METRICS:
    if metric == "train_accuracy":
      values = [scoring.mean_std(r["correct"] for r in train_rows if r["seed"] == s)["mean"]
                for s in seeds]
    else:
      values = [p.get(metric) for p in per_seed]
    stat = scoring.mean_std(values)
    out[metric], std[metric] = stat["mean"], stat["std"]
  if len(seeds) == 1:  # the summarizer's own intervals (Wilson over the questions)
    for metric in RATES:
      if f"{metric}_ci" in per_seed[0]:
        out[f"{metric}_ci"], out[f"{metric}_n"] = per_seed[0][f"{metric}_ci"], \
            per_seed[0].get(f"{metric}_n")
  else:  # pooled over seeds: an interval for the mean rate (questions x seeds)
    pooled = scoring.summarize(answer_rows)
    for metric in RATES:
      if f"{metric}_ci" in pooled:
        out[f"{metric}_ci"], out[f"{metric}_n"] = pooled[f"{metric}_ci"], pooled.get(f"{metric}_n")
  if train_rows:
    out["train_accuracy_ci"], out["train_accuracy_n"] = _rate_ci(train_rows, "correct")
  out["n_questions"] = per_seed[0]["n_questions"] if per_seed else 0
  out["seeds"] = len(seeds)
  out["std"] = std
  cached = [r.get("cached_tokens") or 0 for r in answer_rows if r["split"] == "eval"]
  out["cached_tokens"] = sum(cached) / len(cached) if cached else 0
  return out


def _per_question(rows: list[dict], split: str, value) -> dict[int, float]:
  """question index -> the arm's value on it, averaged over seeds."""
  sums: dict[int, list] = {}
  for r in rows:
    if r["split"] == split:
      v = value(r)
      if v is not None:
        sums.setdefault(r["index"], []).append(float(v))
  return {i: sum(v) / len(v) for i, v in sums.items()}


def comparisons(rows_by_arm: dict[str, list[dict]], seed: int = 0) -> list[dict]:
  """Every pair of arms on every paired metric: {a, b, metric, diff (a - b), ci, p, n,
  verdict}; `verdict` is "higher"/"lower" (a vs b) only when the interval excludes zero."""
  out = []
  arms = list(rows_by_arm)
  for metric, (split, value) in PAIRED.items():
    per_arm = {arm: _per_question(rows_by_arm[arm], split, value) for arm in arms}
    for i, a in enumerate(arms):
      for b in arms[i + 1:]:
        common = sorted(set(per_arm[a]) & set(per_arm[b]))
        if not common:
          continue
        va = [per_arm[a][q] for q in common]
        vb = [per_arm[b][q] for q in common]
        result = stats.compare(va, vb, seed=seed)
        out.append({"a": a, "b": b, "metric": metric, "diff": result["diff"],
                    "ci": result["ci"], "p": result.get("p"), "n": len(common),
                    "verdict": stats.verdict(result["diff"], result["ci"])})
  return out


def _update(results: list[dict], rows: list[dict]) -> dict:
  seeds = sorted({r["seed"] for r in rows}, key=lambda s: -1 if s is None else s)
  per_seed = [scoring.summarize([r for r in rows if r["seed"] == s]) for s in seeds]
  out = {"method": results[0]["method"],
         "seconds": scoring.mean_std([r["seconds"] for r in results])["mean"],
         "style_rate": scoring.mean_std([r.get("style") for r in rows])["mean"],
         "seeds": len(seeds)}
  for key, split in (("update_accuracy", "update_eval"), ("unchanged_accuracy", "unchanged")):
    out[key] = scoring.mean_std([p[key] for p in per_seed])["mean"]
    out[f"{key}_ci"], out[f"{key}_n"] = _rate_ci([r for r in rows if r["split"] == split],
                                                 "correct")
  if "steps" in results[0]:
    out["steps"] = results[0]["steps"]
    out["flops"] = scoring.mean_std([r["flops"] for r in results])["mean"]
  return out


def budget(train_results: list[dict], arm_summary: dict, threshold: float) -> dict:
  """What a tuned arm's verdict rests on: steps, epochs, the selected step, train accuracy, and
  whether it learned its training data (train accuracy >= `threshold`)."""
  first = train_results[0]
  train_acc = arm_summary.get("train_accuracy")
  return {"steps": first.get("steps"), "epochs": first.get("epochs"),
          "selected_step": first.get("selected_step"), "select_reason": first.get("select_reason"),
          "examples": first.get("examples"), "train_accuracy": train_acc,
          "train_accuracy_ci": arm_summary.get("train_accuracy_ci"),
          "learned": None if train_acc is None else train_acc >= threshold,
          "learned_threshold": threshold,
          "learning_curves": [r.get("learning_curve") or [] for r in train_results]}


def latency_summary(measures: list) -> dict:
  """p50/p95 of the seconds per question answered alone and of the time to first token, and the
  median decode tokens/s, each with n (an older cache holds plain seconds)."""
  rows = [m if isinstance(m, dict) else {"seconds": m} for m in measures]

  def spread(key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return {"p50": scoring.percentile(values, 50), "p95": scoring.percentile(values, 95),
            "n": len(values)}
  decode = [r["decode_tokens_per_s"] for r in rows if r.get("decode_tokens_per_s")]
  return {"latency_s": spread("seconds"), "ttft_s": spread("ttft_s"),
          "decode_tokens_per_s": scoring.percentile(decode, 50) if decode else None}


def general_mc(measured: dict, seed: int = 0) -> dict:
  """Multiple-choice general knowledge per model (`base`, `finetuned`, `raft`): accuracy and
  acc_norm with Wilson intervals and n, and each tuned model against the base, paired over
  questions (and averaged over seeds): the forgetting."""
  out = {}
  per_question = {}
  for weights, results in (measured.get("general_mc") or {}).items():
    rows = [r for result in results for r in result["rows"]]
    if not rows:
      continue
    entry = {"n": len({r["index"] for r in rows}), "seeds": len(results)}
    for key, name in (("correct", "accuracy"), ("correct_norm", "acc_norm")):
      k = sum(r[key] for r in rows)
      entry[name] = k / len(rows)
      entry[f"{name}_ci"] = list(stats.wilson(k, len(rows)))
    out[weights] = entry
    sums: dict[int, list] = {}
    for r in rows:
      sums.setdefault(r["index"], []).append(r["correct"])
    per_question[weights] = {i: sum(v) / len(v) for i, v in sums.items()}
  for weights in ("finetuned", "raft"):
    if weights in per_question and "base" in per_question:
      common = sorted(set(per_question[weights]) & set(per_question["base"]))
      result = stats.compare([per_question[weights][i] for i in common],
                             [per_question["base"][i] for i in common], seed=seed)
      out[weights]["vs_base"] = {"diff": result["diff"], "ci": result["ci"],
                                 "p": result.get("p"), "n": len(common),
                                 "verdict": stats.verdict(result["diff"], result["ci"])}
  return out


def build(config, rows: list[dict], measured: dict, model_cfg=None) -> dict:
  """The summary of one run (no sweep): per-arm metrics with intervals, paired comparisons, the
  tuned arms' budgets, knowledge updates, cost and what was skipped."""
  from ftjax.experiment import cost as cost_lib
  answer_rows = [r for r in rows if r.get("stage") != "update"]
  arms, by_arm = {}, {}
  for arm in config.arms:
    arm_rows = [r for r in answer_rows if r["arm"] == arm]
    if not arm_rows:
      continue
    seeds = sorted({r["seed"] for r in arm_rows}, key=lambda s: -1 if s is None else s)
    arms[arm] = _arm(arm_rows, seeds)
    arms[arm].update(latency_summary(measured["latency"].get(arm, [])))
    if (measured["stages"].get(arm) or {}).get("cag"):
      arms[arm]["cag"] = measured["stages"][arm]["cag"]
    by_arm[arm] = [r for r in arm_rows if r["split"] in ANSWER_SPLITS]
  budgets = {}
  for arm in config_lib.TUNED_ARMS:
    kind = arm_registry.get(arm).weights
    if arm in arms and measured["train"].get(kind):
      budgets[arm] = budget(measured["train"][kind], arms[arm],
                            config.finetune.learned_threshold)
      arms[arm]["budget"] = budgets[arm]
  updates = {}
  for arm, results in measured.get("update", {}).items():
    urows = [r for r in rows if r.get("stage") == "update" and r["arm"] == arm]
    updates[arm] = _update(results, urows)
  cost = cost_lib.compute(config, arms, measured["stages"], measured["train"],
                          measured.get("index"), model_cfg)
  summary = {"arms": arms, "comparisons": comparisons(by_arm, seed=config.seed),
             "update": updates, "cost": cost, "skipped": measured["skipped"],
             **({"general_mc": general_mc(measured, seed=config.seed)}
                if measured.get("general_mc") else {}),
             **({"security": measured["security"]} if measured.get("security") else {}),
             "data": measured.get("data", {}), "missing_data": measured["missing_data"],
             "stages": measured["stages"], "cache": measured.get("cache", {}),
             "seconds": measured.get("seconds")}
  return summary


def title(config) -> str:
  """The report's title names the data, not the config (a config reused on other files)."""
  from pathlib import Path
  folder = Path(config.data.eval).resolve().parent.name or Path(config.data.eval).stem
  return f"{folder} ({config.name} config)" if config.name and config.name != folder \
      else folder

