"""Writes an invented customer-service domain (the company Quillory) as JSONL files.

  python data/make_support_domain.py --out_dir data/support [--seed 0]

Quillory, its products and every fact about them (prices, warranties, button names, return
windows, ...) are made up, so a pretrained model cannot know them: an answer has to come from
fine-tuning or from retrieval. Answers follow a house style (`style.json`), some questions are
answered in no document (the model should decline), and a few documents get a changed fact
(`updates.jsonl`) to measure knowledge updates. The generated `README.md` lists every file.

The domain's tables (products, procedures, policies, question and reply templates per kind of
fact, ...) are in `support_domain_tables.json` beside this script; this file draws the values
and writes the files.

Pure standard library, deterministic in `--seed`, and fast (well under a second).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

COMPANY = "Quillory"
STYLE_PATTERN = r"^Hi there! .+ Anything else\? — Quillory Care$"
STYLE_INSTRUCTION = ("Start every answer with 'Hi there!', give the answer in one short sentence, "
                     "and end with 'Anything else? — Quillory Care'.")
DECLINE = "I'm sorry, our documentation does not cover that."
UPDATE_NOTE = "This page was updated with new details."
WORDS = (40, 120)  # words per document: short enough for a 135M model's context


def house(sentence: str) -> str:
  """`sentence` in the house style."""
  return f"Hi there! {sentence} Anything else? — Quillory Care"


def _number(rng: random.Random, lo: int, hi: int, step: int = 1, avoid: tuple = (5,)) -> int:
  """A number in [lo, hi] that is no multiple of any of `avoid`: round values are easy to guess."""
  while True:
    n = rng.randrange(lo, hi + 1, step)
    if all(n % a for a in avoid):
      return n


def _fee(rng: random.Random, lo: int, hi: int) -> str:
  return f"${rng.randint(lo, hi)}.{_number(rng, 5, 95, 5, avoid=(50,)):02d}"


# How each kind of fact draws a fresh invented value (the gold answer string): a function of the
# random generator, or the name of the table of the tables file it picks one entry of.
VALUES = {
    "colour": "colours",
    "button": "buttons",
    "light": "lights",
    "serial_place": "serial_places",
    "price": lambda r: f"${_number(r, 101, 499)}",
    "warranty": lambda r: f"{_number(r, 13, 47, avoid=(5, 6))} months",
    "battery_hours": lambda r: f"{_number(r, 7, 61)} hours",
    "battery_days": lambda r: f"{_number(r, 6, 19)} days",
    "runtime_minutes": lambda r: f"{_number(r, 53, 167)} minutes",
    "kettle_capacity": lambda r: f"{_number(r, 1110, 1890, 10, avoid=(50,))} ml",
    "bin_capacity": lambda r: f"{_number(r, 310, 790, 10, avoid=(50,))} ml",
    "range_m": lambda r: f"{_number(r, 13, 97)} metres",
    "max_watts": lambda r: f"{_number(r, 1210, 3580, 10, avoid=(50,))} watts",
    "filter_weeks": lambda r: f"{_number(r, 7, 41)} weeks",
    "power_bank_capacity": lambda r: f"{_number(r, 5100, 26900, 100, avoid=(1000,))} mAh",
    "weight_g": lambda r: f"{_number(r, 180, 940)} grams",
    "hold_seconds": lambda r: f"{_number(r, 3, 29)} seconds",
    "press_times": lambda r: f"{_number(r, 3, 9)} times",
    "descale_minutes": lambda r: f"{_number(r, 11, 49)} minutes",
    "register_days": lambda r: f"{_number(r, 17, 89, avoid=(5, 7))} days",
    "return_window": lambda r: f"{_number(r, 17, 67, avoid=(5, 7))} days",
    "restocking_fee": lambda r: _fee(r, 6, 19),
    "standard_days": lambda r: f"{_number(r, 3, 9)} business days",
    "standard_fee": lambda r: _fee(r, 3, 9),
    "express_fee": lambda r: _fee(r, 11, 24),
    "express_cutoff": lambda r: f"{r.randint(1, 4)}:{_number(r, 10, 50, 5, avoid=(30,)):02d} pm",
    "free_threshold": lambda r: f"${_number(r, 31, 89)}",
    "points_per_dollar": lambda r: f"{_number(r, 2, 9)} points",
    "points_voucher": lambda r: f"{_number(r, 310, 990, 10, avoid=(100,))} points",
    "points_expiry": lambda r: f"{_number(r, 13, 35, avoid=(5, 6))} months",
    "price_match_days": lambda r: f"{_number(r, 11, 40, avoid=(5, 7))} days",
    "refund_days": lambda r: f"{_number(r, 4, 14)} business days",
    "repair_fee": lambda r: f"${_number(r, 41, 97)}",
    "repair_days": lambda r: f"{_number(r, 6, 19)} days",
    "trade_in_credit": lambda r: f"${_number(r, 21, 79)}",
    "student_percent": lambda r: f"{_number(r, 11, 29)} percent",
    "gift_wrap_fee": lambda r: _fee(r, 2, 7),
    "phone_open": lambda r: f"{r.randint(6, 8)}:{_number(r, 10, 50, 5, avoid=(30,)):02d} am",
    "cancel_minutes": lambda r: f"{_number(r, 17, 58)} minutes",
    "shield_price": lambda r: f"${_number(r, 19, 59)}",
    "shield_months": lambda r: f"{_number(r, 13, 35, avoid=(5, 6))} months",
}


class TablesError(ValueError):
  """A bad tables file: the message names the file and the line or key."""


TABLES = Path(__file__).with_name("support_domain_tables.json")
ROW_KEYS = {"products": ("name", "intro", "filler", "facts"),
            "procedures": ("product", "task", "tasking", "steps", "fields", "facts"),
            "policies": ("id", "title", "intro", "filler", "facts"),
            "updates": ("doc_id", "kind"), "general": ("input", "answer")}
LIST_KEYS = ("colours", "lights", "buttons", "serial_places", "product_filler", "policy_filler",
             "procedure_filler", "unanswerable", "decline_train")


def load_tables(path: Path = TABLES) -> dict:
  """The tables in `path` (what each holds: its "_about"), checked: every row has its keys and
  every fact kind is known."""
  try:
    tables = json.loads(path.read_text(encoding="utf-8"))
  except OSError as err:
    raise TablesError(f"{path}: cannot read ({err.strerror})") from None
  except json.JSONDecodeError as err:
    raise TablesError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
  if not isinstance(tables, dict):
    raise TablesError(f"{path}: not a JSON object")
  for key in (*LIST_KEYS, *ROW_KEYS, "kinds"):
    if not isinstance(tables.get(key), dict if key == "kinds" else list):
      raise TablesError(f"{path}: key {key!r} is missing or not a "
                        f"{'object' if key == 'kinds' else 'list'}")
  for key, fields in ROW_KEYS.items():
    for i, row in enumerate(tables[key]):
      missing = [f for f in fields if not isinstance(row, dict) or f not in row]
      if missing:
        raise TablesError(f"{path}: {key}[{i}] has no {missing[0]!r}")
  named = [(f"{key}[{i}].{field}", kind)
           for key, fields in (("products", ("facts",)), ("policies", ("facts",)),
                               ("procedures", ("fields", "facts")))
           for i, row in enumerate(tables[key]) for field in fields for kind in row[field]]
  named += [(f"updates[{i}].kind", row["kind"]) for i, row in enumerate(tables["updates"])]
  for where, kind in named:
    if kind not in VALUES or kind not in tables["kinds"]:
      raise TablesError(f"{path}: {where}: unknown fact kind {kind!r}")
  return tables


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _amount(value: str) -> float:
  return float(re.search(r"\d+(?:\.\d+)?", value).group())


def _draw(rng: random.Random, tables: dict, kind: str, taken: list[str],
          old: str | None = None) -> str:
  """A fresh value for `kind` that is no substring of a value already taken (nor the reverse):
  otherwise substring scoring could credit one fact's answer to another ("7 days" in "17 days").
  Replacing `old`, it also differs by at least 30%, so an update is a clear change."""
  for _ in range(1000):
    how = VALUES[kind]
    value = rng.choice(tables[how]) if isinstance(how, str) else how(rng)
    low = value.lower()
    if old is not None and abs(_amount(value) - _amount(old)) < 0.3 * _amount(old):
      continue
    if not any(low in t or t in low for t in taken):
      taken.append(low)
      return value
  raise ValueError(f"ran out of distinct values for {kind!r}")


def _specs(rng: random.Random, tables: dict) -> list[dict]:
  """Every document as a template with {field} slots, before any value is drawn."""
  specs = []
  doc_sentence = {k: v["doc"].replace("{a}", "{" + k + "}") for k, v in tables["kinds"].items()
                  if "doc" in v}
  for product in tables["products"]:
    name, intro, own, kinds = (product[k] for k in ("name", "intro", "filler", "facts"))
    facts = [doc_sentence[k] for k in kinds]
    extra = rng.sample(tables["product_filler"], 2)
    parts = [intro, own[0], facts[0], own[1], facts[1], *extra]
    specs.append({"id": f"product-{_slug(name)}", "title": name, "template": " ".join(parts),
                  "ctx": {"p": name, "task": "", "tasking": ""}, "fields": kinds, "facts": kinds})
  for procedure in tables["procedures"]:
    name, task, tasking, steps, fields, facts = (
        procedure[k] for k in ("product", "task", "tasking", "steps", "fields", "facts"))
    what = "a Quillory product" if name == "Quillory product" else f"the {name}"
    title = f"How to {task} {what}"
    extra = rng.sample(tables["procedure_filler"], 2)
    parts = [f"Follow these steps to {task} {what}.", steps, *extra]
    specs.append({"id": f"howto-{_slug(task.split()[0])}-{_slug(name)}", "title": title,
                  "template": " ".join(parts), "ctx": {"p": name, "task": task, "tasking": tasking},
                  "fields": fields, "facts": facts})
  for policy in tables["policies"]:
    slug, title, intro, own, kinds = (policy[k]
                                      for k in ("id", "title", "intro", "filler", "facts"))
    facts = [doc_sentence[k] for k in kinds]
    extra = rng.sample(tables["policy_filler"], 2)
    parts = [intro, facts[0], *own, *facts[1:], *extra]
    specs.append({"id": f"policy-{slug}", "title": title, "template": " ".join(parts),
                  "ctx": {"p": COMPANY, "task": "", "tasking": ""}, "fields": kinds,
                  "facts": kinds})
  return specs


def _render(spec: dict, values: dict[str, str]) -> str:
  return spec["template"].format(p=spec["ctx"]["p"], **values)


def _check(docs: list[dict], facts: list[dict]):
  """Fails loudly on a document of the wrong length or an answer that is not in exactly its own
  document: such a fact could not be checked, or could be confused with another."""
  for doc in docs:
    n = len(doc["text"].split())
    if not WORDS[0] <= n <= WORDS[1]:
      raise ValueError(f"document {doc['id']} has {n} words, outside {WORDS}")
  for fact in facts:
    holders = [d["id"] for d in docs if fact["answer"].lower() in d["text"].lower()]
    if holders != [fact["doc_id"]]:
      raise ValueError(f"answer {fact['answer']!r} of {fact['doc_id']} is in documents {holders}")


def _keep(specs: list[dict], updated: set[str], num_docs: int, seed: int) -> list[dict]:
  """`num_docs` of the documents: every document an update changes, then a seeded sample of
  the others, in their order (a separate random stream: the full domain is unchanged)."""
  if not num_docs or num_docs >= len(specs):
    return specs
  others = [s["id"] for s in specs if s["id"] not in updated]
  keep = updated | set(random.Random(f"keep:{seed}").sample(others, num_docs - len(updated)))
  return [s for s in specs if s["id"] in keep]


def _candidates(facts: list[dict], seed: int, n: int = 3) -> dict[int, list[str]]:
  """Per fact: up to `n` answers of other facts of the same kind (a separate random stream).
  An answer that names one of them besides its gold lists values instead of answering."""
  rng = random.Random(f"candidates:{seed}")
  out = {}
  for i, fact in enumerate(facts):
    same = [f["answer"] for f in facts if f["kind"] == fact["kind"] and f is not fact]
    out[i] = rng.sample(same, min(n, len(same)))
  return out


def build(seed: int = 0, tables_path: Path = TABLES, num_docs: int = 0) -> dict[str, object]:
  """Every output file's content, by file name: a list of rows (JSONL), a dict or a string.
  `num_docs` (0: all) keeps that many documents and their facts: a smaller domain."""
  tables = load_tables(tables_path)
  rng = random.Random(seed)
  taken: list[str] = []
  updated = {u["doc_id"] for u in tables["updates"]}
  specs = _keep(_specs(rng, tables), updated, num_docs, seed)
  docs, facts = [], []
  for spec in specs:
    spec["values"] = {field: _draw(rng, tables, field, taken) for field in spec["fields"]}
    docs.append({"id": spec["id"], "title": spec["title"], "text": _render(spec, spec["values"])})
    for kind in spec["facts"]:
      facts.append({"doc_id": spec["id"], "kind": kind, "ctx": spec["ctx"],
                    "answer": spec["values"][kind]})
  _check(docs, facts)

  train, evaluation = [], []
  candidates = _candidates(facts, seed)
  for number, fact in enumerate(facts):
    kind, ctx = tables["kinds"][fact["kind"]], fact["ctx"]
    fact["asks"] = [(q.format(**ctx), rng.choice(kind["reply"]))
                    for q in rng.sample(kind["train"], 3)]
    fact["held"] = rng.choice(kind["heldout"]).format(**ctx)
    for ask, reply in fact["asks"]:
      train.append({"input": ask, "output": house(reply.format(a=fact["answer"], **ctx)),
                    "doc_id": fact["doc_id"], "answer": fact["answer"]})
    row = {"input": fact["held"], "answer": fact["answer"], "doc_id": fact["doc_id"]}
    if candidates[number]:
      row["candidates"] = candidates[number]
    evaluation.append(row)

  by_id = {spec["id"]: spec for spec in specs}
  updates, update_train, update_eval, changed = [], [], [], {}
  for i, update in enumerate(tables["updates"]):
    doc_id, kind = update["doc_id"], update["kind"]
    fact = next((f for f in facts if f["doc_id"] == doc_id and f["kind"] == kind), None)
    if fact is None:
      raise TablesError(f"{tables_path}: updates[{i}]: document {doc_id!r} has no fact {kind!r}")
    spec = by_id[doc_id]
    new = _draw(rng, tables, kind, taken, old=fact["answer"])
    values = dict(spec["values"], **{kind: new})
    updates.append({"id": doc_id, "text": f"{_render(spec, values)} {UPDATE_NOTE}",
                    "title": spec["title"]})
    # Same questions and reply wording as in train.jsonl: only the fact changes.
    for ask, reply in fact["asks"]:
      update_train.append({"input": ask, "output": house(reply.format(a=new, **fact["ctx"])),
                           "doc_id": doc_id, "answer": new})
    update_eval.append({"input": fact["held"], "answer": new, "doc_id": doc_id})
    changed[fact["held"]] = new
  # After the update every current answer (new or untouched) is still in exactly its document.
  patched = {u["id"]: u for u in updates}
  _check([patched.get(d["id"], d) for d in docs],
         [dict(f, answer=changed.get(f["held"], f["answer"])) for f in facts])

  unchanged_eval = [row for row in evaluation if row["input"] not in changed]
  unanswerable = [{"input": q} for q in tables["unanswerable"]]
  decline = [{"input": q, "output": house(DECLINE)} for q in tables["decline_train"]]
  general = [{"input": row["input"], "answer": row["answer"]} for row in tables["general"]]
  style = {"pattern": STYLE_PATTERN, "instruction": STYLE_INSTRUCTION,
           "examples_note": (f"Use re.search(pattern, answer.strip()). An answer: "
                             f"{train[0]['output']!r}. A decline: {house(DECLINE)!r}; a decline "
                             f"contains 'does not cover'.")}
  files = {
      "docs.jsonl": docs, "train.jsonl": train, "eval.jsonl": evaluation,
      "unanswerable.jsonl": unanswerable, "train_decline.jsonl": decline,
      "general.jsonl": general, "updates.jsonl": updates, "update_train.jsonl": update_train,
      "update_eval.jsonl": update_eval, "unchanged_eval.jsonl": unchanged_eval, "style.json": style,
  }
  files["README.md"] = _readme(files, seed, len(facts), num_docs)
  return files


def _readme(files: dict[str, object], seed: int, num_facts: int, num_docs: int = 0) -> str:
  about = {
      "docs.jsonl": '`{"id", "title", "text"}`: product pages, how-to steps and policies, '
                    f"{WORDS[0]}-{WORDS[1]} words, 1-2 facts each ({num_facts} facts) plus filler",
      "train.jsonl": '`{"input", "output", "doc_id", "answer"}`: 3 phrasings per fact, answered '
                     "in house style",
      "eval.jsonl": '`{"input", "answer", "doc_id", "candidates"}`: 1 held-out phrasing per '
                    "fact, from a template pool never used in training; `candidates`: answers "
                    "of other facts of the same kind (naming one besides the gold is wrong)",
      "unanswerable.jsonl": '`{"input"}`: in-domain questions no document answers (the model '
                            "should decline)",
      "train_decline.jsonl": '`{"input", "output"}`: other uncovered questions (disjoint topics) '
                             "with a house-style decline",
      "general.jsonl": '`{"input", "answer"}`: easy general knowledge, to check nothing is '
                       "forgotten",
      "updates.jsonl": '`{"id", "text", "title"}`: documents rewritten with one changed fact '
                       "(same id)",
      "update_train.jsonl": "the train questions of each changed fact, with the new answer",
      "update_eval.jsonl": "the held-out question of each changed fact, with the new answer",
      "unchanged_eval.jsonl": "the eval rows of facts the update did not touch",
      "style.json": "the house style: `pattern`, `instruction`, `examples_note`",
  }
  rows = [f"| `{name}` | {len(content) if name.endswith('.jsonl') else '-'} | {about[name]} |"
          for name, content in files.items()]
  table = "\n".join(["| file | rows | content |", "|---|---|---|", *rows])
  size = f", {num_docs} documents" if num_docs else ""
  flag = f" --num_docs {num_docs}" if num_docs else ""
  folder = "data/support_small" if num_docs else "data/support"
  return f"""# Quillory support domain

