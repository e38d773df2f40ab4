"""Every arm of the comparison, declared once: which weights answer and what goes in the prompt.

An arm is data, not code: `weights` names the model that answers (`base`, or the training recipe
whose checkpoint answers: `finetuned` or `raft`), `passages` what is put before the question
(`none`; `retrieved`: the retriever's top k; `oracle`: the question's own document among
distractors, RAFT's test condition; `corpus`: the whole corpus in a prefilled cache) and `styled`
whether the style instruction and few-shot examples are in the prompt. `build` turns a
declaration into the answerer (`ftjax.arms.base.ChatAnswerer`, `ftjax.arms.rag.RagAnswerer`,
`ftjax.arms.cag.CagAnswerer`); the experiment never branches on arm names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

WEIGHTS = ("base", "finetuned", "raft")
PASSAGES = ("none", "retrieved", "oracle", "corpus")


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  weights: str  # base | finetuned | raft
  passages: str  # none | retrieved | oracle | corpus
  styled: bool  # the style instruction + few-shot examples precede the question
  description: str
  default: bool = True  # in an experiment's default `arms`

  @property
  def tuned(self) -> bool:
    return self.weights != "base"

  @property
  def uses_index(self) -> bool:
    return self.passages in ("retrieved", "oracle")


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("base", "base", "none", False, "the pretrained model, the question alone"),
    Arm("prompted", "base", "none", True, "style instruction and few-shot examples"),
    Arm("rag", "base", "retrieved", False, "top-k retrieved passages before the question"),
    Arm("prompted_rag", "base", "retrieved", True,
        "style instruction, few-shot examples and retrieved passages: RAG at equal prompt effort"),
    Arm("finetuned", "finetuned", "none", False, "fine-tuned on the training examples"),
    Arm("finetuned_rag", "finetuned", "retrieved", False, "the fine-tuned model with retrieval"),
    Arm("raft", "raft", "retrieved", False,
        "RAFT (Zhang et al. 2024): trained on questions with their document among distractors, "
        "tested with retrieved passages"),
    Arm("raft_oracle", "raft", "oracle", False,
        "the RAFT model tested on its question's own document among `raft.test_distractors` "
        "distractors (the paper's test condition)", default=False),
    Arm("raft_closed_book", "raft", "none", False,
        "the RAFT model without passages: what it learnt into its weights", default=False),
    Arm("cag", "base", "corpus", False, "the whole corpus prefilled into the KV cache"),
)}

# The experiment config keys (dotted) an arm's answers depend on, by what its prompt holds: its
# cache key is derived from these declarations (`ftjax.experiment.answering.answer_key`), so a
# setting an arm reads cannot be left out of its key by hand.
READS_ALWAYS = ("sampling", "seed", "data.max_eval_questions", "prompt.system_prompt")
READS_STYLED = ("style.instruction", "prompt.num_few_shot")
READS_PASSAGES = {
    "none": (),
    "retrieved": ("retrieval.method", "retrieval.k", "retrieval.max_prompt_tokens",
                  "retrieval.groups", "prompt.rag_instruction"),
    "oracle": ("raft.num_distractors", "raft.test_distractors", "raft.distractors",
               "retrieval.method", "retrieval.max_prompt_tokens", "retrieval.groups",
               "prompt.rag_instruction"),
    "corpus": ("cag", "retrieval.groups", "prompt.cag_instruction"),
}


def reads(arm: Arm) -> tuple[str, ...]:
  """Every config key `arm`'s answers read."""
  return READS_ALWAYS + (READS_STYLED if arm.styled else ()) + READS_PASSAGES[arm.passages]


NAMES = tuple(ARMS)
DEFAULT = tuple(a.name for a in ARMS.values() if a.default)
TUNED = tuple(a.name for a in ARMS.values() if a.tuned)
USES_INDEX = tuple(a.name for a in ARMS.values() if a.uses_index)


def get(name: str) -> Arm:
  if name not in ARMS:
    raise KeyError(f"unknown arm {name!r}; choose from {', '.join(NAMES)}")
  return ARMS[name]


@dataclasses.dataclass(frozen=True)
class Prompting:
  """How prompts are written, the same for every arm (from the experiment's config)."""
  system_prompt: str = ""
  style_instruction: str = ""
  few_shot: Sequence[tuple[str, str]] = ()
  k: int = 3
  max_prompt_tokens: int = 1024
  rag_instruction: str = ""
  cag_instruction: str = ""
  cag_max_context_tokens: int = 0  # 0: the model's max_position_embeddings


def build(arm: Arm | str, model, sampling, prompting: Prompting, *,
          search: Callable[[list[str], int], list[list[Any]]] | None = None,
          oracle_search: Callable[[list[str], int], list[list[Any]]] | None = None,
          documents: Sequence[tuple[str, str]] = ()):
  """The answerer of `arm`: `search` serves `retrieved` arms, `oracle_search` `oracle` arms,
  `documents` (title, text) the `corpus` arm."""
  arm = get(arm) if isinstance(arm, str) else arm
  p = prompting
  system, few_shot = p.system_prompt, ()
  if arm.styled:
    system = "\n\n".join(x for x in (p.system_prompt, p.style_instruction) if x)
    few_shot = tuple(p.few_shot)
  if arm.passages == "none":
    from ftjax.arms.base import ChatAnswerer
    return ChatAnswerer(arm.name, model, sampling, system_prompt=system, few_shot=few_shot)
  if arm.passages in ("retrieved", "oracle"):
    from ftjax.arms.rag import RagAnswerer
    fn = search if arm.passages == "retrieved" else oracle_search
    if fn is None:
      raise ValueError(f"arm {arm.name!r} needs a {arm.passages} search function")
    return RagAnswerer(arm.name, model, fn, sampling, k=p.k,
                       max_prompt_tokens=p.max_prompt_tokens, instruction=p.rag_instruction,
                       system_prompt=system, few_shot=few_shot)
  from ftjax.arms.cag import CagAnswerer
  return CagAnswerer(arm.name, model, documents, sampling, instruction=p.cag_instruction,
                     system_prompt=system, max_context_tokens=p.cag_max_context_tokens)
