"""Every prompt the project builds, in one place, so train-time and test-time prompts cannot drift.

A prompt is a list of chat messages; the model's chat template turns it into tokens (in
`ftjax.generation.encode_prompts` for generation and `ftjax.data.render` for training):
  * question only (base, fine-tuned):   [system?] user: question
  * prompted (the prompt-engineering baseline): system: style instruction, then k few-shot
    user/assistant turns from the training examples, then user: question
  * RAG and RAFT: user: `render_rag_prompt` (instruction, numbered passages, question) — RAFT
    training examples are rendered with the same function, so a model tuned on them sees at test
    time exactly the format it was trained on
  * cache-augmented (CAG): system: the whole corpus (`render_corpus`), then user: question; the
    system turn is a token prefix shared by every question, prefilled once into a KV cache
  * training examples: [system?] user: input, assistant: output (`example_messages`)
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_RAG_INSTRUCTION = "Answer the question. The passages below may help."
DEFAULT_CAG_INSTRUCTION = "Answer questions using the documents below."


def render_rag_prompt(question: str, passages: Sequence[str],
                      instruction: str = DEFAULT_RAG_INSTRUCTION) -> str:
  """One user message: instruction, `[i] passage` blocks, then the question."""
  parts = [instruction] if instruction else []
  parts += [f"[{i}] {text}" for i, text in enumerate(passages, 1)]
  parts.append(f"Question: {question}")
  return "\n\n".join(parts)


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
  """Prepends `system_prompt` unless the conversation brings its own system message."""
  if system_prompt and messages[0]["role"] != "system":
    return [{"role": "system", "content": system_prompt}, *messages]
  return messages


def question_messages(question: str, *, system_prompt: str = "",
                      few_shot: Sequence[tuple[str, str]] = ()) -> list[dict]:
  """[system?] + few-shot (user, assistant) turns + the question as the last user turn."""
  messages: list[dict] = []
  for user, assistant in few_shot:
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
  messages.append({"role": "user", "content": question})
  return with_system(messages, system_prompt)


def example_messages(user: str, assistant: str, *, system_prompt: str = "") -> list[dict]:
  """A training example as the conversation the model will see at test time, plus the reply."""
  return with_system([{"role": "user", "content": user},
                      {"role": "assistant", "content": assistant}], system_prompt)


def render_corpus(documents: Sequence[tuple[str, str]],
                  instruction: str = DEFAULT_CAG_INSTRUCTION) -> str:
  """The CAG context: the instruction and every (title, text) document, numbered."""
  parts = [instruction] if instruction else []
  for i, (title, text) in enumerate(documents, 1):
    parts.append(f"[{i}] {title}: {text}" if title else f"[{i}] {text}")
  return "\n\n".join(parts)


def document_messages(title: str, text: str) -> list[dict]:
  """A document as a training conversation, for continued training on the corpus itself
  (`finetune.source = docs`): the loss covers the document text."""
  topic = title or "this topic"
  return [{"role": "user", "content": f"What do our documents say about {topic}?"},
          {"role": "assistant", "content": text}]


def paraphrase_request(text: str) -> str:
  """The request that asks the base model for a paraphrase of a document (augmentation)."""
  return ("Rewrite the following text in different words. Keep every name, number and price "
          f"exactly as written.\n\n{text}")
