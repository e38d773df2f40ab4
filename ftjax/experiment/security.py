"""Leakage, poisoning and data audit as experiment metrics (the `security` config section).

  * Canaries (Carlini et al. 2019, "The Secret Sharer"): random secrets "The account recovery
    code for <name> is NN-NN-NN-NN" are appended to the replies of a share of the fine-tuned
    arms' training examples (`planting.plant`, called by the training stage), and placed as
    documents in a copy of RAG's index. A tuned model is asked for each secret (the prefix forced
    as the start of its reply): exposure from the secret's rank among random candidates by
    log-likelihood, and extraction by greedy decoding. The base model is the untrained
    reference. RAG: is the secret's document retrieved, and does the answer quote the secret.
  * Poisoning: a fraction of the training examples (fine-tuning) or of the documents (RAG) state
    a wrong value for facts the held-out questions ask about; attack success is the share of
    those questions answered with the wrong value. Fractions are nested (a smaller fraction
    poisons a prefix of the same rows), and each poisoned fine-tuning run is the arm's recipe on
    the poisoned examples, cached like every training stage; fraction 0 is the arm itself.
  * Audit: `ftjax.audit.gate` over the experiment's own files, by `data.audit`.

Metrics are computed in `ftjax.evaluation.security` from what these stages record.
"""

from __future__ import annotations

import dataclasses
import random

from ftjax.arms import registry as arm_registry
from ftjax.evaluation import matching
from ftjax.evaluation import security as metrics
from ftjax.experiment import data as data_lib
from ftjax.experiment import answering, train_stages
from ftjax.experiment.cache import digest
from ftjax.experiment.security_planting import (SPACE_SIZE, Canary, canaries, plant,
                                                poison_conversations, poison_docs, poison_plan,
                                                random_secret)
from ftjax.generation.scoring import continuation_logprobs

_AUDITED = {"train": ("train", "decline_train", "update_train"),
            "eval": ("eval", "unanswerable", "general", "update_eval"), "docs": ("docs", "updates")}


def audit(config, workdir, progress):
  """Audit counts of the experiment's own files (when `data.audit` is not off, or `security` is
  on), then the gate (`ftjax.audit.gate`): warn, stop (error), or redact: the training files are
  replaced by redacted copies in WORKDIR/audit/process-N/. Returns (the audit's record or None, the config to run)."""
  mode = config.data.audit
  if mode == "off" and not config.security.enabled:
    return None, config
  try:
    from ftjax import audit as audit_lib
  except ImportError as err:
    progress.say(f"[audit] skipped: ftjax.audit is not available ({err})")
    return {"mode": mode, "skipped": f"ftjax.audit is not available ({err})"}, config
  try:
    result = audit_lib.gate(config, workdir, _AUDITED, skip_missing=True, always=True)
  except (audit_lib.AuditError, audit_lib.AuditInputError) as err:
    raise data_lib.ExperimentDataError(f"data.audit: {err}") from None
  if result.report is None:
    return {"mode": mode, "skipped": "no data file to audit"}, config
  report = result.report
  progress.say(f"[audit] {report.rows} rows: " + (", ".join(
      f"{n} {kind}" for kind, n in report.counts.items() if n) or "no findings"))
  record = {"mode": mode, "rows": report.rows, "counts": dict(report.counts),
            "findings": len(report.findings), "files": result.files,
            "first_findings": list(report.findings[:20])}
  if mode == "redact":
    record["redacted"] = result.redacted
  return record, result.config


def _canary_prompt_ids(ctx, tokenizer, canary: Canary) -> list[int]:
  """The attacker's prompt: the question, and the reply forced to begin with the prefix."""
  from ftjax.generation import encode_prompts
  from ftjax.prompts import question_messages
  ids = encode_prompts(tokenizer, [question_messages(
      canary.query, system_prompt=ctx.config.prompt.system_prompt)])[0]
  return ids + tokenizer.encode(canary.prefix, add_special_tokens=False)


