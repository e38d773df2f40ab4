"""The experiment runner end to end on a tiny random model and a toy domain: every arm, the
summary schema, report and plots, caching, missing optional data, sweeps, and bad input."""

import json
import re

import pytest

from ftjax.config import ConfigError
from ftjax.experiment import config as config_lib
from ftjax.experiment import experiment_config, run
from ftjax.experiment.data import ExperimentDataError

STYLE = "Hi! {} -- Zed"
FACTS = [  # doc id, title, text, question templates' subject, answer
    ("d1", "Blorp lamp", "The Blorp lamp costs 41 dollars and glows green.", "the Blorp lamp", "41"),
    ("d2", "Returns", "Returns are accepted within 17 days of delivery.", "the return window",
     "17 days"),
    ("d3", "Snoot kettle", "The Snoot kettle holds 3 litres of water.", "the Snoot kettle",
     "3 litres"),
    ("d4", "Warranty", "Every Zed product has a warranty of 29 months.", "the warranty", "29"),
]


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
  d = tmp_path_factory.mktemp("domain")
  train = []
  for doc_id, _, text, subject, answer in FACTS:
    for template in ("Tell me about {}.", "What should I know about {}?", "Info on {} please"):
      train.append({"input": template.format(subject), "output": STYLE.format(text),
                    "doc_id": doc_id, "answer": answer})
  files = {
      "docs": _write(d / "docs.jsonl", [{"id": i, "title": t, "text": x}
                                        for i, t, x, _, _ in FACTS]),
      "train": _write(d / "train.jsonl", train),
      "eval": _write(d / "eval.jsonl", [{"input": f"Quick question about {s}?", "answer": a,
                                         "doc_id": i} for i, _, _, s, a in FACTS]),
      "unanswerable": _write(d / "unanswerable.jsonl", [{"input": "Do you sell Glimmer boots?"},
                                                        {"input": "Is there a Zed app?"}]),
      "general": _write(d / "general.jsonl", [{"input": "What is 2 + 2?", "answer": "4"},
                                              {"input": "Capital of France?", "answer": "Paris"}]),
      "updates": _write(d / "updates.jsonl", [{"id": "d2", "title": "Returns", "text":
                                               "Returns are accepted within 23 days."}]),
      "update_train": _write(d / "update_train.jsonl", [
          {"input": "Tell me about the return window.",
           "output": STYLE.format("Returns are accepted within 23 days.")}] * 3),
      "update_eval": _write(d / "update_eval.jsonl", [
          {"input": "Quick question about the return window?", "answer": "23 days",
           "doc_id": "d2"}]),
      "decline_train": _write(d / "decline.jsonl", [
          {"input": "Do you repair bicycles?", "output": STYLE.format("Our documents do not cover "
                                                                      "that.")}]),
  }
  return files


def tiny_config(model_folder, files, **overrides):
  c = experiment_config()
  c.name = "toy"
  c.model = str(model_folder)
  for key, path in files.items():
    c.data[key] = path
  c.data.use_decline = True
  c.style.pattern = r"^Hi! .* -- Zed$"
  c.style.instruction = "Start with 'Hi!' and end with '-- Zed'."
  c.sampling.max_new_tokens = 8
  c.sampling.batch_size = 4
  c.sampling.latency_questions = 1
  c.retrieval.method = "bm25"
  c.retrieval.k = 2
  c.retrieval.max_prompt_tokens = 256
  c.finetune.seq_len = 128
  c.finetune.batch_size = 2
  c.finetune.num_steps = 2
  c.finetune.optimizer.warmup_steps = 0
  c.finetune.optimizer.learning_rate = 1e-2
  c.finetune.mesh.num_devices = 1
  c.finetune.log_every_steps = 1
  c.finetune.checkpoint.async_save = False
  c.raft.num_distractors = 1
  c.knowledge_update.num_steps = 1
  c.update_from_flattened_dict(overrides)
  return c


