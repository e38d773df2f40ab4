"""What does scoring a canary's candidates after one shared prompt save? (`continuation_logprobs`)

The security measurement ranks each planted secret among `security.canary_candidates` random
ones by log p(secret | attacker's prompt). On the default experiment's canaries and base model
(configs/experiments/support.py), this scores the same candidates two ways, each after a
compiling call, alternated: every row the whole prompt + candidate (`continuation_scores`, how it
was done before) and the prompt prefilled once as a shared prefix with each row only its
candidate (`continuation_logprobs`). Prints both times, their ratio, the largest difference of a
log-probability (between the two, and of each from an fp32 reference) and the canaries' ranks.

  python experiments/bench/canary_scoring_bench.py --out experiments/bench/results/canary_scoring_cpu.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default=str(ROOT / "configs" / "experiments" / "support.py"))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  from runner_decode_bench import load_runner
  from ftjax.evaluation import security as metrics
  from ftjax.experiment.security import _canary_prompt_ids, canary_candidates
  from ftjax.experiment.security_planting import canaries
  from ftjax.generation.scoring import continuation_logprobs, continuation_scores
  from ftjax.provenance import record

  config, ctx, model, _, _ = load_runner(args.config, prefix="canary_scoring_")
  tokenizer = model.tokenizer
  cases = []  # (prompt ids, [secret, *candidates] ids)
  for i, canary in enumerate(canaries(config)):
    candidates = canary_candidates(config, i, canary)
    cases.append((_canary_prompt_ids(ctx, tokenizer, canary),
                  [tokenizer.encode(f" {s}", add_special_tokens=False)
                   for s in [canary.secret, *candidates]]))

  def whole(model, prompt, continuations):
    return [s for s, _ in continuation_scores(model, [(prompt, c) for c in continuations])]
  modes = {"whole rows": whole, "shared prompt": continuation_logprobs}
  scores, seconds = {}, {m: [] for m in modes}

  def run(mode):
    started = time.perf_counter()
    scores[mode] = [modes[mode](model, p, c) for p, c in cases]
    return time.perf_counter() - started
  for mode in modes:
    run(mode)  # compiles
  for _ in range(args.repeats):
    for mode in modes:
      seconds[mode].append(run(mode))
  a, b = scores["whole rows"], scores["shared prompt"]
  import ftjax  # the fp32 reference: how far each bf16 way lands from it
  reference = ftjax.load(config.model, dtype="float32")
  ref = [whole(reference, p, c) for p, c in cases]

  def off(v):
    return max(abs(x - y) for s, t in zip(v, ref) for x, y in zip(s, t))
  row = {"canaries": len(cases), "candidates": len(cases[0][1]) - 1,
         "prompt_tokens": [len(p) for p, _ in cases], "dtype": config.dtype,
         "whole_rows_s": seconds["whole rows"], "shared_prompt_s": seconds["shared prompt"],
         "speedup": min(seconds["whole rows"]) / min(seconds["shared prompt"]),
         "max_abs_logprob_diff": max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s, t)),
         "max_abs_diff_vs_fp32": {"whole rows": off(a), "shared prompt": off(b)},
         "ranks": [[metrics.canary_rank(s[0], s[1:]) for s in v] for v in (a, b, ref)]}
  print(json.dumps(row), flush=True)
  print("| canaries x candidates | prompt tokens | whole rows (s) | shared prompt (s) | ratio | "
        "max abs log-prob difference | vs fp32 (whole / shared) | ranks (whole / shared / fp32) |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {row['canaries']} x {row['candidates'] + 1} | {row['prompt_tokens']} | "
        f"{min(row['whole_rows_s']):.2f} | {min(row['shared_prompt_s']):.2f} | "
        f"{row['speedup']:.2f}x | {row['max_abs_logprob_diff']:.3f} | "
        f"{off(a):.3f} / {off(b):.3f} | "
        f"{row['ranks'][0]} / {row['ranks'][1]} / {row['ranks'][2]} |")
  if args.out:
    Path(args.out).write_text(json.dumps({"rows": [row], "args": vars(args),
                                          "provenance": record()}, indent=1) + "\n")


if __name__ == "__main__":
  main()
