"""Text in, text out: prompts -> token ids -> `generate_ids` -> completions; prefix caches (CAG)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ftjax.generation.decoding import (PrefixCache, SamplingConfig, generate_ids,
                                       prefill_prefix_ids)
from ftjax.models.lora import Adapters
from ftjax.models.config import ModelConfig

# A user message, a chat message list, or token ids used as they are (e.g. after a prefix).
Prompt = str | Sequence[dict] | Sequence[int]


@dataclasses.dataclass
class Completion:
  text: str
  token_ids: list[int]
  num_prompt_tokens: int  # every token the model read, a cached prefix included
  finish_reason: str  # "eos" | "stop" | "length"
  num_cached_tokens: int = 0  # the part of num_prompt_tokens read from a PrefixCache


def _is_token_ids(prompt) -> bool:
  return (isinstance(prompt, (list, tuple))
          and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt))


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
  ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
  if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
    ids = ids["input_ids"]
  return list(ids)


def encode_prompts(tokenizer, prompts: Sequence[Prompt], chat: bool = True,
                   system_prompt: str | None = None) -> list[list[int]]:
  """Token ids per prompt. Chat prompts go through the tokenizer's chat template; prompts that
  are already token ids are used as they are."""
  if isinstance(prompts, str):
    raise TypeError("prompts must be a list of prompts, not a single string")
  encoded = []
  for i, prompt in enumerate(prompts):
    if _is_token_ids(prompt):
      if system_prompt:
        raise ValueError(f"prompt {i}: a system prompt cannot be added to token ids")
      ids = [int(t) for t in prompt]
    elif chat and tokenizer.chat_template:
      messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
      if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + messages
      ids = _chat_ids(tokenizer, messages)
    else:
      if not isinstance(prompt, str):
        raise TypeError(f"prompt {i}: message lists need chat=True and a chat template")
      ids = tokenizer(prompt)["input_ids"]
    if not ids:
      raise ValueError(f"prompt {i} is empty after tokenization")
    encoded.append(list(ids))
  return encoded


def chat_prefix_split(tokenizer, prefix_messages: list[dict],
                      question: str) -> tuple[list[int], list[int]]:
  """(prefix_ids, suffix_ids) of the chat `prefix_messages + [user: question]` (as `generate`
  renders it), split right after the last prefix message's content.

  For CAG: put the corpus in `prefix_messages` (e.g. one system message), prefill `prefix_ids`
  once and pass `suffix_ids` as the prompt. `prefix_ids + suffix_ids` is exactly the rendered
  conversation; a template that does not split cleanly there raises ValueError. prefix_ids do
  not depend on the question for the usual templates; callers sharing one prefix should check.
  """
  if not prefix_messages:
    raise ValueError("prefix_messages is empty")
  if not tokenizer.chat_template:
    raise ValueError("chat_prefix_split needs a tokenizer with a chat template")
  messages = [*prefix_messages, {"role": "user", "content": question}]
  full_ids = _chat_ids(tokenizer, messages)
  text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  content = prefix_messages[-1]["content"]
  if not isinstance(content, str) or not content.strip():
    raise ValueError("the last prefix message needs non-empty text content")
  at = text.find(content.strip())
  if at < 0:
    raise ValueError("the chat template does not render the prefix messages' content verbatim "
                     "before the question, so there is no prefix to cache")
  prefix_ids = list(tokenizer(text[:at + len(content.strip())],
                              add_special_tokens=False)["input_ids"])
  if not 0 < len(prefix_ids) < len(full_ids) or full_ids[:len(prefix_ids)] != prefix_ids:
    raise ValueError("the chat template does not split cleanly into prefix and question tokens "
                     "after the prefix content (a token spans the boundary); end the prefix "
                     "content with a separator such as a newline")
  return prefix_ids, full_ids[len(prefix_ids):]


def eos_token_ids(cfg: ModelConfig, tokenizer) -> list[int]:
  ids = set(cfg.eos_token_ids)
  if tokenizer is not None and tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  return sorted(ids)


def _adapted(model, lora) -> tuple[ModelConfig, object]:
  """(config, adapter tree): the model's or the given adapters, applied at their own scale."""
  if lora is not None and not isinstance(lora, Adapters):
    raise TypeError(
        "lora= takes a ftjax.models.lora.Adapters, which carries the LoraSpec its scale "
        "(alpha / rank) comes from; wrap a raw adapter tree as "
        "ftjax.models.lora.Adapters(spec, params)")
  adapters = getattr(model, "adapters", None)
  if adapters is not None and lora is not None:
    raise ValueError("the model carries adapters already; do not pass lora= as well")
  adapters = adapters if adapters is not None else lora
  if adapters is None:
    return model.config, None
  return adapters.model_config(model.config), adapters.params


