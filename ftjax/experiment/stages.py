"""The experiment's stages, each cached in `WORKDIR/cache/` under a hash of what determines it.

A `Context` carries the config, the data, the stage cache and the progress line. Stages: the
retrieval index, fine-tuning runs (the arm's recipe; RAFT's examples), answers per arm and seed,
the knowledge-update runs, and scoring answers into rows. `runner` composes them into the
experiment; `security` and `cost` reuse them (the same cache keys, the same training recipe).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from ftjax.arms import registry as arm_registry
from ftjax.arms.base import Answer
from ftjax.evaluation import qa as scoring
from ftjax.experiment import config as config_lib
from ftjax.experiment import data as data_lib
from ftjax.experiment import planting
from ftjax.experiment.cache import StageCache, config_values, digest
from ftjax.generation import SamplingConfig
from ftjax.prompts import document_messages, example_messages, paraphrase_request

SPLITS = ("eval", "unanswerable", "general")


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class Progress:
  """One line per batch: arm, stage, questions done, tokens/s, ETA."""

  def __init__(self, stream=sys.stdout):
    self.stream = stream
    self.started = time.perf_counter()

  def say(self, text: str):
    elapsed = time.perf_counter() - self.started
    print(f"{elapsed:6.0f}s {text}", file=self.stream, flush=True)

  def batch(self, arm: str, stage: str, done: int, total: int, tokens: int, seconds: float):
    rate = tokens / seconds if seconds else 0.0
    eta = seconds / done * (total - done) if done else 0.0
    self.say(f"[{arm}] {stage}: {done}/{total} questions, {rate:,.0f} tok/s, ETA {eta:.0f}s")


@dataclasses.dataclass
class Context:
  config: ml_collections.ConfigDict
  data: data_lib.ExperimentData
  cache: StageCache
  progress: Progress
  _base: Any = None
  _indexes: dict = dataclasses.field(default_factory=dict)
  _tuned: dict = dataclasses.field(default_factory=dict)

  _weights: Any = None

  @property
  def model_key(self) -> dict:
    """The model's name, dtype and, for a local folder or file, a hash of its weight files: a
    folder whose weights change in place is a new model to every stage that uses it."""
    if self._weights is None:
      self._weights = weights_digest(self.config.model)
    return {"model": self.config.model, "dtype": self.config.dtype, "weights": self._weights}

  def base_model(self):
    if self._base is None:
      import ftjax
      self.progress.say(f"loading {self.config.model} ({self.config.dtype})")
      self._base = ftjax.load(self.config.model, dtype=self.config.dtype)
    return self._base

  def sampling(self, **overrides) -> SamplingConfig:
    s = self.config.sampling
    fields = dict(max_new_tokens=s.max_new_tokens, greedy=s.greedy, temperature=s.temperature,
                  top_k=s.top_k, top_p=s.top_p, seed=self.config.seed, batch_size=s.batch_size)
    fields.update(overrides)
    return SamplingConfig(**fields)


def weights_digest(model: str) -> str:
  """sha256 over a local model's config and weight files (names and contents); "" for a
  registered or hub model (a registered model is versioned by its package)."""
  import hashlib
  from ftjax.checkpoints.registry import REGISTRY
  path = Path(model).expanduser()
  if model in REGISTRY or not path.exists():
    return ""
  files = [path] if path.is_file() else sorted(
      f for f in path.iterdir() if f.is_file() and (f.name == "config.json" or f.suffix in (
          ".safetensors", ".gguf", ".bin", ".pt", ".pth", ".npz", ".msgpack")))
  h = hashlib.sha256()
  for f in files:
    h.update(f.name.encode())
    with f.open("rb") as stream:
      for block in iter(lambda: stream.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- retrieval index

def index_key(ctx: Context, docs_hash: str | None = None) -> dict:
  r = ctx.config.retrieval
  from ftjax.retrieval.bm25 import WORD_PATTERN
  return {"docs": docs_hash or ctx.data.hashes["docs"], "encoder": r.encoder,
          "chunk_tokens": r.chunk_tokens, "chunk_overlap": r.chunk_overlap,
          "dense": r.method != "bm25", "bm25_words": WORD_PATTERN}


def visible_docs(ctx: Context) -> list[data_lib.Document]:
  """The documents the experiment's caller (`retrieval.groups`) may see: what CAG puts in its
  prompt. Retrieval filters the same way inside the index."""
  groups = frozenset(ctx.config.retrieval.groups)
  return [d for d in ctx.data.docs if d.acl is None or groups & set(d.acl)]


def index_stage(ctx: Context, docs: Sequence[data_lib.Document] | None = None,
                name: str = "index") -> tuple[Path, dict]:
  """The index of the corpus (or of `docs`, e.g. a poisoned copy, cached as `name`)."""
  docs_hash = None if docs is None else digest([dataclasses.astuple(d) for d in docs])
  docs = ctx.data.docs if docs is None else docs

  def build(folder: Path) -> dict:
    from ftjax.retrieval import IndexConfig, RetrievalIndex
    _quiet_bm25s()
    r = ctx.config.retrieval
    dense = r.method != "bm25"
    ctx.progress.say(f"[{name}] building a {'BM25 + dense' if dense else 'BM25'} index of "
                     f"{len(docs)} documents")
    started = time.perf_counter()
    index = RetrievalIndex.create(folder / "index", IndexConfig(
        encoder=r.encoder, dense=dense, chunk_tokens=r.chunk_tokens,
        chunk_overlap=r.chunk_overlap))
    index.add(docs)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "documents": index.num_documents, "chunks": index.num_chunks,
            "peak_rss_gb": peak_rss_gb()}
  return ctx.cache.run(name, index_key(ctx, docs_hash), build)


def _quiet_bm25s():
  # bm25s sets its logger to DEBUG on import; keep the progress lines readable.
  logging.getLogger("bm25s").setLevel(logging.WARNING)


def open_index(ctx: Context, folder: Path):
  if folder not in ctx._indexes:
    from ftjax.retrieval import RetrievalIndex
    _quiet_bm25s()
    ctx._indexes[folder] = RetrievalIndex.open(folder)
  return ctx._indexes[folder]


def search_fn(ctx: Context, index):
  method = ctx.config.retrieval.method
  groups = tuple(ctx.config.retrieval.groups)  # the caller's: documents with an acl need one
  return lambda questions, k: index.search(list(questions), k=k, method=method, groups=groups)


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
      elif all(scoring.contains_answer(text, v) for v in values.get(doc.doc_id, [])):
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
    if sentence and scoring.contains_answer(sentence, answer):
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
  training facts) and training questions, `finetune.eval_questions` of each. With
  `early_stop_patience` it stops training after that many evaluations without a better dev
  accuracy; `selected_step` is the first step with the best dev accuracy."""

  def __init__(self, ctx: Context, arm: str, label: str):
    f = ctx.config.finetune
    self.ctx, self.arm, self.label = ctx, arm, label
    self.dev = data_lib.subsample(ctx.data.questions.get("dev", []), f.eval_questions, seed=1)
    self.train = data_lib.subsample(ctx.data.questions.get("train", []), f.eval_questions,
                                    seed=1)
    self.patience = f.early_stop_patience
    self.curve: list[dict] = []

  def on_eval(self, step: int, model) -> bool:
    index = None
    if self.arm in config_lib.RETRIEVAL_ARMS:
      index = open_index(self.ctx, index_stage(self.ctx)[0] / "index")
    answerer = make_answerer(self.ctx, self.arm, model, index)
    stream = self.dev + self.train
    answers, seconds, _ = answer_questions(self.ctx, answerer, stream, f"step {step} dev+train")
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
  from ftjax import train as train_lib
  from ftjax.training.metrics import flops_per_token
  train_file = folder / "train.jsonl"
  _write_jsonl(train_file, conversations)
  train_cfg = config_lib.training_config(ctx.config, train_file=str(train_file), seed=seed,
                                         init_from=init_from, num_steps=num_steps)
  train_cfg.data.data_dir = str(folder / "tfds")
  ctx.progress.say(f"[{label}] training on {len(conversations)} examples for "
                   f"{train_cfg.num_steps} steps ({'LoRA' if train_cfg.lora.enabled else 'full'})")
  started = time.perf_counter()
  result = train_lib.run(train_cfg, folder / "run",
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
          "final_loss": losses[-1]["loss"] if losses else None, "peak_rss_gb": peak_rss_gb()}


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


