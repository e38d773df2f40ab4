"""The retrieval index: recall on paraphrased questions, in-place updates, edge cases."""

import json

import numpy as np
import pytest

from ftjax.retrieval import dense, metrics
from ftjax.retrieval.corpus import Document
from ftjax.retrieval.index import (EmptyIndexError, EmptyQueryError, IndexConfig,
                                   QueryTruncatedWarning, RetrievalIndex, RetrievalIndexError)
from ftjax.data.synthetic import make_corpus

NUM_DOCS = 300


@pytest.fixture(scope="module")
def encoder():
  return dense.load_encoder("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def paraphrase(encoder, tmp_path_factory):
  documents, qa = make_corpus(NUM_DOCS, seed=0)
  index = RetrievalIndex.create(tmp_path_factory.mktemp("paraphrase") / "index",
                                encoder=encoder)
  index.add(documents)
  return index, qa


@pytest.mark.parametrize("method", ["bm25", "dense", "hybrid"])
def test_recall_on_paraphrased_questions(paraphrase, method):
  index, qa = paraphrase
  results = index.search([pair.question for pair in qa], k=10, method=method)
  ranked = [[p.doc_id for p in passages] for passages in results]
  scores = metrics.evaluate(ranked, [{pair.doc_id} for pair in qa], ks=(1, 5))
  print(f"{method}: {NUM_DOCS} docs, {len(qa)} questions: {scores}")
  assert scores["recall@5"] >= 0.9


def test_search_returns_ranked_passages(paraphrase):
  index, qa = paraphrase
  (passages,) = index.search([qa[0].question], k=3, method="dense")
  assert [p.rank for p in passages] == [1, 2, 3]
  assert passages[0].doc_id == qa[0].doc_id and passages[0].chunk_id == f"{qa[0].doc_id}#0"
  assert qa[0].answer in passages[0].text
  assert passages[0].score >= passages[1].score >= passages[2].score


def _top1(index, query, method):
  passages = index.search([query], k=1, method=method)[0]
  return passages[0].doc_id if passages else None


def _small_index(path, encoder, **config):
  index = RetrievalIndex.create(path, IndexConfig(**config), encoder=encoder)
  documents, _ = make_corpus(40, seed=1)
  index.add(documents)
  return index, documents


def test_replace_changes_results_without_rebuild(tmp_path, encoder):
  index, documents = _small_index(tmp_path / "index", encoder)
  target = documents[5].doc_id
  question = "Which chef invented the Zorblatt pudding?"
  for method in ("bm25", "dense", "hybrid"):
    assert _top1(index, question, method) != target
  first_segment = index.path / "segments" / index.segments[0]
  before = {p.name: p.stat().st_mtime_ns for p in first_segment.iterdir()}

  report = index.replace([Document(target, "The Zorblatt pudding was invented by the pastry "
                                           "chef Ulla Quenby in 1911.")])
  assert (report.replaced, report.chunks_added, report.chunks_removed) == (1, 1, 1)
  # Only the new document was encoded: the first segment's files are untouched.
  assert {p.name: p.stat().st_mtime_ns for p in first_segment.iterdir()} == before
  assert len(index.segments) == 2 and index.num_documents == 40
  for method in ("bm25", "dense", "hybrid"):
    assert _top1(index, question, method) == target, method

  # The update is on disk: a reopened index gives the same results.
  reopened = RetrievalIndex.open(index.path, encoder=encoder)
  for method in ("bm25", "dense", "hybrid"):
    a = index.search_rows([question, "Who founded a bike company?"], k=5, method=method)
    b = reopened.search_rows([question, "Who founded a bike company?"], k=5, method=method)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)

  # Replacing with identical text does nothing.
  report = index.replace([Document(target, "The Zorblatt pudding was invented by the pastry "
                                           "chef Ulla Quenby in 1911.")])
  assert (report.unchanged, report.chunks_added) == (1, 0)


def test_add_delete_compact(tmp_path, encoder):
  index, documents = _small_index(tmp_path / "index", encoder)
  query = [documents[0].text]
  assert index.search(query, k=1, method="hybrid")[0][0].doc_id == documents[0].doc_id
  report = index.delete([documents[0].doc_id])
  assert (report.deleted, report.chunks_removed) == (1, 1)
  for method in ("bm25", "dense", "hybrid"):
    hits = index.search(query, k=40, method=method)[0]
    assert documents[0].doc_id not in {p.doc_id for p in hits}, method
  index.add([Document("new", "A brand new document about the Plimsoll Canal.")])
  assert index.search(["Plimsoll Canal"], k=1, method="bm25")[0][0].doc_id == "new"

  before = index.search_rows(["Plimsoll Canal", documents[3].text], k=5, method="hybrid")
  ids_before = [[index.chunks[r].chunk_id for r in rows] for rows in before.rows]
  index.compact()
  assert len(index.segments) == 1 and index.live.all() and index.num_documents == 40
  after = RetrievalIndex.open(index.path, encoder=encoder).search_rows(
      ["Plimsoll Canal", documents[3].text], k=5, method="hybrid")
  assert [[index.chunks[r].chunk_id for r in rows] for rows in after.rows] == ids_before


