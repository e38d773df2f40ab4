"""Retrieval-augmented generation: retrieved passages placed before the question, in a budget.

The prompt is one user message (`ftjax.prompts.render_rag_prompt`):

  {instruction}

  [1] {passage 1}

  [2] {passage 2}

  Question: {question}

`build_prompt` fills it within `max_prompt_tokens`, counted with the generator's tokenizer on the
chat-rendered prompt (what the model actually reads). Passages go in rank order; the one that
does not fit whole is cut at a token boundary (if at least `min_passage_tokens` of it fit) and
the rest are left out. The question is never cut: if it does not fit with the instruction alone,
`PromptBudgetError` is raised. RAFT training examples use the same template, so a model
fine-tuned on them sees at inference exactly the format it was trained on.

`answer` retrieves, builds the prompts and calls the one generation function of the project
(`ftjax.generation.generate`), and records with every answer the passages used (doc id, chunk id,
score, tokens kept) and the prompt's token count. It takes the caller's `groups` and passes them
to the search, so no passage the caller may not see (`ftjax.retrieval.corpus.visible`) is
retrieved, quoted or counted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

from ftjax.generation import SamplingConfig, encode_prompts, generate
from ftjax.prompts import question_messages
from ftjax.prompts import DEFAULT_RAG_INSTRUCTION as DEFAULT_INSTRUCTION
from ftjax.prompts import render_rag_prompt as render_prompt
from ftjax.retrieval.corpus import visible

TRUNCATION_MARK = " ..."


class PromptBudgetError(ValueError):
  """The question (with the instruction) alone exceeds the prompt budget."""


def count_prompt_tokens(tokenizer, content: str, system_prompt: str = "") -> int:
  """Tokens the model reads for this user message, rendered exactly as `generate` does."""
  return len(encode_prompts(tokenizer, [question_messages(content, system_prompt=system_prompt)])[0])


class UsedPassage(NamedTuple):
  rank: int  # rank from the retriever (1-based)
  doc_id: str
  chunk_id: str
  score: float
  num_tokens: int  # tokens of the passage kept in the prompt
  truncated: bool
  text: str = ""  # as put in the prompt (cut where truncated)


class RagPrompt(NamedTuple):
  text: str
  passages: tuple[UsedPassage, ...]
  num_tokens: int


def build_prompt(question: str, passages: Sequence[Any], tokenizer, max_prompt_tokens: int,
                 instruction: str = DEFAULT_INSTRUCTION, min_passage_tokens: int = 16,
                 system_prompt: str = "") -> RagPrompt:
  """Fills the template with as many of `passages` (objects with doc_id, chunk_id, text, score,
  rank: `index.Passage`) as fit in `max_prompt_tokens`."""
  if not question.strip():
    raise ValueError("empty question")

  def count(texts):
    return count_prompt_tokens(tokenizer, render_prompt(question, texts, instruction),
                               system_prompt)

  base = count([])
  if base > max_prompt_tokens:
    raise PromptBudgetError(
        f"the question with the instruction needs {base} tokens, over the budget of "
        f"{max_prompt_tokens}; the question is never truncated: raise max_prompt_tokens")
  texts: list[str] = []
  used: list[UsedPassage] = []
  total = base
  for p in passages:
    offsets = tokenizer(p.text, add_special_tokens=False, return_offsets_mapping=True
                        )["offset_mapping"]
    full = count(texts + [p.text])
    if full <= max_prompt_tokens:
      texts.append(p.text)
      used.append(UsedPassage(p.rank, p.doc_id, p.chunk_id, p.score, len(offsets), False,
                              p.text))
      total = full
      continue

    def cut(num_tokens):
      return p.text[:offsets[num_tokens - 1][1]] + TRUNCATION_MARK

    # Longest prefix (in tokens) that still fits: the count grows with the prefix.
    lo, hi = 0, len(offsets) - 1
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if count(texts + [cut(mid)]) <= max_prompt_tokens:
        lo = mid
      else:
        hi = mid - 1
    if lo >= min_passage_tokens:
      texts.append(cut(lo))
      used.append(UsedPassage(p.rank, p.doc_id, p.chunk_id, p.score, lo, True, cut(lo)))
      total = count(texts)
    break
  return RagPrompt(render_prompt(question, texts, instruction), tuple(used), total)


@dataclasses.dataclass(frozen=True)
class RagAnswer:
  question: str
  answer: str
  passages: tuple[UsedPassage, ...]
  num_prompt_tokens: int  # as reported by the generator
  finish_reason: str
  prompt: str
  num_new_tokens: int = 0

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["passages"] = [p._asdict() for p in self.passages]
    return out


def model_generate_fn(model, sampling=None, system_prompt: str = "",
                      few_shot: Sequence[tuple[str, str]] = ()) -> Callable[[list[str]], list]:
  """`prompts -> completions` through `ftjax.generation.generate` (its default sampling)."""
  return lambda prompts: generate(
      model, [question_messages(p, system_prompt=system_prompt, few_shot=few_shot)
              for p in prompts], sampling)


def answer(questions: Sequence[str], search: Callable[[list[str], int], list[list[Any]]],
           generator, *, tokenizer=None, k: int = 5, max_prompt_tokens: int = 1024,
           instruction: str = DEFAULT_INSTRUCTION, sampling=None,
           min_passage_tokens: int = 16, system_prompt: str = "",
           groups: Sequence[str] | None = None,
           few_shot: Sequence[tuple[str, str]] = ()) -> list[RagAnswer]:
  """Retrieve-then-generate for a batch of questions.

  `search(questions, k)` returns ranked passages per question (e.g.
  `functools.partial(index.search, method="hybrid")`). `generator` is a loaded model
  (`ftjax.load(...)`, whose tokenizer counts the budget) or a callable
  `prompts -> completions` (objects with `text`, `num_prompt_tokens`, `finish_reason`), which
  then needs `tokenizer`. A fine-tuned model (`ftjax.load(WORKDIR)`) brings its adapters.

  `groups` are the caller's: given, they go to `search(questions, k, groups=groups)` (as
  `index.search` takes them). Either way a passage whose `acl` the caller does not share is
  dropped before the prompt is built (None: public passages only).

  `few_shot` (user, assistant) turns go before the RAG turn (the `prompted_rag` arm); they are
  outside `max_prompt_tokens`, which budgets the instruction, passages and question.
  """
  questions = list(questions)
  if hasattr(generator, "params"):  # a loaded model (ftjax.Pretrained)
    generate_fn = model_generate_fn(generator, sampling, system_prompt, few_shot)
    tokenizer = tokenizer or generator.tokenizer
  else:
    generate_fn = generator
    if tokenizer is None:
      raise ValueError("pass the generator's tokenizer: it counts the prompt budget")
  if isinstance(groups, str):
    raise TypeError("groups must be a list of group names, not one string")
  retrieved = search(questions, k) if groups is None else search(questions, k, groups=groups)
  caller = frozenset(groups or ())
  retrieved = [[p for p in passages if visible(getattr(p, "acl", None), caller)]
               for passages in retrieved]
  prompts = [build_prompt(q, passages, tokenizer, max_prompt_tokens, instruction,
                          min_passage_tokens, system_prompt)
             for q, passages in zip(questions, retrieved)]
  completions = generate_fn([p.text for p in prompts])
  if len(completions) != len(prompts):
    raise RuntimeError(f"generator returned {len(completions)} completions for {len(prompts)} "
                       "prompts")
  return [RagAnswer(q, c.text, p.passages, c.num_prompt_tokens, c.finish_reason, p.text,
                    len(c.token_ids)) for q, p, c in zip(questions, prompts, completions)]


class RagAnswerer:
  """The `rag`, `prompted_rag`, `finetuned_rag` and `raft` arms: top-k passages before the
  question (`prompted_rag`: after the style instruction and few-shot turns)."""

  def __init__(self, name: str, model, search: Callable[[list[str], int], list[list[Any]]],
               sampling: SamplingConfig, *, k: int, max_prompt_tokens: int,
               instruction: str = DEFAULT_INSTRUCTION, system_prompt: str = "",
               groups: Sequence[str] | None = None, few_shot: Sequence[tuple[str, str]] = ()):
    self.name, self.model, self.search, self.sampling = name, model, search, sampling
    self.k, self.max_prompt_tokens = k, max_prompt_tokens
    self.instruction, self.system_prompt = instruction, system_prompt
    self.groups = groups  # the caller's; None: public documents only
    self.few_shot = tuple(few_shot)

  def answer(self, questions: Sequence[str], groups: Sequence[str] | None = None) -> list:
    """`groups` (default: the answerer's) limit what is retrieved (see `answer`)."""
    from ftjax.arms.base import Answer, render_chat
    answers = answer(questions, self.search, self.model, k=self.k,
                     max_prompt_tokens=self.max_prompt_tokens, instruction=self.instruction,
                     sampling=self.sampling, system_prompt=self.system_prompt,
                     groups=self.groups if groups is None else groups, few_shot=self.few_shot)
    return [Answer(a.answer, a.num_prompt_tokens, a.num_new_tokens, a.finish_reason,
                   passages=tuple(p.doc_id for p in a.passages),
                   prompt=render_chat(self.model, question_messages(
                       a.prompt, system_prompt=self.system_prompt, few_shot=self.few_shot)),
                   passage_texts=tuple(p.text for p in a.passages)) for a in answers]


def oracle_search(search: Callable[[list[str], int], list[list[Any]]] | None,
                  documents: dict[str, tuple[str, tuple[str, ...] | None]],
                  doc_of: dict[str, str], num_distractors: int, *,
                  distractors: str = "retrieved", seed: int = 0
                  ) -> Callable[[list[str], int], list[list[Any]]]:
  """RAFT's test condition (Zhang et al. 2024) as a search function: each question's own
  document (`doc_of[question]`, the whole document as one passage) among `num_distractors`
  other documents, in a seeded order. Distractors are the retriever's top hits from other
  documents (`retrieved`, through `search`) or other documents drawn at random (`random`). A
  question without a document (unanswerable, general) gets the distractors alone.
  `documents` maps doc id -> (text, acl); `k` is ignored (1 + num_distractors passages)."""
  import random as random_lib
  from ftjax.retrieval.index import Passage
  if distractors not in ("retrieved", "random"):
    raise ValueError(f"distractors must be 'retrieved' or 'random', got {distractors!r}")
  if distractors == "retrieved" and search is None:
    raise ValueError("retrieved distractors need a search function")
  ids = sorted(documents)

  def run(questions: list[str], k: int, **unused) -> list[list[Any]]:
    del k, unused
    hits = search(list(questions), 4 * num_distractors + 4) if distractors == "retrieved" \
        else [[] for _ in questions]
    out = []
    for question, ranked in zip(questions, hits):
      rng = random_lib.Random(f"{seed}:{question}")
      oracle = doc_of.get(question)
      chosen: list[str] = []
      for p in ranked:
        if len(chosen) == num_distractors:
          break
        if p.doc_id != oracle and p.doc_id not in chosen and p.doc_id in documents:
          chosen.append(p.doc_id)
      others = [d for d in ids if d != oracle and d not in chosen]
      rng.shuffle(others)
      chosen += others[:num_distractors - len(chosen)]
      if oracle in documents:
        chosen.insert(rng.randrange(len(chosen) + 1), oracle)
      out.append([Passage(d, f"{d}#doc", documents[d][0], 0.0, rank, documents[d][1])
                  for rank, d in enumerate(chosen, 1)])
    return out
  return run