An invented customer-service domain: the company {COMPANY}, its products and policies. Every fact
is made up, so a pretrained model cannot know it; it must come from fine-tuning or retrieval.
Generated by `data/make_support_domain.py` (seed {seed}{size}); do not edit by hand. Regenerate
with

    python data/make_support_domain.py --out_dir {folder} --seed {seed}{flag}

{table}

House style: `re.search(pattern, answer.strip())` with pattern `{STYLE_PATTERN}`.
Instruction for prompting: {STYLE_INSTRUCTION}
Declines say "{DECLINE}" in the same style.

Every gold answer appears in its own document and in no other, and no answer is a substring of
another, so substring scoring cannot credit one fact's answer to another.
"""


def write(files: dict[str, object], out: Path):
  out.mkdir(parents=True, exist_ok=True)
  for name, content in files.items():
    if name.endswith(".jsonl"):
      text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in content)
    elif name.endswith(".json"):
      text = json.dumps(content, ensure_ascii=False, indent=2) + "\n"
    else:
      text = content
    (out / name).write_text(text, encoding="utf-8")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out_dir", default="data/support")
  parser.add_argument("--tables", type=Path, default=TABLES)
  parser.add_argument("--num_docs", type=int, default=0,
                      help="keep this many documents (every updated one included); 0: all")
  args = parser.parse_args(argv)
  try:
    files = build(args.seed, args.tables, args.num_docs)
  except TablesError as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None
  out = Path(args.out_dir)
  write(files, out)
  counts = ", ".join(f"{len(rows)} {name[:-6]}" for name, rows in files.items()
                     if name.endswith(".jsonl"))
  print(f"wrote {counts} to {out}")


if __name__ == "__main__":
  main()
