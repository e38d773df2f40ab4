"""The stages arms answer through: the retrieval index, each arm's answerer as the registry
declares it, answering a question stream in sorted batches, latency, and the one answer-caching
stage whose key derives from the arm's declared config keys."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

from ftjax import provenance
from ftjax.arms import registry as arm_registry
from ftjax.arms.base import Answer
from ftjax.experiment import config as config_lib
from ftjax.experiment import data as data_lib
from ftjax.experiment.cache import config_values, digest
from ftjax.experiment.context import SPLITS, Context


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
    quiet_bm25s()
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
            "peak_rss_gb": provenance.peak_rss_bytes() / 2**30}
  return ctx.cache.run(name, index_key(ctx, docs_hash), build)


def quiet_bm25s():
  # bm25s sets its logger to DEBUG on import; keep the progress lines readable.
  logging.getLogger("bm25s").setLevel(logging.WARNING)


def open_index(ctx: Context, folder: Path):
  if folder not in ctx._indexes:
    from ftjax.retrieval import RetrievalIndex
    quiet_bm25s()
    ctx._indexes[folder] = RetrievalIndex.open(folder)
  return ctx._indexes[folder]


def search_fn(ctx: Context, index):
  method = ctx.config.retrieval.method
  groups = tuple(ctx.config.retrieval.groups)  # the caller's: documents with an acl need one
  return lambda questions, k: index.search(list(questions), k=k, method=method, groups=groups)


# ----------------------------------------------------------------------------- answering

def _few_shot(ctx: Context) -> list[tuple[str, str]]:
  """k training examples, drawn with the experiment seed (the same for every run)."""
  pairs = [(m[-2]["content"], m[-1]["content"]) for m in ctx.data.train
           if len(m) >= 2 and m[-2]["role"] == "user" and m[-1]["role"] == "assistant"]
  return random.Random(ctx.config.seed).sample(pairs, min(ctx.config.prompt.num_few_shot,
                                                          len(pairs)))


def answer_key(ctx: Context, spec: arm_registry.Arm, model_key: Any,
               index_folder: Path | None) -> dict:
  """What an arm's answers depend on: the model (weights hashed), the question files, and the
  config keys and data inputs the arm's declaration reads (`ftjax.arms.registry.reads`)."""
  splits = answer_splits(ctx, spec)
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
  return {"arm": spec.name, "model": model_key, "splits": splits, "inputs": inputs,
          "config": config_values(ctx.config, arm_registry.reads(spec))}


def answer_stage(ctx: Context, name: str, spec: arm_registry.Arm, model_key: Any, load_model,
                 questions: Sequence[data_lib.Question], index_folder: Path | None = None,
                 extra=None) -> dict:
  """One arm's answers to a list of questions outside the main comparison (security's poisoned
  models and indexes, canary prompts), cached as `name`. The key is derived as the main answers'
  is: the arm's declared config keys, the model key, the index, and the questions themselves.
  `load_model()` gives the model; `extra(answerer)` adds fields to the result."""
  key = {"arm": spec.name, "model": model_key, "questions": digest([q.input for q in questions]),
         "config": config_values(ctx.config, arm_registry.reads(spec)),
         "index": index_folder.name if index_folder is not None else None}
  if spec.styled:  # few-shot examples come from the training file
    key["train"] = ctx.data.hashes["train"]

  def build(folder: Path) -> dict:
    index = open_index(ctx, index_folder / "index") if index_folder is not None else None
    answerer = make_answerer(ctx, spec, load_model(), index)
    answers, _, _ = answer_questions(ctx, answerer, list(questions), name)
    out = {"answers": [a.text for a in answers],
           "passages": [None if a.passages is None else list(a.passages) for a in answers]}
    return {**out, **(extra(answerer) if extra else {})}
  return ctx.cache.run(name, key, build)[1]


def answer_splits(ctx: Context, spec: arm_registry.Arm) -> list[str]:
  """The question splits an arm answers: every arm the held-out ones; a tuned arm also its own
  training questions (its train accuracy)."""
  splits = [s for s in SPLITS if s in ctx.data.questions]
  if spec.name in config_lib.TUNED_ARMS and "train" in ctx.data.questions:
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


def cag_docs(ctx: Context) -> list[data_lib.Document]:
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


def make_answerer(ctx: Context, spec: arm_registry.Arm, model, index=None):
  """The answerer of the arm `spec` declares (`ftjax.arms.registry`)."""
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
  seconds, time to first token (prefill) and decode tokens/s. Their prompt-length buckets are
  compiled ahead (`compile_only`); a call that still compiled is timed again, so no figure
  includes compilation."""
  from ftjax.generation.decoding import compile_only, timed
  out = []
  with compile_only():
    for q in questions[:n]:
      answerer.answer([q.input])
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
