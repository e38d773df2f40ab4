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

from ftjax.arms import registry as arm_registry
from ftjax.experiment import config as config_lib
# The FLOP counts and the break-even live with the planner, which checks them against runs.
from ftjax.planning.estimate import break_even, inference_flops

__all__ = ["break_even", "compute", "inference_flops"]


def compute(config, arms: dict, stages: dict, trained: dict[str, list[dict]],
            index: dict | None, model_cfg=None) -> dict[str, Any]:
  """Cost per arm from the measurements: `trained` (kind -> the training stage's result per
  seed), `index` (the index stage's result), `stages` (answer stages' timings) and the arms'
  summaries (prompt and new tokens, accuracy)."""
  price = config.cost.price_per_device_hour
  if model_cfg is None:  # from the model's config file alone, no weights loaded
    from ftjax.checkpoints import model_config
    model_cfg = model_config(config.model)
  out: dict[str, Any] = {"device": config.cost.device, "price_per_device_hour": price,
                         "currency": config.cost.currency, "train": {}, "inference": {},
                         "break_even": {}}
  for kind, results in trained.items():
    if results:
      n = len(results)
      # Training time is the steady step time x steps; loading, compilation and the dev
      # evaluations are reported beside it, not in it.
      seconds = sum(r.get("train_seconds", r["seconds"]) for r in results) / n
      out["train"][kind] = {
          "flops": sum(r["flops"] for r in results) / n,
          "seconds": seconds,
          "wall_seconds": sum(r["seconds"] for r in results) / n,
          "overhead_seconds": sum(r.get("overhead_seconds", 0.0) for r in results) / n,
          "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in results) / n,
          "step_seconds": sum(r["step_seconds"] for r in results) / n,
          "tokens": sum(r["tokens"] for r in results) / n,
          "steps": results[0]["steps"], "examples": results[0]["examples"],
          "trainable_params": results[0]["trainable_params"],
          "peak_rss_gb": max(r["peak_rss_gb"] for r in results),
          "money": seconds / 3600 * price}
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
    accuracy = metrics.get("accuracy")
    out["inference"][arm] = {
        "prompt_tokens": prompt, "new_tokens": new,
        "flops_per_question": inference_flops(model_cfg, prompt, new, cached),
        "seconds_per_question": seconds, "money_per_question": seconds / 3600 * price,
        # what one *correct* answer costs: an arm that is rarely right is not cheap
        "seconds_per_correct": seconds / accuracy if accuracy else None,
        "accuracy": accuracy, "accuracy_ci": metrics.get("accuracy_ci"),
        "latency_p50_s": (metrics.get("latency_s") or {}).get("p50")}

  def upfront(arm):
    spec = arm_registry.get(arm)
    train = out["train"].get(spec.weights, {}) if spec.tuned else {}
    idx = out.get("index", {})
    flops = train.get("flops", 0.0) if arm in config_lib.TUNED_ARMS else 0.0
    seconds = train.get("seconds", 0.0) if arm in config_lib.TUNED_ARMS else 0.0
    if arm in config_lib.RETRIEVAL_ARMS:
      seconds += idx.get("seconds", 0.0)
    if spec.passages == "corpus":  # prefilling the corpus once
      cached = arms[arm].get("cached_tokens") or 0.0
      flops += inference_flops(model_cfg, cached, 0)
    return flops, seconds

  # Every tuned arm against every untuned one, with both accuracies beside the break-even: a
  # break-even only means something when the tuned arm is at least as accurate.
  tuned_arms = [a for a in config_lib.TUNED_ARMS if a in out["inference"]]
  untuned = [a for a in out["inference"] if a not in config_lib.TUNED_ARMS]
  for tuned in tuned_arms:
    for other in untuned:
      (tf, ts), (of, os_) = upfront(tuned), upfront(other)
      t, o = out["inference"][tuned], out["inference"][other]
      by_seconds = break_even(ts, t["seconds_per_question"], os_, o["seconds_per_question"])
      out["break_even"][f"{tuned}_vs_{other}"] = {
          "questions_flops": break_even(tf, t["flops_per_question"], of, o["flops_per_question"]),
          "questions_seconds": by_seconds,
          "questions_money": by_seconds,  # one price per device-hour: money follows seconds
          "upfront_flops": [tf, of], "upfront_seconds": [ts, os_],
          "accuracy": [t["accuracy"], o["accuracy"]],
          "accuracy_ci": [t["accuracy_ci"], o["accuracy_ci"]]}
  out["peak_rss_gb"] = max([v.get("peak_rss_gb", 0.0) for v in stages.values()] +
                           [out.get("index", {}).get("peak_rss_gb", 0.0)])
  return out