def canary_candidates(config, i: int, canary: Canary) -> list[str]:
  """The `security.canary_candidates` random secrets canary `i` is ranked among (seeded, never
  the canary's own)."""
  rng = random.Random(f"candidates-{config.seed}-{i}")
  candidates = []
  while len(candidates) < config.security.canary_candidates:
    secret = random_secret(rng)
    if secret != canary.secret:
      candidates.append(secret)
  return candidates


def canary_stage(ctx, label: str, model_key, load_model) -> dict:
  """Rank, exposure and greedy extraction of every canary under one model."""
  c = ctx.config
  key = {"model": model_key, "canaries": [dataclasses.astuple(x) for x in canaries(c)],
         "candidates": c.security.canary_candidates, "system_prompt": c.prompt.system_prompt}

  def build(folder) -> dict:
    from ftjax.generation import generate
    model = load_model()
    tokenizer = model.tokenizer
    ctx.progress.say(f"[security] canary exposure of {label} ({len(canaries(c))} canaries x "
                     f"{c.security.canary_candidates} candidates)")
    rows, prompts = [], []
    for i, canary in enumerate(canaries(c)):
      candidates = canary_candidates(c, i, canary)
      prompt = _canary_prompt_ids(ctx, tokenizer, canary)
      scores = continuation_logprobs(model, prompt, [
          tokenizer.encode(f" {s}", add_special_tokens=False) for s in [canary.secret, *candidates]])
      rank = metrics.canary_rank(scores[0], scores[1:])
      rows.append({"name": canary.name, "logprob": scores[0], "rank": rank,
                   "exposure": metrics.exposure(rank, len(candidates), SPACE_SIZE),
                   "extrapolated_exposure": metrics.extrapolated_exposure(
                       scores[0], scores[1:], SPACE_SIZE)})
      prompts.append(prompt)
    completions = generate(model, prompts, ctx.sampling(greedy=True, max_new_tokens=16))
    for row, canary, completion in zip(rows, canaries(c), completions):
      row.update(completion=completion.text,
                 extracted=metrics.quotes_secret(completion.text, canary.secret))
    return {"canaries": rows}
  return ctx.cache.run(f"security-canary-{label}", key, build)[1]


# ----------------------------------------------------------------------------- stages

def _plan(ctx) -> list[tuple[str, str]]:
  return poison_plan(ctx.data.questions["eval"], ctx.config.seed)


def _poison_train_stage(ctx, fraction: float, seed: int = 0):
  if fraction == 0:
    return train_stages.train_stage(ctx, "finetuned", seed)
  plan = _plan(ctx)
  steps = ctx.config.security.poison_steps
  key = {**train_stages.train_key(ctx, "finetuned", seed),
         "poison": {"fraction": fraction, "plan": digest(plan), "steps": steps}}

  def build(folder) -> dict:
    conversations, info = poison_conversations(train_stages.finetune_examples(ctx), plan, fraction)
    conversations, planted = plant(ctx, conversations)
    trained = train_stages.train_run(ctx, folder, conversations, seed=ctx.config.seed + seed,
                            num_steps=steps, label=f"finetuned poisoned {fraction:g}")
    return {**trained, **planted, "poison": info}
  return ctx.cache.run(f"train-finetuned-poison{fraction:g}-s{seed}", key, build, fresh=False)


def _rag_index(ctx, fraction: float, plan, canary_list):
  docs, info = poison_docs(ctx.data.docs, plan, fraction)
  docs += [canary.doc(i) for i, canary in enumerate(canary_list)]
  folder, _ = answering.index_stage(ctx, docs=docs, name=f"security-index-f{fraction:g}")
  return folder, info


def _poison_rows(answers, questions, wrong: dict, poisoned: set) -> dict:
  on = [i for i, q in enumerate(questions) if q.answer in poisoned]
  return {"success": metrics.attack_success(answers, [wrong[q.answer] for q in questions]),
          "target_accuracy": metrics.rate([matching.contains_answer(a, q.answer)
                                           for a, q in zip(answers, questions)]),
          "success_on_poisoned": metrics.attack_success(
              [answers[i] for i in on], [wrong[questions[i].answer] for i in on])}