# ----------------------------------------------------------------------------- answering

def _few_shot(ctx: Context) -> list[tuple[str, str]]:
  """k training examples, drawn with the experiment seed (the same for every run)."""
  pairs = [(m[-2]["content"], m[-1]["content"]) for m in ctx.data.train
           if len(m) >= 2 and m[-2]["role"] == "user" and m[-1]["role"] == "assistant"]
  return random.Random(ctx.config.seed).sample(pairs, min(ctx.config.prompt.num_few_shot,
                                                          len(pairs)))


def answer_key(ctx: Context, arm: str, model_key: Any, index_folder: Path | None) -> dict:
  """What an arm's answers depend on: the model (weights hashed), the question files, and the
  config keys and data inputs the arm's declaration reads (`ftjax.arms.registry.reads`)."""
  spec = arm_registry.get(arm)
  splits = answer_splits(ctx, arm)
  inputs = {"questions": {s: ctx.data.hashes.get(s) for s in SPLITS}}
  if "train" in splits:
    inputs["train_questions"] = digest([q.input for q in ctx.data.questions["train"]])
  if spec.styled:  # few-shot examples come from the training file
    inputs["train"] = ctx.data.hashes["train"]
  if spec.passages in ("oracle", "corpus"):
    inputs["docs"] = ctx.data.hashes["docs"]
  if spec.passages == "retrieved" or (spec.passages == "oracle"
                                      and ctx.config.raft.distractors == "retrieved"):
    inputs["index"] = index_folder.name
  return {"arm": arm, "model": model_key, "splits": splits, "inputs": inputs,
          "config": config_values(ctx.config, arm_registry.reads(spec))}


