"""The researcher's files, read and checked at start: corpus, examples, questions, updates.

Every file is a config key (`data.*`), so any domain plugs in. Required files that are missing
or malformed stop the run before any model is loaded, naming file:line; optional files that are
absent (or set to "") are recorded in `missing` with the reason, and their metrics become null.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ftjax.data.report import BadRow, DataConfigError
from ftjax.data.sources import RowError, iter_jsonl, read_file
from ftjax.retrieval.corpus import Document, check_acl  # one document type: the index's

OPTIONAL = ("unanswerable", "general", "updates", "update_train", "update_eval", "decline_train",
            "dev")


class ExperimentDataError(DataConfigError):
  """A data file of the experiment is missing or has a bad row (the message names file:line)."""


@dataclasses.dataclass(frozen=True)
class Question:
  split: str  # eval | unanswerable | general | update_eval | unchanged | train | dev
  index: int  # position in its split
  input: str
  answer: str | None  # None: no answer exists (unanswerable)
  doc_id: str | None
  where: str  # file:line
  answers: tuple[str, ...] = ()  # other accepted spellings of the gold answer
  candidates: tuple[str, ...] = ()  # other values of the same kind: naming one too is wrong


@dataclasses.dataclass(frozen=True)
class Choice:
  """A multiple-choice question (`data.general` in lm-eval's format), scored by log-likelihood."""
  index: int
  input: str
  choices: tuple[str, ...]
  gold: int  # index into choices
  where: str


@dataclasses.dataclass
class ExperimentData:
  docs: list[Document]
  train: list[list[dict]]  # chat messages per example
  questions: dict[str, list[Question]]  # split -> questions
  updates: list[Document]
  update_train: list[list[dict]]
  decline_train: list[list[dict]]
  hashes: dict[str, str]  # data key -> sha256 of the file ("" when absent)
  missing: dict[str, str]  # optional data key -> why it is absent
  # Training questions with their gold answer (rows of data.train with "input" and "answer"),
  # one per example in `train` order, None for rows without an answer; `dev_source` says where
  # the dev questions came from.
  train_questions: list = dataclasses.field(default_factory=list)
  dev_source: str = ""
  # Per example in `train` order: the row's `doc_id` (None without one); RAFT pairs each
  # training question with its document.
  train_doc_ids: list = dataclasses.field(default_factory=list)
  # data.general as multiple choice ({"input", "choices", "answer": index}): forgetting measured
  # by log-likelihood, as lm-eval reports it
  general_mc: list = dataclasses.field(default_factory=list)
  # (doc_id, text) per row of data.paraphrases
  paraphrases: list = dataclasses.field(default_factory=list)

  def corpus_after_update(self) -> list[Document]:
    changed = {d.doc_id: d for d in self.updates}
    return [changed.get(d.doc_id, d) for d in self.docs]


def file_hash(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _rows(path: str, key: str):
  for line_no, record in iter_jsonl(path):
    where = f"{path}:{line_no}"
    if isinstance(record, BadRow):
      raise ExperimentDataError(f"data.{key}: {record}")
    if not isinstance(record, dict):
      raise ExperimentDataError(f"data.{key}: {where}: a row must be a JSON object")
    yield where, record


def _text(record: dict, field: str, where: str, key: str, required: bool = True) -> str | None:
  value = record.get(field)
  if value is None and not required:
    return None
  if not isinstance(value, (str, int, float)) or isinstance(value, bool):
    raise ExperimentDataError(f"data.{key}: {where}: field {field!r} must be a string"
                              + ("" if field in record else " (missing)"))
  value = str(value)
  if required and not value.strip():
    raise ExperimentDataError(f"data.{key}: {where}: field {field!r} is empty")
  return value


def read_docs(path: str, key: str = "docs") -> list[Document]:
  docs, seen = [], {}
  for where, record in _rows(path, key):
    doc_id = _text(record, "id", where, key)
    if doc_id in seen:
      raise ExperimentDataError(f"data.{key}: {where}: duplicate document id {doc_id!r} "
                                f"(first at {seen[doc_id]})")
    seen[doc_id] = where
    try:
      acl = check_acl(record.get("acl"))
    except ValueError as err:
      raise ExperimentDataError(f"data.{key}: {where}: {err}") from None
    docs.append(Document(doc_id, _text(record, "text", where, key),
                         _text(record, "title", where, key, required=False) or "", acl))
  if not docs:
    raise ExperimentDataError(f"data.{key}: {path}: no documents")
  return docs


def is_multiple_choice(path: str) -> bool:
  """Whether a question file is multiple choice: its first row has `choices`."""
  for _, record in iter_jsonl(path):
    return isinstance(record, dict) and "choices" in record
  return False


def read_choices(path: str, key: str, limit: int = 0) -> list[Choice]:
  """`{"input" (or "question"), "choices": [...], "answer": index or the choice's text}` rows."""
  out = []
  for where, record in _rows(path, key):
    text = record.get("input", record.get("question"))
    if not isinstance(text, str) or not text.strip():
      raise ExperimentDataError(f"data.{key}: {where}: needs a non-empty \"input\" (or "
                                "\"question\")")
    choices = record.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(
        isinstance(c, (str, int, float)) and str(c).strip() for c in choices):
      raise ExperimentDataError(f"data.{key}: {where}: \"choices\" must be a list of two or "
                                "more non-empty values")
    choices = tuple(str(c) for c in choices)
    gold = record.get("answer")
    if isinstance(gold, str) and gold in choices:
      gold = choices.index(gold)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
      raise ExperimentDataError(f"data.{key}: {where}: \"answer\" must be the index of the right "
                                f"choice (0-{len(choices) - 1}) or its text, got {gold!r}")
    out.append(Choice(len(out), text, choices, gold, where))
  if not out:
    raise ExperimentDataError(f"data.{key}: {path}: no questions")
  return subsample(out, limit)


def read_paraphrases(path: str, doc_ids: set[str]) -> list[tuple[str, str]]:
  """`{"doc_id", "text"}` rows: paraphrases of documents that are in data.docs."""
  out = []
  for where, record in _rows(path, "paraphrases"):
    doc_id = _text(record, "doc_id", where, "paraphrases")
    if doc_id not in doc_ids:
      raise ExperimentDataError(f"data.paraphrases: {where}: doc_id {doc_id!r} is not in "
                                "data.docs")
    out.append((doc_id, _text(record, "text", where, "paraphrases")))
  if not out:
    raise ExperimentDataError(f"data.paraphrases: {path}: no rows")
  return out


def _strings(record: dict, field: str, where: str, key: str) -> tuple[str, ...]:
  value = record.get(field, [])
  if not isinstance(value, list) or not all(
      isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip()
      for v in value):
    raise ExperimentDataError(f"data.{key}: {where}: field {field!r} must be a list of "
                              "non-empty strings")
  return tuple(str(v) for v in value)


def read_questions(path: str, key: str, split: str, *, with_answer: bool,
                   limit: int = 0) -> list[Question]:
  from ftjax.evaluation.matching import normalize_answer
  questions = []
  for where, record in _rows(path, key):
    answer = _text(record, "answer", where, key) if with_answer else None
    doc_id = record.get("doc_id")
    answers = _strings(record, "answers", where, key) if with_answer else ()
    candidates = _strings(record, "candidates", where, key) if with_answer else ()
    accepted = {normalize_answer(a) for a in (answer, *answers)} if with_answer else set()
    clash = [c for c in candidates if normalize_answer(c) in accepted]
    if clash:
      raise ExperimentDataError(f"data.{key}: {where}: candidates {clash} include the gold "
                                "answer; candidates are the *other* values of the same kind")
    questions.append(Question(split, len(questions), _text(record, "input", where, key), answer,
                              None if doc_id is None else str(doc_id), where, answers,
                              candidates))
  if not questions:
    raise ExperimentDataError(f"data.{key}: {path}: no questions")
  return subsample(questions, limit)


def subsample(items: list, limit: int, seed: int = 0) -> list:
  """A fixed random `limit` of `items` in their file order (all of them if limit is 0): the
  same questions for every run and arm, whatever the experiment seed."""
  if not limit or limit >= len(items):
    return items
  import random
  keep = sorted(random.Random(seed).sample(range(len(items)), limit))
  return [dataclasses.replace(items[i], index=n)
          if isinstance(items[i], (Question, Choice)) else items[i]
          for n, i in enumerate(keep)]


def _question_key(text: str) -> str:
  return " ".join(text.lower().split())


def read_train_questions(path: str) -> list[Question | None]:
  """Per row of a JSONL training file: its question with the gold `answer` (None without one)."""
  out = []
  if not path.endswith((".jsonl", ".json")):
    return out
  for where, record in _rows(path, "train"):
    answer, question = record.get("answer"), record.get("input")
    if isinstance(answer, (str, int, float)) and isinstance(question, str) and \
        str(answer).strip() and question.strip():
      doc_id = record.get("doc_id")
      out.append(Question("train", 0, question, str(answer),
                          None if doc_id is None else str(doc_id), where))
    else:
      out.append(None)
  return out


def read_train_doc_ids(path: str) -> list[str | None]:
  """Per row of a JSONL training file: its `doc_id` (None without one)."""
  if not path.endswith((".jsonl", ".json")):
    return []
  return [None if record.get("doc_id") is None else str(record["doc_id"])
          for _, record in _rows(path, "train")]


def hold_out_dev(train: list[list[dict]], questions: list[Question | None], seed: int
                 ) -> tuple[list[list[dict]], list[Question | None], list[Question], list[int]]:
  """One phrasing of each training fact (a `doc_id` + `answer` with two or more phrasings) set
  aside as a dev question, seeded: (the remaining examples, their questions, the dev questions,
  the indices of the remaining examples).
  A fact with a single phrasing stays in training (holding it out would make it unlearnable)."""
  import random
  facts: dict[tuple, list[int]] = {}
  for i, q in enumerate(questions):
    if q is not None:
      facts.setdefault((q.doc_id, _question_key(q.answer)), []).append(i)
  rng = random.Random(seed)
  held = sorted(rng.choice(rows) for rows in facts.values() if len(rows) >= 2)
  held_set = set(held)
  dev = [dataclasses.replace(questions[i], split="dev", index=n) for n, i in enumerate(held)]
  keep = [i for i in range(len(train)) if i not in held_set]
  return [train[i] for i in keep], [questions[i] for i in keep], dev, keep


def read_examples(path: str, key: str) -> list[list[dict]]:
  """Training examples, as `ftjax.train` reads them; any bad row is an error here."""
  try:
    parsed = read_file(path)
  except (DataConfigError, RowError) as err:
    raise ExperimentDataError(f"data.{key}: {err}") from None
  if parsed.bad_rows:
    shown = "; ".join(str(b) for b in parsed.bad_rows[:3])
    raise ExperimentDataError(f"data.{key}: {len(parsed.bad_rows)} bad row(s): {shown}")
  if not parsed.examples:
    raise ExperimentDataError(f"data.{key}: {path}: no examples")
  return [e["messages"] for e in parsed.examples]


def load(data_cfg, max_unchanged: int = 0, *, need_dev: bool = False, seed: int = 0,
         train_questions: int = 0) -> ExperimentData:
  """Reads and checks every configured file (see the module docstring).

  `need_dev`: the tuned arms measure held-out accuracy while training; without `data.dev`, one
  phrasing per training fact is held out of the training examples (`hold_out_dev`).
  `train_questions`: how many training questions (a fixed random sample; 0: all) the tuned arms
  answer for their train accuracy.
  """
  hashes, missing = {}, {}
  paths = {}
  for key in ("docs", "train", "eval", *OPTIONAL):
    path = data_cfg[key]
    if not path:
      if key in OPTIONAL:
        missing[key] = "not configured"
      hashes[key] = ""
      continue
    if not Path(path).is_file():
      if key not in OPTIONAL:
        raise ExperimentDataError(f"data.{key}: {path}: no such file")
      missing[key] = f"{path}: no such file"
      hashes[key] = ""
      continue
    paths[key] = path
    hashes[key] = file_hash(path)

  limit = data_cfg.max_eval_questions
  docs = read_docs(paths["docs"])
  paraphrases = []
  if data_cfg.get("paraphrases"):
    if not Path(data_cfg.paraphrases).is_file():
      raise ExperimentDataError(f"data.paraphrases: {data_cfg.paraphrases}: no such file")
    paraphrases = read_paraphrases(data_cfg.paraphrases, {d.doc_id for d in docs})
    hashes["paraphrases"] = file_hash(data_cfg.paraphrases)
  questions = {"eval": read_questions(paths["eval"], "eval", "eval", with_answer=True,
                                      limit=limit)}
  if "unanswerable" in paths:
    questions["unanswerable"] = read_questions(paths["unanswerable"], "unanswerable",
                                               "unanswerable", with_answer=False, limit=limit)
  general_mc = []
  if "general" in paths and is_multiple_choice(paths["general"]):
    general_mc = read_choices(paths["general"], "general", limit)
  elif "general" in paths:
    questions["general"] = read_questions(paths["general"], "general", "general",
                                          with_answer=True, limit=limit)
  updates = read_docs(paths["updates"], "updates") if "updates" in paths else []
  doc_ids = {d.doc_id for d in docs}
  unknown = [d.doc_id for d in updates if d.doc_id not in doc_ids]
  if unknown:
    raise ExperimentDataError(f"data.updates: document id(s) {unknown[:5]} are not in data.docs")
  for question in questions["eval"]:
    if question.doc_id is not None and question.doc_id not in doc_ids:
      raise ExperimentDataError(f"data.eval: {question.where}: doc_id {question.doc_id!r} is not "
                                "in data.docs")
  if "update_eval" in paths:
    questions["update_eval"] = read_questions(paths["update_eval"], "update_eval",
                                              "update_eval", with_answer=True)
    changed = {d.doc_id for d in updates}
    # The facts an update did not touch: what continued training may break.
    questions["unchanged"] = subsample([
        dataclasses.replace(q, split="unchanged", index=i) for i, q in enumerate(
            q for q in questions["eval"] if q.doc_id is None or q.doc_id not in changed)],
        max_unchanged)
  update_train = read_examples(paths["update_train"], "update_train") \
      if "update_train" in paths else []
  decline = read_examples(paths["decline_train"], "decline_train") \
      if "decline_train" in paths else []
  train = read_examples(paths["train"], "train")
  per_row = read_train_questions(paths["train"])
  row_doc_ids = read_train_doc_ids(paths["train"]) or [None] * len(train)
  if per_row and len(per_row) != len(train):  # both read every non-blank row, in order
    raise ExperimentDataError(f"data.train: {paths['train']}: {len(per_row)} rows but "
                              f"{len(train)} examples")
  dev_source = ""
  if "dev" in paths:
    questions["dev"] = read_questions(paths["dev"], "dev", "dev", with_answer=True)
    dev_source = f"data.dev ({len(questions['dev'])} questions)"
    asked = {_question_key(q.input): q.where for q in read_questions(
        paths["eval"], "eval", "eval", with_answer=True)}
    for q in questions["dev"]:
      if _question_key(q.input) in asked:
        raise ExperimentDataError(f"data.dev: {q.where}: this question is also in data.eval "
                                  f"({asked[_question_key(q.input)]}); dev questions must be "
                                  "held-out phrasings of training facts, never eval questions")
    missing.pop("dev", None)
  elif need_dev and per_row:
    train, per_row, dev, keep = hold_out_dev(train, per_row, seed)
    row_doc_ids = [row_doc_ids[i] for i in keep]
    if dev:
      questions["dev"] = dev
      dev_source = (f"held out of data.train: one phrasing of each of {len(dev)} facts "
                    "with two or more")
  if "dev" in questions or not need_dev:
    missing.pop("dev", None)
  else:
    missing["dev"] = ("no data.dev, and no training fact has two phrasings with an `answer` "
                      "to hold one out")
  train_qs = [q for q in per_row if q is not None]
  if train_qs:
    questions["train"] = subsample([dataclasses.replace(q, index=i)
                                    for i, q in enumerate(train_qs)], train_questions)
  return ExperimentData(docs=docs, train=train, questions=questions, updates=updates,
                        update_train=update_train, decline_train=decline, hashes=hashes,
                        missing=missing, train_questions=per_row, dev_source=dev_source,
                        train_doc_ids=row_doc_ids, paraphrases=paraphrases,
                        general_mc=general_mc)