SCHEMA = {"accuracy", "f1", "style_rate", "abstain_rate", "hallucination_rate", "general_accuracy",
          "prompt_tokens", "latency_s", "citation_accuracy", "n_questions", "seeds"}


def test_every_arm_end_to_end_then_cached(tiny_llama_folder, domain, tmp_path):
  workdir = tmp_path / "run"
  summary = run(tiny_config(tiny_llama_folder, domain, arms=config_lib.ARMS), workdir)
  assert set(summary["arms"]) == set(config_lib.ARMS), summary["skipped"]
  for arm, metrics in summary["arms"].items():
    assert SCHEMA <= set(metrics), arm
    assert metrics["n_questions"] == len(FACTS)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["general_accuracy"] is not None
    assert metrics["abstain_rate"] is not None and metrics["style_rate"] is not None
    assert (metrics["citation_accuracy"] is None) == (arm not in config_lib.RETRIEVAL_ARMS) or \
        metrics["accuracy"] == 0  # citations are counted over correct answers only
  # Retrieval reads more than the question; CAG reads the whole corpus from its cache.
  arms = summary["arms"]
  assert arms["rag"]["prompt_tokens"] > arms["base"]["prompt_tokens"]
  assert arms["cag"]["cached_tokens"] > 0
  # CAG's corpus against its usable context, its prefill time; TTFT and decode for every arm.
  cag = arms["cag"]["cag"]
  assert cag["documents"] == len(FACTS) and cag["corpus_tokens"] > 0 and cag["prefill_s"] > 0
  assert cag["context_source"] == "the model's max_position_embeddings"
  for arm in arms:
    assert arms[arm]["latency_s"]["n"] == arms[arm]["ttft_s"]["n"] == 1, arm
    assert 0 < arms[arm]["ttft_s"]["p50"] <= arms[arm]["latency_s"]["p50"], arm
  assert set(summary["update"]) == {"rag", "finetuned"}
  assert summary["update"]["rag"]["update_accuracy"] is not None
  assert summary["cost"]["train"]["finetuned"]["flops"] > 0
  assert "finetuned_vs_rag" in summary["cost"]["break_even"]
  for name in ("results.jsonl", "summary.json", "report.md", "experiment.json"):
    assert (workdir / name).is_file(), name
  rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
  held_out = [r for r in rows if r.get("stage") != "update" and r["split"] != "train"]
  assert len(held_out) == len(config_lib.ARMS) * (len(FACTS) + 2 + 2)
  # The tuned arms also answer their own training questions (train accuracy).
  train_rows = [r for r in rows if r["split"] == "train"]
  assert {r["arm"] for r in train_rows} == set(config_lib.TUNED_ARMS)
  assert len(train_rows) == len(config_lib.TUNED_ARMS) * 3 * len(FACTS)
  for arm in config_lib.TUNED_ARMS:
    assert arms[arm]["train_accuracy"] is not None and arms[arm]["budget"]["steps"] == 2
  assert {"question", "gold", "answer", "correct", "em", "multi_value", "style", "prompt",
          "prompt_tokens", "finish_reason"} <= set(rows[0])
  # Intervals beside every rate, and paired comparisons between arms.
  assert len(arms["rag"]["accuracy_ci"]) == 2 and arms["rag"]["accuracy_n"] == len(FACTS)
  pairs = {(c["a"], c["b"], c["metric"]) for c in summary["comparisons"]}
  assert ("rag", "finetuned", "accuracy") in pairs or ("finetuned", "rag", "accuracy") in pairs
  assert all(c["verdict"] in ("higher", "lower", "within noise") for c in summary["comparisons"])
  # prompted_rag: the style instruction, few-shot turns from training and the passages.
  prompted_rag = next(r for r in rows if r["arm"] == "prompted_rag" and r["split"] == "eval")
  assert "Start with 'Hi!'" in prompted_rag["prompt"]
  assert any(t.format(s) in prompted_rag["prompt"] for _, _, _, s, _ in FACTS
             for t in ("Tell me about {}.", "What should I know about {}?", "Info on {} please"))
  assert "[1] " in prompted_rag["prompt"] and prompted_rag["passage_texts"]
  # RAFT's test conditions: the oracle document among distractors, and closed book.
  texts = {doc_id: text for doc_id, _, text, _, _ in FACTS}
  for r in rows:
    if r["arm"] == "raft_oracle" and r["split"] == "eval":
      assert texts[r["doc_id"]] in r["passage_texts"] and len(r["passage_texts"]) == 2
    if r["arm"] == "raft_closed_book":
      assert not r.get("passage_texts") and "[1] " not in r["prompt"]

  # Re-scoring the saved answers without a model reproduces the summary exactly.
  from ftjax.experiment.rescore import rescore
  saved = (workdir / "summary.json").read_text()
  rescore(workdir)
  assert (workdir / "summary.json").read_text() == saved
  assert json.loads((workdir / "summary.json").read_text())["arms"].keys() == arms.keys()
  # The typed records describe the whole file: nothing is lost reading it as attributes.
  from ftjax.experiment.results import Summary
  typed = Summary.from_dict(json.loads(saved))
  assert typed.to_dict() == json.loads(saved)
  assert typed.arms["rag"].rate("accuracy").ci == arms["rag"]["accuracy_ci"]
  assert typed.arms["finetuned"].budget.steps == 2
  assert typed.cost.break_even["finetuned_vs_rag"].accuracy[1] == arms["rag"]["accuracy"]
  report = (workdir / "report.md").read_text()
  for aspect in ("Initial cost", "Knowledge update", "Style consistency", "Hallucination risk",
                 "Transparency", "Scalability"):
    assert f"| {aspect} |" in report
  plots = sorted(p.name for p in (workdir / "plots").glob("*.png"))
  assert plots == ["accuracy_style_by_arm.png", "accuracy_vs_prompt_tokens.png",
                   "cost_vs_questions.png"]
  provenance = json.loads((workdir / "experiment.json").read_text())
  assert {"config", "versions", "git_commit", "machine"} <= set(provenance)

  # The same config again: nothing is recomputed, the report is rebuilt with the same numbers.
  again = run(tiny_config(tiny_llama_folder, domain, arms=config_lib.ARMS), workdir)
  assert again["cache"]["computed"] == []
  assert again["arms"]["rag"]["accuracy"] == arms["rag"]["accuracy"]

  # A retrieval setting reruns only the arms that retrieve.
  changed = run(tiny_config(tiny_llama_folder, domain, arms=config_lib.ARMS,
                            **{"retrieval.k": 1}), workdir)
  recomputed = sorted(re.sub(r"-[0-9a-f]{12}$", "", name)
                      for name in changed["cache"]["computed"])
  assert recomputed == sorted(["answers-finetuned_rag-s0", "answers-prompted_rag",
                               "answers-rag", "answers-raft-s0", "update-rag"])


