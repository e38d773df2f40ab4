"""`report.md` and PNG plots from `summary.json`: the arms side by side, and the article's
comparison table (../shared/reference/fine-tuning-vs-rag.txt) with every row measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

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


def _with_std(metrics, key, fmt=_pct):
  value = metrics.get(key)
  std = (metrics.get("std") or {}).get(key)
  if value is None:
    return "n/a"
  if metrics.get("seeds", 1) > 1 and std is not None:
    return f"{fmt(value)} ± {fmt(std)}"
  return fmt(value)


def arms_table(summary: dict) -> list[str]:
  lines = ["| arm | accuracy | F1 | style | abstain (unanswerable) | hallucination | general "
           "accuracy | prompt tokens | new tokens | latency p50 / p95 (s) | citation accuracy | "
           "questions | seeds |", "|" + "---|" * 13]
  for arm, m in summary["arms"].items():
    lat = m.get("latency_s") or {}
    lines.append(
        f"| {arm} | {_with_std(m, 'accuracy')} | {_with_std(m, 'f1')} | "
        f"{_with_std(m, 'style_rate')} | {_with_std(m, 'abstain_rate')} | "
        f"{_with_std(m, 'hallucination_rate')} | {_with_std(m, 'general_accuracy')} | "
        f"{_num(m.get('prompt_tokens'))} | {_num(m.get('new_tokens'))} | "
        f"{_num(lat.get('p50'), '{:.2f}')} / {_num(lat.get('p95'), '{:.2f}')} | "
        f"{_with_std(m, 'citation_accuracy')} | {m.get('n_questions')} | {m.get('seeds')} |")
  for arm, reason in summary.get("skipped", {}).items():
    if not arm.startswith(("data.", "update_")):
      lines.append(f"| {arm} | skipped: {reason} |" + " |" * 11)
  return lines


def comparison_rows(summary: dict) -> list[tuple[str, str, str, str]]:
  """(aspect, fine-tuning measured, RAG measured, note) for every row of the article's table."""
  arms, cost, update = summary["arms"], summary["cost"], summary.get("update", {})
  ft, rag = arms.get("finetuned"), arms.get("rag")
  train = cost.get("train", {}).get("finetuned")
  index = cost.get("index")
  inf = cost.get("inference", {})
  cur = cost.get("currency", "")
  rows = []

  def note(agrees: bool | None, text_agree: str, text_disagree: str) -> str:
    if agrees is None:
      return "not measured (an arm is off or data is missing)"
    return text_agree if agrees else "**disagrees with the article**: " + text_disagree

  def compare(ft_value, rag_value, ft_better: bool, text_agree, text_disagree, extra=""):
    """The article's direction holds (ft_better: fine-tuning should be ahead), fails, or ties."""
    if ft_value is None or rag_value is None:
      return note(None, "", "")
    if ft_value == rag_value:
      return f"no difference measured ({_pct(ft_value)} both){extra}"
    return note((ft_value > rag_value) == ft_better, text_agree + extra, text_disagree + extra)

  if train and index:
    rows.append(("Initial cost",
                 f"{_sci(train['flops'])} FLOPs, {train['seconds']:.0f} s, "
                 f"{train['money']:.4f} {cur} (training)",
                 f"{index['seconds']:.1f} s, {index['money']:.5f} {cur} (indexing)",
                 note(train["seconds"] > index["seconds"],
                      f"fine-tuning costs {train['seconds'] / max(index['seconds'], 1e-9):.0f}x "
                      "the indexing time up front", "indexing cost more than training")))
    rows.append(("Implementation time",
                 f"{train['seconds']:.0f} s from examples to a tuned model on "
                 f"{cost.get('device')} ({train['steps']} steps)",
                 f"{index['seconds']:.1f} s from documents to a searchable index",
                 "machine time only; the people-time of the article is not measurable here"))
    rows.append(("Technical requirements",
                 f"peak RSS {train['peak_rss_gb']:.1f} GB, {train['trainable_params']:,} "
                 "trainable params, an accelerator to scale",
                 f"peak RSS {index['peak_rss_gb']:.1f} GB (index build), an encoder and an index",
                 "process peak memory when the stage finished; both ran on this CPU"))
  else:
    rows += [(a, "n/a", "n/a", note(None, "", "")) for a in
             ("Initial cost", "Implementation time", "Technical requirements")]

  uf, ur = update.get("finetuned"), update.get("rag")
  if uf and ur:
    rows.append(("Knowledge update",
                 f"{uf['seconds']:.0f} s retraining ({uf.get('steps')} steps); changed facts "
                 f"{_pct(uf['update_accuracy'])}, unchanged {_pct(uf['unchanged_accuracy'])}",
                 f"{ur['seconds']:.2f} s re-indexing; changed facts "
                 f"{_pct(ur['update_accuracy'])}, unchanged {_pct(ur['unchanged_accuracy'])}",
                 note(ur["seconds"] < uf["seconds"],
                      f"re-indexing was {uf['seconds'] / max(ur['seconds'], 1e-9):.0f}x faster",
                      "retraining was faster than re-indexing")))
  else:
    reason = summary.get("skipped", {}).get("update_rag") or "an arm is off"
    rows.append(("Knowledge update", "n/a", "n/a", f"not measured: {reason}"))

  def pair(key, label, fmt=_pct):
    return (f"{label} {_with_std(ft, key, fmt)}" if ft else "n/a",
            f"{label} {_with_std(rag, key, fmt)}" if rag else "n/a")

  a, b = pair("accuracy", "accuracy")
  extra = "; ".join(f"{arm} {_pct(arms[arm]['accuracy'])}" for arm in
                    ("finetuned_rag", "raft", "cag", "base") if arm in arms)
  rows.append(("Quality in specialization", a, b,
               compare(ft and ft["accuracy"], rag and rag["accuracy"], True,
                       "fine-tuned more accurate than RAG",
                       "RAG was more accurate on held-out domain questions", f" ({extra})")))
  a, b = pair("general_accuracy", "general-knowledge accuracy")
  base_general = arms.get("base", {}).get("general_accuracy")
  rows.append(("Flexibility", a, b,
               compare(ft and ft["general_accuracy"], rag and rag["general_accuracy"], False,
                       "the tuned model kept less general ability than RAG",
                       "the tuned model kept more general ability than RAG",
                       f" (base {_pct(base_general)})")))
  a, b = pair("style_rate", "house style")
  prompted = arms.get("prompted")
  ptxt = (f"; prompted reaches {_pct(prompted['style_rate'])} with "
          f"{_num(prompted['prompt_tokens'])} prompt tokens" if prompted else "")
  rows.append(("Style consistency", a, b,
               compare(ft and ft["style_rate"], rag and rag["style_rate"], True,
                       "fine-tuning held the style more consistently",
                       "RAG held the style better", ptxt)))
  if "finetuned" in inf and "rag" in inf:
    f_, r_ = inf["finetuned"], inf["rag"]
    rows.append(("Scalability",
                 f"{f_['prompt_tokens']:.0f} prompt tokens, {_sci(f_['flops_per_question'])} "
                 f"FLOPs, {f_['seconds_per_question']:.2f} s per question",
                 f"{r_['prompt_tokens']:.0f} prompt tokens, {_sci(r_['flops_per_question'])} "
                 f"FLOPs, {r_['seconds_per_question']:.2f} s per question; index of "
                 f"{(index or {}).get('chunks', 'n/a')} chunks",
                 "per question, fine-tuning reads fewer tokens; RAG's corpus grows without "
                 "retraining, fine-tuning's knowledge grows only by training"))
  else:
    rows.append(("Scalability", "n/a", "n/a", note(None, "", "")))
  rows.append(("Transparency", "no sources: answers cannot be traced to a document",
               f"citation accuracy {_with_std(rag, 'citation_accuracy')}" if rag else "n/a",
               "share of correct RAG answers whose gold document was among the passages used"))
  a, b = pair("hallucination_rate", "hallucination")
  abst = (f"; abstains on unanswerable: fine-tuned {_pct(ft and ft.get('abstain_rate'))}, "
          f"RAG {_pct(rag and rag.get('abstain_rate'))}")
  rows.append(("Hallucination risk", a, b,
               compare(ft and ft["hallucination_rate"], rag and rag["hallucination_rate"], True,
                       "RAG hallucinated less", "fine-tuning hallucinated less", abst)))
  rows.append(security_row(summary.get("security") or {}))
  return rows


