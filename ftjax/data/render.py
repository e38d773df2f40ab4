"""Chat messages -> token ids and a mask of the assistant's tokens, through the chat template.

The assistant spans are found in text, not guessed from token patterns: for assistant turn i, the
template renders the conversation before it with the generation prompt (where the reply starts)
and the conversation through it (where the turn ends); both must be prefixes of the full render.
The span runs from the reply's first character to the end-of-turn marker that follows the content
(`<|im_end|>` in ChatML), which is in the loss so the model learns to stop. Tokens are then marked
by their character offsets, so BPE merges across a span edge cannot shift the mask.

A row's `answer`, where the last assistant reply contains it, is marked the same way in a second
mask (`answer_mask`, inside the loss mask), so the eval can report the loss on the answer alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ftjax.data.packing import Example
from ftjax.data.report import DataConfigError
from ftjax.data.sources import RowError
from ftjax.prompts import with_system


with_system_prompt = with_system  # one system-prompt rule, in ftjax.prompts


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
  try:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
  except Exception as err:  # the template itself refused (e.g. "roles must alternate")
    raise RowError("render_failed", f"chat template error: {err}") from None


def _turn_end(turn: str, content: str) -> int:
  """Offset in `turn` (one rendered assistant turn) just past its end-of-turn marker."""
  stripped = content.strip()
  at = turn.rfind(stripped) if stripped else 0
  if at < 0:  # the template rewrote the content: train on the whole turn
    return len(turn.rstrip())
  after = at + len(stripped)
  tail = turn[after:]  # e.g. "<|im_end|>\n": the marker is its first non-blank run
  if not tail.strip():
    return after
  marker = tail.split(None, 1)[0]
  return after + tail.index(marker) + len(marker)


def _answer_at(turn: str, content: str, answer: str) -> int:
  """Offset in `turn` (one rendered assistant turn) of `answer` in its content, or -1. The last
  occurrence: a reply restates the question (which may hold the same words) before answering."""
  stripped = content.strip()
  at = stripped.rfind(answer)
  if at < 0:
    return -1
  content_at = turn.rfind(stripped)
  if content_at < 0:  # the template rewrote the content: look for the answer in what it wrote
    return turn.rfind(answer)
  return content_at + at


def assistant_char_spans(messages: list[dict], tokenizer, answer: str = ""
                         ) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
  """The rendered conversation, the [start, end) characters of every assistant turn, and those
  of `answer` in the last assistant turn: none if there is no answer or that turn lacks it."""
  text = _render(tokenizer, messages, add_generation_prompt=False)
  answer = answer.strip()
  last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
  spans, answer_spans = [], []
  for i, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    before = _render(tokenizer, messages[:i], add_generation_prompt=True)
    through = _render(tokenizer, messages[:i + 1], add_generation_prompt=False)
    if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
      raise RowError("render_failed", f"the chat template renders turn {i} differently once "
                     "later turns follow, so its tokens cannot be located")
    start = len(before)
    end = start + _turn_end(text[start:len(through)], message["content"])
    spans.append((start, end))
    at = _answer_at(text[start:end], message["content"], answer) if answer and i == last else -1
    if at >= 0:
      answer_spans.append((start + at, start + at + len(answer)))
  return text, spans, answer_spans


def _token_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
  """1 for every token whose characters overlap one of the spans. offsets: [tokens, 2]."""
  mask = np.zeros(len(offsets), np.int32)
  for start, end in spans:
    mask |= ((offsets[:, 0] < end) & (offsets[:, 1] > start)).astype(np.int32)
  return mask


def render_examples(conversations: Sequence[list[dict]], tokenizer, system_prompt: str = "",
                    answers: Sequence[str] | None = None) -> list[Example | RowError]:
  """Renders and tokenizes many conversations at once -> an Example each, or its RowError.

  `answers[i]` ("" for none) is looked for in the last assistant turn of conversation i; where it
  is not there, that example's answer mask is all zeros.
  """
  answers = answers if answers is not None else [""] * len(conversations)
  if len(answers) != len(conversations):
    raise ValueError(f"{len(answers)} answers for {len(conversations)} conversations")
  rendered: list[tuple[str, list, list] | RowError] = []
  for messages, answer in zip(conversations, answers):
    try:
      rendered.append(assistant_char_spans(with_system_prompt(messages, system_prompt), tokenizer,
                                           answer))
    except RowError as err:
      rendered.append(err)
  texts = [r[0] for r in rendered if not isinstance(r, RowError)]
  try:
    # The template already wrote BOS and other specials into the text: add none.
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts \
        else {"input_ids": [], "offset_mapping": []}
  except NotImplementedError as err:
    raise DataConfigError("SFT rendering needs a fast tokenizer (character offsets)") from err
  encodings = iter(zip(encoded["input_ids"], encoded["offset_mapping"]))
  results: list[Example | RowError] = []
  for r in rendered:
    if isinstance(r, RowError):
      results.append(r)
      continue
    ids, offsets = next(encodings)
    offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
    loss_mask = _token_mask(offsets, r[1])
    results.append(Example(np.asarray(ids, np.int32), loss_mask,
                           _token_mask(offsets, r[2]) & loss_mask))
  return results


def render_example(messages: list[dict], tokenizer, system_prompt: str = ""
                   ) -> tuple[list[int], list[int]]:
  """One conversation -> (token ids, loss mask) with 1 on the assistant's tokens incl. end-of-turn.

  Raises RowError (a ValueError) if the chat template cannot render it.
  """
  (result,) = render_examples([messages], tokenizer, system_prompt)
  if isinstance(result, RowError):
    raise result
  return result.ids.tolist(), result.loss_mask.tolist()


def trim_untrained_tail(example: Example) -> Example:
  """Drops tokens after the last assistant token: they are in no loss and would only take space."""
  trained = np.flatnonzero(example.loss_mask)
  end = int(trained[-1]) + 1 if trained.size else len(example.ids)
  return Example(*(array[:end] for array in example))
