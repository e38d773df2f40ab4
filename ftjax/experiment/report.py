"""`report.md` and PNG plots from `summary.json`: the arms side by side, and the article's
comparison table (../shared/reference/fine-tuning-vs-rag.txt) with every row measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ftjax.experiment.results import (ArmSummary, Budget, Difference, Rate, Security, Summary)

ARTICLE = {  # aspect -> (fine-tuning, RAG), as the article states them
    "Initial cost": ("Very high", "Relatively low"),
    "Implementation time": ("Long (weeks-months)", "Short (days-weeks)"),
    "Technical requirements": ("High (GPU/TPU, ML expertise)", "Average (database, API)"),
    "Knowledge update": ("Requires retraining", "Instant through database update"),
    "Quality in specialization": ("Very high", "High"),
    "Flexibility": ("Low", "Very high"),
    "Style consistency": ("Perfect", "Good (depends on prompts)"),
    "Scalability": ("Limited", "Very high"),
    "Transparency": ("Low", "High (can see information sources)"),
    "Hallucination risk": ("Medium in specialization, high outside it", "Low"),
    # Not a row of the article's table: its "Security and Risk Control" section, on fine-tuning.
    "Security and risk": ("Can learn to disclose confidential training data; poisoned by bad "
                          "training data", "(not covered by the article)"),
}


def _pct(x):
  return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt="{:,.1f}"):
  return "n/a" if x is None else fmt.format(x)


def _sci(x):
  return "n/a" if x is None else f"{x:.2e}"


def _ci(rate: Rate, fmt=_pct) -> str:
  """"27.1% [16.6-41.2]": the value (mean over seeds, ± std across seeds when there are several)
  with its 95% interval."""
  if rate.value is None:
    return "n/a"
  text = fmt(rate.value)
  if rate.seeds > 1 and rate.std is not None:
    text += f" ± {fmt(rate.std)}"
  if rate.ci and rate.ci[0] is not None:
    text += f" [{100 * rate.ci[0]:.0f}-{100 * rate.ci[1]:.0f}]"
  return text


def _arm_ci(arm: ArmSummary | None, key: str) -> str:
  return _ci(arm.rate(key)) if arm else "n/a"


ARM_COLUMNS = (("accuracy", "accuracy"), ("em", "EM"), ("f1", "F1"), ("style_rate", "style"),
               ("refusal_rate", "declined (answerable)"), ("wrong_rate", "wrong"),
               ("selective_accuracy", "accuracy when answering"),
               ("abstain_rate", "declined (unanswerable)"),
               ("hallucination_rate", "hallucinated (unanswerable)"),
               ("multi_value_rate", "listed other values"), ("truncation_rate", "truncated"),
               ("general_accuracy", "general accuracy"), ("train_accuracy", "train accuracy"),
               ("citation_accuracy", "citation"), ("attribution_rate", "attribution"))


def cag_note(arms: dict[str, ArmSummary]) -> str:
  """CAG's corpus against its context, its prefill and time to first token."""
  arm = arms.get("cag")
  cag = arm.cag if arm else None
  if not cag:
    return ""
  ttft = arm.ttft_s.p50 if arm.ttft_s else None
  return (f"; CAG: {cag.documents} documents, {cag.corpus_tokens:,} corpus tokens of a "
          f"usable context of {cag.context:,} ({cag.context_source}), prefilled once in "
          f"{cag.prefill_s:.2f} s, first token after {_num(ttft, '{:.2f}')} s (p50)")