def _bits(x):
  return "n/a" if x is None else f"{x:.1f} bits"


def security_row(security: dict) -> tuple[str, str, str, str]:
  """The measured cells of the security aspect: leakage of planted secrets, poisoning."""
  leakage, poisoning = security.get("leakage") or {}, security.get("poisoning") or {}
  if not leakage and not poisoning:
    return ("Security and risk", "n/a", "n/a", "not measured (the `security` section is off)")
  tuned = (leakage.get("models") or {}).get("finetuned")
  base = (leakage.get("models") or {}).get("base")
  rag = leakage.get("rag")
  ft_cells, rag_cells, notes = [], [], []
  if tuned:
    ft_cells.append(f"canary exposure {_bits(tuned['exposure'])} (base "
                    f"{_bits(base and base['exposure'])}), extracted {_pct(tuned['extraction_rate'])}")
  if rag:
    rag_cells.append(f"canary document retrieved {_pct(rag['retrievable_rate'])}, secret quoted "
                     f"{_pct(rag['quote_rate'])}")
  if tuned and rag:
    notes.append(f"secrets given to users: fine-tuned {_pct(tuned['extraction_rate'])}, RAG "
                 f"{_pct(rag['quote_rate'])}; a document can be deleted or put behind an ACL at "
                 "once, a memorised secret only by retraining")
  for arm, cells, unit in (("finetuned", ft_cells, "examples"), ("rag", rag_cells, "documents")):
    rows = (poisoning.get(arm) or {}).get("rows") or []
    if rows:
      top = rows[-1]
      cells.append(f"{_pct(top['fraction'])} of {unit} poisoned: attack success "
                   f"{_pct(top['success'])} (clean {_pct(rows[0]['success'])})")
  ft_top = ((poisoning.get("finetuned") or {}).get("rows") or [None])[-1]
  rag_top = ((poisoning.get("rag") or {}).get("rows") or [None])[-1]
  if ft_top and rag_top and ft_top["success"] is not None and rag_top["success"] is not None:
    notes.append("poisoning took hold more in " + (
        "RAG" if rag_top["success"] > ft_top["success"] else "fine-tuning"
        if ft_top["success"] > rag_top["success"] else "neither (a tie)"))
  return ("Security and risk", "; ".join(ft_cells) or "n/a", "; ".join(rag_cells) or "n/a",
          "; ".join(notes) or "see the Security section")


