"""RAG prompts stay within the token budget, never cut the question, and record their passages."""

import functools
from typing import NamedTuple

import pytest

from ftjax.arms import rag
from ftjax.retrieval.corpus import Document
from ftjax.retrieval.index import IndexConfig, Passage, RetrievalIndex
from ftjax.data.synthetic import make_corpus


class FakeCompletion(NamedTuple):
  text: str
  token_ids: list
  num_prompt_tokens: int
  finish_reason: str


def _passages(texts):
  return [Passage(f"d{i}", f"d{i}#0", text, 1.0 / (i + 1), i + 1) for i, text in
          enumerate(texts)]


def test_all_passages_fit(smollm2_tokenizer):
  passages = _passages(["Alpha is red.", "Beta is blue."])
  prompt = rag.build_prompt("What colour is beta?", passages, smollm2_tokenizer, 512)
  assert prompt.text == rag.render_prompt("What colour is beta?",
                                          ["Alpha is red.", "Beta is blue."])
  assert prompt.text.index("[1] Alpha") < prompt.text.index("[2] Beta") < prompt.text.index(
      "Question: What colour is beta?")
  assert [(p.doc_id, p.chunk_id, p.rank, p.truncated) for p in prompt.passages] == [
      ("d0", "d0#0", 1, False), ("d1", "d1#0", 2, False)]
  assert prompt.num_tokens == rag.count_prompt_tokens(smollm2_tokenizer, prompt.text)


def test_budget_truncates_passages_never_the_question(smollm2_tokenizer):
  question = "Which engineer designed the Velmora span over the Quill?"
  long_passage = " ".join(f"Sentence {i} about the history of the region." for i in range(60))
  passages = _passages(["The Velmora bridge was designed by Ada Grell.", long_passage,
                        "A third passage that will not fit."])
  base = rag.count_prompt_tokens(smollm2_tokenizer, rag.render_prompt(question, []))
  budget = base + 120
  prompt = rag.build_prompt(question, passages, smollm2_tokenizer, budget)
  assert prompt.num_tokens <= budget
  assert prompt.num_tokens == rag.count_prompt_tokens(smollm2_tokenizer, prompt.text)
  assert prompt.text.endswith(f"Question: {question}")
  first, second = prompt.passages
  assert not first.truncated and second.truncated and second.num_tokens >= 16
  assert rag.TRUNCATION_MARK + "\n\nQuestion" in prompt.text
  assert "third passage" not in prompt.text
  # Every token of the budget not used would not have fitted one more passage token.
  assert budget - prompt.num_tokens < 5

  # Too little room for a useful piece of the passage: it is left out, not cut to a stub.
  tight = rag.build_prompt(question, passages[1:], smollm2_tokenizer, base + 10)
  assert tight.passages == () and tight.text == rag.render_prompt(question, [])
  with pytest.raises(rag.PromptBudgetError, match="never truncated"):
    rag.build_prompt(question, passages, smollm2_tokenizer, base - 1)


def test_answer_records_passages_and_prompt_tokens(smollm2_tokenizer, tmp_path):
  documents, qa = make_corpus(30, seed=2, shared_name_fraction=0.0)
  index = RetrievalIndex.create(tmp_path / "index", IndexConfig(dense=False))
  index.add(documents)
  seen_prompts = []

  def generate_fn(prompts):
    seen_prompts.extend(prompts)
    return [FakeCompletion("an answer", [1, 2], rag.count_prompt_tokens(smollm2_tokenizer, p),
                           "stop") for p in prompts]

  questions = [pair.question for pair in qa[:3]]
  answers = rag.answer(questions, functools.partial(index.search, method="bm25"), generate_fn,
                       tokenizer=smollm2_tokenizer, k=3, max_prompt_tokens=256)
  assert [a.question for a in answers] == questions and seen_prompts == [a.prompt for a in answers]
  for a, pair in zip(answers, qa):
    assert a.answer == "an answer" and a.finish_reason == "stop"
    assert a.num_prompt_tokens <= 256
    assert 1 <= len(a.passages) <= 3 and a.passages[0].doc_id == pair.doc_id
    assert a.passages[0].chunk_id == f"{pair.doc_id}#0" and a.passages[0].score > 0
    record = a.to_json()
    assert record["passages"][0]["doc_id"] == pair.doc_id
  with pytest.raises(ValueError, match="tokenizer"):
    rag.answer(questions, functools.partial(index.search, method="bm25"), generate_fn)


@pytest.mark.slow
def test_rag_with_the_real_model(smollm2, tmp_path):
  from ftjax.generation import SamplingConfig
  index = RetrievalIndex.create(tmp_path / "index", IndexConfig(dense=False))
  index.add([Document("bridge", "The Velmora Bridge was designed by the engineer Ada Grell."),
             Document("festival", "The Quillon Festival is held every autumn in Harrowgate.")])
  answers = rag.answer(["Who designed the Velmora Bridge?"],
                       functools.partial(index.search, method="bm25"), smollm2, k=2,
                       max_prompt_tokens=200, sampling=SamplingConfig(max_new_tokens=16,
                                                                      greedy=True))
  (a,) = answers
  assert a.passages[0].doc_id == "bridge"
  # The budget was counted on the same rendering the generator reads.
  assert a.num_prompt_tokens == rag.count_prompt_tokens(smollm2.tokenizer, a.prompt) <= 200
  assert isinstance(a.answer, str) and a.finish_reason
