"""Access control: a caller's search (BM25, dense, hybrid; API, CLI, RAG prompt) is exactly the
search of an index holding only the documents they may see, before and after updates."""

import functools
import json
import re
from typing import NamedTuple

import numpy as np
import pytest

from ftjax.arms import rag
from ftjax.retrieval import dense
from ftjax.retrieval.__main__ import main
from ftjax.retrieval.corpus import CorpusError, Document, read_jsonl, visible
from ftjax.retrieval.index import IndexConfig, RetrievalIndex

PUBLIC = [
    Document("p0", "The Zorblatt festival is held in Harrowgate every autumn."),
    Document("p1", "Harrowgate has a small harbour, a stone bridge and a festival."),
    Document("p2", "Tickets for the Zorblatt parade are sold at the town hall."),
    Document("p3", "The Orrin lighthouse guided ships along the rocky coast."),
]
HIDDEN = [
    Document("h0", "Zorblatt festival payroll: Zorblatt festival staff salaries for autumn.",
             acl=("hr",)),
    Document("h1", "Zorblatt festival staff complaints and Zorblatt festival disciplinary notes.",
             acl=("hr",)),
    Document("h2", "Salary bands of the Harrowgate harbour staff.", acl=("hr",)),
    Document("l0", "Zorblatt festival lawsuit: the Zorblatt festival trademark dispute.",
             acl=("legal",)),
    Document("l1", "Settlement terms for the stone bridge contractor.", acl=("legal",)),
    Document("b0", "Zorblatt festival merger memo shared by hr and legal.", acl=("hr", "legal")),
]
DOCUMENTS = PUBLIC + HIDDEN
CALLERS = [None, ["hr"], ["legal"], ["hr", "legal"], ["nobody"]]
QUERIES = ["Zorblatt festival", "harbour staff salaries", "stone bridge", "lighthouse coast"]


@pytest.fixture(scope="module")
def encoder():
  return dense.load_encoder("all-minilm-l6-v2")


def _visible_docs(documents, groups):
  return [d for d in documents if visible(d.acl, frozenset(groups or ()))]


def _ranked(index, method, groups, k=5):
  """Chunk ids and scores per query: rows differ between indexes, these do not."""
  hits = index.search_rows(QUERIES, k=k, method=method, groups=groups)
  return [[(index.chunks[r].chunk_id, float(s)) for s, r in zip(scores, rows) if r >= 0]
          for scores, rows in zip(hits.scores, hits.rows)]


def _assert_same(got, expected, what):
  assert [[c for c, _ in q] for q in got] == [[c for c, _ in q] for q in expected], what
  np.testing.assert_allclose([s for q in got for _, s in q], [s for q in expected for _, s in q],
                             rtol=1e-4, atol=1e-5, err_msg=str(what))


def _check_against_oracles(index, documents, encoder, tmp_path, methods):
  """For every caller: hits from `index` equal those of an index of only their documents."""
  for number, groups in enumerate(CALLERS):
    allowed = _visible_docs(documents, groups)
    oracle = RetrievalIndex.create(tmp_path / f"oracle{number}",
                                   IndexConfig(dense=index.config.dense), encoder=encoder,
                                   overwrite=True)
    oracle.add(allowed)
    all_groups = sorted({g for d in documents for g in d.acl or ()})
    allowed_ids = {d.doc_id for d in allowed}
    for method in methods:
      got = _ranked(index, method, groups)
      assert {c.split("#")[0] for q in got for c, _ in q} <= allowed_ids, (groups, method)
      _assert_same(got, _ranked(oracle, method, all_groups), (groups, method))


