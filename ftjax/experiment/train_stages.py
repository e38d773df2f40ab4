"""The fine-tuning stages: the tuned arms' training data (examples, paraphrases, RAFT's
documents among distractors), the training run with its dev evaluations and early stopping, its
cache key (derived from the config keys each recipe reads) and the tuned model."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Sequence

from ftjax import provenance
from ftjax.arms import registry as arm_registry
from ftjax.evaluation import matching
from ftjax.evaluation import qa as scoring
from ftjax.experiment import config as config_lib
from ftjax.experiment import data as data_lib
from ftjax.experiment import security_planting as planting
from ftjax.experiment.answering import (answer_questions, index_stage, make_answerer,
                                        open_index, search_fn)
from ftjax.experiment.cache import config_values, digest
from ftjax.experiment.context import Context
from ftjax.prompts import document_messages, example_messages, paraphrase_request


# ----------------------------------------------------------------------------- fine-tuning

def _write_jsonl(path: Path, conversations: Sequence[list[dict]]):
  with path.open("w", encoding="utf-8") as f:
    for messages in conversations:
      f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def _answer_values(ctx: Context) -> dict[str, list[str]]:
  """Per document: the answers of the training questions about it (what a paraphrase must keep)."""
  values: dict[str, list[str]] = {}
  for q in ctx.data.train_questions or []:
    if q is not None and q.doc_id and q.answer and q.answer not in values.get(q.doc_id, []):
      values.setdefault(q.doc_id, []).append(q.answer)
  return values


def _paraphrases(ctx: Context, n: int) -> tuple[list[list[dict]], dict]:
  """n generated paraphrases of each document, by the base model (sampled, seeded). A paraphrase
  is kept only if it still contains every answer value of its document (the answers of the
  training questions about it); what was dropped is counted."""
  from ftjax.generation import generate
  model = ctx.base_model()
  values = _answer_values(ctx)
  out, dropped, empty = [], 0, 0
  for i in range(n):
    sampling = ctx.sampling(greedy=False, temperature=0.7, top_p=0.95, seed=1000 + i,
                            max_new_tokens=256)
    prompts = [paraphrase_request(d.text) for d in ctx.data.docs]
    for doc, completion in zip(ctx.data.docs, generate(model, prompts, sampling)):
      text = completion.text.strip()
      if not text:
        empty += 1
      elif all(matching.contains_answer(text, v) for v in values.get(doc.doc_id, [])):
        out.append(document_messages(doc.title, text))
      else:
        dropped += 1
  ctx.progress.say(f"[finetuned] {len(out)} generated paraphrases kept; {dropped} dropped "
                   f"(lost an answer value), {empty} empty")
  return out, {"generated_paraphrases": len(out) + dropped + empty,
               "generated_paraphrases_kept": len(out),
               "generated_paraphrases_dropped": dropped, "generated_paraphrases_empty": empty}


def finetune_data(ctx: Context) -> tuple[list[list[dict]], dict]:
  """What `finetuned` trains on: the examples, the documents (with the paraphrases of
  `data.paraphrases` and `finetune_doc_paraphrases` generated ones), or both
  (`finetune_source`); and counts of what went in."""
  config = ctx.config
  conversations: list[list[dict]] = []
  extra: dict = {}
  if config.finetune_source in ("examples", "both"):
    conversations += ctx.data.train
    if config.data.use_decline:
      conversations += ctx.data.decline_train
  if config.finetune_source in ("docs", "both"):
    conversations += [document_messages(d.title, d.text) for d in ctx.data.docs]
    titles = {d.doc_id: d.title for d in ctx.data.docs}
    conversations += [document_messages(titles[i], text) for i, text in ctx.data.paraphrases]
    extra["file_paraphrases"] = len(ctx.data.paraphrases)
    if config.finetune_doc_paraphrases:
      generated, counts = _paraphrases(ctx, config.finetune_doc_paraphrases)
      conversations += generated
      extra.update(counts)
  return conversations, extra


def finetune_examples(ctx: Context) -> list[list[dict]]:
  return finetune_data(ctx)[0]


def raft_examples(ctx: Context, seed: int) -> tuple[list[list[dict]], dict]:
  """RAFT (Zhang et al. 2024): each training example's question with its oracle document among
  distractors in the RAG prompt (`raft.distractors`: the retriever's top hits, or random
  documents); in `1 - raft.oracle_fraction` of them the oracle is left out. With `raft.evidence`
  the target quotes the oracle's sentence that holds the answer, then answers. Built from the
  training examples the fine-tuned arm sees (held-out dev phrasings stay out); examples without
  a `doc_id` are counted, not dropped silently."""
  from ftjax.data import raft
  from ftjax.retrieval.corpus import QAPair
  config = ctx.config
  passages = {d.doc_id: d.text for d in ctx.data.docs}
  pairs, gold, without_doc = [], [], 0
  questions = ctx.data.train_questions or [None] * len(ctx.data.train)
  doc_ids = ctx.data.train_doc_ids or [None] * len(ctx.data.train)
  for messages, doc_id, question in zip(ctx.data.train, doc_ids, questions):
    if doc_id in passages and len(messages) >= 2 and messages[-1]["role"] == "assistant":
      pairs.append(QAPair(messages[-2]["content"], messages[-1]["content"], doc_id))
      gold.append(question.answer if question is not None else None)
    else:
      without_doc += 1
  negatives, searched = None, 0
  if config.raft.distractors == "retrieved" and pairs:
    index = open_index(ctx, index_stage(ctx)[0] / "index")
    hits = search_fn(ctx, index)([p.question for p in pairs],
                                 4 * config.raft.num_distractors + 4)
    ranked = {p.question: [h.doc_id for h in hit] for p, hit in zip(pairs, hits)}
    searched = len(ranked)
    negatives = lambda question: ranked.get(question, [])  # noqa: E731
  evidence = None
  if config.raft.evidence:
    evidence = [None if answer is None else evidence_sentence(passages[p.doc_id], answer)
                for p, answer in zip(pairs, gold)]
  examples = raft.build_examples(pairs, passages, num_distractors=config.raft.num_distractors,
                                 oracle_fraction=config.raft.oracle_fraction, seed=seed,
                                 instruction=config.prompt.rag_instruction,
                                 negatives=negatives, evidence=evidence,
                                 evidence_template=config.raft.evidence_template)
  kept = data_lib.subsample(examples, config.raft.max_examples, seed)
  conversations = [e.messages for e in kept]
  if config.data.use_decline:  # declining when no passage covers the question
    from ftjax.prompts import render_rag_prompt
    rng = random.Random(seed)
    ids = list(passages)
    for messages in ctx.data.decline_train:
      question, reply = messages[-2]["content"], messages[-1]["content"]
      chosen = rng.sample(ids, min(len(ids), config.raft.num_distractors + 1))
      conversations.append(example_messages(render_rag_prompt(
          question, [passages[i] for i in chosen], config.prompt.rag_instruction), reply))
  extra = {"examples": len(conversations), "skipped_without_doc_id": without_doc,
           "distractors": config.raft.distractors,
           "with_oracle": sum(e.oracle_included for e in kept)}
  if evidence is not None:
    extra["with_evidence"] = sum(e.evidence for e in kept)
  if searched:
    extra["retrieved_distractors_for"] = searched
  return conversations, extra


def evidence_sentence(text: str, answer: str) -> str | None:
  """The first sentence of `text` that contains `answer` (as scoring reads answers), or None."""
  import re
  for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
    if sentence and matching.contains_answer(sentence, answer):
      return sentence
  return None


# The experiment config keys (dotted) a training stage reads, by the kind of weights it trains:
# its cache key is derived from these declarations, as an arm's answers' key is from
# `ftjax.arms.registry.reads`, so a setting training reads cannot be left out by hand. RAFT reads
# the retriever's method and groups (its distractors are the retriever's hits).
TRAIN_READS_ALWAYS = ("finetune", "prompt.system_prompt", "data.use_decline")
TRAIN_READS = {
    "finetuned": TRAIN_READS_ALWAYS + ("finetune_source", "finetune_doc_paraphrases"),
    "raft": TRAIN_READS_ALWAYS + ("raft", "retrieval.method", "retrieval.groups",
                                  "prompt.rag_instruction"),
}


def train_key(ctx: Context, kind: str, seed: int) -> dict:
  """What a training stage depends on: the model (weights hashed), the config keys its kind
  declares (`TRAIN_READS`), the seed, and the data files it trains on or selects with."""
  c = ctx.config
  inputs = {"train": ctx.data.hashes["train"],
            "decline": ctx.data.hashes["decline_train"] if c.data.use_decline else None,
            # the held-out dev phrasings are not trained on, and steer selection
            "dev": digest([q.input for q in ctx.data.questions.get("dev", [])])}
  if kind == "finetuned":
    if c.finetune_source != "examples":
      inputs["docs"] = ctx.data.hashes["docs"]
      if ctx.data.paraphrases:
        inputs["paraphrase_file"] = ctx.data.hashes["paraphrases"]
  else:
    inputs.update(docs=ctx.data.hashes["docs"], train_doc_ids=digest(ctx.data.train_doc_ids))
    if c.raft.distractors == "retrieved":  # the retriever's hits are the distractors
      inputs["index"] = index_stage(ctx)[0].name
  return {"kind": kind, **ctx.model_key, "seed": seed, "inputs": inputs,
          "config": config_values(c, TRAIN_READS[kind]), **planting.train_key(c)}


class LearningMonitor:
  """Accuracy while training, by generation (Gekhman et al. 2024 stop early on a dev set): at
  every `finetune.eval_every_steps` the model answers dev questions (held-out phrasings of
  training facts) and, with `finetune.curve_train_accuracy`, training questions,
  `finetune.eval_questions` of each. With
  `early_stop_patience` it stops training after that many evaluations without a better dev
  accuracy; `selected_step` is the first step with the best dev accuracy."""

  def __init__(self, ctx: Context, arm: str, label: str):
    f = ctx.config.finetune
    self.ctx, self.arm, self.label = ctx, arm_registry.get(arm), label
    self.dev = data_lib.subsample(ctx.data.questions.get("dev", []), f.eval_questions, seed=1)
    self.train = (data_lib.subsample(ctx.data.questions.get("train", []), f.eval_questions,
                                     seed=1) if f.curve_train_accuracy else [])
    self.patience = f.early_stop_patience
    self.curve: list[dict] = []

  def on_eval(self, step: int, model) -> bool:
    index = None
    if self.arm.name in config_lib.RETRIEVAL_ARMS:
      index = open_index(self.ctx, index_stage(self.ctx)[0] / "index")
    answerer = make_answerer(self.ctx, self.arm, model, index)
    stream = self.dev + self.train
    answers, seconds, _ = answer_questions(self.ctx, answerer, stream,
                                           f"step {step} dev" + ("+train" if self.train else ""))
    correct = [scoring.score_answer(a.text, q.answer, answers=q.answers,
                                    candidates=q.candidates, style=None)["correct"]
               for a, q in zip(answers, stream)]
    dev, train = correct[:len(self.dev)], correct[len(self.dev):]
    point = {"step": step, "dev_accuracy": sum(dev) / len(dev) if dev else None,
             "train_accuracy": sum(train) / len(train) if train else None,
             "dev_n": len(dev), "train_n": len(train), "seconds": seconds}
    self.curve.append(point)
    self.ctx.progress.say(f"[{self.label}] step {step}: dev accuracy "
                          f"{_fmt_rate(point['dev_accuracy'])}, train accuracy "
                          f"{_fmt_rate(point['train_accuracy'])}")
    best = self.best_index()
    return bool(self.patience and best is not None
                and len(self.curve) - 1 - best >= self.patience)

  def best_index(self) -> int | None:
    scored = [(p["dev_accuracy"], -i) for i, p in enumerate(self.curve)
              if p["dev_accuracy"] is not None]
    return -max(scored)[1] if scored else None

  def selected_step(self) -> int | None:
    best = self.best_index()
    return None if best is None else self.curve[best]["step"]


def _fmt_rate(x):
  return "n/a" if x is None else f"{100 * x:.1f}%"


def train_run(ctx: Context, folder: Path, conversations, *, seed: int, num_steps: int = 0,
           init_from: str = "", label: str, monitor: LearningMonitor | None = None) -> dict:
  from ftjax.training import loop as train_loop
  from ftjax.training.metrics import flops_per_token
  train_file = folder / "train.jsonl"
  _write_jsonl(train_file, conversations)
  train_cfg = config_lib.training_config(ctx.config, train_file=str(train_file), seed=seed,
                                         init_from=init_from, num_steps=num_steps)
  train_cfg.data.data_dir = str(folder / "tfds")
  ctx.progress.say(f"[{label}] training on {len(conversations)} examples for "
                   f"{train_cfg.num_steps} steps ({'LoRA' if train_cfg.lora.enabled else 'full'})")
  started = time.perf_counter()
  result = train_loop.run(train_cfg, folder / "run",
                         on_eval=monitor.on_eval if monitor else None)
  seconds = time.perf_counter() - started
  tokens = sum(h["tokens_per_second"] * h["step_seconds"] for h in result.history)
  flops = flops_per_token(result.model_config, train_cfg.seq_len, lora=train_cfg.lora.enabled)
  losses = [{"step": h["step"], "loss": h["loss"]} for h in result.history]
  (folder / "history.json").write_text(json.dumps(losses))
  selected, select_reason = result.step, "last step"
  curve = monitor.curve if monitor else []
  if ctx.config.finetune.select == "best_dev" and monitor:
    if monitor.selected_step() is not None:
      selected, select_reason = monitor.selected_step(), "best dev accuracy"
    else:
      select_reason = "last step (no dev questions: best_dev could not select)"
  step_seconds = [h["step_seconds"] for h in result.history]
  # The first step compiles; training cost is the steady step time times the steps.
  steady = sorted(step_seconds[1:])[len(step_seconds[1:]) // 2] if len(step_seconds) > 1 \
      else (step_seconds[0] if step_seconds else 0.0)
  return {"seconds": seconds, "step_seconds": sum(step_seconds),
          "steady_step_seconds": steady, "train_seconds": steady * result.step,
          "overhead_seconds": seconds - sum(step_seconds) - sum(p["seconds"] for p in curve),
          "eval_seconds": sum(p["seconds"] for p in curve),
          "epochs": result.history[-1].get("epoch") if result.history else None,
          "selected_step": selected, "select_reason": select_reason, "learning_curve": curve,
          "steps": result.step, "tokens": tokens, "flops": flops * tokens,
          "examples": len(conversations), "trainable_params": result.trainable_params,
          "total_params": result.total_params,
          "final_loss": losses[-1]["loss"] if losses else None, "peak_rss_gb": provenance.peak_rss_bytes() / 2**30}


def train_stage(ctx: Context, kind: str, seed: int) -> tuple[Path, dict]:
  train_seed = ctx.config.seed + seed

  def build(folder: Path) -> dict:
    extra = {}
    if kind == "finetuned":
      conversations, extra = finetune_data(ctx)
    else:
      conversations, extra = raft_examples(ctx, train_seed)
    conversations, planted = planting.plant(ctx, conversations)  # canaries, if configured
    num_steps = ctx.config.raft.num_steps if kind == "raft" else 0
    label = f"{kind} seed {seed}"
    monitor = (LearningMonitor(ctx, kind, label) if ctx.config.finetune.eval_every_steps
               else None)
    return {**train_run(ctx, folder, conversations, seed=train_seed, num_steps=num_steps,
                        label=label, monitor=monitor), **extra, **planted}
  # Unfinished training resumes from its checkpoints.
  return ctx.cache.run(f"train-{kind}-s{seed}", train_key(ctx, kind, seed), build, fresh=False)


def tuned_model(ctx: Context, run_folder: Path, step: int | None = None):
  """The trained model at `step` (default: its latest checkpoint)."""
  if (run_folder, step) not in ctx._tuned:
    import ftjax
    ctx._tuned[run_folder, step] = ftjax.load(run_folder, dtype=ctx.config.dtype, step=step)
  return ctx._tuned[run_folder, step]