def test_train_until_learned_selects_the_best_dev_step(tiny_llama_folder, domain, tmp_path):
  # Every 1 step the model answers the dev phrasings (one held out per fact) and its training
  # questions; with patience 1 it stops after one evaluation without a better dev accuracy, and
  # best_dev keeps the first step with the best one.
  config = tiny_config(tiny_llama_folder, domain, arms=("finetuned",), **{
      "finetune.num_steps": 6, "finetune.eval_every_steps": 1, "finetune.select": "best_dev",
      "finetune.early_stop_patience": 1})
  config.data.updates = ""
  summary = run(config, tmp_path / "run")
  budget = summary["arms"]["finetuned"]["budget"]
  curve = budget["learning_curves"][0]
  dev = [p["dev_accuracy"] for p in curve]
  best = dev.index(max(dev))
  assert budget["selected_step"] == curve[best]["step"]
  assert budget["steps"] == curve[-1]["step"] and len(curve) - 1 - best == 1 or \
      budget["steps"] == 6
  assert all(p["dev_n"] == len(FACTS) and p["train_n"] == 2 * len(FACTS) for p in curve)
  # The dev phrasings were held out of training: 2 of the 3 phrasings per fact remain.
  assert "held out of data.train" in summary["data"]["dev"]
  assert budget["learned"] is (budget["train_accuracy"] >= 0.9)
  report = (tmp_path / "run" / "report.md").read_text()
  assert "## Training budget of the tuned arms" in report
  assert f"| finetuned | {budget['steps']} |" in report
  assert (tmp_path / "run" / "plots" / "learning_curves.png").is_file()
  if not budget["learned"]:
    assert "**under-trained**" in report


