"""Tokenized examples -> fixed-length rows, packed (several examples a row) or padded (one a row).

In a row, `segment_ids` number the examples 1..n (0 = padding) and `positions` restart at 0 in
each, so an attention mask built from segment ids never crosses examples, and RoPE sees every
example as if it were alone. `targets[t] = inputs[t + 1]` inside a segment; the last token of a
segment has no target (0, masked out). `loss_mask[t]` and `answer_mask[t]` say whether target t
is an assistant token and an answer token: the example's masks shifted like the targets.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


class Example(NamedTuple):
  """One tokenized conversation, every array [tokens]."""
  ids: np.ndarray
  loss_mask: np.ndarray  # 1 where the token is the assistant's
  answer_mask: np.ndarray  # 1 where it is also the row's answer (all 0 if it has none)


def pack_rows(lengths: Sequence[int], seq_len: int, order: Sequence[int]) -> list[list[int]]:
  """First fit: each example, taken in `order`, goes into the first row with room for it."""
  room = np.zeros(len(lengths), np.int64)  # free tokens per row; at most one row per example
  rows: list[list[int]] = []
  for i in order:
    length = int(lengths[i])
    if length > seq_len:
      raise ValueError(f"example {i} has {length} tokens > seq_len {seq_len}")
    fits = np.flatnonzero(room[:len(rows)] >= length)
    if fits.size:
      row = int(fits[0])
    else:
      row = len(rows)
      rows.append([])
      room[row] = seq_len
    rows[row].append(int(i))
    room[row] -= length
  return rows


def pad_rows(order: Sequence[int]) -> list[list[int]]:
  """Unpacked: one example a row."""
  return [[int(i)] for i in order]


def make_batch(rows: Sequence[Sequence[int]], examples: Sequence[Example | tuple], seq_len: int,
               *, answer_mask: bool = False) -> dict[str, np.ndarray]:
  """Rows of example indices -> the trainer's batch, every array [len(rows), seq_len].

  An empty row is padding: all zeros, so it carries no loss. With `answer_mask`, the batch also
  holds "answer_mask" (for the eval's answer loss; training never reads it); an example given as
  a plain (ids, loss_mask) pair has no answer tokens.
  """
  shape = (len(rows), seq_len)
  batch = {key: np.zeros(shape, np.int32) for key in BATCH_KEYS}
  batch["loss_mask"] = np.zeros(shape, np.float32)
  if answer_mask:
    batch["answer_mask"] = np.zeros(shape, np.float32)
  for r, row in enumerate(rows):
    offset = 0
    for segment, i in enumerate(row, start=1):
      example = examples[i]
      ids, mask = example[0], example[1]
      end = offset + len(ids)
      if end > seq_len:
        raise ValueError(f"row {r} holds {end} tokens > seq_len {seq_len}")
      batch["inputs"][r, offset:end] = ids
      batch["targets"][r, offset:end - 1] = ids[1:]
      batch["loss_mask"][r, offset:end - 1] = mask[1:]
      if answer_mask and len(example) > 2:
        batch["answer_mask"][r, offset:end - 1] = example[2][1:]
      batch["segment_ids"][r, offset:end] = segment
      batch["positions"][r, offset:end] = np.arange(len(ids))
      offset = end
  return batch
