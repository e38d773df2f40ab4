"""What each arm costs: up front (training, indexing) and per question, and when fine-tuning pays.

FLOPs are counted, not measured: training as `ftjax.training.metrics.flops_per_token` (6N, or
4N for LoRA, plus attention) times the tokens trained; inference as 2N per token read or
generated plus attention over the context, where tokens read from a prefilled cache (CAG) cost
attention only. Seconds are measured on this machine: training and indexing as a stage's wall time including
compilation; answering as the median full batch's time per question (compilation excluded).
The break-even number of questions is the upfront difference divided by the per-question saving:
after that many questions the fine-tuned model's shorter prompts have paid for its training.
"""

from __future__ import annotations

from typing import Any

from ftjax.experiment import config as config_lib
from ftjax.experiment import stages as stages_lib
# The FLOP counts and the break-even live with the planner, which checks them against runs.
from ftjax.planning.estimate import break_even, inference_flops

__all__ = ["break_even", "compute", "inference_flops"]


def compute(ctx, arms: dict, stages: dict) -> dict[str, Any]:
  config = ctx.config
  price = config.cost.price_per_device_hour
  model_cfg = None
  if ctx._base is not None:
    model_cfg = ctx._base.config
  else:  # the config alone, without loading weights (a rerun from cache)
    from ftjax.checkpoints import resolve
    from ftjax.checkpoints.hf_import import read_hf_config
    from ftjax.models.config import from_hf_config
    model_cfg = from_hf_config(read_hf_config(resolve(config.model)))

  out: dict[str, Any] = {"device": config.cost.device, "price_per_device_hour": price,
                         "currency": config.cost.currency, "train": {}, "inference": {},
                         "break_even": {}}
  for kind in ("finetuned", "raft"):
    runs = [ctx.cache.folder(f"train-{kind}-s{s}", stages_lib.train_key(ctx, kind, s))
            for s in range(config.num_seeds)]
    results = [_done(folder) for folder in runs]
    results = [r for r in results if r]
    if results:
      n = len(results)
      out["train"][kind] = {
          "flops": sum(r["flops"] for r in results) / n,
          "seconds": sum(r["seconds"] for r in results) / n,
          "step_seconds": sum(r["step_seconds"] for r in results) / n,
          "tokens": sum(r["tokens"] for r in results) / n,
          "steps": results[0]["steps"], "examples": results[0]["examples"],
          "trainable_params": results[0]["trainable_params"],
          "peak_rss_gb": max(r["peak_rss_gb"] for r in results),
          "money": sum(r["seconds"] for r in results) / n / 3600 * price}
  index = _done(ctx.cache.folder("index", stages_lib.index_key(ctx)))
  if index:
    out["index"] = {"seconds": index["seconds"], "chunks": index["chunks"],
                    "documents": index["documents"], "peak_rss_gb": index["peak_rss_gb"],
                    "money": index["seconds"] / 3600 * price}

  for arm, metrics in arms.items():
    per_seed = [v for k, v in stages.items() if k.split("/")[0] == arm and "seconds" in v]
    batches = sorted(t for v in per_seed for t in v.get("seconds_per_question_by_batch", []))
    if batches:  # the median batch: throughput without the compilations
      seconds = batches[len(batches) // 2]
    else:
      seconds = sum(v["seconds"] for v in per_seed) / max(sum(v["questions"] for v in per_seed), 1)
    prompt = metrics["prompt_tokens"] or 0.0
    new = metrics["new_tokens"] or 0.0
    cached = metrics.get("cached_tokens") or 0.0
    out["inference"][arm] = {
        "prompt_tokens": prompt, "new_tokens": new,
        "flops_per_question": inference_flops(model_cfg, prompt, new, cached),
        "seconds_per_question": seconds, "money_per_question": seconds / 3600 * price,
        "latency_p50_s": metrics["latency_s"]["p50"]}

  def upfront(arm):
    train = out["train"].get("raft" if arm == "raft" else "finetuned", {})
    idx = out.get("index", {})
    flops = train.get("flops", 0.0) if arm in config_lib.TUNED_ARMS else 0.0
    seconds = train.get("seconds", 0.0) if arm in config_lib.TUNED_ARMS else 0.0
    if arm in config_lib.RETRIEVAL_ARMS:
      seconds += idx.get("seconds", 0.0)
    if arm == "cag":  # prefilling the corpus once
      cached = arms["cag"].get("cached_tokens") or 0.0
      flops += inference_flops(model_cfg, cached, 0)
    return flops, seconds

  for tuned, other in (("finetuned", "rag"), ("finetuned", "prompted"), ("finetuned", "cag"),
                       ("finetuned_rag", "rag")):
    if tuned in out["inference"] and other in out["inference"]:
      (tf, ts), (of, os_) = upfront(tuned), upfront(other)
      t, o = out["inference"][tuned], out["inference"][other]
      by_seconds = break_even(ts, t["seconds_per_question"], os_, o["seconds_per_question"])
      out["break_even"][f"{tuned}_vs_{other}"] = {
          "questions_flops": break_even(tf, t["flops_per_question"], of, o["flops_per_question"]),
          "questions_seconds": by_seconds,
          "questions_money": by_seconds,  # one price per device-hour: money follows seconds
          "upfront_flops": [tf, of], "upfront_seconds": [ts, os_]}
  out["peak_rss_gb"] = max([v.get("peak_rss_gb", 0.0) for v in stages.values()] +
                           [out.get("index", {}).get("peak_rss_gb", 0.0)])
  return out


def _done(folder) -> dict | None:
  import json
  done = folder / "done.json"
  return json.loads(done.read_text())["result"] if done.is_file() else None
