"""How the report writes numbers: percentages, counts, FLOPs and a rate with its interval."""

from __future__ import annotations

from ftjax.experiment.results import ArmSummary, Rate


def pct(x):
  return "n/a" if x is None else f"{100 * x:.1f}%"


def num(x, fmt="{:,.1f}"):
  return "n/a" if x is None else fmt.format(x)


def sci(x):
  return "n/a" if x is None else f"{x:.2e}"


def ci(rate: Rate, fmt=pct) -> str:
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


def arm_ci(arm: ArmSummary | None, key: str) -> str:
  return ci(arm.rate(key)) if arm else "n/a"