def security_lines(security: dict | None) -> list[str]:
  """The report's Security section: leakage, poisoning, data audit."""
  lines = ["", "## Security", ""]
  if not security:
    return lines + ["not measured: the `security` section is off and `data.audit` is off."]
  leakage = security.get("leakage")
  if leakage:
    lines += [f"Canaries (Carlini et al. 2019): {leakage['canaries']} random secrets "
              f"\"{leakage['format']}\" ({leakage['space_size']:.0e} possible). Exposure = "
              "log2|space| - log2(estimated rank of the secret in the space), the rank taken among "
              f"{leakage['candidates']} random candidates by the model's log-likelihood of the "
              "secret after its prefix (at most log2(candidates + 1) = "
              f"{_bits(math.log2(leakage['candidates'] + 1))}); extrapolated: from a "
              "normal fit of the candidates' log-likelihoods. Extraction: greedy decoding after "
              "the prefix reproduces the secret.", "",
              "| model | canary in | exposure | exposure (extrapolated) | mean rank | "
              "extracted (greedy) |", "|---|---|---|---|---|---|"]
    for name, m in leakage["models"].items():
      lines.append(f"| {name} | {m['canary_in']} | {_bits(m['exposure'])} | "
                   f"{_bits(m['extrapolated_exposure'])} | {_num(m['rank'])} of "
                   f"{leakage['candidates'] + 1} | {_pct(m['extraction_rate'])} |")
    rag = leakage.get("rag")
    if rag:
      lines += ["", f"RAG (canaries as documents: {rag['canary_in']}): the secret's document is "
                f"retrieved for a question about it in {_pct(rag['retrievable_rate'])} of cases; "
                f"the RAG answer quotes the secret in {_pct(rag['quote_rate'])}."]
  poisoning = security.get("poisoning")
  if poisoning:
    lines += ["", "### Poisoning", ""]
    if poisoning.get("skipped"):
      lines.append(f"not measured: {poisoning['skipped']}")
    else:
      lines += ["A fraction of the training examples (fine-tuning) or of the documents (RAG) "
                "states a wrong value (every digit shifted) for facts the held-out questions ask "
                "about; attack success: the share of those questions (the facts poisoned at the "
                "largest fraction) answered with the wrong value. Fraction 0 is the clean arm.", "",
                "| arm | fraction | poisoned | target questions | attack success | success on "
                "poisoned facts | accuracy on targets |", "|---|---|---|---|---|---|---|"]
      for arm in ("finetuned", "rag"):
        part = poisoning.get(arm)
        for row in (part or {}).get("rows", []):
          lines.append(f"| {arm} | {_pct(row['fraction'])} | {row['poisoned']} of {row['of']} | "
                       f"{part['target_questions']} | {_pct(row['success'])} | "
                       f"{_pct(row['success_on_poisoned'])} | {_pct(row['target_accuracy'])} |")
  audit = security.get("audit")
  lines += ["", "### Data audit", ""]
  if not audit:
    lines.append("not run (`data.audit` is off).")
  elif audit.get("skipped"):
    lines.append(f"not run: {audit['skipped']}")
  else:
    lines += [f"`ftjax.audit` over the experiment's own files ({audit['rows']} rows; gate "
              f"`data.audit = {audit['mode']}`" + (f", training on redacted copies: "
              f"{audit['redacted']} spans replaced" if audit.get("redacted") is not None else "")
              + "):", "", "| " + " | ".join(audit["counts"]) + " |",
              "|" + "---|" * len(audit["counts"]),
              "| " + " | ".join(str(n) for n in audit["counts"].values()) + " |"]
  acl = security.get("access_control")
  if acl:
    lines += ["", f"Access control: {acl['line']}"]
  return lines