def test_acl_filtering_matches_an_index_of_visible_documents(tmp_path, encoder):
  index = RetrievalIndex.create(tmp_path / "index", encoder=encoder)
  index.add(DOCUMENTS)
  methods = ("bm25", "dense", "hybrid")
  _check_against_oracles(index, DOCUMENTS, encoder, tmp_path, methods)

  # Filtering comes before the top-k: most of the best matches are hidden (filtering them out
  # afterwards would leave at most one hit), yet a public caller still gets k public hits.
  for method in methods:
    (everyone,) = index.search(["Zorblatt festival"], k=3, method=method, groups=["hr", "legal"])
    assert sum(p.acl is not None for p in everyone) >= 2, method
    (public,) = index.search(["Zorblatt festival"], k=3, method=method)
    assert len(public) == 3 and all(p.acl is None for p in public), method
    assert index.search(["Zorblatt festival"], k=3, method=method, groups=["nobody"]) == [public]
  assert index.visible_rows(["hr"]).sum() == len(PUBLIC) + 4

  # Updates keep ACLs: a replacement without an acl keeps the document's; one with an acl
  # changes it; delete and compact keep the rest.
  index.replace([Document("h0", "Zorblatt festival payroll, revised: bonuses for the stone "
                                "bridge crew."),
                 Document("p0", "The Zorblatt festival budget is confidential now.",
                          acl=("legal",))])
  index.delete(["h1"])
  documents = [d for d in DOCUMENTS if d.doc_id not in ("h0", "p0", "h1")] + [
      Document("h0", "Zorblatt festival payroll, revised: bonuses for the stone bridge crew.",
               acl=("hr",)),
      Document("p0", "The Zorblatt festival budget is confidential now.", acl=("legal",))]
  _check_against_oracles(index, documents, encoder, tmp_path, methods)
  index.compact()
  reopened = RetrievalIndex.open(index.path, encoder=encoder)
  assert {c.doc_id: c.acl for c in reopened.chunks}["h0"] == ("hr",)
  _check_against_oracles(reopened, documents, encoder, tmp_path, methods)


def test_index_without_acls_is_unchanged(tmp_path):
  """No document has an acl: every caller sees everything, with today's scores and files."""
  index = RetrievalIndex.create(tmp_path / "index", IndexConfig(dense=False))
  index.add(PUBLIC)
  assert index.visible_rows(None) is index.live
  results = [_ranked(index, "bm25", groups) for groups in CALLERS]
  assert all(r == results[0] for r in results) and results[0][0]
  chunks_file = index.path / "segments" / index.segments[0] / "chunks.jsonl"
  assert all("acl" not in json.loads(line) for line in chunks_file.read_text().splitlines())
  # Public documents hash as before ACLs existed, so replacing them with the same text is a no-op.
  import hashlib
  assert PUBLIC[0].content_hash == hashlib.sha1(f"\0{PUBLIC[0].text}".encode()).hexdigest()
  assert index.replace([PUBLIC[0]]).unchanged == 1


def test_acl_in_jsonl(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y", "acl": ["hr", "legal"]}\n')
  assert [d.acl for d in read_jsonl(path).documents] == [None, ("hr", "legal")]
  for bad, message in [('[]', "acl is empty"), ('"hr"', "acl must be a list"),
                       ('["hr", 3]', "non-empty strings"), ('[""]', "non-empty strings")]:
    path.write_text(f'{{"id": "a", "text": "x"}}\n{{"id": "b", "text": "y", "acl": {bad}}}\n')
    with pytest.raises(CorpusError, match=f"docs.jsonl:2: .*{message}"):
      read_jsonl(path)


@pytest.fixture
def bm25_acl_index(tmp_path, capsys):
  docs = tmp_path / "docs.jsonl"
  docs.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text,
                                      **({"acl": list(d.acl)} if d.acl else {})}) + "\n"
                          for d in DOCUMENTS))
  path = str(tmp_path / "index")
  main(["create", path, "--bm25_only"])
  main(["add", path, str(docs)])
  capsys.readouterr()
  return path


