"""`python -m ftjax.retrieval`: search output for scripts, evaluate, and one-line user errors."""

import json

import pytest

from ftjax.retrieval.__main__ import main
from ftjax.retrieval.metrics import ranked_doc_ids
from ftjax.retrieval.corpus import Document
from ftjax.retrieval.index import IndexConfig, RetrievalIndex

DOCUMENTS = [
    Document("bridge", "The Kellen Bridge over the Arno was designed by the engineer Marta Voss."),
    Document("lighthouse", "The Orrin lighthouse guided ships along the rocky coast."),
    Document("canal", "The Plimsoll Canal links the harbour to the inland lakes."),
    Document("observatory", "The Lisnartor stargazing station was led by Ida Brann."),
]


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("cli") / "index"
  RetrievalIndex.create(path, IndexConfig(dense=False)).add(DOCUMENTS)
  return str(path)


def run_cli(capsys, *argv):
  main(list(argv))
  out = capsys.readouterr()
  return out.out, out.err


def user_error(capsys, *argv) -> str:
  """Runs a command that must fail with exit status 2 and one `error:` line; returns it."""
  with pytest.raises(SystemExit) as exit_info:
    main(list(argv))
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
  return err.strip()


def test_search_json(index_path, capsys):
  out, err = run_cli(capsys, "search", index_path, "who designed the Kellen Bridge?",
                     "lighthouse ships", "--method", "bm25", "--k", "1", "--json")
  records = [json.loads(line) for line in out.splitlines()]
  assert [r["query"] for r in records] == ["who designed the Kellen Bridge?", "lighthouse ships"]
  assert [r["hits"][0]["doc_id"] for r in records] == ["bridge", "lighthouse"]
  hit = records[0]["hits"][0]
  assert set(hit) == {"rank", "doc_id", "chunk_id", "score", "text"}
  assert hit["rank"] == 1 and hit["chunk_id"] == "bridge#0" and hit["score"] > 0
  assert "Marta Voss" in hit["text"] and "note" not in records[0] and not err


def test_queries_file(index_path, tmp_path, capsys):
  text_file = tmp_path / "queries.txt"
  text_file.write_text("Kellen Bridge engineer\n\nPlimsoll Canal harbour\n")
  jsonl_file = tmp_path / "queries.jsonl"
  jsonl_file.write_text('{"question": "Orrin lighthouse"}\n\n{"input": "Lisnartor station"}\n'
                        '{"query": "Plimsoll Canal", "extra": 1}\n')
  for path, expected in [(text_file, ["bridge", "canal"]),
                         (jsonl_file, ["lighthouse", "observatory", "canal"])]:
    out, _ = run_cli(capsys, "search", index_path, "--queries", str(path), "--method", "bm25",
                     "--k", "1", "--json")
    assert [json.loads(line)["hits"][0]["doc_id"] for line in out.splitlines()] == expected


def test_fewer_than_k_hits_are_explained(index_path, capsys):
  out, err = run_cli(capsys, "search", index_path, "Kellen Bridge", "zebra quasar",
                     "--method", "bm25", "--k", "3", "--json")
  first, second = [json.loads(line) for line in out.splitlines()]
  assert len(first["hits"]) == 1 and second["hits"] == []
  assert first["note"] == ("bm25 found 1 of k=3 hits (no other passage shares a term with the "
                           "query)")
  assert second["note"] == "bm25 found 0 of k=3 hits (no passage shares a term with the query)"
  assert err.splitlines() == [f"query 1: {first['note']}", f"query 2: {second['note']}"]
  _, err = run_cli(capsys, "search", index_path, "the bridge", "--method", "bm25", "--k", "9")
  assert "query 1: bm25 found 1 of k=9 hits" in err
  _, err = run_cli(capsys, "search", index_path, "Kellen Bridge canal lighthouse station",
                   "--method", "bm25", "--k", "9")
  assert err == "query 1: bm25 found 4 of k=9 hits (the index has only 4 passage(s))\n"


