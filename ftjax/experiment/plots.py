"""The report's PNG plots: accuracy and style by arm, accuracy vs prompt length, cost vs
questions, poisoning success vs fraction, and the tuned arms' learning curves."""

from __future__ import annotations

from pathlib import Path

from ftjax.experiment.results import Summary


def write_plots(workdir: Path, summary: Summary) -> list[Path]:
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
