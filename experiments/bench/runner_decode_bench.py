"""Does the experiment runner decode at the model's speed? (issue 22, goal 2)

In one run, on the default experiment's questions (configs/experiments/support.py):
  runner:    `answering.answer_questions` with each arm's answerer (prompt rendering, retrieval,
             tokenization, batching by prompt length, EOS stopping), after one warm-up pass
             that compiles;
  same work: `generate_ids` on exactly the token ids the runner's prompts encode to (batched
             the same way), with the same EOS ids: the model's speed on the runner's work;
  fixed:     `generate_ids` at the same batch size, every row the median prompt length, no EOS,
             `max_new_tokens` each (model_bench.py's decode case at the runner's shape).
Generation tokens/s of each and the ratios runner / same work and runner / fixed (goal: within
1.5x, i.e. a ratio >= 0.67).

  python experiments/bench/runner_decode_bench.py --arms base,rag --out experiments/bench/results/runner_decode.json
"""

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def load_runner(config_path: str, dtype: str = "", prefix: str = "bench_"):
  """The experiment's context as the runner builds it, on a fresh stage cache: (config, ctx,
  base model, EOS ids, pad id)."""
  from ftjax.experiment import context
  from ftjax.experiment import data as data_lib
  from ftjax.experiment.cache import StageCache
  from ftjax.experiment.config import load_config_file, validate
  from ftjax.generation.text import eos_token_ids
  config = validate(load_config_file(config_path))
  if dtype:
    config.dtype = dtype
  data = data_lib.load(config.data)
  ctx = context.Context(config, data, StageCache(Path(tempfile.mkdtemp(prefix=prefix))),
                        context.Progress())
  model = ctx.base_model()
  return config, ctx, model, eos_token_ids(model.config, model.tokenizer), \
      model.tokenizer.pad_token_id or 0


def question_stream(ctx):
  """The questions every arm answers (eval, unanswerable, general), in the runner's order."""
  from ftjax.experiment import context
  return [q for s in context.SPLITS for q in ctx.data.questions.get(s, [])]


def arm_answerer(ctx, arm: str, model):
  """The runner's answerer of `arm`, with the experiment's index when the arm retrieves."""
  from ftjax.arms import registry as arm_registry
  from ftjax.experiment import answering
  from ftjax.experiment import config as config_lib
  index = None
  if arm in config_lib.RETRIEVAL_ARMS:
    index = answering.open_index(ctx, answering.index_stage(ctx)[0] / "index")
  return answering.make_answerer(ctx, arm_registry.get(arm), model, index)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default=str(ROOT / "configs" / "experiments" / "support.py"))
  parser.add_argument("--arms", default="base,rag")
  parser.add_argument("--dtype", default="")
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  from ftjax.provenance import record as provenance_record
  from ftjax.generation.decoding import generate_ids
  from ftjax.experiment import answering
  import numpy as np

  config, ctx, model, eos, pad = load_runner(args.config, args.dtype, "runner_decode_")
  tokenizer = model.tokenizer
  sampling = ctx.sampling()
  batch = config.sampling.batch_size
  stream = question_stream(ctx)
  rows = []
  for arm in args.arms.split(","):
    answerer = arm_answerer(ctx, arm, model)
    answering.answer_questions(ctx, answerer, stream, "warm-up")
    answers, seconds, _ = answering.answer_questions(ctx, answerer, stream, "timed")
    runner_tokens = sum(a.new_tokens for a in answers)
    ids = [tokenizer.encode(a.prompt, add_special_tokens=False) for a in answers]
    size = -(-len(ids) // -(-len(ids) // batch))  # generate_ids' equal batches

    def same_work():  # the same ids through generate_ids (sorted into the same batches)
      started = time.perf_counter()
      out = generate_ids(model.config, model.params, ids, sampling, eos, pad)
      return sum(len(o) for o in out), time.perf_counter() - started
    same_work()  # compiles
    same_tokens, same_seconds = same_work()
    median = int(statistics.median(len(i) for i in ids))
    fixed_prompts = [[ids[0][0]] * median] * size
    fixed_sampling = dataclasses.replace(sampling, batch_size=0)

    def fixed():
      started = time.perf_counter()
      out = generate_ids(model.config, model.params, fixed_prompts, fixed_sampling, [], pad)
      return sum(len(o) for o in out), time.perf_counter() - started
    fixed()
    fixed_runs = [fixed() for _ in range(3)]
    fixed_tokens, fixed_seconds = fixed_runs[0][0], statistics.median(s for _, s in fixed_runs)
    row = {"arm": arm, "questions": len(stream), "batch": size,
           "prompt_tokens_median": median, "max_new_tokens": sampling.max_new_tokens,
           "runner_tok_s": runner_tokens / seconds,
           "same_work_tok_s": same_tokens / same_seconds,
           "fixed_tok_s": fixed_tokens / fixed_seconds}
    row["runner_vs_same_work"] = row["runner_tok_s"] / row["same_work_tok_s"]
    row["runner_vs_fixed"] = row["runner_tok_s"] / row["fixed_tok_s"]
    rows.append(row)
    print(json.dumps(row), flush=True)
  print("| arm | batch | median prompt | runner tok/s | same work tok/s | fixed tok/s | "
        "runner / same work | runner / fixed |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['arm']} | {r['batch']} | {r['prompt_tokens_median']} | "
          f"{r['runner_tok_s']:.0f} | {r['same_work_tok_s']:.0f} | {r['fixed_tok_s']:.0f} | "
          f"{r['runner_vs_same_work']:.2f}x | {r['runner_vs_fixed']:.2f}x |")
  if args.out:
    Path(args.out).write_text(json.dumps({"rows": rows, "dtype": config.dtype,
                                          "provenance": provenance_record()}, indent=1))
  del np


if __name__ == "__main__":
  main()
