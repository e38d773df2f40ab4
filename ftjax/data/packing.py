"""Tokenized examples -> fixed-length rows, packed (several examples a row) or padded (one a row).

In a row, `segment_ids` number the examples 1..n (0 = padding) and `positions` restart at 0 in
each, so an attention mask built from segment ids never crosses examples, and RoPE sees every
example as if it were alone. `targets[t] = inputs[t + 1]` inside a segment; the last token of a
segment has no target (0, masked out).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
Example = tuple[np.ndarray, np.ndarray]  # (token ids, 1 where the token is the assistant's)


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


def make_batch(rows: Sequence[Sequence[int]], examples: Sequence[Example], seq_len: int
               ) -> dict[str, np.ndarray]:
  """Rows of example indices -> the trainer's batch, every array [len(rows), seq_len].

  An empty row is padding: all zeros, so it carries no loss.
  """
  shape = (len(rows), seq_len)
  batch = {key: np.zeros(shape, np.int32) for key in BATCH_KEYS}
  batch["loss_mask"] = np.zeros(shape, np.float32)
  for r, row in enumerate(rows):
    offset = 0
    for segment, i in enumerate(row, start=1):
      ids, mask = examples[i]
      end = offset + len(ids)
      if end > seq_len:
        raise ValueError(f"row {r} holds {end} tokens > seq_len {seq_len}")
      batch["inputs"][r, offset:end] = ids
      batch["targets"][r, offset:end - 1] = ids[1:]
      batch["loss_mask"][r, offset:end - 1] = mask[1:]
      batch["segment_ids"][r, offset:end] = segment
      batch["positions"][r, offset:end] = np.arange(len(ids))
      offset = end
  return batch
