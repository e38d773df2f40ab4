"""Cache-augmented generation (CAG): the whole corpus is prefilled once into a KV cache that every
question continues from — no retrieval, no training.

The corpus goes in the system turn (`ftjax.prompts.render_corpus`); each question is the user
turn after it. `ftjax.generation.chat_prefix_split` cuts the rendered conversation after the
corpus, so the cached tokens plus each question's tokens are exactly what the model would read
with the corpus in the prompt. When the corpus does not fit the model's context, the arm says
so (`does_not_fit`) and the runner records it as skipped.
"""

from __future__ import annotations

import time
from typing import Sequence

from ftjax.arms.base import Answer
from ftjax.generation import SamplingConfig, chat_prefix_split, generate, prefill_prefix
from ftjax.prompts import DEFAULT_CAG_INSTRUCTION, render_corpus


class CagAnswerer:
  def __init__(self, name: str, model, documents: Sequence[tuple[str, str]],
               sampling: SamplingConfig, *, instruction: str = DEFAULT_CAG_INSTRUCTION,
               system_prompt: str = "", max_context_tokens: int = 0):
    self.name, self.model, self.sampling = name, model, sampling
    self.documents = len(documents)
    # the context the model is trusted to use; 0: all it accepts
    self.context = max_context_tokens or model.config.max_position_embeddings
    self.context_source = ("cag.max_context_tokens" if max_context_tokens
                           else "the model's max_position_embeddings")
    corpus = render_corpus(documents, instruction)
    system = f"{system_prompt}\n\n{corpus}" if system_prompt else corpus
    self.prefix_messages = [{"role": "system", "content": system}]
    self.prefix_ids, _ = chat_prefix_split(model.tokenizer, self.prefix_messages, "?")
    self._cache = None

  def _split(self, question: str) -> list[int]:
    prefix_ids, suffix_ids = chat_prefix_split(self.model.tokenizer, self.prefix_messages,
                                               question)
    if prefix_ids != self.prefix_ids:
      raise ValueError("the chat template renders the corpus differently per question; "
                       "it cannot be cached once")
    return suffix_ids

  def does_not_fit(self, questions: Sequence[str]) -> str | None:
    """Why the corpus + question + answer exceed the model's context, or None if they fit."""
    context = self.context
    longest = max((len(self._split(q)) for q in questions), default=0)
    needed = len(self.prefix_ids) + longest + self.sampling.max_new_tokens
    if needed > context:
      return (f"the corpus is {len(self.prefix_ids):,} tokens; with the longest question "
              f"({longest}) and {self.sampling.max_new_tokens} new tokens it needs {needed:,}, "
              f"over the usable context of {context:,} ({self.context_source})")
    return None

  @property
  def cache(self):
    if self._cache is None:  # prefilled once, on first use
      self._cache = prefill_prefix(self.model, self.prefix_ids)
    return self._cache

  def prefill_seconds(self) -> float:
    """Seconds to prefill the corpus, measured on a second prefill (the first one compiles)."""
    import jax
    self.cache  # noqa: B018  (compiles)
    started = time.perf_counter()
    jax.block_until_ready(prefill_prefix(self.model, self.prefix_ids).cache)
    return time.perf_counter() - started

  def describe(self) -> dict:
    return {"documents": self.documents, "corpus_tokens": len(self.prefix_ids),
            "context": self.context, "context_source": self.context_source}

  def answer(self, questions: Sequence[str]) -> list[Answer]:
    suffixes = [self._split(q) for q in questions]
    completions = generate(self.model, suffixes, self.sampling, prefix=self.cache)
    # The prompt after the cached corpus prefix (the prefix is the same for every question).
    return [Answer(c.text, c.num_prompt_tokens, len(c.token_ids), c.finish_reason,
                   cached_tokens=c.num_cached_tokens,
                   prompt=self.model.tokenizer.decode(list(ids)))
            for ids, c in zip(suffixes, completions)]