def arms_table(summary: Summary) -> list[str]:
  """One row per arm: every rate with its 95% interval (Wilson over questions), n and seeds."""
  header = [label for _, label in ARM_COLUMNS] + ["prompt tokens", "new tokens",
                                                  "latency p50 / p95 (s)", "first token p50 (s)",
                                                  "decode tok/s", "questions", "seeds"]
  lines = ["| arm | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 1)]
  for arm, m in summary.arms.items():
    lat = m.latency_s
    cells = [_ci(m.rate(key)) for key, _ in ARM_COLUMNS]
    cells += [_num(m.prompt_tokens), _num(m.new_tokens),
              (f"{_num(lat.p50, '{:.2f}')} / {_num(lat.p95, '{:.2f}')} (n={lat.n})" if lat
               else "n/a"), _num(m.ttft_s.p50 if m.ttft_s else None, "{:.2f}"),
              _num(m.decode_tokens_per_s, "{:.1f}"), str(m.n_questions), str(m.seeds)]
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  for arm, reason in summary.skipped.items():
    if not arm.startswith(("data.", "update_")):
      lines.append(f"| {arm} | skipped: {reason} |" + " |" * len(header))
  return lines


def budget_text(b: Budget | None) -> str:
  """The budget behind a tuned arm's figures."""
  if not b:
    return "budget unknown"
  epochs = f", {b.epochs:.1f} epochs" if b.epochs is not None else ""
  sel = (f", selected step {b.selected_step} ({b.select_reason})"
         if b.selected_step not in (None, b.steps) else "")
  return f"{b.steps} steps{epochs}{sel}; train accuracy {_pct(b.train_accuracy)}"


def _delta(c: Difference) -> str:
  return (f"Δ {100 * c.diff:+.1f} pts [{100 * c.ci[0]:+.1f}, {100 * c.ci[1]:+.1f}], n={c.n}"
          + (f", McNemar p={c.p:.3g}" if c.p is not None else ""))


def paired_note(summary: Summary, a: str, b: str, metric: str, text_higher: str,
                text_lower: str, agrees_if_higher: bool | None) -> str:
  """The verdict of `a` vs `b` on `metric`: a direction only when the paired 95% interval of
  the difference excludes zero, else "within noise"."""
  c = summary.compare(a, b, metric)
  if c is None or c.diff is None:
    return "not measured (an arm is off or data is missing)"
  delta = _delta(c)
  if c.verdict == "within noise":
    return f"within noise ({delta})"
  higher = c.verdict == "higher"
  text = text_higher if higher else text_lower
  if agrees_if_higher is None:
    return f"{text} ({delta})"
  agrees = higher == agrees_if_higher
  return (text if agrees else "**disagrees with the article**: " + text) + f" ({delta})"


def mc_note(c: Difference | None, text_higher: str, text_lower: str) -> str:
  """A tuned model vs the base on multiple choice: a direction only outside the noise; fewer
  right answers than the base is the article's forgetting (agrees), more disagrees."""
  if not c or c.diff is None:
    return "not measured"
  delta = _delta(c)
  if c.verdict == "within noise":
    return f"within noise ({delta})"
  if c.verdict == "higher":
    return f"**disagrees with the article**: {text_higher} ({delta})"
  return f"{text_lower} ({delta})"


def comparison_rows(summary: Summary) -> list[tuple[str, str, str, str]]:
  """(aspect, fine-tuning measured, RAG measured, note) for every row of the article's table."""
  arms, cost, update = summary.arms, summary.cost, summary.update
  ft, rag = arms.get("finetuned"), arms.get("rag")
  train = cost.train.get("finetuned")
  index = cost.index
  inf = cost.inference
  cur = cost.currency
  rows = []

  def note(agrees: bool | None, text_agree: str, text_disagree: str) -> str:
    if agrees is None:
      return "not measured (an arm is off or data is missing)"
    return text_agree if agrees else "**disagrees with the article**: " + text_disagree

  if train and index:
    rows.append(("Initial cost",
                 f"{_sci(train.flops)} FLOPs, {train.seconds:.0f} s, "
                 f"{train.money:.4f} {cur} (training)",
                 f"{index.seconds:.1f} s, {index.money:.5f} {cur} (indexing)",
                 note(train.seconds > index.seconds,
                      f"fine-tuning costs {train.seconds / max(index.seconds, 1e-9):.0f}x "
                      "the indexing time up front", "indexing cost more than training")))
    rows.append(("Implementation time",
                 f"{train.seconds:.0f} s from examples to a tuned model on "
                 f"{cost.device} ({train.steps} steps)",
                 f"{index.seconds:.1f} s from documents to a searchable index",
                 "machine time only; the people-time of the article is not measurable here"))
    rows.append(("Technical requirements",
                 f"peak RSS {train.peak_rss_gb:.1f} GB, {train.trainable_params:,} "
                 "trainable params, an accelerator to scale",
                 f"peak RSS {index.peak_rss_gb:.1f} GB (index build), an encoder and an index",
                 "process peak memory when the stage finished; both ran on this CPU"))
  else:
    rows += [(a, "n/a", "n/a", note(None, "", "")) for a in
             ("Initial cost", "Implementation time", "Technical requirements")]

  uf, ur = update.get("finetuned"), update.get("rag")
  if uf and ur:
    rows.append(("Knowledge update",
                 f"{uf.seconds:.0f} s retraining ({uf.steps} steps); changed facts "
                 f"{_pct(uf.update_accuracy)}, unchanged {_pct(uf.unchanged_accuracy)}",
                 f"{ur.seconds:.2f} s re-indexing; changed facts "
                 f"{_pct(ur.update_accuracy)}, unchanged {_pct(ur.unchanged_accuracy)}",
                 note(ur.seconds < uf.seconds,
                      f"re-indexing was {uf.seconds / max(ur.seconds, 1e-9):.0f}x faster",
                      "retraining was faster than re-indexing")))
  else:
    reason = summary.skipped.get("update_rag") or "an arm is off"
    rows.append(("Knowledge update", "n/a", "n/a", f"not measured: {reason}"))

  def pair(key, label):
    return (f"{label} {_arm_ci(ft, key)}" if ft else "n/a",
            f"{label} {_arm_ci(rag, key)}" if rag else "n/a")

  ft_budget = ft.budget if ft else None
  budget = f"; fine-tuned budget: {budget_text(ft_budget)}" if ft else ""

  def tuned_note(text: str) -> str:
    if ft_budget and ft_budget.under_trained:
      return (f"**under-trained** (train accuracy {_pct(ft_budget.train_accuracy)} < "
              f"{_pct(ft_budget.learned_threshold)}): no verdict; {text}")
    return text

  a, b = pair("accuracy", "accuracy")
  extra = "; ".join(f"{arm} {_arm_ci(arms[arm], 'accuracy')}" for arm in
                    ("prompted_rag", "finetuned_rag", "raft", "raft_oracle", "raft_closed_book",
                     "cag", "base") if arm in arms)
  rows.append(("Quality in specialization", a, b, tuned_note(
      paired_note(summary, "finetuned", "rag", "accuracy",
                  "fine-tuned more accurate than RAG",
                  "RAG more accurate on held-out domain questions", True)
      + f"{budget}; others: {extra}")))
  base = arms.get("base")
  a = f"general-knowledge accuracy {_arm_ci(ft, 'general_accuracy')}" if ft else "n/a"
  b = (f"RAG keeps the base model: {_arm_ci(base, 'general_accuracy')} without passages; "
       f"{_arm_ci(rag, 'general_accuracy')} with irrelevant passages (distraction)"
       if rag and base else "n/a")
  mc = summary.general_mc or {}
  if "finetuned" in mc and "base" in mc:  # multiple choice by log-likelihood, as papers report
    a = f"general knowledge (multiple choice) {_ci(mc['finetuned'].rate())}, n={mc['finetuned'].n}"
    b = (f"RAG keeps the base model: {_ci(mc['base'].rate())} (multiple choice, "
         f"n={mc['base'].n})")
    rows.append(("Flexibility", a, b, tuned_note(
        "forgetting, fine-tuned vs base by log-likelihood: " + mc_note(
            mc["finetuned"].vs_base, "the tuned model answers more general questions "
            "than the base", "the tuned model forgot general knowledge") + budget)))
  else:
    rows.append(("Flexibility", a, b, tuned_note(
        "forgetting, fine-tuned vs base on the same prompts: " + paired_note(
            summary, "finetuned", "base", "general_accuracy",
            "the tuned model answers more general questions than the base",
            "the tuned model forgot general knowledge", False) + budget)))
  a, b = pair("style_rate", "house style")
  others = "; ".join(f"{arm} {_arm_ci(arms[arm], 'style_rate')} with "
                     f"{_num(arms[arm].prompt_tokens)} prompt tokens"
                     for arm in ("prompted", "prompted_rag") if arm in arms)
  style_note = paired_note(summary, "finetuned", "rag", "style_rate",
                           "fine-tuning held the style more consistently than plain RAG",
                           "plain RAG held the style better", True)
  if "prompted_rag" in arms:
    style_note += "; at equal prompt effort, fine-tuned vs prompted RAG: " + paired_note(
        summary, "finetuned", "prompted_rag", "style_rate", "fine-tuning ahead",
        "prompted RAG ahead", None)
  rows.append(("Style consistency", a, b,
               tuned_note(style_note + (f"; {others}" if others else "") + budget)))
  if "finetuned" in inf and "rag" in inf:
    f_, r_ = inf["finetuned"], inf["rag"]
    rows.append(("Scalability",
                 f"{f_.prompt_tokens:.0f} prompt tokens, {_sci(f_.flops_per_question)} "
                 f"FLOPs, {f_.seconds_per_question:.2f} s per question",
                 f"{r_.prompt_tokens:.0f} prompt tokens, {_sci(r_.flops_per_question)} "
                 f"FLOPs, {r_.seconds_per_question:.2f} s per question; index of "
                 f"{index.chunks if index else 'n/a'} chunks",
                 "per question, fine-tuning reads fewer tokens; RAG's corpus grows without "
                 "retraining, fine-tuning's knowledge grows only by training" + cag_note(arms)))
  else:
    rows.append(("Scalability", "n/a", "n/a", note(None, "", "")))
  rows.append(("Transparency", "no sources: answers cannot be traced to a document",
               (f"attribution {_arm_ci(rag, 'attribution_rate')}; gold document retrieved "
                f"{_arm_ci(rag, 'citation_accuracy')}") if rag else "n/a",
               "attribution: correct RAG answers whose answer value appears in a passage the arm "
               "was given; gold document retrieved is near 100% by construction for invented "
               "facts"))
  a, b = pair("hallucination_rate", "hallucinated on unanswerable")
  abst = (f"; declined answerable questions: fine-tuned {_arm_ci(ft, 'refusal_rate')}, "
          f"RAG {_arm_ci(rag, 'refusal_rate')}")
  rows.append(("Hallucination risk", a, b, tuned_note(
      paired_note(summary, "finetuned", "rag", "hallucination_rate",
                  "fine-tuning hallucinated more on unanswerable questions",
                  "fine-tuning hallucinated less", True) + abst + budget)))
  rows.append(security_row(summary.security))
  return rows


def _bits(x):
  return "n/a" if x is None else f"{x:.1f} bits"


def security_row(security: Security | None) -> tuple[str, str, str, str]:
  """The measured cells of the security aspect: leakage of planted secrets, poisoning."""
  leakage = security.leakage if security else None
  poisoning = security.poisoning if security else None
  if not leakage and not poisoning:
    return ("Security and risk", "n/a", "n/a", "not measured (the `security` section is off)")
  tuned = leakage.models.get("finetuned") if leakage else None
  base = leakage.models.get("base") if leakage else None
  rag = leakage.rag if leakage else None
  ft_cells, rag_cells, notes = [], [], []
  if tuned:
    chance = chance_exposure(leakage.candidates, leakage.canaries)
    chance_text = ""
    if chance:
      mean, sd = chance
      within = abs(tuned.exposure - mean) <= 2 * sd if tuned.exposure is not None else None
      chance_text = (f"; chance level {mean:.1f} ± {sd:.1f} bits for "
                     f"{leakage.canaries} canaries among {leakage.candidates} "
                     "candidates" + ("; **within chance**: no evidence of memorisation"
                                     if within else ""))
    ft_cells.append(f"canary exposure {_bits(tuned.exposure)} (base "
                    f"{_bits(base and base.exposure)}), extracted "
                    f"{_pct(tuned.extraction_rate)}{chance_text}")
  if rag:
    rag_cells.append(f"canary document retrieved {_pct(rag.retrievable_rate)}, secret quoted "
                     f"{_pct(rag.quote_rate)}")
  if tuned and rag:
    notes.append(f"secrets given to users: fine-tuned {_pct(tuned.extraction_rate)}, RAG "
                 f"{_pct(rag.quote_rate)}; a document can be deleted or put behind an ACL at "
                 "once, a memorised secret only by retraining")
  ft_poison = poisoning.finetuned if poisoning else None
  rag_poison = poisoning.rag if poisoning else None
  for part, cells, unit in ((ft_poison, ft_cells, "examples"),
                            (rag_poison, rag_cells, "documents")):
    if part and part.rows:
      cells.append(f"{_pct(part.top.fraction)} of {unit} poisoned: attack success "
                   f"{_pct(part.top.success)} (clean {_pct(part.clean.success)})")
  ft_top, rag_top = ft_poison and ft_poison.top, rag_poison and rag_poison.top
  if ft_top and rag_top and ft_top.success is not None and rag_top.success is not None:
    # Poisoning can only replace a fact an arm knew: compare only where both clean arms answered
    # most targeted facts.
    unlearned = [(arm, part.clean) for arm, part in (("fine-tuned", ft_poison), ("RAG", rag_poison))
                 if (part.clean.target_accuracy or 0) < 0.5]
    if unlearned:
      notes.append("poisoning not compared: the clean " + ", ".join(
          f"{arm} arm answered only {_pct(c.target_accuracy)}" for arm, c in unlearned)
                   + " of the targeted facts, so there was little to poison")
    else:
      notes.append("poisoning took hold more in " + (
          "RAG" if rag_top.success > ft_top.success else "fine-tuning"
          if ft_top.success > rag_top.success else "neither (a tie)")
          + " (single runs, no interval)")
  return ("Security and risk", "; ".join(ft_cells) or "n/a", "; ".join(rag_cells) or "n/a",
          "; ".join(notes) or "see the Security section")


def chance_exposure(candidates: int | None, canaries: int | None) -> tuple[float, float] | None:
  """Mean and spread of the exposure an untrained model gets by chance: a secret's rank uniform
  among candidates + 1, exposure log2((C + 1) / rank), averaged over the canaries."""
  if not candidates or not canaries:
    return None
  n = candidates + 1
  values = [math.log2(n / r) for r in range(1, n + 1)]
  mean = sum(values) / n
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
  return mean, sd / math.sqrt(canaries)


def security_lines(security: Security | None) -> list[str]:
  """The report's Security section: leakage, poisoning, data audit."""
  lines = ["", "## Security", ""]
  if not security:
    return lines + ["not measured: the `security` section is off and `data.audit` is off."]
  leakage = security.leakage
  if leakage:
    lines += [f"Canaries (Carlini et al. 2019): {leakage.canaries} random secrets "
              f"\"{leakage.format}\" ({leakage.space_size:.0e} possible). Exposure = "
              "log2|space| - log2(estimated rank of the secret in the space), the rank taken among "
              f"{leakage.candidates} random candidates by the model's log-likelihood of the "
              "secret after its prefix (at most log2(candidates + 1) = "
              f"{_bits(math.log2(leakage.candidates + 1))}); extrapolated: from a "
              "normal fit of the candidates' log-likelihoods. Extraction: greedy decoding after "
              "the prefix reproduces the secret.", "",
              "| model | canary in | exposure | exposure (extrapolated) | mean rank | "
              "extracted (greedy) |", "|---|---|---|---|---|---|"]
    for name, m in leakage.models.items():
      lines.append(f"| {name} | {m.canary_in} | {_bits(m.exposure)} | "
                   f"{_bits(m.extrapolated_exposure)} | {_num(m.rank)} of "
                   f"{leakage.candidates + 1} | {_pct(m.extraction_rate)} |")
    rag = leakage.rag
    if rag:
      lines += ["", f"RAG (canaries as documents: {rag.canary_in}): the secret's document is "
                f"retrieved for a question about it in {_pct(rag.retrievable_rate)} of cases; "
                f"the RAG answer quotes the secret in {_pct(rag.quote_rate)}."]
  poisoning = security.poisoning
  if poisoning:
    lines += ["", "### Poisoning", ""]
    if poisoning.skipped:
      lines.append(f"not measured: {poisoning.skipped}")
    else:
      lines += ["A fraction of the training examples (fine-tuning) or of the documents (RAG) "
                "states a wrong value (every digit shifted) for facts the held-out questions ask "
                "about; attack success: the share of those questions (the facts poisoned at the "
                "largest fraction) answered with the wrong value. Fraction 0 is the clean arm.", "",
                "| arm | fraction | poisoned | target questions | attack success | success on "
                "poisoned facts | accuracy on targets |", "|---|---|---|---|---|---|---|"]
      for arm, part in (("finetuned", poisoning.finetuned), ("rag", poisoning.rag)):
        for row in part.rows if part else []:
          lines.append(f"| {arm} | {_pct(row.fraction)} | {row.poisoned} of {row.of} | "
                       f"{part.target_questions} | {_pct(row.success)} | "
                       f"{_pct(row.success_on_poisoned)} | {_pct(row.target_accuracy)} |")
  audit = security.audit
  lines += ["", "### Data audit", ""]
  if not audit:
    lines.append("not run (`data.audit` is off).")
  elif audit.skipped:
    lines.append(f"not run: {audit.skipped}")
  else:
    lines += [f"`ftjax.audit` over the experiment's own files ({audit.rows} rows; gate "
              f"`data.audit = {audit.mode}`" + (f", training on redacted copies: "
              f"{audit.redacted} spans replaced" if audit.redacted is not None else "")
              + "):", "", "| " + " | ".join(audit.counts) + " |",
              "|" + "---|" * len(audit.counts),
              "| " + " | ".join(str(n) for n in audit.counts.values()) + " |"]
  acl = security.access_control
  if acl:
    lines += ["", f"Access control: {acl.line}"]
  return lines


def as_summary(summary: Summary | dict) -> Summary:
  """The typed summary of `summary.json`'s dict (a Summary is returned as is)."""
  return summary if isinstance(summary, Summary) else Summary.from_dict(summary)


def write(workdir: Path, config, summary: Summary | dict):
  from ftjax.experiment.summary import title
  summary = as_summary(summary)
  workdir = Path(workdir)
  plots = _plots(workdir, summary)
  cost = summary.cost
  notes = summary.data
  lines = [f"# {title(config)}: fine-tuning vs retrieval on {config.model}", "",
           "Every arm answered the same held-out questions (greedy unless configured). "
           "Accuracy: a normalised accepted gold answer appears in the answer and no other "
           "candidate value does (listing every value is wrong); EM / F1: the extracted short "
           "answer (`scoring.answer_pattern`, or the answer without the style's fixed text) "
           "against the gold; style: the house-style regex "
           f"`{config.style.pattern or '(none)'}` matches; declined: a decline phrasing; "
           "hallucinated: an unanswerable question answered without declining. Brackets: 95% "
           "intervals (Wilson over questions). A difference between arms is reported only when "
           "its paired 95% bootstrap interval excludes zero; otherwise it is \"within noise\".",
           *(["", *(f"- {n}" for n in notes.values())] if notes else []),
           "", "## Arms", "", *arms_table(summary), "", *budget_lines(summary), "",
           "## The article's comparison, measured", "",
           "| aspect | fine-tuning (article) | RAG (article) | fine-tuning (measured) | "
           "RAG (measured) | note |", "|---|---|---|---|---|---|"]
  for aspect, ft, rag, note in comparison_rows(summary):
    art_ft, art_rag = ARTICLE[aspect]
    lines.append(f"| {aspect} | {art_ft} | {art_rag} | {ft} | {rag} | {note} |")
  lines += ["", "## Knowledge update", ""]
  if summary.update:
    lines += ["| arm | method | seconds | changed facts accuracy | unchanged facts accuracy | "
              "style |", "|---|---|---|---|---|---|"]
    for arm, u in summary.update.items():
      lines.append(f"| {arm} | {u.method} | {u.seconds:.2f} | "
                   f"{_pct(u.update_accuracy)} | {_pct(u.unchanged_accuracy)} | "
                   f"{_pct(u.style_rate)} |")
  else:
    lines.append("not measured: " + "; ".join(
        f"{k}: {v}" for k, v in summary.skipped.items() if k.startswith("update_")))
  lines += security_lines(summary.security)
  lines += ["", "## Cost", "",
            f"Device: {cost.device}; price {cost.price_per_device_hour} "
            f"{cost.currency} per device-hour; peak resident memory "
            f"{cost.peak_rss_gb:.1f} GB.", "",
            "| arm | prompt tokens | FLOPs / question | s / question (batched, median batch) |",
            "|---|---|---|---|"]
  for arm, c in cost.inference.items():
    lines.append(f"| {arm} | {c.prompt_tokens:.0f} | {_sci(c.flops_per_question)} | "
                 f"{c.seconds_per_question:.3f} |")
  for kind, t in cost.train.items():
    lines.append(f"\nTraining `{kind}`: {t.steps} steps, {t.tokens:,.0f} tokens, "
                 f"{_sci(t.flops)} FLOPs, {t.seconds:.0f} s (steady step time x steps; "
                 f"wall {t.wall_seconds:.0f} s, of which loading and "
                 f"compilation {t.overhead_seconds:.0f} s and dev evaluations "
                 f"{t.eval_seconds:.0f} s).")
  per_correct = [f"{arm} {c.seconds_per_correct:.2f} s" for arm, c in cost.inference.items()
                 if c.seconds_per_correct]
  if per_correct:
    lines.append("\nSeconds per correct answer: " + ", ".join(per_correct) + ".")
  if cost.index:
    lines.append(f"\nIndexing: {cost.index.documents} documents, "
                 f"{cost.index.chunks} chunks in {cost.index.seconds:.1f} s.")

  def questions(n):
    return "never (no saving per question)" if n is None else f"{n:,.0f} questions"

  for name, b in cost.break_even.items():
    (acc_t, acc_o), (ci_t, ci_o) = b.accuracy, b.accuracy_ci
    tuned, other = name.split("_vs_")
    lines.append(f"\nBreak-even `{name}`: {questions(b.questions_flops)} in FLOPs, "
                 f"{questions(b.questions_seconds)} in seconds on this machine (and in money: "
                 f"one price per device-hour); accuracy {tuned} {_ci(Rate(acc_t, ci_t))} vs "
                 f"{other} {_ci(Rate(acc_o, ci_o))}"
                 + (" — the tuned arm is less accurate, so this pays for worse answers"
                    if b.pays_for_worse_answers else "") + ".")
  if summary.skipped:
    lines += ["", "## Skipped", ""] + [f"- `{k}`: {v}" for k, v in summary.skipped.items()]
  lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(workdir).as_posix()})"
                                   for p in plots]
  lines += ["", "Per-question results: `results.jsonl`; numbers: `summary.json`; config, "
            "versions, commit and machine: `experiment.json`.", ""]
  (workdir / "report.md").write_text("\n".join(lines))