def test_evaluate(index_path, tmp_path, capsys):
  qa = tmp_path / "qa.jsonl"
  qa.write_text("\n".join(json.dumps(row) for row in [
      {"question": "Who designed the Kellen Bridge?", "answer": "Marta Voss", "doc_id": "bridge"},
      {"input": "Which canal links the harbour to the lakes?", "doc_id": "canal"},
      {"question": "Who led the Lisnartor station?", "doc_id": ["observatory", "bridge"]},
      {"question": "Where did ships sail?", "doc_id": "not-indexed"},
  ]) + "\n")
  out, err = run_cli(capsys, "evaluate", index_path, "--qa", str(qa), "--k", "1,2")
  lines = out.splitlines()
  assert lines[0] == "4 questions, 4 documents, 4 passages"
  assert lines[1].split() == ["method", "recall@1", "recall@2", "mrr@2"]
  # Gold sets: 1, 1, 1/2 at rank 1 (observatory; bridge matches no term), and a miss.
  assert lines[2].split() == ["bm25", "0.625", "0.625", "0.750"]
  assert "evaluating bm25 only" in err and "1 of 4 questions have no gold document" in err
  out, _ = run_cli(capsys, "evaluate", index_path, "--qa", str(qa), "--k", "1",
                   "--method", "bm25", "--json")
  result = json.loads(out)
  assert result["questions"] == 4
  assert result["results"] == {"bm25": {"recall@1": 0.625, "mrr@1": 0.75}}


def test_evaluate_counts_documents_not_chunks(tmp_path):
  """A document split into many matching chunks counts once: the search goes deeper."""
  index = RetrievalIndex.create(tmp_path / "index",
                                IndexConfig(dense=False, chunk_tokens=8, chunk_overlap=0))
  long_text = " ".join(f"bridge number {i} stands here." for i in range(12))
  index.add([Document("long", long_text), Document("short", "One small bridge.")])
  assert index.num_chunks > 4
  assert ranked_doc_ids(index, ["bridge"], "bm25", 2) == [["long", "short"]]


@pytest.mark.parametrize("make_file, message", [
    ('{"question": "ok"}\n{"question": "unterminated\n', r"queries.jsonl:2: invalid JSON"),
    ('{"question": "ok"}\n\n{"text": "no question"}\n',
     r'queries.jsonl:3: no "input" or "question" or "query" field'),
    ('{"query": "   "}\n', r'queries.jsonl:1: "query" must be non-empty text'),
    ('["a list"]\n', r"queries.jsonl:1: expected a JSON object, got list"),
])
def test_bad_queries_file_names_file_and_line(index_path, tmp_path, capsys, make_file, message):
  path = tmp_path / "queries.jsonl"
  path.write_text(make_file)
  err = user_error(capsys, "search", index_path, "--queries", str(path), "--method", "bm25")
  assert f"{tmp_path}/{message}" in err


def test_user_errors(index_path, tmp_path, capsys):
  qa = tmp_path / "qa.jsonl"
  qa.write_text('{"question": "fine", "doc_id": "bridge"}\n{"question": "bad", "doc_id": 7}\n')
  cases = [
      (["search", str(tmp_path / "missing"), "q"], "no manifest.json"),
      (["search", index_path, "  ", "--method", "bm25"], "query 1 is empty"),
      (["search", index_path, "q", "--k", "0"], "--k must be >= 1, got 0"),
      (["search", index_path], "no query"),
      (["search", index_path, "q", "--queries", str(qa)], "not both"),
      (["search", index_path, "--queries", str(tmp_path / "nope.txt")], "nope.txt: no such file"),
      (["search", index_path, "q", "--method", "dense"], "BM25-only index"),
      (["evaluate", index_path, "--qa", str(qa)], f'{qa}:2: "doc_id" must be a document id'),
      (["evaluate", index_path, "--qa", str(qa), "--k", "1,x"], "comma-separated integers"),
      (["evaluate", index_path, "--qa", str(qa), "--k", "0,5"], "--k must be >= 1"),
      (["evaluate", index_path, "--qa", str(tmp_path / "none.jsonl")], "none.jsonl: no such file"),
  ]
  for argv, message in cases:
    assert message in user_error(capsys, *argv), argv
