"""Corpus ingestion and chunking: readers report what they skip and name bad input precisely."""

import json
import re

import pytest

from ftjax.retrieval import corpus as corpus_lib
from ftjax.retrieval.corpus import CorpusError, Document, chunk_documents
from ftjax.data.synthetic import make_corpus


@pytest.fixture(scope="module")
def wordpiece():
  from transformers import AutoTokenizer
  from ftjax.checkpoints import resolve
  return AutoTokenizer.from_pretrained(str(resolve("all-minilm-l6-v2")))


def _write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return path


def test_jsonl_reads_documents_and_reports_skipped(tmp_path):
  path = _write_lines(tmp_path / "docs.jsonl", [
      json.dumps({"id": "a", "text": "first text", "title": "A"}),
      "",
      json.dumps({"id": 7, "text": "   ", "title": "blank"}),
      json.dumps({"id": "c", "text": "third", "title": "C"}),
  ])
  corpus = corpus_lib.read_jsonl(path, title_key="title")
  assert [d.doc_id for d in corpus.documents] == ["a", "c"]
  assert corpus.documents[0].title == "A"
  assert corpus.skipped == [(f"{path}:3", "document '7' has empty text")]
  assert "1 skipped" in corpus.report()


@pytest.mark.parametrize("line, message", [
    ('{"id": "b", "text": ', r"docs\.jsonl:2: invalid JSON"),
    ('{"id": "b"}', r"docs\.jsonl:2: missing key 'text'"),
    ('{"id": "b", "text": ["x"]}', r"docs\.jsonl:2: key 'text' must be a string"),
    ('["b", "text"]', r"docs\.jsonl:2: expected an object"),
    ('{"id": "a", "text": "again"}', r"docs\.jsonl:2: duplicate document id 'a' \(first at .*:1\)"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
  path = _write_lines(tmp_path / "docs.jsonl", ['{"id": "a", "text": "ok"}', line])
  with pytest.raises(CorpusError, match=message):
    corpus_lib.read_jsonl(path)


def test_folder_reader(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.md").write_text("# Alpha title\n\nBody of alpha.")
  (tmp_path / "sub" / "b.txt").write_text("Body of b.")
  (tmp_path / "empty.txt").write_text("  \n")
  (tmp_path / "image.png").write_bytes(b"\x89PNG")
  corpus = corpus_lib.read_folder(tmp_path)
  assert [(d.doc_id, d.title) for d in corpus.documents] == [("a.md", "Alpha title"),
                                                            ("sub/b.txt", "")]
  assert sorted(why for _, why in corpus.skipped) == ["empty file", "suffix '.png' not in "
                                                      "('.txt', '.md')"]
  (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
  with pytest.raises(CorpusError, match=r"bad\.txt: not UTF-8"):
    corpus_lib.read_folder(tmp_path)


def test_tfds_reader(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class FtjaxTinyDocs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"key": tfds.features.Text(), "body": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, body in enumerate(["alpha text", "", "gamma text"]):
        yield i, {"key": f"k{i}", "body": body}

  FtjaxTinyDocs(data_dir=str(tmp_path)).download_and_prepare()
  corpus = corpus_lib.load_corpus("tfds:ftjax_tiny_docs:train", text_key="body", id_key="key",
                                  data_dir=tmp_path)
  assert sorted((d.doc_id, d.text) for d in corpus.documents) == [("k0", "alpha text"),
                                                                  ("k2", "gamma text")]
  assert len(corpus.skipped) == 1 and "'k1' has empty text" in corpus.skipped[0][1]
  with pytest.raises(CorpusError, match="no_such_dataset_xyz"):
    corpus_lib.read_tfds("no_such_dataset_xyz", data_dir=tmp_path)


def test_chunks_are_word_aligned_overlapping_substrings(wordpiece):
  text = " ".join(f"word{i} unbelievably-long-token{i}" for i in range(120))
  doc = Document("d", text)
  chunks = chunk_documents([doc], wordpiece, chunk_tokens=50, overlap=10)
  assert len(chunks) > 5
  assert [c.chunk_id for c in chunks[:2]] == ["d#0", "d#1"]
  for c in chunks:
    assert c.text == text[c.start_char:c.end_char]
    assert len(wordpiece(c.text, add_special_tokens=False)["input_ids"]) <= 50
    # Windows start and end on word boundaries.
    assert c.start_char == 0 or not text[c.start_char - 1].isalnum()
    assert c.end_char == len(text) or not text[c.end_char].isalnum()
  for a, b in zip(chunks, chunks[1:]):
    assert a.start_char < b.start_char < a.end_char  # consecutive chunks overlap
  assert chunks[-1].end_char == len(text)


def test_chunking_errors(wordpiece):
  with pytest.raises(ValueError, match="overlap < chunk_tokens"):
    chunk_documents([Document("d", "x")], wordpiece, chunk_tokens=10, overlap=10)
  with pytest.raises(CorpusError, match="'d' has no tokens"):
    chunk_documents([Document("d", "   ")], wordpiece)


def test_synthetic_questions_paraphrase_their_documents():
  import bm25s.stopwords
  documents, qa = make_corpus(200, seed=3)
  assert (documents, qa) == make_corpus(200, seed=3)
  assert len({d.doc_id for d in documents}) == 200
  by_id = {d.doc_id: d for d in documents}
  stop = set(bm25s.stopwords.STOPWORDS_EN)
  words = lambda text: set(re.findall(r"\w\w+", text.lower())) - stop
  for pair in qa:
    doc = by_id[pair.doc_id].text
    names = words(" ".join(re.findall(r"\b[A-Z]\w+|\d+", doc)))
    # Only names and numbers are shared with the document, never the wording.
    assert words(pair.question) & words(doc) <= names, pair.question
    assert pair.answer in doc
