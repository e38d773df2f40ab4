"""The typed results of an experiment: what `summary.json` holds, as dataclasses.

`summary.build` measures and stores plain JSON (`summary.json` is the file researchers and
`ftjax.experiment.rescore` read back); `Summary.from_dict` is the one place that knows its shape.
The report reads these records as attributes, so a renamed or missing field fails at one
`from_dict`, not deep in a table as a `None`. `Summary.from_dict(d).to_dict() == d` holds for every
summary the runner writes (tested), so the records describe the whole file.

Rates are stored flat (`accuracy`, `accuracy_ci`, `accuracy_n`, `std["accuracy"]`);
`ArmSummary.rate(name)` gathers them into one `Rate` for display. The JSON <-> dataclass machinery
is `ftjax.experiment.records`; the security section's records are `security_results`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ftjax.experiment.records import Interval, Record, optional
from ftjax.experiment.security_results import Security


# --- one rate, as shown -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rate:
  """A metric's value (mean over seeds), its 95% interval, n and std across seeds."""
  value: float | None
  ci: Interval = None
  n: int | None = None
  std: float | None = None
  seeds: int = 1


@dataclasses.dataclass(frozen=True)
class Difference(Record):
  """a - b, paired over questions: the bootstrap interval, McNemar p and the verdict ("higher",
  "lower" or "within noise": a direction only when the interval excludes zero)."""
  diff: float | None
  ci: Interval
  p: float | None
  n: int
  verdict: str


@dataclasses.dataclass(frozen=True)
class Comparison(Record):
  a: str
  b: str
  metric: str
  diff: float | None
  ci: Interval
  p: float | None
  n: int
  verdict: str

  def flipped(self) -> Comparison:
    """b vs a: the difference and its interval negated, the verdict recomputed."""
    from ftjax.evaluation import stats
    diff = None if self.diff is None else -self.diff
    ci = None if not self.ci else [-self.ci[1], -self.ci[0]]
    return dataclasses.replace(self, a=self.b, b=self.a, diff=diff, ci=ci,
                               verdict=stats.verdict(diff, ci))


def find(comparisons: Sequence[Comparison], a: str, b: str, metric: str) -> Comparison | None:
  """The comparison of a vs b on `metric` (flipped when stored as b vs a)."""
  for c in comparisons:
    if c.metric == metric and (c.a, c.b) == (a, b):
      return c
    if c.metric == metric and (c.a, c.b) == (b, a):
      return c.flipped()
  return None


# --- arms -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spread(Record):
  p50: float | None
  p95: float | None
  n: int


@dataclasses.dataclass(frozen=True)
class CagFit(Record):
  """CAG's corpus against the model's usable context, and its one prefill."""
  documents: int
  corpus_tokens: int
  context: int
  context_source: str
  prefill_s: float


@dataclasses.dataclass(frozen=True)
class Budget(Record):
  """What a tuned arm's figures rest on."""
  steps: int | None
  epochs: float | None
  selected_step: int | None
  select_reason: str | None
  examples: int | None
  train_accuracy: float | None
  train_accuracy_ci: Interval
  learned: bool | None  # train accuracy >= learned_threshold; None: not measured
  learned_threshold: float
  learning_curves: list  # per seed: [{step, train_accuracy, dev_accuracy, ...}]

  @property
  def under_trained(self) -> bool:
    return self.learned is False

  def rate(self) -> Rate:
    return Rate(self.train_accuracy, self.train_accuracy_ci)


# Every rate and mean of an arm, in `summary.json`'s order (`ftjax.experiment.summary.RATES`).
RATES = ("accuracy", "em", "f1", "style_rate", "refusal_rate", "wrong_rate",
         "selective_accuracy", "abstain_rate", "hallucination_rate", "multi_value_rate",
         "truncation_rate", "general_accuracy", "citation_accuracy", "attribution_rate",
         "train_accuracy")
MEANS = ("prompt_tokens", "new_tokens")