def prefill_prefix(model, prefix_ids: Sequence[int], *, lora: Adapters | None = None,
                   chunk_size: int = 512) -> PrefixCache:
  """The KV cache of `prefix_ids`, computed once and reused by `generate(..., prefix=)`.

  Pass the same `lora` as to `generate` (a model's own adapters are applied to both).
  """
  cfg, lora_tree = _adapted(model, lora)
  return prefill_prefix_ids(cfg, model.params, prefix_ids, lora=lora_tree, chunk_size=chunk_size)


def _apply_stop_strings(tokenizer, ids: list[int], stops: Sequence[str]):
  text = tokenizer.decode(ids, skip_special_tokens=True)
  hits = [text.find(s) for s in stops if s and s in text]
  if not hits:
    return text, ids, False
  cut = min(hits)
  for n in range(1, len(ids) + 1):  # the shortest token prefix that reaches the stop string
    if len(tokenizer.decode(ids[:n], skip_special_tokens=True)) > cut:
      ids = ids[:n]
      break
  return text[:cut], ids, True


def generate(model, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None, *,
             chat: bool = True, system_prompt: str | None = None,
             lora: Adapters | None = None,
             prefix: PrefixCache | None = None) -> list[Completion]:
  """Generates one completion per prompt.

  model: a `ftjax.Pretrained` (config, params, tokenizer, adapters). prompts: user messages
  (str), chat message lists, or token ids; with `chat=False`, text is continued as-is.
  `lora`: `ftjax.models.lora.Adapters`, applied at their spec's scale (as a model's own adapters
  are).
  `prefix`: a `PrefixCache` from `prefill_prefix`; the prompts are then token ids that continue
  `prefix.token_ids` (see `chat_prefix_split`).
  """
  sampling = sampling or SamplingConfig()
  cfg, lora_tree = _adapted(model, lora)
  tokenizer = model.tokenizer
  if prefix is not None:
    if system_prompt:
      raise ValueError("with prefix=, a system prompt belongs in the prefix")
    if isinstance(prompts, str) or not all(_is_token_ids(p) for p in prompts):
      raise TypeError("with prefix=, prompts are the token ids that continue prefix.token_ids "
                      "(e.g. the suffix ids of chat_prefix_split), not text")
  prompt_ids = encode_prompts(tokenizer, prompts, chat=chat, system_prompt=system_prompt)
  eos = eos_token_ids(cfg, tokenizer)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  outputs = generate_ids(cfg, model.params, prompt_ids, sampling, eos, pad_id, lora=lora_tree,
                         prefix=prefix)
  cached = prefix.length if prefix is not None else 0
  completions = []
  for ids, prompt in zip(outputs, prompt_ids):
    finish = "length"
    if ids and ids[-1] in eos:
      finish = "eos"
    text, ids, stopped = _apply_stop_strings(tokenizer, ids, sampling.stop_strings)
    completions.append(Completion(text, ids, cached + len(prompt), "stop" if stopped else finish,
                                  num_cached_tokens=cached))
  return completions
