"""Packing invariants on synthetic ids: segments never mix, positions restart, targets shift."""

import numpy as np
import pytest

from ftjax.data import make_batch, pack_rows, pad_rows

SEQ_LEN = 32


def _examples(lengths, seed=0):
  rng = np.random.default_rng(seed)
  examples = []
  for length in lengths:
    ids = rng.integers(3, 1000, length).astype(np.int32)
    mask = np.zeros(length, np.int32)
    mask[length // 2:] = 1  # second half plays the assistant
    examples.append((ids, mask))
  return examples


LENGTHS = [5, 17, 3, 30, 9, 12, 8, 2, 20, 11, 32, 4]


def test_pack_rows_places_every_example_once_within_seq_len():
  rows = pack_rows(LENGTHS, SEQ_LEN, order=range(len(LENGTHS)))
  assert sorted(i for row in rows for i in row) == list(range(len(LENGTHS)))
  assert all(sum(LENGTHS[i] for i in row) <= SEQ_LEN for row in rows)
  assert len(rows) < len(LENGTHS)  # it did pack
  with pytest.raises(ValueError, match="seq_len"):
    pack_rows([SEQ_LEN + 1], SEQ_LEN, order=[0])


def test_packed_batch_keeps_segments_apart():
  examples = _examples(LENGTHS)
  rows = pack_rows(LENGTHS, SEQ_LEN, order=np.random.default_rng(1).permutation(len(LENGTHS)))
  batch = make_batch(rows + [[]], examples, SEQ_LEN)
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      "inputs": ((len(rows) + 1, SEQ_LEN), "int32"),
      "targets": ((len(rows) + 1, SEQ_LEN), "int32"),
      "loss_mask": ((len(rows) + 1, SEQ_LEN), "float32"),
      "segment_ids": ((len(rows) + 1, SEQ_LEN), "int32"),
      "positions": ((len(rows) + 1, SEQ_LEN), "int32")}
  for r, row in enumerate(rows):
    seg, pos = batch["segment_ids"][r], batch["positions"][r]
    used = sum(LENGTHS[i] for i in row)
    # Segments are 1..n in order, contiguous, then padding (0).
    expected_seg = np.concatenate([np.full(LENGTHS[i], k + 1) for k, i in enumerate(row)]
                                  + [np.zeros(SEQ_LEN - used)])
    np.testing.assert_array_equal(seg, expected_seg)
    np.testing.assert_array_equal(
        pos[:used], np.concatenate([np.arange(LENGTHS[i]) for i in row]))
    # A target is the next token of the same segment, never one from the next example.
    same = (seg[:-1] == seg[1:]) & (seg[:-1] > 0)
    np.testing.assert_array_equal(batch["targets"][r, :-1][same], batch["inputs"][r, 1:][same])
    assert not batch["targets"][r, :-1][~same].any()
    assert not batch["loss_mask"][r, :-1][~same].any()
    assert not batch["loss_mask"][r, seg == 0].any()
  assert not any(v[-1].any() for v in batch.values())  # an empty row is all padding


def test_packed_segments_equal_padded_rows():
  examples = _examples(LENGTHS, seed=3)
  packed = make_batch(pack_rows(LENGTHS, SEQ_LEN, range(len(LENGTHS))), examples, SEQ_LEN)
  padded = make_batch(pad_rows(range(len(LENGTHS))), examples, SEQ_LEN)
  rows = pack_rows(LENGTHS, SEQ_LEN, range(len(LENGTHS)))
  for r, row in enumerate(rows):
    for k, i in enumerate(row, start=1):
      at = packed["segment_ids"][r] == k
      for key in ("inputs", "targets", "loss_mask", "positions"):
        np.testing.assert_array_equal(packed[key][r, at], padded[key][i, :LENGTHS[i]])
  # The loss sees the same tokens either way.
  assert packed["loss_mask"].sum() == padded["loss_mask"].sum() == sum(
      m[1:].sum() for _, m in examples)
