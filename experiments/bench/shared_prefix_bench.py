"""What does prefilling the prompts' shared prefix once save? (`SamplingConfig.share_prefix`)

On the default experiment's questions (configs/experiments/support.py), for each arm given: the
token ids of the runner's prompts (rendered by the arm's answerer, retrieval included), then
`generate_ids` on them as the runner batches them, without and with `share_prefix`, each after a
compiling call, alternated. Prints the shared prefix's length, both times, their ratio and how
many rows generated other tokens (bf16 rounds the shared prefix's keys/values differently).

  python experiments/bench/shared_prefix_bench.py --arms prompted,prompted_rag --out experiments/bench/results/shared_prefix_cpu.json
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default=str(ROOT / "configs" / "experiments" / "support.py"))
  parser.add_argument("--arms", default="prompted,prompted_rag")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  from runner_decode_bench import arm_answerer, load_runner, question_stream
  from ftjax.generation.decoding import generate_ids, shared_prefix_length
  from ftjax.provenance import record

  config, ctx, model, eos, pad = load_runner(args.config, prefix="shared_prefix_")
  tokenizer = model.tokenizer
  stream = [q.input for q in question_stream(ctx)]
  rows = []
  for arm in args.arms.split(","):
    new_tokens = config.sampling.max_new_tokens
    config.sampling.max_new_tokens = 1  # the prompts only: one token each is enough to render
    answers = arm_answerer(ctx, arm, model).answer(stream)
    config.sampling.max_new_tokens = new_tokens
    ids = [tokenizer.encode(a.prompt, add_special_tokens=False) for a in answers]
    sampling = ctx.sampling()
    modes = {"plain": sampling, "shared": dataclasses.replace(sampling, share_prefix=True)}
    outputs, seconds = {}, {m: [] for m in modes}

    def run(mode):
      started = time.perf_counter()
      outputs[mode] = generate_ids(model.config, model.params, ids, modes[mode], eos, pad)
      return time.perf_counter() - started
    for mode in modes:
      run(mode)  # compiles
    for _ in range(args.repeats):
      for mode in modes:
        seconds[mode].append(run(mode))
    plain, shared = min(seconds["plain"]), min(seconds["shared"])
    row = {"arm": arm, "questions": len(ids), "batch": config.sampling.batch_size,
           "prompt_tokens_mean": sum(map(len, ids)) / len(ids),
           "shared_prefix_tokens": shared_prefix_length(ids), "plain_s": seconds["plain"],
           "shared_s": seconds["shared"], "speedup": plain / shared,
           "rows_differing": sum(a != b for a, b in zip(outputs["plain"], outputs["shared"]))}
    rows.append(row)
    print(json.dumps(row), flush=True)
  print("| arm | questions | mean prompt tokens | shared prefix | plain (s) | shared (s) | ratio | "
        "rows with other tokens |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['arm']} | {r['questions']} | {r['prompt_tokens_mean']:.0f} | "
          f"{r['shared_prefix_tokens']} | {min(r['plain_s']):.1f} | {min(r['shared_s']):.1f} | "
          f"{r['speedup']:.2f}x | {r['rows_differing']} |")
  if args.out:
    Path(args.out).write_text(json.dumps({"rows": rows, "args": vars(args),
                                          "provenance": record()}, indent=1) + "\n")


if __name__ == "__main__":
  main()