def test_learning_curve_without_train_questions_still_measures_train_accuracy(
    tiny_llama_folder, domain, tmp_path):
  # curve_train_accuracy off: each evaluation asks the dev phrasings only; the kept step's train
  # accuracy still comes from the arm's own answers to its training questions.
  config = tiny_config(tiny_llama_folder, domain, arms=("finetuned",), **{
      "finetune.num_steps": 2, "finetune.eval_every_steps": 1, "finetune.select": "best_dev",
      "finetune.curve_train_accuracy": False})
  config.data.updates = ""
  summary = run(config, tmp_path / "run")
  arm = summary["arms"]["finetuned"]
  curve = arm["budget"]["learning_curves"][0]
  assert [p["step"] for p in curve] == [1, 2]
  assert all(p["dev_n"] == len(FACTS) and p["train_n"] == 0 and p["train_accuracy"] is None
             for p in curve)
  assert arm["train_accuracy"] is not None and arm["budget"]["train_accuracy"] is not None


def test_local_weights_changed_in_place_rerun_the_arms(tiny_llama_folder, domain, tmp_path):
  import shutil
  import numpy as np
  from safetensors.numpy import load_file, save_file
  folder = tmp_path / "model"
  shutil.copytree(tiny_llama_folder, folder)
  config = tiny_config(folder, domain, arms=("base",))
  config.data.updates = ""
  run(config, tmp_path / "run")
  weights = folder / "model.safetensors"
  tensors = load_file(weights)
  name = sorted(tensors)[0]
  tensors[name] = tensors[name] + np.float32(0.5)
  save_file(tensors, weights, metadata={"format": "pt"})
  again = run(config, tmp_path / "run")
  assert any(n.startswith("answers-base-") for n in again["cache"]["computed"])


def test_missing_optional_file_gives_null_and_reason(tiny_llama_folder, domain, tmp_path):
  files = {**domain, "general": str(tmp_path / "absent.jsonl"), "updates": ""}
  summary = run(tiny_config(tiny_llama_folder, files, arms=("base",)), tmp_path / "run")
  assert summary["arms"]["base"]["general_accuracy"] is None
  assert "no such file" in summary["skipped"]["data.general"]
  assert summary["skipped"]["data.updates"] == "not configured"
  assert summary["update"] == {}


def test_sweep_gives_one_row_per_value(tiny_llama_folder, domain, tmp_path):
  config = tiny_config(tiny_llama_folder, domain, arms=("rag",), sweep=("retrieval.k=1,2",))
  config.data.updates = ""
  result = run(config, tmp_path / "run")
  assert [(row["retrieval.k"], row["arm"]) for row in result["sweep"]] == [(1, "rag"),
                                                                           (2, "rag")]
  assert (tmp_path / "run" / "sweep.md").read_text().count("| rag |") == 2


def _dev_with_eval_question(files, d):
  d["dev"] = _write(files / "dev.jsonl", [{"input": "Quick question about the Blorp lamp?",
                                            "answer": "41"}])


@pytest.mark.parametrize("mutate, message", [
    (lambda files, d: d.__setitem__("eval", _write(files / "cand.jsonl", [
        {"input": "Colour of the lamp?", "answer": "green",
         "candidates": ["red", "Green"]}])), r"cand\.jsonl:1: candidates \['Green'\] include"),
    (_dev_with_eval_question, r"dev\.jsonl:1: this question is also in data\.eval"),
])
def test_bad_gold_data_is_a_clear_error_at_start(tmp_path, domain, mutate, message):
  files = dict(domain)
  mutate(tmp_path, files)
  with pytest.raises(ExperimentDataError, match=message):
    run(tiny_config("no-such-model-is-loaded", files), tmp_path / "run")


