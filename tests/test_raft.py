"""RAFT examples, rank fusion and retrieval metrics."""

import json

import numpy as np
import pytest

from ftjax import raft as raft_cli
from ftjax.data import raft
from ftjax.retrieval import metrics
from ftjax.retrieval.corpus import CorpusError, QAPair
from ftjax.retrieval.hybrid import reciprocal_rank_fusion
from ftjax.arms.rag import render_prompt
from ftjax.data.synthetic import make_corpus


@pytest.fixture(scope="module")
def corpus():
  documents, qa = make_corpus(60, seed=4)
  return {d.doc_id: d.text for d in documents}, qa


def test_raft_examples(corpus):
  passages, qa = corpus
  examples = raft.build_examples(qa, passages, num_distractors=3, oracle_fraction=0.7, seed=1)
  assert len(examples) == len(qa)
  assert sum(e.oracle_included for e in examples) == round(0.7 * len(qa))
  for ex, pair in zip(examples, qa):
    user, assistant = ex.messages
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    assert assistant["content"] == pair.answer
    assert len(ex.passage_ids) == len(set(ex.passage_ids)) == 4  # oracle replaced when absent
    assert (pair.doc_id in ex.passage_ids) == ex.oracle_included
    # The same template as RAG at inference time.
    assert user["content"] == render_prompt(pair.question, [passages[p] for p in ex.passage_ids])
  # The oracle is not always in the same slot.
  assert len({ex.passage_ids.index(ex.doc_id) for ex in examples if ex.oracle_included}) > 1
  again = raft.build_examples(qa, passages, num_distractors=3, oracle_fraction=0.7, seed=1)
  assert again == examples
  other = raft.build_examples(qa, passages, num_distractors=3, oracle_fraction=0.7, seed=2)
  assert other != examples


def test_raft_hard_negatives_and_extremes(corpus):
  passages, qa = corpus
  ranking = list(passages)[::-1]
  examples = raft.build_examples(qa[:5], passages, num_distractors=2, oracle_fraction=1.0,
                                 negatives=lambda question: ranking)
  for ex in examples:
    expected = [p for p in ranking if p != ex.doc_id][:2] + [ex.doc_id]
    assert sorted(ex.passage_ids) == sorted(expected)
  none = raft.build_examples(qa, passages, num_distractors=0, oracle_fraction=0.0)
  assert all(not ex.oracle_included and len(ex.passage_ids) == 1 for ex in none)


def test_raft_errors(corpus):
  passages, qa = corpus
  with pytest.raises(CorpusError, match="doc_id 'nope'"):
    raft.build_examples([QAPair("q", "a", "nope")], passages)
  with pytest.raises(ValueError, match="oracle_fraction"):
    raft.build_examples(qa, passages, oracle_fraction=1.5)
  with pytest.raises(ValueError, match="cannot give 4 distractors"):
    raft.build_examples(qa[:1], {qa[0].doc_id: "x", "other": "y"})


def test_raft_cli_writes_chat_jsonl(tmp_path, corpus):
  passages, qa = corpus
  (tmp_path / "docs.jsonl").write_text(
      "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in passages.items()))
  (tmp_path / "qa.jsonl").write_text("".join(json.dumps(p._asdict()) + "\n" for p in qa))
  raft_cli.main(["--qa", str(tmp_path / "qa.jsonl"), "--corpus", str(tmp_path / "docs.jsonl"),
                 "--out", str(tmp_path / "raft.jsonl"), "--meta_out", str(tmp_path / "meta.jsonl"),
                 "--oracle_fraction", "0.5"])
  rows = [json.loads(line) for line in (tmp_path / "raft.jsonl").read_text().splitlines()]
  assert len(rows) == len(qa) and all(list(row) == ["messages"] for row in rows)
  meta = [json.loads(line) for line in (tmp_path / "meta.jsonl").read_text().splitlines()]
  assert sum(m["oracle_included"] for m in meta) == len(qa) // 2
  (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\n')
  with pytest.raises(CorpusError, match=r"bad\.jsonl:1: missing key 'doc_id'"):
    raft.read_qa_jsonl(tmp_path / "bad.jsonl")


def test_reciprocal_rank_fusion():
  bm25 = np.array([[1, 2, 3, -1], [5, -1, -1, -1]])
  dense = np.array([[3, 1, 9, 8], [6, 5, -1, -1]])
  scores, rows = reciprocal_rank_fusion([bm25, dense], k=3, rrf_k=60)
  # 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62; 9: 1/63.
  assert rows[0].tolist() == [1, 3, 2]
  np.testing.assert_allclose(scores[0], [1 / 61 + 1 / 62, 1 / 61 + 1 / 63, 1 / 62], rtol=1e-6)
  # 5 has two votes, 6 one; the third slot stays empty.
  assert rows[1].tolist() == [5, 6, -1] and np.isneginf(scores[1, 2])


def test_metrics():
  retrieved = [["a", "a", "b", "c"], ["x", "y"], ["q"]]
  gold = [{"b"}, {"y", "z"}, {"q"}]
  # Distinct docs: ["a", "b", "c"], so "b" is at rank 2.
  assert metrics.recall_at_k(retrieved, gold, 1) == pytest.approx((0 + 0 + 1) / 3)
  assert metrics.recall_at_k(retrieved, gold, 2) == pytest.approx((1 + 0.5 + 1) / 3)
  assert metrics.mrr(retrieved, gold) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
  assert metrics.mrr(retrieved, gold, k=1) == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="query 1 has no gold"):
    metrics.recall_at_k([["a"], ["b"]], [{"a"}, set()], 1)
  with pytest.raises(ValueError, match="2 rankings but 1 gold"):
    metrics.mrr([["a"], ["b"]], [{"a"}])


def test_raft_rows_feed_the_sft_loader(tmp_path, corpus, smollm2_tokenizer):
  from ftjax.data import read_file, render_example
  passages, qa = corpus
  examples = raft.build_examples(qa[:8], passages, num_distractors=2, oracle_fraction=0.5)
  raft.write_jsonl(examples, tmp_path / "raft.jsonl")
  parsed = read_file(str(tmp_path / "raft.jsonl"))
  assert parsed.bad_rows == [] and len(parsed.examples) == 8
  ids, loss_mask = render_example(parsed.examples[0]["messages"], smollm2_tokenizer)
  # The loss covers the answer, not the passages or the question.
  trained = smollm2_tokenizer.decode([t for t, m in zip(ids, loss_mask) if m])
  assert qa[0].answer in trained and qa[0].question not in trained
