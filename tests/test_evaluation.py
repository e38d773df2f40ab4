"""Answer scoring: normalisation with numbers and units, containment, candidates, extraction, F1,
style, abstention, run summaries with intervals."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from ftjax.evaluation import (ScoringConfigError, abstains, compile_answer_pattern, compile_style,
                              contains_answer, extract_answer, matches_style, mean_std,
                              normalize_answer, percentile, score_answer, summarize, token_f1,
                              wilson)


@pytest.mark.parametrize("text, expected", [
    ("  The   Eiffel\tTower\n", "eiffel tower"),
    ("An apple, a pear... and THE end!", "apple pear and end"),
    ("Don't stop (ever)?", "dont stop ever"),
    ("theatre anthem", "theatre anthem"),  # articles only as whole words
    ("It costs $1,299.00", "it costs 1299"),
    ("$49.50", "49.5"),
    ("3.0", "3"),
    ("1,000,000 users", "1000000 users"),
    ("50% off", "50 percent off"),  # "%" is the word "percent", so "50%" matches "50 per cent"
    ("50 per cent", "50 percent"),
    ("It weighs 3.5kg.", "it weighs 3.5 kg"),
    ("twelve days", "12 days"),
    ("forty-five", "45"),
    ("Forty five", "45"),
    ("two hundred fifty", "250"),
    ("a hundred", "100"),
    ("one thousand two hundred thirty-four", "1234"),
    ("zero or one", "0 or 1"),
    ("four hundred and fourteen", "414"),
    ("one hundred and five", "105"),
    ("one thousand and five", "1005"),
    ("two thousand three hundred and forty-five", "2345"),
    ("a hundred and one dalmatians", "101 dalmatians"),
    ("between one hundred and two hundred", "between 100 and 200"),  # "and" before a scale
    ("five and six", "5 and 6"),
    ("29-month warranty", "29 months warranty"),
    ("1 month", "1 months"),
    ("metres", "meters"),
    ("3 litres", "3 liters"),
    ("2 kilometres", "2 km"),
    ("5 centimetre", "5 cm"),
    ("10 mins", "10 minutes"),
    ("6 ft", "6 feet"),
    ("the second floor", "second floor"),  # ambiguous words fold only after a number
    ("in a minute", "in minute"),
    ("", ""),
])
def test_normalize_answer(text, expected):
  assert normalize_answer(text) == expected


def test_number_spellings_normalise_alike():
  assert normalize_answer("forty-five") == normalize_answer("45") == normalize_answer("45.00")
  assert normalize_answer("$1,299") == normalize_answer("1299.0")
  assert normalize_answer("twelve") == normalize_answer("12")


@pytest.mark.parametrize("variants", [
    ["29-month", "29 months", "twenty-nine months", "29 month"],
    ["1 month", "1 months", "one month"],
    ["2 metres", "2 meters", "2 metre", "2 meter"],
    ["5 litres", "5 liters", "5 litre", "5 liter"],
    ["3 kg", "3kg", "3 kgs", "3 kilograms", "three kilograms"],
    ["12 km", "12 kilometres", "12 kilometers"],
    ["4 mm", "4 millimetres", "4 millimeter"],
    ["24 hours", "24 hrs", "24 hour", "twenty-four hours"],
    ["2 weeks", "2 week", "two weeks"],
    ["3 years", "3 year", "3 yrs"],
    ["30 seconds", "30 second", "30 secs"],
    ["5 feet", "5 foot", "5 ft"],
    ["10 pounds", "10 lbs", "10 pound"],
    ["7 inches", "7 inch"],
    ["100 miles", "100 mile"],
    ["50%", "50 percent", "50 per cent", "fifty percent"],
    ["414", "four hundred and fourteen", "four hundred fourteen"],
])
def test_unit_and_number_spellings_normalise_alike(variants):
  assert len({normalize_answer(v) for v in variants}) == 1, [normalize_answer(v) for v in variants]


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
    ("The warranty is 29 months.", "29-month"),
    ("It is two metres long.", "2 meters"),
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
  # The style's fixed text "Ahoy" is not content: F1 is over "it costs 1299", so p = 1/3, r = 1.
  assert score_answer("Ahoy! It costs $1,299.", "1299", style=style) == {
      "correct": True, "em": False, "f1": pytest.approx(0.5), "multi_value": False,
      "matched_gold": "1299", "extracted": "! It costs $1,299.", "style": True,
      "abstained": False}
  assert score_answer("I don't know.", "1299", style=style) == {
      "correct": False, "em": False, "f1": 0.0, "multi_value": False, "matched_gold": None,
      "extracted": "I don't know.", "style": False, "abstained": True}
  assert score_answer("I don't know.", None, style=None) == {
      "correct": None, "em": None, "f1": None, "multi_value": None, "matched_gold": None,
      "extracted": "I don't know.", "style": None, "abstained": True}
  assert score_answer("No idea.", None, style=None, abstain_patterns=[r"^no idea"])["abstained"]
  assert score_answer("$1,299.00", "1299", style=None)["em"]


def test_listing_every_value_is_wrong():
  candidates = ["amber", "cyan", "magenta"]
  hedged = score_answer("The light may be amber, violet, cyan or magenta.", "violet",
                        candidates=candidates, style=None)
  assert hedged["correct"] is False and hedged["multi_value"] is True
  assert hedged["matched_gold"] == "violet"
  plain = score_answer("The light turns violet.", "violet", candidates=candidates, style=None)
  assert plain["correct"] is True and plain["multi_value"] is False
  wrong = score_answer("The light turns amber.", "violet", candidates=candidates, style=None)
  assert wrong["correct"] is False and wrong["multi_value"] is False


def test_candidates_inside_the_gold_or_equal_to_it_do_not_count():
  # "blue" is inside the gold "dark blue": only a blue outside it would be a second value.
  row = score_answer("It comes in dark blue.", "dark blue", candidates=["blue", "red"], style=None)
  assert row["correct"] and not row["multi_value"]
  row = score_answer("Dark blue or blue.", "dark blue", candidates=["blue"], style=None)
  assert not row["correct"] and row["multi_value"]
  # A candidate that normalises to the gold (or to nothing) is ignored rather than self-defeating.
  row = score_answer("It lasts 29 months.", "29 months",
                     candidates=["29-month", "the", "24 months"], style=None)
  assert row["correct"] and not row["multi_value"]


def test_gold_variants():
  row = score_answer("Ships in two weeks.", "14 days", answers=["2 weeks", "fortnight"], style=None)
  assert row["correct"] and row["matched_gold"] == "2 weeks"
  assert score_answer("A fortnight", "14 days", answers=["fortnight"], style=None)["em"]
  # F1 is the best over accepted golds: "2 weeks" against "2 weeks" is 1.0.
  assert score_answer("2 weeks", "14 days", answers=["2 weeks"], style=None)["f1"] == 1.0
  # A variant that is also listed as a candidate stays accepted.
  row = score_answer("2 weeks", "14 days", answers=["2 weeks"], candidates=["2 weeks", "7 days"],
                     style=None)
  assert row["correct"]
  with pytest.raises(ValueError, match="empty"):
    score_answer("anything", "14 days", answers=["the"], style=None)


HOUSE_STYLE = r"^Hi there! .+ Anything else\? — Quillory Care$"


def test_extract_answer_removes_style_literals():
  reply = "Hi there! The warranty is 29 months. Anything else? — Quillory Care"
  assert extract_answer(reply, style=HOUSE_STYLE) == "The warranty is 29 months."
  assert extract_answer(reply, style=compile_style(HOUSE_STYLE)) == "The warranty is 29 months."
  assert extract_answer("  The warranty is 29 months. ", style=HOUSE_STYLE) == (
      "The warranty is 29 months.")  # nothing to remove
  assert extract_answer(reply) == reply  # no style, no pattern: the whole reply
  # Case-insensitive styles remove case-insensitively; short literals ("!") are kept.
  assert extract_answer("AHOY matey! 12 days.", style=re.compile(r"(?i)^ahoy matey.*")) == (
      "! 12 days.")
  # Literals inside groups count; classes, "." and anchors are not fixed text.
  assert extract_answer("Dear customer, 12 days. Regards", style=r"^(Dear customer),\s.+Regards$") \
      == ", 12 days."


def test_style_boilerplate_cannot_score():
  # A gold that appears in the house sign-off is not answered by signing off.
  reply = "Hi there! I can help with that. Anything else? — Quillory Care"
  row = score_answer(reply, "Quillory Care", style=HOUSE_STYLE)
  assert row["style"] and not row["correct"]


def test_answer_pattern():
  pattern = compile_answer_pattern(r"Answer:\s*(.+?)\s*(?:$|\n)")
  assert pattern.groups == 1
  reply = "Thinking...\nAnswer: 29 months\nBye"
  assert extract_answer(reply, answer_pattern=pattern) == "29 months"
  assert extract_answer("29 months", answer_pattern=r"Answer:\s*(.+)") == "29 months"  # no match
  row = score_answer("Reasoning: 24 months is the old term.\nAnswer: 29 months", "29 months",
                     candidates=["24 months"], style=None, answer_pattern=pattern)
  assert row["correct"] and row["em"] and row["f1"] == 1.0 and not row["multi_value"]
  for bad in [r"Answer: .+", r"(Answer): (.+)", r"Answer: (.+"]:
    with pytest.raises(ScoringConfigError, match="must have exactly one group"):
      compile_answer_pattern(bad)
  with pytest.raises(ScoringConfigError, match="exactly one group"):
    extract_answer("x", answer_pattern=re.compile(r"x"))


def _row(split, correct, abstained, *, f1=None, style=None, prompt_tokens=None, new_tokens=None,
         passage_doc_ids=None, doc_id=None, **extra):
  return {"split": split, "correct": correct, "f1": f1, "style": style, "abstained": abstained,
          "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
          "passage_doc_ids": passage_doc_ids, "doc_id": doc_id, **extra}


def _rows():
  return [
      # Correct, and its gold document was retrieved; the gold is in a passage.
      _row("eval", True, False, f1=1.0, style=True, prompt_tokens=100, new_tokens=10,
           passage_doc_ids=["d1", "d2"], doc_id="d1", em=True, multi_value=False,
           matched_gold="29 months", passage_texts=["The warranty lasts 29 months.", "Other."]),
      # Correct, but the gold document was not among the passages, nor the gold in their text.
      _row("eval", True, False, f1=0.5, style=False, prompt_tokens=200, new_tokens=20,
           passage_doc_ids=["d3"], doc_id="d2", em=False, multi_value=False, gold="violet",
           passage_texts=["The light is amber."], finish_reason="stop"),
      # Wrong but abstained: a refusal, not a wrong answer.
      _row("eval", False, True, f1=0.0, style=True, prompt_tokens=300, new_tokens=30,
           passage_doc_ids=["d4"], doc_id="d3", em=False, multi_value=False,
           finish_reason="length"),
      # Wrong and answered anyway, listing several values.
      _row("eval", False, False, f1=0.2, style=False, prompt_tokens=400, new_tokens=40,
           passage_doc_ids=[], doc_id="d4", em=False, multi_value=True),
      _row("unanswerable", None, True, passage_doc_ids=[]),
      _row("unanswerable", None, False, passage_doc_ids=["d9"]),  # hallucination
      _row("unanswerable", None, False, passage_doc_ids=["d9"]),  # hallucination
      _row("general", True, False),
      _row("general", False, False),
      _row("general", False, True),
  ]


def _ci(k, n):
  return list(wilson(k, n))


def test_summarize_by_hand():
  summary = summarize(_rows())
  f1s = [1.0, 0.5, 0.0, 0.2]
  f1_half = 1.959964 * float(np.std(f1s, ddof=1)) / 2
  assert summary == {
      "accuracy": 2 / 4, "accuracy_ci": _ci(2, 4), "accuracy_n": 4,
      "em": 1 / 4, "em_ci": _ci(1, 4), "em_n": 4,
      "f1": pytest.approx(sum(f1s) / 4), "f1_n": 4,
      "f1_ci": pytest.approx([max(0.0, sum(f1s) / 4 - f1_half), sum(f1s) / 4 + f1_half]),
      "style_rate": 2 / 4, "style_rate_ci": _ci(2, 4), "style_rate_n": 4,
      "multi_value_rate": 1 / 4, "multi_value_rate_ci": _ci(1, 4), "multi_value_rate_n": 4,
      # Only the third row hit the length limit; a missing finish_reason is not truncation.
      "truncation_rate": 1 / 4, "truncation_rate_ci": _ci(1, 4), "truncation_rate_n": 4,
      "refusal_rate": 1 / 4, "refusal_rate_ci": _ci(1, 4), "refusal_rate_n": 4,
      "wrong_rate": 1 / 4, "wrong_rate_ci": _ci(1, 4), "wrong_rate_n": 4,
      # Two correct out of the three that did not abstain.
      "selective_accuracy": 2 / 3, "selective_accuracy_ci": _ci(2, 3), "selective_accuracy_n": 3,
      "abstain_rate": 1 / 3, "abstain_rate_ci": _ci(1, 3), "abstain_rate_n": 3,
      # Unanswerable rows answered without abstaining; wrong eval answers are wrong_rate.
      "hallucination_rate": 2 / 3, "hallucination_rate_ci": _ci(2, 3),
      "hallucination_rate_n": 3,
      "general_accuracy": 1 / 3, "general_accuracy_ci": _ci(1, 3), "general_accuracy_n": 3,
      "update_accuracy": None, "update_accuracy_ci": None, "update_accuracy_n": None,
      "unchanged_accuracy": None, "unchanged_accuracy_ci": None, "unchanged_accuracy_n": None,
      "prompt_tokens": 250.0,
      "new_tokens": 25.0,
      "answer_tokens": 25.0,
      # Of the two correct eval rows with a doc_id, one retrieved its gold document.
      "citation_accuracy": 0.5, "citation_accuracy_ci": _ci(1, 2), "citation_accuracy_n": 2,
      # Of the two correct rows with passage texts, one has its gold value in a passage.
      "attribution_rate": 0.5, "attribution_rate_ci": _ci(1, 2), "attribution_rate_n": 2,
      "n_questions": 4,
  }


def test_summarize_rates_partition_answerable_rows():
  summary = summarize(_rows())
  correct_answered = summary["selective_accuracy"] * (1 - summary["refusal_rate"])
  assert correct_answered + summary["refusal_rate"] + summary["wrong_rate"] == pytest.approx(1.0)
  assert summary["abstain_rate"] + summary["hallucination_rate"] == pytest.approx(1.0)


def test_summarize_selective_accuracy_none_when_all_abstain():
  summary = summarize([_row("eval", False, True), _row("eval", False, True)])
  assert summary["refusal_rate"] == 1.0 and summary["wrong_rate"] == 0.0
  assert summary["selective_accuracy"] is None
  assert summary["selective_accuracy_ci"] is None and summary["selective_accuracy_n"] is None
  assert summary["attribution_rate"] is None  # no passage texts


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


def test_scoring_modules_import_no_jax():
  # Import qa.py and stats.py without running ftjax/__init__.py, which pulls in the model code:
  # empty package modules point at the source folders.
  root = pathlib.Path(__file__).parent.parent / "ftjax"
  code = (
      "import sys, types\n"
      f"for name, path in [('ftjax', {str(root)!r}),\n"
      f"                   ('ftjax.evaluation', {str(root / 'evaluation')!r})]:\n"
      "  sys.modules[name] = module = types.ModuleType(name)\n"
      "  module.__path__ = [path]\n"
      "import ftjax.evaluation.qa, ftjax.evaluation.matching, ftjax.evaluation.declines\n"
      "heavy = [m for m in ('jax', 'tensorflow', 'ml_collections') if m in sys.modules]\n"
      "assert not heavy, heavy\n")
  subprocess.run([sys.executable, "-c", code], check=True)