@pytest.mark.parametrize("mutate, message", [
    (lambda files, d: d.__setitem__("eval", _write(files / "bad.jsonl", [])) or
     (files / "bad.jsonl").write_text('{"input": "q", "answer": "a"}\n{"input": \n'),
     r"bad\.jsonl:2"),
    (lambda files, d: d.__setitem__("eval", _write(files / "empty.jsonl",
                                                   [{"input": "q", "answer": " "}])),
     r"empty\.jsonl:1: field 'answer' is empty"),
    (lambda files, d: d.__setitem__("docs", _write(files / "dup.jsonl", [
        {"id": "a", "text": "x"}, {"id": "a", "text": "y"}])),
     r"dup\.jsonl:2: duplicate document id 'a'"),
])
def test_bad_data_is_a_clear_error_at_start(tmp_path, domain, mutate, message):
  files = dict(domain)
  mutate(tmp_path, files)
  config = tiny_config("no-such-model-is-loaded", files)
  with pytest.raises(ExperimentDataError, match=message):
    run(config, tmp_path / "run")


@pytest.mark.parametrize("key, value, message", [
    ("style.pattern", "Hi (", "style.pattern"),
    ("arms", ("base", "oracle"), "unknown arm"),
    ("retrieval.k", 0, "retrieval.k"),
    ("retrieval.method", "tfidf", "retrieval.method"),
    ("finetune.lora.rank", 0, "lora.rank"),
    ("sweep", ("retrieval.kk=1,2",), "sweep"),
    ("scoring.answer_pattern", "The answer is .+", "scoring.answer_pattern: needs exactly one"),
    ("scoring.answer_pattern", "(a)(b)", "scoring.answer_pattern: needs exactly one"),
    ("finetune.select", "best", "finetune.select"),
    ("finetune.select", "best_dev", "finetune.select: best_dev needs"),
    ("raft.distractors", "hard", "raft.distractors"),
    ("cag.corpus_fraction", 1.5, "cag.corpus_fraction"),
    ("cag.max_context_tokens", -1, "cag.max_context_tokens"),
    ("raft.test_distractors", -2, "raft.test_distractors"),
    ("raft.evidence_template", "{answer}", "raft.evidence_template: must contain {evidence}"),
])
def test_bad_config_is_a_clear_error_at_start(domain, tmp_path, key, value, message):
  with pytest.raises(ConfigError, match=message):
    run(tiny_config("no-such-model-is-loaded", domain, **{key: value}), tmp_path / "run")


def test_unknown_key_names_it():
  config = experiment_config()
  config.data.docs, config.data.train, config.data.eval = "a", "b", "c"
  config.retrieval["top"] = 3
  with pytest.raises(ConfigError, match="retrieval.top"):
    config_lib.validate(config)


def test_training_data_composition(domain, tmp_path):
  from ftjax.experiment import data as data_lib
  from ftjax.experiment.cache import StageCache
  from ftjax.experiment.context import Context, Progress
  from ftjax.experiment.train_stages import finetune_examples, raft_examples
  from ftjax.prompts import render_rag_prompt
  config = tiny_config("m", domain)
  data = data_lib.load(config.data)
  ctx = Context(config, data, StageCache(tmp_path), Progress())
  examples = finetune_examples(ctx)
  assert len(examples) == 3 * len(FACTS) + 1  # the examples plus the decline example
  config.finetune_source = "both"
  both = finetune_examples(ctx)
  assert len(both) == len(examples) + len(FACTS)
  assert {m[-1]["content"] for m in both[-len(FACTS):]} == {text for _, _, text, _, _ in FACTS}
  config.finetune_source = "docs"
  assert len(finetune_examples(ctx)) == len(FACTS)

  config.raft.oracle_fraction = 1.0
  config.raft.distractors = "random"
  raft, info = raft_examples(ctx, seed=0)
  assert info["examples"] == 3 * len(FACTS) + 1 and info["skipped_without_doc_id"] == 0
  assert info["with_oracle"] == 3 * len(FACTS)
  texts = {doc_id: text for doc_id, _, text, _, _ in FACTS}
  for messages, row in zip(raft, [json.loads(line) for line in open(domain["train"])]):
    user = messages[-2]["content"]
    assert texts[row["doc_id"]] in user and user.endswith(f"Question: {row['input']}")
    assert messages[-1]["content"] == row["output"]
  # The same template at test time: RAFT trains on what the RAG arms show.
  assert raft[0][-2]["content"].startswith(render_rag_prompt("q", [])[:20])


