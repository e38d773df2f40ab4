"""Leakage, poisoning, audit and access control as experiment metrics: the exposure arithmetic,
where canaries and poison land in the training data, that memorising a canary raises its
exposure, the Security section of a tiny experiment's report, and bad `security` config keys."""

import json
import math

import pytest

from ftjax.config import ConfigError
from ftjax.evaluation import security as metrics
from ftjax.experiment import config as config_lib
from ftjax.experiment import data as data_lib
from ftjax.experiment import run
from ftjax.experiment import security_planting as planting, security
from ftjax.experiment.cache import StageCache
from ftjax.experiment.context import Context, Progress
from ftjax.experiment.train_stages import finetune_examples

from test_experiment import FACTS, domain, tiny_config  # noqa: F401 (the module fixture)


def test_exposure_of_a_known_ranking():
  space, candidates = 10 ** 8, [-float(i) for i in range(1, 64)]  # 63 candidates, -1 ... -63
  assert metrics.canary_rank(0.0, candidates) == 1
  assert metrics.canary_rank(-1.5, candidates) == 2
  assert metrics.canary_rank(-100.0, candidates) == 64
  assert metrics.canary_rank(-1.0, candidates) == 2  # a tie counts against the canary
  # Ranked first of 64: log2(64) = 6 bits; last: 0 bits; half-way (rank 32): 1 bit.
  assert metrics.exposure(1, 63, space) == pytest.approx(6.0)
  assert metrics.exposure(64, 63, space) == pytest.approx(0.0)
  assert metrics.exposure(32, 63, space) == pytest.approx(1.0)
  # The definition: log2|space| - log2(rank scaled to the space).
  assert metrics.exposure(8, 63, space) == pytest.approx(
      math.log2(space) - math.log2(8 * space / 64))
  with pytest.raises(ValueError):
    metrics.exposure(65, 63, space)
  # Extrapolated: the mean candidate is 1 bit (half the space is as likely); far above the
  # candidates, capped at log2|space|.
  mean = sum(candidates) / len(candidates)
  assert metrics.extrapolated_exposure(mean, candidates, space) == pytest.approx(1.0)
  assert metrics.extrapolated_exposure(1e6, candidates, space) == pytest.approx(math.log2(space))
  assert metrics.extrapolated_exposure(-1e6, candidates, space) == pytest.approx(0.0, abs=1e-9)


def test_secret_quoting_and_attack_success():
  assert metrics.quotes_secret("It is 48-19-73-05.", "48-19-73-05")
  assert metrics.quotes_secret("code: 48 19 73 05", "48-19-73-05")
  assert metrics.quotes_secret("48197305", "48-19-73-05")
  assert not metrics.quotes_secret("148-19-73-05", "48-19-73-05")
  assert not metrics.quotes_secret("48-19-73", "48-19-73-05")
  assert metrics.attack_success(["It costs $969.", "It costs $414."], ["$969", "$969"]) == 0.5
  assert metrics.attack_success([], []) is None


def _ctx(domain, tmp_path, **overrides):
  config = tiny_config("m", domain, **{"security.enabled": True, **overrides})
  return Context(config, data_lib.load(config.data), StageCache(tmp_path / "cache"), Progress())


def test_canaries_land_in_the_configured_share_of_training_rows(domain, tmp_path):
  ctx = _ctx(domain, tmp_path, **{"security.canaries": 3, "security.canary_share": 0.3})
  examples = finetune_examples(ctx)
  planted, info = planting.plant(ctx, examples)
  canaries = planting.canaries(ctx.config)
  carrying = [i for i, m in enumerate(planted) if any(c.secret in m[-1]["content"]
                                                      for c in canaries)]
  assert len(carrying) == info["canary_rows"] == round(0.3 * len(examples))
  assert all(any(c.sentence in planted[i][-1]["content"] for i in carrying) for c in canaries)
  # Only the reply changes, by the canary sentence appended; the input list is untouched.
  for i in carrying:
    assert planted[i][-1]["content"].startswith(examples[i][-1]["content"] + " The account")
    assert planted[i][:-1] == examples[i][:-1]
  assert not any(c.secret in m[-1]["content"] for m in examples for c in canaries)
  # Off: nothing is planted and the training cache key is unchanged.
  ctx.config.security.enabled = False
  assert planting.plant(ctx, examples) == (examples, {}) and planting.train_key(ctx.config) == {}


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
def test_poisoning_places_exactly_the_configured_number_of_rows(domain, tmp_path, fraction):
  ctx = _ctx(domain, tmp_path)
  examples = finetune_examples(ctx)
  plan = planting.poison_plan(ctx.data.questions["eval"], seed=0)
  assert len(plan) == len(FACTS) and all(a != w for a, w in plan)
  poisoned, info = planting.poison_conversations(examples, plan, fraction)
  changed = [i for i, (a, b) in enumerate(zip(examples, poisoned)) if a != b]
  assert len(changed) == info["poisoned"] == round(fraction * len(examples))
  assert changed == info["rows"]
  wrong = dict(plan)
  for i in changed:
    facts = [a for a in info["facts"] if a in examples[i][-1]["content"]]
    assert facts and wrong[facts[0]] in poisoned[i][-1]["content"]
    assert facts[0] not in poisoned[i][-1]["content"].replace(wrong[facts[0]], "")
  # Nested: a larger fraction poisons a superset of the rows.
  larger = planting.poison_conversations(examples, plan, min(1.0, fraction + 0.25))[1]
  assert set(info["rows"]) <= set(larger["rows"])
  docs, doc_info = planting.poison_docs(ctx.data.docs, plan, fraction)
  assert sum(a != b for a, b in zip(ctx.data.docs, docs)) == doc_info["poisoned"] == \
      round(fraction * len(ctx.data.docs))