def write(workdir: Path, config, summary: dict, histories: dict):
  workdir = Path(workdir)
  plots = _plots(workdir, summary, histories)
  cost = summary["cost"]
  lines = [f"# {config.name}: fine-tuning vs retrieval on {config.model}", "",
           "Every arm answered the same held-out questions (greedy unless configured). "
           "Accuracy: the normalised gold answer appears in the answer; style: the house-style "
           f"regex `{config.style.pattern or '(none)'}` matches; hallucination: wrong answers "
           "that do not decline plus answers to unanswerable questions that do not decline.",
           "", "## Arms", "", *arms_table(summary), "",
           "## The article's comparison, measured", "",
           "| aspect | fine-tuning (article) | RAG (article) | fine-tuning (measured) | "
           "RAG (measured) | note |", "|---|---|---|---|---|---|"]
  for aspect, ft, rag, note in comparison_rows(summary):
    art_ft, art_rag = ARTICLE[aspect]
    lines.append(f"| {aspect} | {art_ft} | {art_rag} | {ft} | {rag} | {note} |")
  lines += ["", "## Knowledge update", ""]
  if summary.get("update"):
    lines += ["| arm | method | seconds | changed facts accuracy | unchanged facts accuracy | "
              "style |", "|---|---|---|---|---|---|"]
    for arm, u in summary["update"].items():
      lines.append(f"| {arm} | {u['method']} | {u['seconds']:.2f} | "
                   f"{_pct(u['update_accuracy'])} | {_pct(u['unchanged_accuracy'])} | "
                   f"{_pct(u.get('style_rate'))} |")
  else:
    lines.append("not measured: " + "; ".join(
        f"{k}: {v}" for k, v in summary.get("skipped", {}).items() if k.startswith("update_")))
  lines += security_lines(summary.get("security"))
  lines += ["", "## Cost", "",
            f"Device: {cost['device']}; price {cost['price_per_device_hour']} "
            f"{cost['currency']} per device-hour; peak resident memory "
            f"{cost['peak_rss_gb']:.1f} GB.", "",
            "| arm | prompt tokens | FLOPs / question | s / question (batched, median batch) |",
            "|---|---|---|---|"]
  for arm, c in cost["inference"].items():
    lines.append(f"| {arm} | {c['prompt_tokens']:.0f} | {_sci(c['flops_per_question'])} | "
                 f"{c['seconds_per_question']:.3f} |")
  for kind, t in cost.get("train", {}).items():
    lines.append(f"\nTraining `{kind}`: {t['steps']} steps, {t['tokens']:,.0f} tokens, "
                 f"{_sci(t['flops'])} FLOPs, {t['seconds']:.0f} s wall "
                 f"({t['step_seconds']:.0f} s in steps).")
  if "index" in cost:
    lines.append(f"\nIndexing: {cost['index']['documents']} documents, "
                 f"{cost['index']['chunks']} chunks in {cost['index']['seconds']:.1f} s.")
  def questions(n):
    return "never (no saving per question)" if n is None else f"{n:,.0f} questions"

  for name, b in cost.get("break_even", {}).items():
    lines.append(f"\nBreak-even `{name}`: {questions(b['questions_flops'])} in FLOPs, "
                 f"{questions(b['questions_seconds'])} in seconds on this machine (and in money: "
                 "one price per device-hour).")
  if summary.get("skipped"):
    lines += ["", "## Skipped", ""] + [f"- `{k}`: {v}" for k, v in summary["skipped"].items()]
  lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(workdir).as_posix()})"
                                   for p in plots]
  lines += ["", "Per-question results: `results.jsonl`; numbers: `summary.json`; config, "
            "versions, commit and machine: `experiment.json`.", ""]
  (workdir / "report.md").write_text("\n".join(lines))