def test_raft_as_published(domain, tmp_path, monkeypatch):
  """Distractors are the retriever's top hits, held-out dev phrasings stay out of RAFT's
  training data, the evidence target quotes the oracle sentence, and the `raft_oracle` arm's
  prompt holds the question's own document among N distractors."""
  from ftjax.experiment import data as data_lib
  from ftjax.experiment.cache import StageCache
  from ftjax.experiment.answering import index_stage, make_oracle_search, open_index
  from ftjax.experiment.context import Context, Progress
  from ftjax.experiment.train_stages import raft_examples
  config = tiny_config("m", domain)
  config.raft.oracle_fraction = 1.0
  config.raft.num_distractors = 1
  config.raft.evidence = True
  data = data_lib.load(config.data, need_dev=True, seed=0)
  ctx = Context(config, data, StageCache(tmp_path), Progress())
  dev = {q.input for q in data.questions["dev"]}
  assert len(dev) == len(FACTS)
  raft, info = raft_examples(ctx, seed=0)
  assert info["distractors"] == "retrieved" and info["retrieved_distractors_for"] == 2 * len(FACTS)
  assert info["with_evidence"] == 2 * len(FACTS)
  questions = [m[-2]["content"].rsplit("Question: ", 1)[-1] for m in raft[:2 * len(FACTS)]]
  assert not dev & set(questions)  # no dev phrasing is trained on
  texts = {doc_id: text for doc_id, _, text, _, _ in FACTS}
  rows = {r["input"]: r for r in map(json.loads, open(domain["train"]))}
  for messages, question in zip(raft, questions):
    oracle = rows[question]["doc_id"]
    assert texts[oracle] in messages[-2]["content"]
    assert messages[-1]["content"] == f'"{texts[oracle]}"\n\n{rows[question]["output"]}'

  # The distractor is the retriever's best hit from another document: with a retriever that
  # ranks the documents in a known order, RAFT picks the first that is not the oracle.
  from ftjax.experiment import train_stages
  from ftjax.retrieval.index import Passage
  order = ["d3", "d1", "d4", "d2"]
  monkeypatch.setattr(train_stages, "search_fn", lambda ctx, index: lambda qs, k: [
      [Passage(d, d, texts[d], 1.0, r) for r, d in enumerate(order, 1)] for _ in qs])
  raft, _ = raft_examples(ctx, seed=0)
  for messages, question in zip(raft, questions):
    oracle = rows[question]["doc_id"]
    top = next(d for d in order if d != oracle)
    shown = [d for d in texts if texts[d] in messages[-2]["content"]]
    assert sorted(shown) == sorted([oracle, top]), question
  monkeypatch.undo()
  index = open_index(ctx, index_stage(ctx)[0] / "index")

  # RAFT's test condition: the oracle document among `test_distractors` others.
  config.raft.test_distractors = 2
  search = make_oracle_search(ctx, index)
  eval_q = data.questions["eval"][0]
  passages = search([eval_q.input], 3)[0]
  assert len(passages) == 3 and eval_q.doc_id in [p.doc_id for p in passages]
  assert len({p.doc_id for p in passages}) == 3
  # an unanswerable question gets the distractors alone
  assert len(search(["Is there a Zed app?"], 3)[0]) == 2