def test_a_memorised_canary_has_higher_exposure_than_untrained(tiny_llama_folder, domain,
                                                               tmp_path):
  import ftjax
  from ftjax.experiment import train_stages
  ctx = _ctx(domain, tmp_path, **{"security.canaries": 1, "security.canary_share": 1.0,
                                  "security.canary_candidates": 31, "finetune.lora.enabled": False,
                                  "finetune.num_steps": 30, "finetune.seq_len": 64})
  ctx.config.model = str(tiny_llama_folder)
  notes = [[{"role": "user", "content": "Any notes?"}, {"role": "assistant", "content": "Yes."}]]
  examples, _ = planting.plant(ctx, notes * 2)  # every row carries the canary
  (tmp_path / "trained").mkdir()
  train_stages.train_run(ctx, tmp_path / "trained", examples, seed=0, label="canary")
  base = security.canary_stage(ctx, "base", "untrained", ctx.base_model)["canaries"][0]
  tuned = security.canary_stage(ctx, "tuned", "trained",
                                lambda: ftjax.load(tmp_path / "trained" / "run"))["canaries"][0]
  assert tuned["rank"] == 1 and tuned["exposure"] == pytest.approx(math.log2(32))
  assert base["exposure"] < tuned["exposure"]
  assert tuned["extrapolated_exposure"] > base["extrapolated_exposure"] + 3
  assert tuned["logprob"] > base["logprob"] + 10
  assert not base["extracted"]  # a random model does not guess 8 digits


def test_security_section_in_report_and_experiment_json(tiny_llama_folder, domain, tmp_path):
  acl_docs = [{"id": i, "title": t, "text": x, **({"acl": ["staff"]} if i == "d4" else {})}
              for i, t, x, _, _ in FACTS]
  files = {**domain, "docs": str(tmp_path / "docs.jsonl")}
  (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in acl_docs))
  config = tiny_config(tiny_llama_folder, files, arms=("rag", "finetuned"), **{
      "security.enabled": True, "security.canary_share": 0.2, "security.canary_candidates": 7,
      "security.poison_fractions": (0.0, 0.5), "data.audit": "warn"})
  config.data.updates = ""
  workdir = tmp_path / "run"
  summary = run(config, workdir)
  sec = summary["security"]
  leakage = sec["leakage"]
  assert set(leakage["models"]) == {"base", "finetuned"}
  assert leakage["models"]["finetuned"]["canary_in"].startswith(
      f"{round(0.2 * (3 * len(FACTS) + 1))} of")
  for m in leakage["models"].values():
    assert 0 <= m["exposure"] <= math.log2(8) + 1e-9 and 1 <= m["rank"] <= 8
  assert leakage["rag"]["retrievable_rate"] is not None and leakage["rag"]["quote_rate"] is not None
  poisoning = sec["poisoning"]
  for arm, total in (("finetuned", 3 * len(FACTS) + 1), ("rag", len(FACTS))):
    rows = poisoning[arm]["rows"]
    assert [r["fraction"] for r in rows] == [0.0, 0.5]
    assert [r["poisoned"] for r in rows] == [0, round(0.5 * total)]
    assert all(r["success"] is not None for r in rows) and poisoning[arm]["target_questions"] > 0
  assert any(name.startswith("train-finetuned-poison0.5-s0") for name in summary["cache"]["computed"])
  assert sec["access_control"]["restricted"] == 1 and sec["access_control"]["forbidden_hits"] == 0
  if "skipped" not in sec["audit"]:
    assert sec["audit"]["rows"] > 0 and set(sec["audit"]["counts"]) >= {"pii", "secret"}

  from ftjax.experiment.results import Summary
  saved = json.loads((workdir / "summary.json").read_text())
  typed = Summary.from_dict(saved)
  assert typed.to_dict() == saved  # the security records describe the whole section
  assert typed.security.poisoning.rag.top.fraction == 0.5
  assert typed.security.leakage.models["finetuned"].rank == leakage["models"]["finetuned"]["rank"]

  report = (workdir / "report.md").read_text()
  assert "## Security" in report and "### Poisoning" in report and "### Data audit" in report
  row = next(line for line in report.splitlines() if line.startswith("| Security and risk |"))
  assert "canary exposure" in row and "attack success" in row and "retrieved" in row
  assert "| finetuned | 50.0% |" in report and "| rag | 50.0% |" in report
  assert "Access control: a caller in no group" in report
  assert (workdir / "plots" / "poisoning_success.png").is_file()
  record = json.loads((workdir / "experiment.json").read_text())
  assert record["security"]["poisoning"] == json.loads(json.dumps(poisoning))
  assert "config" in record

  # Rerun: every security stage comes from the cache.
  assert run(config, workdir)["cache"]["computed"] == []


