"""Answer scoring: normalisation with numbers, containment, F1, style, abstention, run summaries."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from ftjax.evaluation import (ScoringConfigError, abstains, compile_style, contains_answer,
                              matches_style, mean_std, normalize_answer, percentile, score_answer,
                              summarize, token_f1)


@pytest.mark.parametrize("text, expected", [
    ("  The   Eiffel\tTower\n", "eiffel tower"),
    ("An apple, a pear... and THE end!", "apple pear and end"),
    ("Don't stop (ever)?", "dont stop ever"),
    ("theatre anthem", "theatre anthem"),  # articles only as whole words
    ("It costs $1,299.00", "it costs 1299"),
    ("$49.50", "49.5"),
    ("3.0", "3"),
    ("1,000,000 users", "1000000 users"),
    ("50% off", "50 off"),
    ("It weighs 3.5kg.", "it weighs 3.5 kg"),
    ("twelve days", "12 days"),
    ("forty-five", "45"),
    ("Forty five", "45"),
    ("two hundred fifty", "250"),
    ("a hundred", "100"),
    ("one thousand two hundred thirty-four", "1234"),
    ("zero or one", "0 or 1"),
    ("", ""),
])
def test_normalize_answer(text, expected):
  assert normalize_answer(text) == expected


def test_number_spellings_normalise_alike():
  assert normalize_answer("forty-five") == normalize_answer("45") == normalize_answer("45.00")
  assert normalize_answer("$1,299") == normalize_answer("1299.0")
  assert normalize_answer("twelve") == normalize_answer("12")


@pytest.mark.parametrize("prediction, gold", [
    ("It costs $1,299.00", "1299"),
    ("It costs $1,299.00 in stores.", "$1,299"),
    ("Delivery takes twelve days.", "12 days"),
    ("Delivery takes 12 days.", "twelve days"),
    ("The box weighs 3.5 kg.", "3.5"),
    ("The box weighs 3.5kg.", "3.5 kg"),
    ("The answer is forty-five.", "45"),
    ("It was designed by Gustave Eiffel in Paris.", "gustave eiffel"),
    ("Paris, France", "The Paris"),
])
def test_contains_answer_positive(prediction, gold):
  assert contains_answer(prediction, gold)


@pytest.mark.parametrize("prediction, gold", [
    ("Order 112 shipped.", "12"),
    ("It costs 1299 dollars.", "129"),
    ("The style is Parisian.", "paris"),
    ("The box weighs 3.55 kg.", "3.5"),
    ("Eiffel designed it, Gustave said.", "gustave eiffel"),  # tokens must be contiguous
    ("", "paris"),
])
def test_contains_answer_negative(prediction, gold):
  assert not contains_answer(prediction, gold)


@pytest.mark.parametrize("gold", ["", "   ", "the", "?!"])
def test_contains_answer_rejects_empty_gold(gold):
  with pytest.raises(ValueError, match="empty"):
    contains_answer("anything", gold)


@pytest.mark.parametrize("prediction, gold, expected", [
    ("the cat sat", "cat sat down", 0.8),  # p = 2/2, r = 2/3
    ("cat sat down", "cat sat down", 1.0),
    ("The Cat, sat!", "cat sat", 1.0),
    ("dog", "cat", 0.0),
    ("cat cat", "cat", 2 / 3),  # p = 1/2, r = 1/1: repeated tokens count once per occurrence
    ("a b c d", "a b e", 0.4),  # "a" is an article: p = 1/3, r = 1/2
    ("twelve days", "12 days", 1.0),
    ("", "", 1.0),
    ("the", "an", 1.0),  # both empty after normalisation
    ("", "cat", 0.0),
    ("cat", "", 0.0),
])
def test_token_f1(prediction, gold, expected):
  assert token_f1(prediction, gold) == pytest.approx(expected)


def test_style_matches_and_rejects():
  pattern = compile_style(r"^Ahoy\b.*matey[.!]?$")
  assert pattern.flags & re.DOTALL
  assert matches_style("  Ahoy! The warranty\nlasts 24 months, matey.\n", pattern)
  assert not matches_style("The warranty lasts 24 months.", pattern)
  assert not matches_style("Ahoy! The warranty lasts 24 months.", pattern)
  assert matches_style("Ahoy there, matey", r"^Ahoy\b.*matey[.!]?$")  # a string is compiled


def test_style_pattern_that_does_not_compile():
  with pytest.raises(ScoringConfigError) as info:
    compile_style("Hi (")
  message = str(info.value)
  assert "'Hi ('" in message
  assert "missing )" in message
  assert isinstance(info.value, ValueError)
  with pytest.raises(ScoringConfigError, match=re.escape("'[a-'")):
    matches_style("text", "[a-")


@pytest.mark.parametrize("answer", [
    "I don't know.",
    "I do not know the answer to that.",
    "I’m not sure, but it might be in the settings.",
    "Not sure.",
    "I cannot answer that from the documents provided.",
    "I can't answer this question.",
    "There is no information about the return policy for gift cards.",
    "I don't have that information.",
    "The provided context doesn't cover battery replacement.",
    "The documents do not mention a student discount.",
    "That detail is not mentioned in the context.",
    "I was unable to find the release date.",
    "Unable to answer based on the given passages.",
    "I'm sorry, but I can't help with that.",
    "Sorry, I don't have details on that product.",
    "There is no record of a recall for this model.",
    "I could not find anything about a loyalty program.",
])
def test_abstains_positive(answer):
  assert abstains(answer)


@pytest.mark.parametrize("answer", [
    "The warranty lasts 24 months.",
    "The warranty does not cover water damage.",
    "This feature is not available in the basic plan.",
    "If you are not sure which model you have, check the label under the base.",
    "Make sure the device is unplugged before cleaning.",
    "The company keeps no records of card numbers.",
    "The app stores no information about your location.",
    "You cannot return opened software.",
    "The phone can't answer calls in airplane mode.",
    "No, the charger cannot be used outdoors.",
    "Information about the recall is available in the settings menu.",
    "If you are unable to find the serial number, look inside the battery cover.",
    "The answer is 12.",
])
def test_abstains_negative(answer):
  assert not abstains(answer)


def test_abstain_patterns_custom_and_invalid():
  assert abstains("NO IDEA, mate", [r"\bno idea\b"])  # case-insensitive
  assert not abstains("I don't know.", [r"\bno idea\b"])  # replaces the defaults
  assert not abstains("I don't know.", [])
  with pytest.raises(ScoringConfigError, match=re.escape("'(unclosed'")):
    abstains("anything", [r"\bfine\b", "(unclosed"])


def test_percentile():
  assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
  assert percentile([10, 20, None, 30], 90) == pytest.approx(28.0)  # linear; None skipped
  assert percentile([7], 99) == 7.0
  assert percentile([], 50) is None
  assert percentile([None], 50) is None


def test_mean_std():
  assert mean_std([1, 2, 3, 4]) == {"mean": 2.5, "std": pytest.approx(1.2909944), "n": 4}
  assert mean_std([2.0, None, 4.0]) == {"mean": 3.0, "std": pytest.approx(2 ** 0.5), "n": 2}
  assert mean_std([5]) == {"mean": 5.0, "std": 0.0, "n": 1}
  assert mean_std([True, False, False, True]) == {"mean": 0.5, "std": pytest.approx(0.57735027),
                                                  "n": 4}
  assert mean_std([]) == {"mean": None, "std": None, "n": 0}
  assert mean_std([None, None]) == {"mean": None, "std": None, "n": 0}


def test_score_answer():
  style = compile_style(r"^Ahoy")
  # F1: one of four prediction tokens ("ahoy it costs 1299") is the gold, so p = 1/4, r = 1.
  assert score_answer("Ahoy! It costs $1,299.", "1299", style=style) == {
      "correct": True, "f1": pytest.approx(0.4), "style": True, "abstained": False}
  assert score_answer("I don't know.", "1299", style=style) == {
      "correct": False, "f1": 0.0, "style": False, "abstained": True}
  assert score_answer("I don't know.", None, style=None) == {
      "correct": None, "f1": None, "style": None, "abstained": True}
  assert score_answer("No idea.", None, style=None, abstain_patterns=[r"^no idea"])["abstained"]


def _row(split, correct, abstained, *, f1=None, style=None, prompt_tokens=None, new_tokens=None,
         passage_doc_ids=None, doc_id=None):
  return {"split": split, "correct": correct, "f1": f1, "style": style, "abstained": abstained,
          "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
          "passage_doc_ids": passage_doc_ids, "doc_id": doc_id}


def _rows():
  return [
      # Correct, and its gold document was retrieved.
      _row("eval", True, False, f1=1.0, style=True, prompt_tokens=100, new_tokens=10,
           passage_doc_ids=["d1", "d2"], doc_id="d1"),
      # Correct, but the gold document was not among the passages.
      _row("eval", True, False, f1=0.5, style=False, prompt_tokens=200, new_tokens=20,
           passage_doc_ids=["d3"], doc_id="d2"),
      # Wrong but abstained: not a hallucination.
      _row("eval", False, True, f1=0.0, style=True, prompt_tokens=300, new_tokens=30,
           passage_doc_ids=["d4"], doc_id="d3"),
      # Wrong and answered anyway: a hallucination.
      _row("eval", False, False, f1=0.2, style=False, prompt_tokens=400, new_tokens=40,
           passage_doc_ids=[], doc_id="d4"),
      _row("unanswerable", None, True, passage_doc_ids=[]),
      _row("unanswerable", None, False, passage_doc_ids=["d9"]),  # hallucination
      _row("unanswerable", None, False, passage_doc_ids=["d9"]),  # hallucination
      _row("general", True, False),
      _row("general", False, False),
      _row("general", False, True),
  ]


def test_summarize_by_hand():
  summary = summarize(_rows())
  assert summary == {
      "accuracy": 2 / 4,
      "f1": pytest.approx((1.0 + 0.5 + 0.0 + 0.2) / 4),
      "style_rate": 2 / 4,
      "abstain_rate": pytest.approx(1 / 3),
      # (1 wrong non-abstaining eval answer + 2 non-abstaining unanswerable) / (4 eval + 3 unans.)
      "hallucination_rate": pytest.approx(3 / 7),
      "general_accuracy": pytest.approx(1 / 3),
      "update_accuracy": None,
      "unchanged_accuracy": None,
      "prompt_tokens": 250.0,
      "new_tokens": 25.0,
      # Of the two correct eval rows with a doc_id, one retrieved its gold document.
      "citation_accuracy": 0.5,
      "n_questions": 4,
  }


def test_summarize_update_splits():
  rows = [_row("update_eval", True, False), _row("update_eval", False, False),
          _row("update_eval", True, False), _row("unchanged", True, False)]
  summary = summarize(rows)
  assert summary["update_accuracy"] == pytest.approx(2 / 3)
  assert summary["unchanged_accuracy"] == 1.0
  assert summary["accuracy"] is None
  assert summary["hallucination_rate"] is None
  assert summary["n_questions"] == 0


def test_summarize_not_applicable_is_none():
  rows = [{**r, "passage_doc_ids": None, "style": None} for r in _rows()]
  summary = summarize(rows)
  assert summary["citation_accuracy"] is None  # no retrieval, so no citations, not 0.0
  assert summary["style_rate"] is None  # no style target
  assert summary["accuracy"] == 0.5

  empty = summarize([])
  assert empty["n_questions"] == 0
  assert all(v is None for k, v in empty.items() if k != "n_questions")


def test_summarize_unanswerable_only():
  rows = [_row("unanswerable", None, True), _row("unanswerable", None, False)]
  summary = summarize(rows)
  assert summary["abstain_rate"] == 0.5
  assert summary["hallucination_rate"] == 0.5
  assert summary["accuracy"] is None and summary["f1"] is None


def test_summarize_rejects_unknown_split():
  with pytest.raises(ValueError, match="'test'"):
    summarize([_row("test", True, False)])


def test_qa_module_imports_no_jax():
  # Load qa.py on its own: importing the ftjax package itself pulls in the model code.
  path = pathlib.Path(__file__).parent.parent / "ftjax" / "evaluation" / "qa.py"
  code = (
      "import importlib.util, sys\n"
      f"spec = importlib.util.spec_from_file_location('qa', {str(path)!r})\n"
      "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
      "heavy = [m for m in ('jax', 'tensorflow', 'ml_collections') if m in sys.modules]\n"
      "assert not heavy, heavy\n")
  subprocess.run([sys.executable, "-c", code], check=True)
