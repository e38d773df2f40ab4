"""`report.md` and PNG plots from `summary.json`: the arms side by side, and the article's
comparison table (../shared/reference/fine-tuning-vs-rag.txt) with every row measured."""

from __future__ import annotations

import json
from pathlib import Path

from ftjax.experiment.formatting import arm_ci as _arm_ci
from ftjax.experiment.formatting import ci as _ci
from ftjax.experiment.formatting import num as _num
from ftjax.experiment.formatting import pct as _pct
from ftjax.experiment.formatting import sci as _sci
from ftjax.experiment.plots import write_plots
from ftjax.experiment.results import ArmSummary, Budget, Difference, Rate, Summary
from ftjax.experiment.security_report import security_lines, security_row

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


def as_summary(summary: Summary | dict) -> Summary:
  """The typed summary of `summary.json`'s dict (a Summary is returned as is)."""
  return summary if isinstance(summary, Summary) else Summary.from_dict(summary)


def write(workdir: Path, config, summary: Summary | dict):
  from ftjax.experiment.summary import title
  summary = as_summary(summary)
  workdir = Path(workdir)
  plots = write_plots(workdir, summary)
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