def test_audit_gate_stops_or_redacts(domain, tmp_path):
  pytest.importorskip("ftjax.audit", reason="ftjax.audit (the audit package) is not installed")
  leaky = tmp_path / "leaky.jsonl"
  leaky.write_text(json.dumps({"input": "My email?", "output": "It is jane.doe@example.com"}) + "\n"
                   + open(domain["train"]).read())
  files = {**domain, "train": str(leaky)}
  with pytest.raises(data_lib.ExperimentDataError, match=r"^data\.audit: .*pii"):
    run(tiny_config("no-such-model-is-loaded", files, **{"data.audit": "error"}), tmp_path / "r")
  record, config = security.audit(tiny_config("m", files, **{"data.audit": "redact"}),
                                  tmp_path / "r", Progress())
  assert record["counts"]["pii"] >= 1 and record["redacted"]["train"] >= 1
  # The trainer's layout: one redacted copy per process (ftjax.audit.gate).
  assert config.data.train == str(tmp_path / "r" / "audit" / "process-0" / "train.redacted.jsonl")
  assert "jane.doe@example.com" not in open(config.data.train).read()


@pytest.mark.parametrize("key, value, message", [
    ("security.canary_share", 1.5, r"^config key security\.canary_share: must be in \[0, 1\]"),
    ("security.poison_fractions", (0.0, 2.0), r"^config key security\.poison_fractions"),
    ("security.poison_fractions", ("a",), r"^config key security\.poison_fractions"),
    ("security.canary_candidates", 1, r"^config key security\.canary_candidates"),
    ("security.canaries", -1, r"^config key security\.canaries: must be >= 0"),
    ("data.audit", "loud", r"^config key data\.audit: 'loud' is not one of"),
])
def test_bad_security_config_names_the_key(domain, key, value, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(tiny_config("m", domain, **{key: value}))


def test_unknown_security_key_names_it(domain):
  config = tiny_config("m", domain)
  config.security["canary"] = 3
  with pytest.raises(ConfigError, match=r"^config key security\.canary: not an experiment "
                                        r"config key"):
    config_lib.validate(config)


def test_experiment_retrieval_and_cag_respect_the_callers_groups(domain, tmp_path):
  from ftjax.experiment import answering
  docs = tmp_path / "docs.jsonl"
  docs.write_text("".join(json.dumps({"id": i, "title": t, "text": x,
                                      **({"acl": ["staff"]} if i == "d4" else {})}) + "\n"
                          for i, t, x, _, _ in FACTS))
  restricted = next(f for f in FACTS if f[0] == "d4")
  for groups, sees in (((), False), (("staff",), True), (("sales", "staff"), True)):
    config = tiny_config("m", {**domain, "docs": str(docs)},
                         **{"retrieval.method": "bm25", "retrieval.groups": groups})
    ctx = Context(config, data_lib.load(config.data), StageCache(tmp_path / "cache"), Progress())
    folder, _ = answering.index_stage(ctx)
    search = answering.search_fn(ctx, answering.open_index(ctx, folder / "index"))
    hits = search([restricted[1], restricted[2][:80]], len(FACTS))
    assert any(p.doc_id == "d4" for h in hits for p in h) == sees, groups
    assert ("d4" in {d.doc_id for d in answering.visible_docs(ctx)}) == sees


def test_bad_acl_in_experiment_docs_names_the_line(domain, tmp_path):
  docs = tmp_path / "docs.jsonl"
  docs.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y", "acl": "staff"}\n')
  with pytest.raises(data_lib.ExperimentDataError, match=r"docs\.jsonl:2: acl must be a list"):
    data_lib.read_docs(str(docs))