@dataclasses.dataclass(frozen=True)
class ArmSummary:
  """One arm: every rate (mean over seeds) with its interval and n, std across seeds, tokens,
  latency, and for tuned arms the training budget, for CAG its corpus fit."""
  accuracy: float | None = None
  em: float | None = None
  f1: float | None = None
  style_rate: float | None = None
  refusal_rate: float | None = None
  wrong_rate: float | None = None
  selective_accuracy: float | None = None
  abstain_rate: float | None = None
  hallucination_rate: float | None = None
  multi_value_rate: float | None = None
  truncation_rate: float | None = None
  general_accuracy: float | None = None
  citation_accuracy: float | None = None
  attribution_rate: float | None = None
  train_accuracy: float | None = None
  prompt_tokens: float | None = None
  new_tokens: float | None = None
  # metric -> (95% interval, n), for the rates measured on at least one question
  intervals: dict[str, tuple[Interval, int | None]] = dataclasses.field(default_factory=dict)
  n_questions: int = 0
  seeds: int = 1
  std: dict[str, float | None] = dataclasses.field(default_factory=dict)
  cached_tokens: float = 0.0
  latency_s: Spread | None = None
  ttft_s: Spread | None = None
  decode_tokens_per_s: float | None = None
  cag: CagFit | None = None
  budget: Budget | None = None

  def rate(self, name: str) -> Rate:
    ci, n = self.intervals.get(name, (None, None))
    return Rate(getattr(self, name), ci, n, self.std.get(name), self.seeds)

  @classmethod
  def from_dict(cls, d: dict) -> ArmSummary:
    intervals = {m: (d[f"{m}_ci"], d.get(f"{m}_n")) for m in RATES if f"{m}_ci" in d}
    return cls(**{m: d.get(m) for m in RATES + MEANS}, intervals=intervals,
               n_questions=d.get("n_questions", 0), seeds=d.get("seeds", 1),
               std=dict(d.get("std") or {}), cached_tokens=d.get("cached_tokens", 0.0),
               latency_s=Spread.from_dict(d.get("latency_s")),
               ttft_s=Spread.from_dict(d.get("ttft_s")),
               decode_tokens_per_s=d.get("decode_tokens_per_s"),
               cag=CagFit.from_dict(d.get("cag")), budget=Budget.from_dict(d.get("budget")))

  def to_dict(self) -> dict:
    out: dict[str, Any] = {m: getattr(self, m) for m in RATES + MEANS}
    for m, (ci, n) in self.intervals.items():
      out[f"{m}_ci"], out[f"{m}_n"] = ci, n
    out.update(n_questions=self.n_questions, seeds=self.seeds, std=dict(self.std),
               cached_tokens=self.cached_tokens)
    if self.latency_s is not None:
      out.update(latency_s=self.latency_s.to_dict(),
                 ttft_s=None if self.ttft_s is None else self.ttft_s.to_dict(),
                 decode_tokens_per_s=self.decode_tokens_per_s)
    if self.cag is not None:
      out["cag"] = self.cag.to_dict()
    if self.budget is not None:
      out["budget"] = self.budget.to_dict()
    return out


# --- knowledge update, multiple choice ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UpdateSummary(Record):
  """How an arm took in changed facts: re-indexing (RAG) or retraining (fine-tuned)."""
  method: str
  seconds: float
  style_rate: float | None
  seeds: int
  update_accuracy: float | None
  update_accuracy_ci: Interval
  update_accuracy_n: int
  unchanged_accuracy: float | None
  unchanged_accuracy_ci: Interval
  unchanged_accuracy_n: int
  steps: int | None = optional()
  flops: float | None = optional()


@dataclasses.dataclass(frozen=True)
class McSummary(Record):
  """Multiple-choice general knowledge of one model, and (tuned models) its forgetting."""
  n: int
  seeds: int
  accuracy: float
  accuracy_ci: Interval
  acc_norm: float
  acc_norm_ci: Interval
  vs_base: Difference | None = optional()

  def rate(self, name: str = "accuracy") -> Rate:
    return Rate(getattr(self, name), getattr(self, f"{name}_ci"), self.n, None, self.seeds)