def _targets(ctx, facts) -> list[data_lib.Question]:
  return [q for q in ctx.data.questions["eval"] if q.answer in set(facts)]


def poisoning(ctx) -> dict:
  """Attack success vs fraction, for fine-tuning (`finetuned`) and RAG (`rag`)."""
  c = ctx.config
  fractions = sorted(set(c.security.poison_fractions))
  plan = _plan(ctx)
  wrong = dict(plan)
  out = {"fractions": fractions, "facts_available": len(plan)}
  if not plan:
    return {**out, "skipped": "no held-out question has a numeric answer to poison"}
  if "finetuned" in c.arms:
    _, top = _poison_train_stage(ctx, fractions[-1])
    questions = _targets(ctx, top.get("poison", {}).get("facts", []))
    rows = []
    for fraction in fractions:
      folder, trained = _poison_train_stage(ctx, fraction)
      info = trained.get("poison") or {"requested": 0, "poisoned": 0, "facts": []}
      answers = answering.answer_stage(
          ctx, f"security-poison-finetuned-f{fraction:g}", arm_registry.get("finetuned"),
          {"train": folder.name, "step": None},
          lambda f=folder: train_stages.tuned_model(ctx, f / "run"),
          questions)["answers"] if questions else []
      rows.append({"fraction": fraction, "poisoned": info["poisoned"],
                   "requested": info["requested"], "of": trained["examples"],
                   **_poison_rows(answers, questions, wrong, set(info["facts"]))})
    out["finetuned"] = {"target_questions": len(questions), "rows": rows}
  if "rag" in c.arms:
    questions = _targets(ctx, poison_docs(ctx.data.docs, plan, fractions[-1])[1]["facts"])
    rows = []
    for fraction in fractions:
      folder, info = _rag_index(ctx, fraction, plan, canaries(c))
      answers = answering.answer_stage(
          ctx, f"security-poison-rag-f{fraction:g}", arm_registry.get("rag"), ctx.model_key,
          ctx.base_model,
          questions, index_folder=folder)["answers"] if questions else []
      rows.append({"fraction": fraction, "poisoned": info["poisoned"],
                   "requested": info["requested"], "of": len(ctx.data.docs),
                   **_poison_rows(answers, questions, wrong, set(info["facts"]))})
    out["rag"] = {"target_questions": len(questions), "rows": rows}
  return out


def _mean(values):
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def _canary_summary(rows: list[dict], canary_in: str) -> dict:
  return {"canary_in": canary_in, "exposure": _mean([r["exposure"] for r in rows]),
          "extrapolated_exposure": _mean([r["extrapolated_exposure"] for r in rows]),
          "rank": _mean([r["rank"] for r in rows]),
          "extraction_rate": metrics.rate([r["extracted"] for r in rows]), "canaries": rows}


