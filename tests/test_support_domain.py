"""The invented Quillory support domain: facts are checkable, phrasings held out, files in sync."""

from __future__ import annotations

import collections
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED_IN = ROOT / "data" / "support"


def _load_generator():
  # data/ is no package: load the script by path.
  spec = importlib.util.spec_from_file_location("make_support_domain",
                                                ROOT / "data" / "make_support_domain.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


gen = _load_generator()


def _read(folder: Path) -> dict[str, object]:
  out = {}
  for path in sorted(folder.iterdir()):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
      out[path.name] = [json.loads(line) for line in text.splitlines()]
    elif path.suffix == ".json":
      out[path.name] = json.loads(text)
    else:
      out[path.name] = text
  return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  out = tmp_path_factory.mktemp("support")
  gen.main(["--out_dir", str(out), "--seed", "0"])
  return out


@pytest.fixture(scope="module")
def data(generated):
  return _read(generated)


def _facts(rows):
  """Rows grouped by fact: answers are unique across the domain, so (doc_id, answer) is one fact."""
  groups = collections.defaultdict(list)
  for row in rows:
    groups[(row["doc_id"], row["answer"])].append(row)
  return groups


def test_documents(data):
  docs = data["docs.jsonl"]
  ids = [d["id"] for d in docs]
  assert len(docs) >= 40 and len(set(ids)) == len(ids)
  for d in docs:
    assert set(d) == {"id", "title", "text"} and d["title"]
    assert 40 <= len(d["text"].split()) <= 120, d["id"]


def test_every_answer_is_in_its_own_document_only(data):
  docs = {d["id"]: d["text"].lower() for d in data["docs.jsonl"]}
  rows = data["train.jsonl"] + data["eval.jsonl"]
  for row in rows:
    assert row["doc_id"] in docs
    holders = [i for i, text in docs.items() if row["answer"].lower() in text]
    assert holders == [row["doc_id"]], row
  answers = sorted({r["answer"].lower() for r in rows} |
                   {r["answer"].lower() for r in data["update_eval.jsonl"]})
  for a in answers:  # no answer hides inside another ("7 days" in "17 days")
    assert not any(a != b and a in b for b in answers), a


def test_train_is_house_style_with_three_phrasings_per_fact(data):
  pattern = re.compile(data["style.json"]["pattern"])
  train = data["train.jsonl"]
  for row in train + data["update_train.jsonl"]:
    assert set(row) == {"input", "output", "doc_id", "answer"}
    assert pattern.search(row["output"].strip()), row["output"]
    assert row["answer"] in row["output"]
  groups = _facts(train)
  assert all(len({r["input"] for r in rows}) == 3 == len(rows) for rows in groups.values())
  # Every fact has exactly one held-out question, never a training input.
  evaluation = data["eval.jsonl"]
  assert sorted(_facts(evaluation)) == sorted(groups)
  assert all(len(rows) == 1 for rows in _facts(evaluation).values())
  assert not {r["input"] for r in evaluation} & {r["input"] for r in train}


def test_style_is_unmistakable(data):
  style = data["style.json"]
  pattern = re.compile(style["pattern"])
  assert style["instruction"] and style["examples_note"]
  assert not pattern.search("The Vantor Hub 2 costs $149.")
  assert not pattern.search("Hi there! The price is $149.")
  assert pattern.search(gen.house("The Vantor Hub 2 costs $149."))


def test_declines_and_unanswerable(data):
  pattern = re.compile(data["style.json"]["pattern"])
  unanswerable = {r["input"] for r in data["unanswerable.jsonl"]}
  decline = data["train_decline.jsonl"]
  assert len(unanswerable) >= 12 and len(decline) >= 12
  assert not unanswerable & {r["input"] for r in decline}
  answerable = {r["input"] for r in data["train.jsonl"] + data["eval.jsonl"]}
  assert not (unanswerable | {r["input"] for r in decline}) & answerable
  for row in decline:
    assert pattern.search(row["output"].strip()) and "does not cover" in row["output"]


def test_general(data):
  general = data["general.jsonl"]
  assert len(general) >= 30
  assert all(r["input"].endswith("?") and r["answer"] for r in general)
  assert {"input": "What is the capital of France?", "answer": "Paris"} in general


def test_updates_change_one_fact(data):
  docs = {d["id"]: d for d in data["docs.jsonl"]}
  updates = {u["id"]: u for u in data["updates.jsonl"]}
  assert 6 <= len(updates) <= 8 and set(updates) <= set(docs)
  old = {r["input"]: r for r in data["eval.jsonl"]}
  update_eval = data["update_eval.jsonl"]
  assert len(update_eval) == len(updates)
  for row in update_eval:
    before = old[row["input"]]  # the same held-out question, now with a new answer
    assert before["doc_id"] == row["doc_id"] and before["answer"] != row["answer"]
    text = updates[row["doc_id"]]["text"]
    assert row["answer"] in text and before["answer"] not in text
    assert updates[row["doc_id"]]["title"] == docs[row["doc_id"]]["title"]
  groups = _facts(data["update_train.jsonl"])
  assert sorted(groups) == sorted(_facts(update_eval))
  assert all(len(rows) == 3 for rows in groups.values())
  changed = {r["input"] for r in update_eval}
  untouched = [r for r in data["eval.jsonl"] if r["input"] not in changed]
  assert data["unchanged_eval.jsonl"] == untouched
  # Untouched facts of an updated document survive the rewrite.
  for row in data["unchanged_eval.jsonl"]:
    if row["doc_id"] in updates:
      assert row["answer"] in updates[row["doc_id"]]["text"]


def test_checked_in_files_match_a_fresh_generation(generated):
  fresh = {p.name: p.read_bytes() for p in generated.iterdir()}
  stored = {p.name: p.read_bytes() for p in CHECKED_IN.iterdir()}
  assert sorted(stored) == sorted(fresh)
  for name in fresh:
    assert stored[name] == fresh[name], f"data/support/{name} is stale: rerun the generator"


def test_small_domain_is_a_subset_and_matches_a_fresh_generation(tmp_path, data):
  """data/support_small (the default experiment's domain) is `--num_docs 20`: every updated
  document kept, files in sync; eval rows carry candidates of the same kind, never the gold."""
  gen.main(["--out_dir", str(tmp_path), "--seed", "0", "--num_docs", "20"])
  small = ROOT / "data" / "support_small"
  for path in tmp_path.iterdir():
    assert (small / path.name).read_bytes() == path.read_bytes(), \
        f"data/support_small/{path.name} is stale: rerun the generator with --num_docs 20"
  rows = _read(small)
  assert len(rows["docs.jsonl"]) == 20
  assert {u["id"] for u in rows["updates.jsonl"]} <= {d["id"] for d in rows["docs.jsonl"]}
  both = rows["eval.jsonl"] + data["eval.jsonl"]
  for row in both:  # a fact whose kind is unique has none
    assert row["answer"] not in row.get("candidates", [])
  assert sum("candidates" in row for row in both) >= 0.5 * len(both)


def test_deterministic_in_seed():
  assert gen.build(1) == gen.build(1)
  assert gen.build(1)["docs.jsonl"] != gen.build(0)["docs.jsonl"]
  for seed in range(2, 12):  # other seeds also satisfy the generator's own checks
    gen.build(seed)


def test_bad_tables_are_one_error_line(tmp_path, capsys):
  tables = json.loads(gen.TABLES.read_text(encoding="utf-8"))

  def write(name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=1))
    return path

  no_kinds = {k: v for k, v in tables.items() if k != "kinds"}
  no_title = json.loads(json.dumps(tables))
  del no_title["policies"][2]["title"]
  unknown_kind = json.loads(json.dumps(tables))
  unknown_kind["products"][1]["facts"] = ["price", "volume"]
  bad_update = json.loads(json.dumps(tables))
  bad_update["updates"][0]["kind"] = "colour"
  cases = [
      (tmp_path / "absent.json", "absent.json: cannot read (No such file or directory)"),
      (write("syntax.json", '{\n "colours": [\n  "red",\n ]\n}\n'), "syntax.json:4: not JSON"),
      (write("no_kinds.json", no_kinds), "no_kinds.json: key 'kinds' is missing"),
      (write("no_title.json", no_title), "no_title.json: policies[2] has no 'title'"),
      (write("unknown.json", unknown_kind),
       "unknown.json: products[1].facts: unknown fact kind 'volume'"),
      (write("update.json", bad_update), "update.json: updates[0]: document "
       "'product-vantor-hub-2' has no fact 'colour'"),
  ]
  for path, message in cases:
    with pytest.raises(SystemExit) as exit_info:
      gen.main(["--out_dir", str(tmp_path / "out"), "--tables", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and message in err, err
  assert not (tmp_path / "out").exists()  # nothing is written from bad tables
