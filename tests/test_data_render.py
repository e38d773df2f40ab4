"""Chat-template rendering with the real SmolLM2 tokenizer (ChatML): the loss mask is the reply,
the answer mask the row's answer inside the last reply."""

import copy

import numpy as np
import pytest

from ftjax.data import RowError, render_example, render_examples

IM_END = "<|im_end|>"


def _runs(mask):
  """[start, end) of each run of 1s."""
  edges = np.diff(np.concatenate([[0], mask, [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_mask_is_exactly_the_reply_and_im_end(smollm2_tokenizer):
  tok = smollm2_tokenizer
  messages = [{"role": "user", "content": "Where is my order 48213?"},
              {"role": "assistant", "content": "It ships tomorrow; you'll get a tracking email."}]
  ids, mask = render_example(messages, tok)
  assert ids == list(tok.apply_chat_template(messages)["input_ids"])  # the template's own tokens
  (start, end), = _runs(mask)
  assert tok.decode(ids[start:end]) == messages[1]["content"] + IM_END
  assert ids[end - 1] == tok.convert_tokens_to_ids(IM_END)
  assert tok.decode(ids[:start]).endswith("<|im_start|>assistant\n")  # the prompt is unmasked
  assert tok.decode(ids[end:]) == "\n"


def test_multi_turn_masks_every_assistant_turn(smollm2_tokenizer):
  tok = smollm2_tokenizer
  messages = [{"role": "user", "content": "Hi, my order hasn't arrived."},
              {"role": "assistant", "content": "Sorry! What's the order number?"},
              {"role": "user", "content": "51877"},
              {"role": "assistant", "content": "Thanks. It is at your local depot."},
              {"role": "user", "content": "Great, thanks."},
              {"role": "assistant", "content": "  You're welcome!  "}]
  ids, mask = render_example(messages, tok)
  runs = _runs(mask)
  assert len(runs) == 3
  replies = [m["content"] for m in messages if m["role"] == "assistant"]
  for (start, end), reply in zip(runs[:2], replies):
    assert tok.decode(ids[start:end]) == reply + IM_END
  # BPE merges the template's "\n" with the reply's leading spaces into one token: that token is
  # the reply's first, so it is trained on.
  start, end = runs[2]
  assert tok.decode(ids[start:end]) == "\n" + replies[2] + IM_END
  assert tok.decode(ids[start - 1:start]) == "istant"
  masked = tok.decode([i for i, m in zip(ids, mask) if m])
  assert "51877" not in masked and "arrived" not in masked


def test_system_prompt(smollm2_tokenizer):
  tok = smollm2_tokenizer
  messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]
  default_ids, _ = render_example(messages, tok)
  assert "SmolLM" in tok.decode(default_ids)  # the template's own default system prompt
  ids, mask = render_example(messages, tok, system_prompt="You are Brightline's support agent.")
  text = tok.decode(ids)
  assert text.startswith("<|im_start|>system\nYou are Brightline's support agent.<|im_end|>")
  assert "SmolLM" not in text
  assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Hi!" + IM_END
  own = [{"role": "system", "content": "Be terse."}, *messages]
  assert "Be terse." in tok.decode(render_example(own, tok, system_prompt="ignored")[0])


def test_other_template_layouts(smollm2_tokenizer):
  tok = copy.deepcopy(smollm2_tokenizer)
  # Gemma's layout: no system role, the reply closed by <end_of_turn> (plain text in this vocab).
  tok.chat_template = (
      "{{ bos_token }}{% for m in messages %}<start_of_turn>"
      "{{ 'model' if m.role == 'assistant' else m.role }}\n{{ m.content | trim }}<end_of_turn>\n"
      "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
  messages = [{"role": "user", "content": "Refund?"},
              {"role": "assistant", "content": "Yes, within 30 days. "},
              {"role": "user", "content": "Thanks"},
              {"role": "assistant", "content": "You're welcome."}]
  ids, mask = render_example(messages, tok)
  runs = _runs(mask)
  assert [tok.decode(ids[a:b]) for a, b in runs] == [
      "Yes, within 30 days.<end_of_turn>", "You're welcome.<end_of_turn>"]
  (example,) = render_examples([messages], tok, answers=["welcome"])
  assert tok.decode(example.ids[example.answer_mask > 0]).strip() == "welcome"


def test_template_that_rewrites_history_is_a_render_error(smollm2_tokenizer):
  tok = copy.deepcopy(smollm2_tokenizer)
  # Drops earlier assistant replies, as reasoning-model templates do with their thoughts.
  tok.chat_template = (
      "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}"
      "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
              {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
  with pytest.raises(RowError, match="renders turn 1 differently") as err:
    render_example(messages, tok)
  assert err.value.reason == "render_failed"


REPLY = "Hi there! The Vantor Hub 2 is priced at $414. Anything else? — Quillory Care"


def test_answer_mask_is_exactly_the_answer_tokens(smollm2_tokenizer):
  tok = smollm2_tokenizer
  messages = [{"role": "user", "content": "How much is the Vantor Hub 2?"},
              {"role": "assistant", "content": REPLY}]
  found, no_answer, not_found = render_examples([messages] * 3, tok,
                                                answers=["$414", "", "$999"])
  np.testing.assert_array_equal(found.ids, render_example(messages, tok)[0])
  np.testing.assert_array_equal(found.loss_mask, no_answer.loss_mask)
  (start, end), = _runs(found.answer_mask)
  assert tok.decode(found.ids[start:end]).strip() == "$414"
  # Each marked token holds part of the answer: dropping either end loses some of it.
  assert "$414" not in tok.decode(found.ids[start + 1:end])
  assert "$414" not in tok.decode(found.ids[start:end - 1])
  assert found.loss_mask[start:end].all()
  assert not no_answer.answer_mask.any() and not not_found.answer_mask.any()
  assert found.answer_mask.dtype == found.loss_mask.dtype


def test_answer_is_marked_in_the_last_reply_at_its_last_occurrence(smollm2_tokenizer):
  tok = smollm2_tokenizer
  messages = [{"role": "user", "content": "Does the Vantor Hub 2 have 2 ports?"},
              {"role": "assistant", "content": "It may have 2; let me check."},
              {"role": "user", "content": "Thanks."},
              {"role": "assistant", "content": "The Vantor Hub 2 has 2 ports."}]
  (example,) = render_examples([messages], tok, answers=["2"],
                               system_prompt="You are Quillory's support agent.")
  (start, end), = _runs(example.answer_mask)
  last_reply = _runs(example.loss_mask)[-1]
  assert last_reply[0] <= start and end <= last_reply[1]
  assert tok.decode(example.ids[start:end]).strip() == "2"
  assert tok.decode(example.ids[:start]).rstrip().endswith("The Vantor Hub 2 has")
  # Only in an earlier reply (or the question): not the answer of this row.
  (earlier,) = render_examples([messages], tok, answers=["let me check"])
  assert not earlier.answer_mask.any()
  with pytest.raises(ValueError, match="2 answers for 1 conversations"):
    render_examples([messages], tok, answers=["2", "3"])