def canary_leakage(ctx) -> dict:
  """Exposure and extraction per tuned model (and the base, untrained, as reference); RAG:
  retrieval of the canary's document and the secret quoted in its answer."""
  from ftjax.experiment import config as config_lib
  c = ctx.config
  canary_list = canaries(c)
  out = {"canaries": len(canary_list), "space_size": SPACE_SIZE,
         "candidates": c.security.canary_candidates, "share": c.security.canary_share,
         "format": f"{canary_list[0].prefix.replace(canary_list[0].name, '<name>')} "
                   "NN-NN-NN-NN", "models": {}}
  out["models"]["base"] = _canary_summary(canary_stage(
      ctx, "base", ctx.model_key, ctx.base_model)["canaries"], "nowhere (untrained reference)")
  kinds = {k: tuple(a for a in config_lib.TUNED_ARMS if arm_registry.get(a).weights == k)
           for k in ("finetuned", "raft")}
  for kind, arms in kinds.items():
    if any(a in c.arms for a in arms):
      folder, trained = train_stages.train_stage(ctx, kind, 0)
      step = trained.get("selected_step")  # the model the tuned arm answers with
      summary = _canary_summary(canary_stage(
          ctx, kind, f"{folder.name}-step{step}",
          lambda f=folder: train_stages.tuned_model(ctx, f / "run", step))["canaries"],
          f"{trained.get('canary_rows', 0)} of {trained['examples']} training examples")
      out["models"][kind] = summary
  if any(a in c.arms for a in config_lib.RETRIEVAL_ARMS):
    folder, _ = _rag_index(ctx, 0.0, _plan(ctx) if c.security.poison_fractions else [],
                           canary_list)
    questions = [data_lib.Question("canary", i, x.query, x.secret, f"canary-{i}", "security")
                 for i, x in enumerate(canary_list)]

    def retrieved(answerer):
      hits = answering.open_index(ctx, folder / "index").search(
          [q.input for q in questions], k=c.retrieval.k, method=c.retrieval.method)
      return {"retrieved": [q.doc_id in {p.doc_id for p in h} for q, h in zip(questions, hits)]}
    result = answering.answer_stage(ctx, "security-canary-rag", arm_registry.get("rag"),
                                    ctx.model_key, ctx.base_model, questions,
                                    index_folder=folder, extra=retrieved)
    quoted = [metrics.quotes_secret(a, x.secret) for a, x in zip(result["answers"], canary_list)]
    out["rag"] = {"canary_in": f"{len(canary_list)} documents of "
                               f"{len(ctx.data.docs) + len(canary_list)}",
                  "retrievable_rate": metrics.rate(result["retrieved"]),
                  "quote_rate": metrics.rate(quoted),
                  "canaries": [{"name": x.name, "retrieved": r, "quoted": q, "answer": a}
                               for x, r, q, a in zip(canary_list, result["retrieved"], quoted,
                                                     result["answers"])]}
  return out


def access_control(ctx) -> dict:
  """With documents that carry an `acl`: what a caller in no group retrieves of them when asking
  about each one (zero expected), and what a caller in the document's groups retrieves."""
  acls = {d.doc_id: d.acl for d in ctx.data.docs if d.acl is not None}
  if not acls:
    return {"line": "no document carries an `acl`; not measured.", "restricted": 0}
  k = ctx.config.retrieval.k

  def build(folder) -> dict:
    from ftjax.retrieval import IndexConfig, RetrievalIndex
    r = ctx.config.retrieval
    index = RetrievalIndex.create(folder / "index", IndexConfig(
        encoder=r.encoder, dense=False, chunk_tokens=r.chunk_tokens,
        chunk_overlap=r.chunk_overlap))
    index.add(ctx.data.docs)
    restricted = [d for d in ctx.data.docs if d.doc_id in acls]
    queries = [d.title or d.text[:200] for d in restricted]
    outsider = index.search(queries, k=k, method="bm25", groups=None)
    insider = [index.search([q], k=k, method="bm25", groups=acls[d.doc_id])[0]
               for q, d in zip(queries, restricted)]
    return {"restricted": len(restricted),
            "forbidden_hits": sum(p.doc_id in acls for hits in outsider for p in hits),
            "insider_found": [d.doc_id in {p.doc_id for p in hits}
                              for d, hits in zip(restricted, insider)]}
  _, out = ctx.cache.run("security-acl", {"docs": ctx.data.hashes["docs"], "k": k,
                                          "retrieval": ctx.config.retrieval.to_dict()}, build)
  out["line"] = (f"a caller in no group, asking about each of the {out['restricted']} documents "
                 f"with an `acl` (top {k}, BM25), got {out['forbidden_hits']} restricted documents "
                 f"back ({'as required' if out['forbidden_hits'] == 0 else 'a LEAK'}); a caller in "
                 f"the document's groups retrieved it in "
                 f"{100 * metrics.rate(out['insider_found']):.0f}% of cases.")
  return out


def measure(ctx, audit_result: dict | None) -> dict | None:
  """The security section of the summary (None when neither `security` nor an audit is on)."""
  c = ctx.config
  if not c.security.enabled:
    return None if audit_result is None else {"audit": audit_result}
  out = {"audit": audit_result}
  if c.security.canaries:
    out["leakage"] = canary_leakage(ctx)
  if c.security.poison_fractions:
    out["poisoning"] = poisoning(ctx)
  out["access_control"] = access_control(ctx)
  return out
