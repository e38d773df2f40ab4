"""The experiment's top stages, each cached in `WORKDIR/cache/` under a hash of what determines it.

Layered, each module importing only those above it: `context` (the config, data, stage cache,
progress line and base model every stage shares), `answering` (the retrieval index, each arm's
answerer, the one answer-caching stage), `train_stages` (the tuned arms' data and training runs),
and here the stages the runner composes: answers per arm and seed, multiple choice, the
knowledge-update runs, and scoring answers into rows. `security` and `cost` reuse them (the same
cache keys, the same training recipe).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ftjax import provenance
from ftjax.arms import registry as arm_registry
from ftjax.arms.base import Answer
from ftjax.experiment import config as config_lib
from ftjax.experiment.answering import (quiet_bm25s, answer_key, answer_questions,
                                        answer_splits, index_stage, make_answerer,
                                        measure_latency, open_index)
from ftjax.experiment.context import SPLITS, Context
from ftjax.experiment.train_stages import train_run, train_stage, tuned_model


def answers_stage(ctx: Context, arm: str, seed: int | None) -> tuple[Path, dict]:
  """Answers of one arm (and seed) to every question split; skipped arms record why."""
  spec = arm_registry.get(arm)
  index_folder = index_stage(ctx)[0] if arm in config_lib.RETRIEVAL_ARMS else None
  selected = None
  if arm in config_lib.TUNED_ARMS:
    train_folder, trained = train_stage(ctx, spec.weights, seed)
    selected = trained.get("selected_step")
    model_key = {"train": train_folder.name, "step": selected}
  else:
    train_folder, model_key = None, ctx.model_key

  def build(folder: Path) -> dict:
    model = tuned_model(ctx, train_folder / "run", selected) if train_folder \
        else ctx.base_model()
    index = open_index(ctx, index_folder / "index") if index_folder else None
    answerer = make_answerer(ctx, spec, model, index)
    if spec.passages == "corpus":
      questions = [q for s in SPLITS for q in ctx.data.questions.get(s, [])]
      reason = answerer.does_not_fit([q.input for q in questions])
      if reason:
        ctx.progress.say(f"[cag] skipped: {reason}")
        return {"skipped": reason}
    # One stream over every split: fewer partial batches, fewer compilations.
    splits = answer_splits(ctx, spec)
    stream = [q for s in splits for q in ctx.data.questions[s]]
    answers, seconds, batch_seconds = answer_questions(ctx, answerer, stream, "+".join(splits))
    out, total = {}, len(answers)
    for s in splits:
      out[s] = [dataclasses.asdict(a) for a, q in zip(answers, stream) if q.split == s]
    latency = measure_latency(answerer, ctx.data.questions["eval"],
                              ctx.config.sampling.latency_questions)
    extra = {}
    if spec.passages == "corpus":  # the corpus's size and its prefill
      extra["cag"] = {**answerer.describe(), "prefill_s": answerer.prefill_seconds()}
    (folder / "answers.json").write_text(json.dumps(out, ensure_ascii=False))
    return {**extra, "seconds": seconds, "questions": total, "latency_s": latency,
            "seconds_per_question_by_batch": batch_seconds,
            "peak_rss_gb": provenance.peak_rss_bytes() / 2**30}
  return ctx.cache.run(f"answers-{arm}" + ("" if seed is None else f"-s{seed}"),
                       answer_key(ctx, spec, model_key, index_folder), build)


# lm-eval's MMLU-style prompt: each choice is scored as the continuation after "Answer:".
MC_TEMPLATE = "Question: {question}\nAnswer:"


def general_mc_stage(ctx: Context, weights: str, seed: int | None) -> tuple[Path, dict]:
  """Multiple-choice general knowledge (`data.general` in lm-eval's format) scored by
  log-likelihood through the lm-eval backend (`ftjax.evaluation.harness.FtjaxLM`): per question
  whether the most likely choice is right (`correct`) and the same per byte of the choice
  (`correct_norm`, lm-eval's acc_norm). Forgetting is a tuned model's accuracy against the base
  model's on the same prompts."""
  if weights == "base":
    train_folder, selected, model_key = None, None, ctx.model_key
  else:
    train_folder, trained = train_stage(ctx, weights, seed)
    selected = trained.get("selected_step")
    model_key = {"train": train_folder.name, "step": selected}
  key = {"model": model_key, "general": ctx.data.hashes["general"], "template": MC_TEMPLATE,
         "max_eval_questions": ctx.config.data.max_eval_questions}

  def build(folder: Path) -> dict:
    from ftjax.evaluation.harness import FtjaxLM
    model = tuned_model(ctx, train_folder / "run", selected) if train_folder \
        else ctx.base_model()
    lm = FtjaxLM(pretrained=model, batch_size=ctx.config.sampling.batch_size)
    started = time.perf_counter()
    requests, owners = [], []
    for q in ctx.data.general_mc:
      for j, choice in enumerate(q.choices):
        context, continuation = lm._encode_pair(MC_TEMPLATE.format(question=q.input),
                                                f" {choice}")
        requests.append((None, context, continuation))
        owners.append((q.index, j))
    scores: dict[int, dict[int, float]] = {}
    for (i, j), (logprob, _) in zip(owners, lm._loglikelihood_tokens(requests)):
      scores.setdefault(i, {})[j] = logprob
    rows = []
    for q in ctx.data.general_mc:
      ll = [scores[q.index][j] for j in range(len(q.choices))]
      norm = [x / len(f" {c}".encode()) for x, c in zip(ll, q.choices)]
      rows.append({"index": q.index, "correct": int(ll.index(max(ll)) == q.gold),
                   "correct_norm": int(norm.index(max(norm)) == q.gold)})
    ctx.progress.say(f"[general mc {weights}] {len(rows)} questions by log-likelihood: "
                     f"{sum(r['correct'] for r in rows)} right")
    return {"rows": rows, "seconds": time.perf_counter() - started}
  return ctx.cache.run(f"general-mc-{weights}" + ("" if seed is None else f"-s{seed}"), key,
                       build)


def read_answers(folder: Path) -> dict[str, list[Answer]]:
  raw = json.loads((folder / "answers.json").read_text())
  def tup(x):
    return None if x is None else tuple(x)
  return {split: [Answer(**{**a, "passages": tup(a["passages"]),
                            "passage_texts": tup(a.get("passage_texts"))}) for a in answers]
          for split, answers in raw.items()}


# ----------------------------------------------------------------------------- knowledge update

def update_rag_stage(ctx: Context) -> tuple[Path, dict]:
  """Replace the changed documents in a copy of the index (timed), then ask the changed and the
  unchanged facts."""
  index_folder, _ = index_stage(ctx)
  key = {"index": index_folder.name, "updates": ctx.data.hashes["updates"],
         "update_eval": ctx.data.hashes["update_eval"], "eval": ctx.data.hashes["eval"],
         "retrieval": ctx.config.retrieval.to_dict(), "sampling": ctx.config.sampling.to_dict(),
         "model": ctx.model_key, "max_eval_questions": ctx.config.data.max_eval_questions,
         "max_unchanged": ctx.config.knowledge_update.max_unchanged,
         "instruction": ctx.config.prompt.rag_instruction,
         "system_prompt": ctx.config.prompt.system_prompt}

  def build(folder: Path) -> dict:
    import shutil
    from ftjax.retrieval import RetrievalIndex
    quiet_bm25s()
    shutil.copytree(index_folder / "index", folder / "index")
    index = RetrievalIndex.open(folder / "index")
    started = time.perf_counter()
    index.replace(ctx.data.updates)
    seconds = time.perf_counter() - started
    ctx.progress.say(f"[update rag] replaced {len(ctx.data.updates)} documents in {seconds:.1f}s")
    answerer = make_answerer(ctx, arm_registry.get("rag"), ctx.base_model(), index)
    return {"seconds": seconds, "method": "replace documents in the index",
            **_answer_update_questions(ctx, answerer, folder)}
  return ctx.cache.run("update-rag", key, build)


def _answer_update_questions(ctx: Context, answerer, folder: Path) -> dict:
  stream = ctx.data.questions["update_eval"] + ctx.data.questions["unchanged"]
  answers, _, _ = answer_questions(ctx, answerer, stream, "update_eval+unchanged")
  out = {s: [dataclasses.asdict(a) for a, q in zip(answers, stream) if q.split == s]
         for s in ("update_eval", "unchanged")}
  (folder / "answers.json").write_text(json.dumps(out, ensure_ascii=False))
  return {"questions": sum(len(v) for v in out.values())}


def update_finetuned_stage(ctx: Context, seed: int) -> tuple[Path, dict]:
  """Continue training the fine-tuned model on the changed facts (timed), then ask the changed
  and the unchanged facts."""
  train_folder, _ = train_stage(ctx, "finetuned", seed)
  key = {"train": train_folder.name, "update_train": ctx.data.hashes["update_train"],
         "update_eval": ctx.data.hashes["update_eval"], "eval": ctx.data.hashes["eval"],
         "num_steps": ctx.config.knowledge_update.num_steps,
         "max_unchanged": ctx.config.knowledge_update.max_unchanged,
         "sampling": ctx.config.sampling.to_dict(),
         "max_eval_questions": ctx.config.data.max_eval_questions}

  def build(folder: Path) -> dict:
    trained = train_run(ctx, folder, ctx.data.update_train, seed=ctx.config.seed + seed,
                     num_steps=ctx.config.knowledge_update.num_steps,
                     init_from=str(train_folder / "run"), label=f"update finetuned seed {seed}")
    answerer = make_answerer(ctx, arm_registry.get("finetuned"),
                             tuned_model(ctx, folder / "run"))
    return {**trained, "method": "continue training on the changed facts",
            **_answer_update_questions(ctx, answerer, folder)}
  return ctx.cache.run(f"update-finetuned-s{seed}", key, build, fresh=False)


# ----------------------------------------------------------------------------- scoring

def score_rows(ctx: Context, arm: str, seed: int | None, answers: dict[str, list[Answer]],
               settings: dict) -> list[dict]:
  """One row per answer: the question, the answer with its metadata (prompt, passages, finish
  reason) and its scores (`summary.score_row`, which `ftjax.experiment.rescore` reruns)."""
  from ftjax.experiment.summary import score_row
  rows = []
  for split, split_answers in answers.items():
    for question, a in zip(ctx.data.questions[split], split_answers):
      row = {"arm": arm, "seed": seed, "split": split, "index": question.index,
             "question": question.input, "doc_id": question.doc_id, "answer": a.text,
             "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
             "cached_tokens": a.cached_tokens,
             "passage_doc_ids": None if a.passages is None else list(a.passages),
             "passage_texts": None if a.passage_texts is None else list(a.passage_texts),
             "finish_reason": a.finish_reason, "prompt": a.prompt}
      rows.append(score_row(row, question, settings))
  return rows