def answer_stage(ctx: Context, name: str, arm: str, model_key: Any, load_model,
                 questions: Sequence[data_lib.Question], index_folder: Path | None = None,
                 extra=None) -> dict:
  """One arm's answers to a list of questions outside the main comparison (security's poisoned
  models and indexes, canary prompts), cached as `name`. The key is derived as the main answers'
  is: the arm's declared config keys, the model key, the index, and the questions themselves.
  `load_model()` gives the model; `extra(answerer)` adds fields to the result."""
  spec = arm_registry.get(arm)
  key = {"arm": arm, "model": model_key, "questions": digest([q.input for q in questions]),
         "config": config_values(ctx.config, arm_registry.reads(spec)),
         "index": index_folder.name if index_folder is not None else None}
  if spec.styled:  # few-shot examples come from the training file
    key["train"] = ctx.data.hashes["train"]

  def build(folder: Path) -> dict:
    index = open_index(ctx, index_folder / "index") if index_folder is not None else None
    answerer = make_answerer(ctx, arm, load_model(), index)
    answers, _, _ = answer_questions(ctx, answerer, list(questions), name)
    out = {"answers": [a.text for a in answers],
           "passages": [None if a.passages is None else list(a.passages) for a in answers]}
    return {**out, **(extra(answerer) if extra else {})}
  return ctx.cache.run(name, key, build)[1]


def answer_splits(ctx: Context, arm: str) -> list[str]:
  """The question splits an arm answers: every arm the held-out ones; a tuned arm also its own
  training questions (its train accuracy)."""
  splits = [s for s in SPLITS if s in ctx.data.questions]
  if arm in config_lib.TUNED_ARMS and "train" in ctx.data.questions:
    splits.append("train")
  return splits


