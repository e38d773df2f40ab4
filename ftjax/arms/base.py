"""The seam every arm implements: `answer(questions) -> answers with metadata`.

An arm is a way of answering a question: a model (base or fine-tuned) plus how its prompt is
built (question only, few-shot, retrieved passages, a cached corpus). All arms generate through
the one generation function (`ftjax.generation.generate`) and build prompts in `ftjax.prompts`.
Evaluation consumes `Answer`s and never sees the arm that produced them.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

from ftjax.generation import SamplingConfig, generate
from ftjax.prompts import question_messages


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str
  prompt_tokens: int  # tokens the model reads (cached prefix included)
  new_tokens: int
  finish_reason: str
  passages: tuple[str, ...] | None = None  # doc ids in the prompt; None: the arm retrieves nothing
  cached_tokens: int = 0  # of prompt_tokens, read from a prefilled cache (CAG)
  prompt: str = ""  # the rendered prompt (chat template applied; CAG: after its cached prefix)
  passage_texts: tuple[str, ...] | None = None  # the passages as they were put in the prompt


def render_chat(model, messages: list[dict]) -> str:
  """The prompt as the model reads it: the chat template applied, the assistant turn opened."""
  tokenizer = getattr(model, "tokenizer", None)
  if tokenizer is None or not getattr(tokenizer, "chat_template", None):
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class Answerer(Protocol):
  name: str

  def answer(self, questions: Sequence[str]) -> list[Answer]:
    ...


class ChatAnswerer:
  """The question as the user turn, after an optional system prompt and few-shot turns:
  `base` and `finetuned` (question only) and `prompted` (style instruction + examples)."""

  def __init__(self, name: str, model, sampling: SamplingConfig, *, system_prompt: str = "",
               few_shot: Sequence[tuple[str, str]] = ()):
    self.name, self.model, self.sampling = name, model, sampling
    self.system_prompt, self.few_shot = system_prompt, tuple(few_shot)

  def answer(self, questions: Sequence[str]) -> list[Answer]:
    prompts = [question_messages(q, system_prompt=self.system_prompt, few_shot=self.few_shot)
               for q in questions]
    return [Answer(c.text, c.num_prompt_tokens, len(c.token_ids), c.finish_reason,
                   prompt=render_chat(self.model, m))
            for m, c in zip(prompts, generate(self.model, prompts, self.sampling))]