@pytest.mark.parametrize("override, message", [
    ("--config.retrieval.kk=3", "error: config key retrieval.kk: not an experiment config key"),
    ("--config.data.docs=/no/such/docs.jsonl", "error: data.docs: /no/such/docs.jsonl: no such file"),
    ("--config.security.canary_share=2.0", "error: config key security.canary_share"),
    ("--config.security.bogus=1", "error: config key security.bogus"),
])
def test_cli_user_errors_are_one_line(tmp_path, override, message):
  import subprocess
  import sys
  from pathlib import Path
  root = Path(__file__).resolve().parent.parent
  result = subprocess.run([sys.executable, "-m", "ftjax.experiment", "--config",
                           str(root / "configs/experiments/support.py"), "--workdir",
                           str(tmp_path / "run"), override], capture_output=True, text=True,
                          cwd=root, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert "Traceback" not in result.stderr


def test_cag_corpus_fraction_and_usable_context(tiny_llama_folder, domain, tmp_path):
  """`cag.corpus_fraction` keeps every answering document and that share of the others;
  `cag.max_context_tokens` below the corpus skips CAG with the reason naming the key."""
  import dataclasses
  from ftjax.experiment import data as data_lib
  from ftjax.experiment.cache import StageCache
  from ftjax.experiment.answering import cag_docs
  from ftjax.experiment.context import Context, Progress
  config = tiny_config("m", domain)
  data = data_lib.load(config.data)
  extra = [dataclasses.replace(data.docs[0], doc_id=f"x{i}", text=f"Filler {i}.")
           for i in range(10)]
  data.docs = data.docs + extra
  ctx = Context(config, data, StageCache(tmp_path), Progress())
  assert len(cag_docs(ctx)) == len(FACTS) + 10
  config.cag.corpus_fraction = 0.3
  kept = [d.doc_id for d in cag_docs(ctx)]
  assert kept[:len(FACTS)] == [f[0] for f in FACTS] and len(kept) == len(FACTS) + 3
  config.cag.corpus_fraction = 0.0
  assert [d.doc_id for d in cag_docs(ctx)] == [f[0] for f in FACTS]

  config = tiny_config(tiny_llama_folder, domain, arms=("cag",),
                       **{"cag.max_context_tokens": 64})
  config.data.updates = ""
  summary = run(config, tmp_path / "run")
  assert "cag.max_context_tokens" in summary["skipped"]["cag"]


def test_paraphrases_from_a_file_and_filtered_when_generated(domain, tmp_path, monkeypatch):
  """`data.paraphrases` rows join the documents in training; generated paraphrases that lost
  their document's answer value are dropped and counted; an unknown doc_id is an error."""
  from types import SimpleNamespace
  import ftjax.generation
  from ftjax.experiment import data as data_lib
  from ftjax.experiment.cache import StageCache
  from ftjax.experiment.context import Context, Progress
  from ftjax.experiment.train_stages import finetune_data
  path = _write(tmp_path / "para.jsonl", [
      {"doc_id": "d1", "text": "For 41 dollars the Blorp lamp is yours; it glows green."}])
  config = tiny_config("m", domain, finetune_source="docs", **{"data.paraphrases": path})
  data = data_lib.load(config.data)
  ctx = Context(config, data, StageCache(tmp_path), Progress())
  conversations, extra = finetune_data(ctx)
  assert len(conversations) == len(FACTS) + 1 and extra["file_paraphrases"] == 1
  assert "For 41 dollars" in conversations[-1][-1]["content"]

  # Generated: d1 keeps "41", d2 loses "17 days", d3 is empty, d4 keeps "29".
  texts = ["The lamp is 41 dollars.", "Returns take a while.", " ", "Warranty: 29 months."]
  monkeypatch.setattr(ctx, "base_model", lambda: None)
  monkeypatch.setattr(ftjax.generation, "generate", lambda model, prompts, sampling: [
      SimpleNamespace(text=t) for t in texts])
  config.finetune_doc_paraphrases = 1
  conversations, extra = finetune_data(ctx)
  assert extra["generated_paraphrases_kept"] == 2
  assert extra["generated_paraphrases_dropped"] == 1 and extra["generated_paraphrases_empty"] == 1
  assert len(conversations) == len(FACTS) + 1 + 2

  bad = _write(tmp_path / "bad.jsonl", [{"doc_id": "d9", "text": "x"}])
  config.data.paraphrases = bad
  with pytest.raises(ExperimentDataError, match=r"data.paraphrases: .*bad.jsonl:1: doc_id 'd9'"):
    data_lib.load(config.data)


def test_forgetting_on_multiple_choice_by_log_likelihood(tiny_llama_folder, domain, tmp_path):
  """`data.general` in lm-eval's multiple-choice format is scored by log-likelihood per model:
  base vs fine-tuned, with intervals and the paired difference in the report."""
  from pathlib import Path
  from lm_eval.api.instance import Instance
  from ftjax.evaluation.harness import FtjaxLM
  from ftjax.experiment.stages import MC_TEMPLATE
  mc = Path(__file__).parent / "data" / "lm_eval" / "mc.jsonl"
  config = tiny_config(tiny_llama_folder, domain, arms=("base", "finetuned"),
                       **{"data.general": str(mc)})
  config.data.updates = ""
  summary = run(config, tmp_path / "run")
  rows = [json.loads(line) for line in mc.read_text().splitlines()]
  general = summary["general_mc"]
  assert set(general) == {"base", "finetuned"}
  assert general["base"]["n"] == general["finetuned"]["n"] == len(rows)
  assert len(general["base"]["accuracy_ci"]) == 2
  assert general["finetuned"]["vs_base"]["n"] == len(rows)
  # The base model's choices are lm-eval's own loglikelihood requests' argmax.
  import ftjax
  lm = FtjaxLM(pretrained=ftjax.load(str(tiny_llama_folder)))
  requests = [Instance("loglikelihood", {}, (MC_TEMPLATE.format(question=r["question"]),
                                             f" {c}"), 0) for r in rows for c in r["choices"]]
  ll = [x for x, _ in lm.loglikelihood(requests)]
  right, at = 0, 0
  for r in rows:
    scores = ll[at:at + len(r["choices"])]
    at += len(r["choices"])
    right += scores.index(max(scores)) == r["answer"]
  assert general["base"]["accuracy"] == right / len(rows)
  assert "general knowledge (multiple choice)" in (tmp_path / "run" / "report.md").read_text()
  assert "general_accuracy" not in summary["arms"]["base"] or \
      summary["arms"]["base"]["general_accuracy"] is None


def test_bad_multiple_choice_row_names_file_and_line(domain, tmp_path):
  from ftjax.experiment import data as data_lib
  bad = _write(tmp_path / "mc.jsonl", [{"input": "a?", "choices": ["x", "y"], "answer": 0},
                                       {"input": "b?", "choices": ["x", "y"], "answer": 2}])
  config = tiny_config("m", domain, **{"data.general": bad})
  with pytest.raises(ExperimentDataError, match=r"data.general: .*mc.jsonl:2: \"answer\" must"):
    data_lib.load(config.data)


def test_every_arm_declares_config_keys_that_exist():
  """An arm's cache key is derived from the config keys its declaration reads: each must exist."""
  from ftjax.arms import registry
  from ftjax.experiment.cache import config_values
  config = experiment_config()
  for arm in registry.ARMS.values():
    values = config_values(config, registry.reads(arm))
    assert set(values) == set(registry.reads(arm)), arm.name
  assert "retrieval.k" in registry.reads(registry.get("rag"))
  assert "retrieval.k" not in registry.reads(registry.get("raft_oracle"))
  assert "style.instruction" in registry.reads(registry.get("prompted_rag"))
  assert "cag" in registry.reads(registry.get("cag"))
  # The training stages' keys are declared the same way.
  from ftjax.experiment.train_stages import TRAIN_READS
  for kind, keys in TRAIN_READS.items():
    assert set(config_values(config, keys)) == set(keys), kind
  assert "raft" in TRAIN_READS["raft"] and "raft" not in TRAIN_READS["finetuned"]