def prompting(ctx: Context) -> arm_registry.Prompting:
  c = ctx.config
  return arm_registry.Prompting(
      system_prompt=c.prompt.system_prompt, style_instruction=c.style.instruction,
      few_shot=tuple(_few_shot(ctx)), k=c.retrieval.k,
      max_prompt_tokens=c.retrieval.max_prompt_tokens, rag_instruction=c.prompt.rag_instruction,
      cag_instruction=c.prompt.cag_instruction, cag_max_context_tokens=c.cag.max_context_tokens)


def test_distractors(ctx: Context) -> int:
  """How many distractors accompany the oracle document in RAFT's test condition."""
  r = ctx.config.raft
  return r.num_distractors if r.test_distractors < 0 else r.test_distractors


def make_oracle_search(ctx: Context, index=None):
  """RAFT's test condition: each question's own document among distractors (see
  `ftjax.arms.rag.oracle_search`), over the documents the caller may see."""
  from ftjax.arms.rag import oracle_search
  r = ctx.config.raft
  documents = {d.doc_id: (d.text, d.acl) for d in visible_docs(ctx)}
  doc_of = {q.input: q.doc_id for s in ctx.data.questions.values() for q in s if q.doc_id}
  return oracle_search(search_fn(ctx, index) if index is not None else None, documents,
                       doc_of, test_distractors(ctx), distractors=r.distractors,
                       seed=ctx.config.seed)


def cag_docs(ctx: Context) -> list[data_lib.Doc]:
  """The documents in CAG's cache: the visible ones, or with `cag.corpus_fraction` < 1 every
  document that answers a question plus that fraction of the others (seeded, in corpus order)."""
  docs = visible_docs(ctx)
  fraction = ctx.config.cag.corpus_fraction
  if fraction >= 1:
    return docs
  answering = {q.doc_id for s in ctx.data.questions.values() for q in s if q.doc_id}
  others = [d.doc_id for d in docs if d.doc_id not in answering]
  kept = set(random.Random(ctx.config.seed).sample(others, round(fraction * len(others))))
  return [d for d in docs if d.doc_id in answering or d.doc_id in kept]


def make_answerer(ctx: Context, arm: str, model, index=None):
  """The answerer of `arm` as the registry declares it (`ftjax.arms.registry`)."""
  spec = arm_registry.get(arm)
  search = search_fn(ctx, index) if spec.passages == "retrieved" else None
  oracle = make_oracle_search(ctx, index) if spec.passages == "oracle" else None
  documents = ([(d.title, d.text) for d in cag_docs(ctx)] if spec.passages == "corpus"
               else ())
  return arm_registry.build(spec, model, ctx.sampling(), prompting(ctx), search=search,
                            oracle_search=oracle, documents=documents)


def answer_questions(ctx: Context, answerer, questions: Sequence[data_lib.Question],
                     label: str) -> tuple[list[Answer], float, list[float]]:
  """All questions in one call of the answerer, with a progress line per generation batch.

  Generation sorts the prompts by length into equal batches of `sampling.batch_size` (one shape,
  so one compilation per prompt-length bucket; `SamplingConfig.batch_size`). Also returns each
  batch's seconds per question (throughput; the median batch leaves compilation out).
  """
  from ftjax.generation import on_batch
  started = time.perf_counter()
  batch_seconds: list[float] = []

  def progress(batch):
    batch_seconds.append(batch.seconds / batch.rows)
    ctx.progress.batch(answerer.name, label, batch.done, batch.total, batch.new_tokens,
                       time.perf_counter() - started)
  with on_batch(progress):
    answers = answerer.answer([q.input for q in questions]) if questions else []
  return answers, time.perf_counter() - started, batch_seconds