def test_cli_search_and_evaluate_respect_groups(bm25_acl_index, tmp_path, capsys):
  for groups in CALLERS:
    argv = ["search", bm25_acl_index, *QUERIES, "--method", "bm25", "--k", "20", "--json"]
    main(argv + ([] if groups is None else ["--groups", ",".join(groups)]))
    out = capsys.readouterr()
    allowed = _visible_docs(DOCUMENTS, groups)
    records = [json.loads(line) for line in out.out.splitlines()]
    found = {h["doc_id"] for r in records for h in r["hits"]}
    assert found <= {d.doc_id for d in allowed}, groups
    assert "p3" in found  # the public lighthouse document, for every caller
    # Counts in notes are the caller's: hidden passages are not counted.
    assert all(f"the index has only {len(allowed)} passage(s)" in r["note"] for r in records
               if "index has only" in r.get("note", "")), groups
    assert sum(len(r["hits"]) for r in records) > 0
    leaked = [d.text for d in DOCUMENTS if d not in allowed and d.text in out.out + out.err]
    assert not leaked, groups

  qa = tmp_path / "qa.jsonl"
  qa.write_text(json.dumps({"question": "Zorblatt festival payroll", "doc_id": "h0"}) + "\n")
  main(["evaluate", bm25_acl_index, "--qa", str(qa), "--k", "1", "--method", "bm25"])
  public = capsys.readouterr()
  assert public.out.splitlines()[0] == f"1 questions, {len(PUBLIC)} documents, 4 passages"
  assert "1 of 1 questions have no gold document" in public.err
  assert public.out.splitlines()[2].split() == ["bm25", "0.000", "0.000"]
  main(["evaluate", bm25_acl_index, "--qa", str(qa), "--k", "1", "--method", "bm25",
        "--groups", "hr"])
  hr = capsys.readouterr()
  assert hr.out.splitlines()[0] == f"1 questions, {len(PUBLIC) + 4} documents, 8 passages"
  assert hr.out.splitlines()[2].split() == ["bm25", "1.000", "1.000"] and not hr.err


class FakeCompletion(NamedTuple):
  text: str
  token_ids: list
  num_prompt_tokens: int
  finish_reason: str


def test_rag_prompt_quotes_only_what_the_caller_may_see(bm25_acl_index, smollm2_tokenizer):
  index = RetrievalIndex.open(bm25_acl_index)
  prompts = []

  def generate_fn(batch):
    prompts.extend(batch)
    return [FakeCompletion("ok", [1], 10, "stop") for _ in batch]

  question = "What is known about the Zorblatt festival staff salaries?"
  search = functools.partial(index.search, method="bm25")
  for groups in CALLERS:
    prompts.clear()
    (answer,) = rag.answer([question], search, generate_fn, tokenizer=smollm2_tokenizer, k=4,
                           max_prompt_tokens=1024, groups=groups)
    allowed = _visible_docs(DOCUMENTS, groups)
    assert {p.doc_id for p in answer.passages} <= {d.doc_id for d in allowed}, groups
    query_words = {"known", "zorblatt", "festival", "staff", "salaries"}  # less stop words
    matching = [d for d in allowed if query_words & set(re.findall(r"\w+", d.text.lower()))]
    assert len(answer.passages) == min(4, len(matching)) > 0, groups  # k hits when they exist
    for d in DOCUMENTS:
      assert (d.text in prompts[0]) == (d.doc_id in {p.doc_id for p in answer.passages}), groups
  # The answerer carries its caller's groups.
  answerer = rag.RagAnswerer("rag", None, search, None, k=4, max_prompt_tokens=1024,
                             groups=["legal"])
  assert answerer.groups == ["legal"]

  # A search that ignores groups cannot leak either: hidden passages are dropped before the
  # prompt is built.
  (answer,) = rag.answer([question], lambda qs, k, groups=None: index.search(
      qs, k, method="bm25", groups=["hr", "legal"]), generate_fn, tokenizer=smollm2_tokenizer,
                         k=4, max_prompt_tokens=1024, groups=["legal"])
  assert {p.doc_id for p in answer.passages} <= {"p0", "p1", "p2", "p3", "l0", "l1", "b0"}
  assert not any(d.text in prompts[-1] for d in DOCUMENTS if d.acl == ("hr",))