def test_update_errors(tmp_path, encoder):
  index, documents = _small_index(tmp_path / "index", encoder)
  with pytest.raises(RetrievalIndexError, match="already indexed .*use replace"):
    index.add([documents[0]])
  with pytest.raises(RetrievalIndexError, match="not in the index .*use add"):
    index.replace([Document("missing", "text")])
  with pytest.raises(RetrievalIndexError, match="not in the index: 'missing'"):
    index.delete(["missing"])
  with pytest.raises(RetrievalIndexError, match="duplicate document id"):
    index.add([Document("x", "one"), Document("x", "two")])
  with pytest.raises(RetrievalIndexError, match="already exists"):
    RetrievalIndex.create(index.path, encoder=encoder)
  assert index.num_documents == 40  # failed updates changed nothing


def test_empty_corpus_and_empty_query(tmp_path, encoder):
  index = RetrievalIndex.create(tmp_path / "empty", encoder=encoder)
  index.add([])
  for method in ("bm25", "dense", "hybrid"):
    with pytest.raises(EmptyIndexError, match="no documents"):
      index.search(["anything"], method=method)
  index.add([Document("a", "Only one document here.")])
  with pytest.raises(EmptyQueryError, match=r"1 empty query \(positions 1\)"):
    index.search(["fine", "   "])
  with pytest.raises(EmptyQueryError):
    index.search([""], method="bm25")
  # k larger than the corpus: the extra slots are empty, not an error.
  hits = index.search_rows(["one document"], k=4, method="dense")
  assert hits.rows[0].tolist() == [0, -1, -1, -1]
  # A query with no indexed word has no BM25 hits.
  assert index.search(["zzzz qqqq"], k=3, method="bm25") == [[]]


def test_overlong_query_is_truncated_with_a_warning(tmp_path, encoder):
  index, documents = _small_index(tmp_path / "index", encoder)
  long_query = documents[2].text + " filler" * 300
  with pytest.warns(QueryTruncatedWarning, match="1 quer.* limit of 256 word pieces"):
    hits = index.search_rows([long_query, "short"], k=1, method="hybrid")
  assert hits.truncated.tolist() == [True, False]
  assert index.chunks[hits.rows[0, 0]].doc_id == documents[2].doc_id
  with pytest.raises(dense.InputTooLongError):
    index.search([long_query], method="dense", on_overflow="error")


def test_bm25_only_index_and_manifest(tmp_path):
  index = RetrievalIndex.create(tmp_path / "bm25", IndexConfig(dense=False))
  index.add([Document("a", "red apples and green pears"), Document("b", "blue sky")])
  assert index._encoder is None  # no encoder weights loaded for a BM25-only index
  assert index.search(["pears"], method="bm25")[0][0].doc_id == "a"
  with pytest.raises(RetrievalIndexError, match="BM25-only"):
    index.search(["pears"], method="dense")
  manifest = json.loads((index.path / "manifest.json").read_text())
  assert manifest["config"]["dense"] is False and len(manifest["segments"]) == 1
  with pytest.raises(RetrievalIndexError, match="not a retrieval index"):
    RetrievalIndex.open(tmp_path)


def test_bm25_keeps_one_character_words(tmp_path):
  # "gate 3" vs "gate 4", "vitamin C" vs "vitamin D": the one-character word is the whole answer.
  index = RetrievalIndex.create(tmp_path / "index", IndexConfig(dense=False))
  index.add([Document("g3", "Boarding for the evening flight is at gate 3."),
             Document("g4", "Boarding for the morning flight is at gate 4."),
             Document("vc", "Oranges are rich in vitamin C."),
             Document("vd", "Sunlight helps the skin make vitamin D."),
             Document("pb", "Plan B costs twelve dollars."),
             Document("pc", "Plan C costs nine dollars.")])
  for query, doc_id in (("gate 3", "g3"), ("gate 4", "g4"), ("vitamin C", "vc"),
                        ("vitamin D", "vd"), ("plan b", "pb"), ("Plan C", "pc")):
    (passages,) = index.search([query], k=2, method="bm25")
    assert passages[0].doc_id == doc_id, (query, [p.doc_id for p in passages])
    assert passages[0].score > passages[1].score, query