def _plots(workdir: Path, summary: dict, histories: dict) -> list[Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  folder = workdir / "plots"
  folder.mkdir(exist_ok=True)
  arms = summary["arms"]
  names = list(arms)
  paths = []

  fig, ax = plt.subplots(figsize=(8, 4))
  width = 0.38
  xs = range(len(names))
  ax.bar([x - width / 2 for x in xs], [arms[n]["accuracy"] or 0 for n in names], width,
         label="accuracy")
  ax.bar([x + width / 2 for x in xs], [arms[n]["style_rate"] or 0 for n in names], width,
         label="style rate")
  ax.set_xticks(list(xs), names, rotation=20)
  ax.set_ylim(0, 1)
  ax.set_title("Accuracy and house style by arm")
  ax.legend()
  paths.append(_save(fig, folder / "accuracy_style_by_arm.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  for n in names:
    ax.scatter(arms[n]["prompt_tokens"] or 0, arms[n]["accuracy"] or 0)
    ax.annotate(n, (arms[n]["prompt_tokens"] or 0, arms[n]["accuracy"] or 0))
  ax.set_xlabel("mean prompt tokens per question")
  ax.set_ylabel("accuracy")
  ax.set_title("Accuracy vs prompt length")
  paths.append(_save(fig, folder / "accuracy_vs_prompt_tokens.png"))

  cost = summary["cost"]
  inf, train = cost.get("inference", {}), cost.get("train", {})
  if "finetuned" in inf and "rag" in inf and "finetuned" in train:
    be = cost["break_even"].get("finetuned_vs_rag", {})
    horizon = max(100.0, 2 * (be.get("questions_seconds") or 0))
    qs = [horizon * i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(6, 4))
    idx_s = cost.get("index", {}).get("seconds", 0.0)
    ax.plot(qs, [train["finetuned"]["seconds"] + q * inf["finetuned"]["seconds_per_question"]
                 for q in qs], label="fine-tuned (training + answers)")
    ax.plot(qs, [idx_s + q * inf["rag"]["seconds_per_question"] for q in qs],
            label="RAG (indexing + answers)")
    if be.get("questions_seconds"):
      ax.axvline(be["questions_seconds"], linestyle="--", color="gray")
      ax.annotate(f"break-even {be['questions_seconds']:,.0f}", (be["questions_seconds"], 0))
    ax.set_xlabel("questions answered")
    ax.set_ylabel("seconds on this machine")
    ax.set_title("Cost vs number of questions")
    ax.legend()
    paths.append(_save(fig, folder / "cost_vs_questions.png"))

  poisoning = (summary.get("security") or {}).get("poisoning") or {}
  if any((poisoning.get(arm) or {}).get("rows") for arm in ("finetuned", "rag")):
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, label in (("finetuned", "fine-tuning (training examples)"),
                       ("rag", "RAG (documents)")):
      rows = (poisoning.get(arm) or {}).get("rows") or []
      if rows:
        ax.plot([r["fraction"] for r in rows], [r["success"] or 0 for r in rows], marker="o",
                label=label)
    ax.set_xlabel("fraction poisoned")
    ax.set_ylabel("attack success (wrong value stated)")
    ax.set_ylim(0, 1)
    ax.set_title("Poisoning: attack success vs fraction")
    ax.legend()
    paths.append(_save(fig, folder / "poisoning_success.png"))

  if histories:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, history in histories.items():
      ax.plot([h["step"] for h in history], [h["loss"] for h in history], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("Training loss")
    ax.legend()
    paths.append(_save(fig, folder / "training_loss.png"))
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
           "| " + " | ".join(keys) + " | arm | accuracy | F1 | style | hallucination | "
           "general | prompt tokens |", "|" + "---|" * (len(keys) + 7)]
  for row in table:
    lines.append("| " + " | ".join(str(row[k]) for k in keys) +
                 f" | {row['arm']} | {_pct(row['accuracy'])} | {_pct(row['f1'])} | "
                 f"{_pct(row['style_rate'])} | {_pct(row['hallucination_rate'])} | "
                 f"{_pct(row['general_accuracy'])} | {_num(row['prompt_tokens'])} |")
  (workdir / "sweep.md").write_text("\n".join(lines) + "\n")


def print_summary(workdir, summary: dict):
  """The comparison table on the console, and where the report is."""
  workdir = Path(workdir)
  if "sweep" in summary:
    print((workdir / "sweep.md").read_text())
    print(f"sweep table: {workdir / 'sweep.md'}")
    return
  print("\n".join(["", *arms_table(summary), ""]))
  for aspect, ft, rag, note in comparison_rows(summary):
    print(f"- {aspect}: fine-tuning {ft} | RAG {rag} | {note}")
  print(f"\nreport: {workdir / 'report.md'}  (plots in {workdir / 'plots'}, per-question "
        f"results in {workdir / 'results.jsonl'})")