# --- cost -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainCost(Record):
  flops: float
  seconds: float  # steady step time x steps
  wall_seconds: float
  overhead_seconds: float  # loading and compilation
  eval_seconds: float  # dev evaluations
  step_seconds: float
  tokens: float
  steps: int
  examples: int
  trainable_params: int
  peak_rss_gb: float
  money: float


@dataclasses.dataclass(frozen=True)
class IndexCost(Record):
  seconds: float
  chunks: int
  documents: int
  peak_rss_gb: float
  money: float


@dataclasses.dataclass(frozen=True)
class InferenceCost(Record):
  prompt_tokens: float
  new_tokens: float
  flops_per_question: float
  seconds_per_question: float
  money_per_question: float
  seconds_per_correct: float | None
  accuracy: float | None
  accuracy_ci: Interval
  latency_p50_s: float | None


@dataclasses.dataclass(frozen=True)
class BreakEven(Record):
  """Questions after which a tuned arm's training has paid for itself against an untuned arm
  (None: never), with both arms' accuracies: [tuned, other]."""
  questions_flops: float | None
  questions_seconds: float | None
  questions_money: float | None
  upfront_flops: list
  upfront_seconds: list
  accuracy: list
  accuracy_ci: list

  @property
  def pays_for_worse_answers(self) -> bool:
    tuned, other = self.accuracy
    return tuned is not None and other is not None and tuned < other


@dataclasses.dataclass(frozen=True)
class CostSummary(Record):
  device: str
  price_per_device_hour: float
  currency: str
  train: dict[str, TrainCost]
  inference: dict[str, InferenceCost]
  break_even: dict[str, BreakEven]
  index: IndexCost | None = optional()
  peak_rss_gb: float = 0.0


# --- the whole run ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Summary:
  """`summary.json` of one run (a sweep writes `sweep.json` instead)."""
  arms: dict[str, ArmSummary]
  comparisons: list[Comparison]
  update: dict[str, UpdateSummary]
  cost: CostSummary
  skipped: dict[str, str]
  data: dict[str, str]
  missing_data: Any
  stages: dict  # each stage's raw measurement (timings, cache names)
  cache: dict
  seconds: float | None
  general_mc: dict[str, McSummary] | None = None
  security: Security | None = None

  def compare(self, a: str, b: str, metric: str) -> Comparison | None:
    return find(self.comparisons, a, b, metric)

  @classmethod
  def from_dict(cls, d: dict) -> Summary:
    return cls(
        arms={k: ArmSummary.from_dict(v) for k, v in d["arms"].items()},
        comparisons=[Comparison.from_dict(c) for c in d.get("comparisons", [])],
        update={k: UpdateSummary.from_dict(v) for k, v in d.get("update", {}).items()},
        cost=CostSummary.from_dict(d["cost"]), skipped=dict(d.get("skipped", {})),
        data=dict(d.get("data", {})), missing_data=d.get("missing_data"),
        stages=d.get("stages", {}), cache=d.get("cache", {}), seconds=d.get("seconds"),
        general_mc=({k: McSummary.from_dict(v) for k, v in d["general_mc"].items()}
                    if d.get("general_mc") else None),
        security=Security.from_dict(d["security"]) if d.get("security") else None)

  def to_dict(self) -> dict:
    out = {"arms": {k: v.to_dict() for k, v in self.arms.items()},
           "comparisons": [c.to_dict() for c in self.comparisons],
           "update": {k: v.to_dict() for k, v in self.update.items()},
           "cost": self.cost.to_dict(), "skipped": dict(self.skipped)}
    if self.general_mc:
      out["general_mc"] = {k: v.to_dict() for k, v in self.general_mc.items()}
    if self.security:
      out["security"] = self.security.to_dict()
    out.update(data=dict(self.data), missing_data=self.missing_data, stages=self.stages,
               cache=self.cache, seconds=self.seconds)
    return out
