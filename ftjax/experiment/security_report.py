"""The report's security cells and section: canary leakage against its chance level, poisoning
only where the clean arm knew the facts, the data audit and access control."""

from __future__ import annotations

import math

from ftjax.experiment.formatting import num, pct
from ftjax.experiment.security_results import Security


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
                    f"{pct(tuned.extraction_rate)}{chance_text}")
  if rag:
    rag_cells.append(f"canary document retrieved {pct(rag.retrievable_rate)}, secret quoted "
                     f"{pct(rag.quote_rate)}")
  if tuned and rag:
    notes.append(f"secrets given to users: fine-tuned {pct(tuned.extraction_rate)}, RAG "
                 f"{pct(rag.quote_rate)}; a document can be deleted or put behind an ACL at "
                 "once, a memorised secret only by retraining")
  ft_poison = poisoning.finetuned if poisoning else None
  rag_poison = poisoning.rag if poisoning else None
  for part, cells, unit in ((ft_poison, ft_cells, "examples"),
                            (rag_poison, rag_cells, "documents")):
    if part and part.rows:
      cells.append(f"{pct(part.top.fraction)} of {unit} poisoned: attack success "
                   f"{pct(part.top.success)} (clean {pct(part.clean.success)})")
  ft_top, rag_top = ft_poison and ft_poison.top, rag_poison and rag_poison.top
  if ft_top and rag_top and ft_top.success is not None and rag_top.success is not None:
    # Poisoning can only replace a fact an arm knew: compare only where both clean arms answered
    # most targeted facts.
    unlearned = [(arm, part.clean) for arm, part in (("fine-tuned", ft_poison), ("RAG", rag_poison))
                 if (part.clean.target_accuracy or 0) < 0.5]
    if unlearned:
      notes.append("poisoning not compared: the clean " + ", ".join(
          f"{arm} arm answered only {pct(c.target_accuracy)}" for arm, c in unlearned)
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
                   f"{_bits(m.extrapolated_exposure)} | {num(m.rank)} of "
                   f"{leakage.candidates + 1} | {pct(m.extraction_rate)} |")
    rag = leakage.rag
    if rag:
      lines += ["", f"RAG (canaries as documents: {rag.canary_in}): the secret's document is "
                f"retrieved for a question about it in {pct(rag.retrievable_rate)} of cases; "
                f"the RAG answer quotes the secret in {pct(rag.quote_rate)}."]
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
          lines.append(f"| {arm} | {pct(row.fraction)} | {row.poisoned} of {row.of} | "
                       f"{part.target_questions} | {pct(row.success)} | "
                       f"{pct(row.success_on_poisoned)} | {pct(row.target_accuracy)} |")
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