def measure_latency(answerer, questions: Sequence[data_lib.Question], n: int) -> list[dict]:
  """Each of the first `n` questions answered alone (batch 1), what one user waits: total
  seconds, time to first token (prefill) and decode tokens/s. A call that compiled (a new
  prompt-length bucket) is timed again, so no figure includes compilation."""
  from ftjax.generation.decoding import timed
  out = []
  for q in questions[:n]:
    for _ in range(2):
      with timed() as timing:
        started = time.perf_counter()
        answerer.answer([q.input])
        seconds = time.perf_counter() - started
      if not timing.compiled:
        break
    out.append({"seconds": seconds, "ttft_s": timing.prefill_s if timing.calls else None,
                "decode_tokens_per_s": timing.decode_tokens_per_s,
                "new_tokens": timing.new_tokens})
  return out


def answers_stage(ctx: Context, arm: str, seed: int | None) -> tuple[Path, dict]:
  """Answers of one arm (and seed) to every question split; skipped arms record why."""
  index_folder = index_stage(ctx)[0] if arm in config_lib.RETRIEVAL_ARMS else None
  selected = None
  if arm in config_lib.TUNED_ARMS:
    kind = arm_registry.get(arm).weights
    train_folder, trained = train_stage(ctx, kind, seed)
    selected = trained.get("selected_step")
    model_key = {"train": train_folder.name, "step": selected}
  else:
    train_folder, model_key = None, ctx.model_key

  def build(folder: Path) -> dict:
    model = tuned_model(ctx, train_folder / "run", selected) if train_folder \
        else ctx.base_model()
    index = open_index(ctx, index_folder / "index") if index_folder else None
    answerer = make_answerer(ctx, arm, model, index)
    if arm_registry.get(arm).passages == "corpus":
      questions = [q for s in SPLITS for q in ctx.data.questions.get(s, [])]
      reason = answerer.does_not_fit([q.input for q in questions])
      if reason:
        ctx.progress.say(f"[cag] skipped: {reason}")
        return {"skipped": reason}
    # One stream over every split: fewer partial batches, fewer compilations.
    splits = answer_splits(ctx, arm)
    stream = [q for s in splits for q in ctx.data.questions[s]]
    answers, seconds, batch_seconds = answer_questions(ctx, answerer, stream, "+".join(splits))
    out, total = {}, len(answers)
    for s in splits:
      out[s] = [dataclasses.asdict(a) for a, q in zip(answers, stream) if q.split == s]
    latency = measure_latency(answerer, ctx.data.questions["eval"],
                              ctx.config.sampling.latency_questions)
    extra = {}
    if arm_registry.get(arm).passages == "corpus":  # the corpus's size and its prefill
      extra["cag"] = {**answerer.describe(), "prefill_s": answerer.prefill_seconds()}
    (folder / "answers.json").write_text(json.dumps(out, ensure_ascii=False))
    return {**extra, "seconds": seconds, "questions": total, "latency_s": latency,
            "seconds_per_question_by_batch": batch_seconds,
            "peak_rss_gb": peak_rss_gb()}
  return ctx.cache.run(f"answers-{arm}" + ("" if seed is None else f"-s{seed}"),
                       answer_key(ctx, arm, model_key, index_folder), build)


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
    _quiet_bm25s()
    shutil.copytree(index_folder / "index", folder / "index")
    index = RetrievalIndex.open(folder / "index")
    started = time.perf_counter()
    index.replace(ctx.data.updates)
    seconds = time.perf_counter() - started
    ctx.progress.say(f"[update rag] replaced {len(ctx.data.updates)} documents in {seconds:.1f}s")
    answerer = make_answerer(ctx, "rag", ctx.base_model(), index)
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
    answerer = make_answerer(ctx, "finetuned", tuned_model(ctx, folder / "run"))
    return {**trained, "method": "continue training on the changed facts",
            **_answer_update_questions(ctx, answerer, folder)}
  return ctx.cache.run(f"update-finetuned-s{seed}", key, build, fresh=False)


# ----------------------------------------------------------------------------- scoring

def score_rows(ctx: Context, arm: str, seed: int | None, answers: dict[str, list[Answer]],
               settings: dict) -> list[dict]:
  """One row per answer: the question, the answer with its metadata (prompt, passages, finish
  reason) and its scores (`summary.score_row`, which `ftjax.evaluation.score` reruns)."""
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