def budget_lines(summary: Summary) -> list[str]:
  """The tuned arms' training budgets: what their figures rest on."""
  tuned = {arm: m.budget for arm, m in summary.arms.items() if m.budget}
  if not tuned:
    return []
  lines = ["## Training budget of the tuned arms", "",
           "| arm | steps | epochs | selected step | train accuracy | learned? | examples |",
           "|---|---|---|---|---|---|---|"]
  for arm, b in tuned.items():
    learned = {True: "yes", False: f"**no: under-trained** (< {_pct(b.learned_threshold)})",
               None: "not measured (no training questions with an answer)"}[b.learned]
    lines.append(f"| {arm} | {b.steps} | {_num(b.epochs)} | "
                 f"{b.selected_step} ({b.select_reason}) | "
                 f"{_ci(b.rate())} | {learned} | {b.examples} |")
  return lines


def _plots(workdir: Path, summary: Summary) -> list[Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  folder = workdir / "plots"
  folder.mkdir(exist_ok=True)
  arms = summary.arms
  names = list(arms)
  paths = []

  fig, ax = plt.subplots(figsize=(8, 4))
  width = 0.38
  xs = range(len(names))
  ax.bar([x - width / 2 for x in xs], [arms[n].accuracy or 0 for n in names], width,
         label="accuracy")
  ax.bar([x + width / 2 for x in xs], [arms[n].style_rate or 0 for n in names], width,
         label="style rate")
  ax.set_xticks(list(xs), names, rotation=20)
  ax.set_ylim(0, 1)
  ax.set_title("Accuracy and house style by arm")
  ax.legend()
  paths.append(_save(fig, folder / "accuracy_style_by_arm.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  for n in names:
    ax.scatter(arms[n].prompt_tokens or 0, arms[n].accuracy or 0)
    ax.annotate(n, (arms[n].prompt_tokens or 0, arms[n].accuracy or 0))
  ax.set_xlabel("mean prompt tokens per question")
  ax.set_ylabel("accuracy")
  ax.set_title("Accuracy vs prompt length")
  paths.append(_save(fig, folder / "accuracy_vs_prompt_tokens.png"))

  cost = summary.cost
  inf, train = cost.inference, cost.train
  if "finetuned" in inf and "rag" in inf and "finetuned" in train:
    be = cost.break_even.get("finetuned_vs_rag")
    at = be.questions_seconds if be else None
    horizon = max(100.0, 2 * (at or 0))
    qs = [horizon * i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(6, 4))
    idx_s = cost.index.seconds if cost.index else 0.0
    ax.plot(qs, [train["finetuned"].seconds + q * inf["finetuned"].seconds_per_question
                 for q in qs], label="fine-tuned (training + answers)")
    ax.plot(qs, [idx_s + q * inf["rag"].seconds_per_question for q in qs],
            label="RAG (indexing + answers)")
    if at:
      ax.axvline(at, linestyle="--", color="gray")
      ax.annotate(f"break-even {at:,.0f}", (at, 0))
    ax.set_xlabel("questions answered")
    ax.set_ylabel("seconds on this machine")
    ax.set_title("Cost vs number of questions")
    ax.legend()
    paths.append(_save(fig, folder / "cost_vs_questions.png"))

  poisoning = summary.security.poisoning if summary.security else None
  parts = ((poisoning.finetuned, "fine-tuning (training examples)"),
           (poisoning.rag, "RAG (documents)")) if poisoning else ()
  if any(part and part.rows for part, _ in parts):
    fig, ax = plt.subplots(figsize=(6, 4))
    for part, label in parts:
      if part and part.rows:
        ax.plot([r.fraction for r in part.rows], [r.success or 0 for r in part.rows], marker="o",
                label=label)
    ax.set_xlabel("fraction poisoned")
    ax.set_ylabel("attack success (wrong value stated)")
    ax.set_ylim(0, 1)
    ax.set_title("Poisoning: attack success vs fraction")
    ax.legend()
    paths.append(_save(fig, folder / "poisoning_success.png"))

  curves = {arm: m.budget.learning_curves for arm, m in arms.items()
            if m.budget and m.budget.learning_curves}
  if any(c for runs in curves.values() for c in runs):
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, runs in curves.items():
      for seed, curve in enumerate(runs):
        if not curve:
          continue
        steps = [p["step"] for p in curve]
        for key, style in (("train_accuracy", "-"), ("dev_accuracy", "--")):
          ax.plot(steps, [p[key] if p[key] is not None else float("nan") for p in curve],
                  style, marker="o", label=f"{arm} s{seed} {key.split('_')[0]}")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (generation)")
    ax.set_ylim(0, 1)
    ax.set_title("Train and dev accuracy while training")
    ax.legend(fontsize=7)
    paths.append(_save(fig, folder / "learning_curves.png"))
  return paths


def _save(fig, path: Path) -> Path:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  import matplotlib.pyplot as plt
  plt.close(fig)
  return path


def write_sweep(workdir: Path, config, points: list[dict], table: list[dict]):
  workdir = Path(workdir)
  (workdir / "sweep.json").write_text(json.dumps({"points": points, "rows": table}, indent=2,
                                                 default=str))
  keys = list(points[0]) if points else []
  lines = [f"# {config.name}: sweep over {', '.join(keys)}", "",
           "| " + " | ".join(keys) + " | arm | accuracy [95% CI] | EM | F1 | style | "
           "hallucination (unanswerable) | general | prompt tokens | questions | seeds |",
           "|" + "---|" * (len(keys) + 10)]
  for row in table:
    arm = ArmSummary.from_dict(row)
    lines.append("| " + " | ".join(str(row[k]) for k in keys) +
                 f" | {row['arm']} | " + " | ".join(_arm_ci(arm, m) for m in (
                     "accuracy", "em", "f1", "style_rate", "hallucination_rate",
                     "general_accuracy")) +
                 f" | {_num(arm.prompt_tokens)} | {arm.n_questions} | {arm.seeds} |")
  (workdir / "sweep.md").write_text("\n".join(lines) + "\n")


def print_summary(workdir, summary: Summary | dict):
  """The comparison table on the console, and where the report is."""
  workdir = Path(workdir)
  if isinstance(summary, dict) and "sweep" in summary:
    print((workdir / "sweep.md").read_text())
    print(f"sweep table: {workdir / 'sweep.md'}")
    return
  summary = as_summary(summary)
  print("\n".join(["", *arms_table(summary), ""]))
  for aspect, ft, rag, note in comparison_rows(summary):
    print(f"- {aspect}: fine-tuning {ft} | RAG {rag} | {note}")
  print(f"\nreport: {workdir / 'report.md'}  (plots in {workdir / 'plots'}, per-question "
        f"results in {workdir / 'results.jsonl'})")
