"""Retrieval-augmented fine-tuning data (RAFT, Zhang et al., 2024).

Each QA pair becomes one chat example whose user turn is the RAG prompt (`ftjax.prompts.render_rag_prompt`:
instruction, numbered passages, question) and whose assistant turn is the answer. The passages
are the oracle (the gold document's passage) and `num_distractors` other passages, shuffled; in a
fraction `1 - oracle_fraction` of the examples the oracle is left out (replaced by one more
distractor) and the answer kept, as in RAFT: the model learns to use the context when it helps,
to ignore distractors, and to answer from what it has learnt when retrieval misses.

Distractors are drawn at random from the other passages, or, with `negatives`, taken first from
a retriever's ranking (hard negatives) and topped up at random. Output rows are
`{"messages": [...]}`, the format the SFT data loader reads; what each example contains (oracle
or not, passage ids) is returned beside them. Deterministic in `seed`. The command line is
`python -m ftjax.raft`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from ftjax.retrieval.corpus import CorpusError, QAPair
from ftjax.prompts import DEFAULT_RAG_INSTRUCTION as DEFAULT_INSTRUCTION
from ftjax.prompts import render_rag_prompt as render_prompt


DEFAULT_EVIDENCE_TEMPLATE = '"{evidence}"\n\n{answer}'


class RaftExample(NamedTuple):
  messages: list[dict]
  oracle_included: bool
  passage_ids: list[str]  # in prompt order
  doc_id: str  # the gold document
  evidence: bool = False  # the target quotes the oracle's evidence before the answer


def read_qa_jsonl(path: str | os.PathLike, question_key: str = "question",
                  answer_key: str = "answer", doc_key: str = "doc_id") -> list[QAPair]:
  """QA pairs, one JSON object per line; errors name path:line and the missing key."""
  path = Path(path)
  if not path.is_file():
    raise CorpusError(f"{path}: no such file")
  pairs = []
  with path.open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as err:
        raise CorpusError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
      for key in (question_key, answer_key, doc_key):
        if not isinstance(row, dict) or key not in row:
          raise CorpusError(f"{path}:{lineno}: missing key {key!r}")
      pairs.append(QAPair(str(row[question_key]), str(row[answer_key]), str(row[doc_key])))
  return pairs


def build_examples(qa: Sequence[QAPair], passages: Mapping[str, str], *,
                   num_distractors: int = 4, oracle_fraction: float = 0.8, seed: int = 0,
                   instruction: str = DEFAULT_INSTRUCTION,
                   negatives: Callable[[str], Sequence[str]] | None = None,
                   evidence: Sequence[str | None] | None = None,
                   evidence_template: str = DEFAULT_EVIDENCE_TEMPLATE) -> list[RaftExample]:
  """One example per QA pair. `passages` maps passage id -> text and must contain every
  pair's `doc_id`; `negatives(question)` (optional) ranks passage ids for hard distractors.
  `evidence` (optional, one per pair): the oracle's sentence that holds the answer; an example
  that contains the oracle and has evidence gets the target `evidence_template` (with
  `{evidence}` and `{answer}`): RAFT's chain of thought that quotes before it answers.

  Exactly round(oracle_fraction * len(qa)) examples contain the oracle.
  """
  if not 0.0 <= oracle_fraction <= 1.0:
    raise ValueError(f"oracle_fraction must be in [0, 1], got {oracle_fraction}")
  if num_distractors < 0:
    raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
  missing = [i for i, pair in enumerate(qa) if pair.doc_id not in passages]
  if evidence is not None and len(evidence) != len(qa):
    raise ValueError(f"{len(evidence)} evidence sentences for {len(qa)} QA pairs")
  if missing:
    raise CorpusError(f"{len(missing)} QA pair(s) name a doc_id with no passage (first: pair "
                      f"{missing[0]}, doc_id {qa[missing[0]].doc_id!r})")
  ids = list(passages)
  if len(ids) < num_distractors + 2:
    raise ValueError(f"{len(ids)} passages cannot give {num_distractors} distractors plus the "
                     "oracle and a replacement for it")
  rng = np.random.default_rng(seed)
  with_oracle = np.zeros(len(qa), bool)
  with_oracle[rng.permutation(len(qa))[:round(oracle_fraction * len(qa))]] = True
  examples = []
  for i, pair in enumerate(qa):
    example_rng = np.random.default_rng([seed, i])
    wanted = num_distractors + (0 if with_oracle[i] else 1)
    chosen: list[str] = []
    if negatives is not None:
      for pid in negatives(pair.question):
        if len(chosen) == wanted:
          break
        if pid != pair.doc_id and pid in passages and pid not in chosen:
          chosen.append(pid)
    while len(chosen) < wanted:
      pid = ids[int(example_rng.integers(len(ids)))]
      if pid != pair.doc_id and pid not in chosen:
        chosen.append(pid)
    if with_oracle[i]:
      chosen.append(pair.doc_id)
    order = [chosen[j] for j in example_rng.permutation(len(chosen))]
    prompt = render_prompt(pair.question, [passages[pid] for pid in order], instruction)
    quote = evidence[i] if evidence is not None and with_oracle[i] else None
    target = evidence_template.format(evidence=quote, answer=pair.answer) if quote \
        else pair.answer
    messages = [{"role": "user", "content": prompt},
                {"role": "assistant", "content": target}]
    examples.append(RaftExample(messages, bool(with_oracle[i]), order, pair.doc_id,
                                bool(quote)))
  return examples


def write_jsonl(examples: Sequence[RaftExample], path: str | os.PathLike,
                meta_path: str | os.PathLike | None = None):
  """Chat rows to `path`; per-example metadata (oracle included, passage ids) to `meta_path`."""
  with Path(path).open("w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps({"messages": ex.messages}, ensure_ascii=False) + "\n")
  if meta_path is not None:
    with Path(meta_path).open("w", encoding="utf-8") as f:
      for ex in examples:
        f.write(json.dumps({"doc_id": ex.doc_id, "oracle_included": ex.oracle_included,
                            "passage_ids": ex.passage_ids}) + "\n")

