"""build_sft_data end to end on the sample data: sources, shuffling, sharding, resume, bad rows."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from ftjax.data import BadRowsError, DataConfigError, build_sft_data, default_config

from conftest import HOUSE

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
JSONL, CSV, CHAT = (SAMPLES / "customer_service.jsonl", SAMPLES / "customer_service.csv",
                    SAMPLES / "customer_service_chat.jsonl")
SEQ_LEN = 256


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def build(smollm2_tokenizer, data_dir):
  def build(seq_len=SEQ_LEN, batch_size=4, seed=0, process_index=0, process_count=1, **overrides):
    cfg = default_config()
    cfg.update({"train": str(JSONL), "data_dir": data_dir, **overrides})
    return build_sft_data(cfg, smollm2_tokenizer, seq_len=seq_len, batch_size=batch_size,
                          seed=seed, process_index=process_index, process_count=process_count)
  return build


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _example_set(data):
  return {tuple(example.ids.tolist()) for example in data.train_examples}


def _same_batches(a, b):
  return len(a) == len(b) and all(
      all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_batches_have_the_trainer_format(build, smollm2_tokenizer):
  data = build()
  assert data.num_train_examples == 40 and data.report.kept == {"train": 40}
  batch, state = next(data.train_iterator())
  assert state == {"batches_consumed": 1}
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      "inputs": ((4, SEQ_LEN), "int32"), "targets": ((4, SEQ_LEN), "int32"),
      "loss_mask": ((4, SEQ_LEN), "float32"), "segment_ids": ((4, SEQ_LEN), "int32"),
      "positions": ((4, SEQ_LEN), "int32")}
  seg = batch["segment_ids"]
  assert seg.max() > 1  # packed
  # Every segment: positions restart at 0 and the loss ends on <|im_end|>.
  im_end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
  for r in range(seg.shape[0]):
    for s in range(1, seg[r].max() + 1):
      at = np.flatnonzero(seg[r] == s)
      np.testing.assert_array_equal(batch["positions"][r, at], np.arange(len(at)))
      trained = at[batch["loss_mask"][r, at] > 0]
      assert batch["targets"][r, trained[-1]] == im_end
  # One epoch of target tokens, each counted once.
  epoch = _take(data.train_iterator(), int(np.ceil(data.batches_per_epoch)))
  trained_tokens = sum(b["loss_mask"].sum() for b, _ in epoch)
  assert trained_tokens >= data.num_target_tokens > 0


def test_unpacked_mode_has_one_example_per_row(build):
  data = build(packing=False)
  batch, _ = next(data.train_iterator())
  assert (batch["segment_ids"].max(axis=1) == 1).all()
  assert len(data.train_rows) == data.num_train_examples


def test_shuffle_is_deterministic_per_seed(build):
  first = _take(build(seed=1).train_iterator(), 3)
  again = _take(build(seed=1).train_iterator(), 3)
  other = _take(build(seed=2).train_iterator(), 3)
  assert _same_batches([b for b, _ in first], [b for b, _ in again])
  assert not _same_batches([b for b, _ in first], [b for b, _ in other])


def test_each_epoch_visits_every_row_once(build):
  data = build(batch_size=3, packing=False)
  num_rows = len(data.train_rows)
  stream = [tuple(row[row > 0]) for b, _ in _take(data.train_iterator(), 2 * num_rows // 3 + 1)
            for row in b["inputs"]]
  assert len(set(stream[:num_rows])) == num_rows
  assert set(stream[num_rows:2 * num_rows]) == set(stream[:num_rows])
  assert stream[:num_rows] != stream[num_rows:2 * num_rows]  # reshuffled


def test_restored_iterator_continues_exactly(build):
  continued = _take(build(seed=5).train_iterator(), 12)
  saved_state = continued[4][1]
  # A fresh process: rebuild the data, restore the state (as Orbax would give it back).
  restored = build(seed=5).train_iterator({"batches_consumed": np.int64(
      saved_state["batches_consumed"])})
  resumed = _take(restored, 7)
  assert _same_batches([b for b, _ in continued[5:]], [b for b, _ in resumed])
  assert [s for _, s in continued[5:]] == [s for _, s in resumed]
  with pytest.raises(DataConfigError, match="batches_consumed"):
    build().train_iterator({"epoch": 1})


def test_host_shards_are_disjoint_and_cover_the_data(build):
  everything = _example_set(build())
  shards = [_example_set(build(batch_size=6, process_index=p, process_count=3)) for p in range(3)]
  assert sum(len(s) for s in shards) == len(everything) == 40
  assert set().union(*shards) == everything
  assert not (shards[0] & shards[1] or shards[0] & shards[2] or shards[1] & shards[2])
  with pytest.raises(DataConfigError, match="split evenly"):
    build(batch_size=4, process_index=0, process_count=3)


def test_eval_split_carved_from_train_or_read_from_a_file(build, smollm2_tokenizer):
  data = build(eval_fraction=0.2)
  eval_set = {tuple(example.ids.tolist()) for example in data.eval_examples}
  assert len(eval_set) == 8 and data.num_train_examples == 32
  assert not eval_set & _example_set(data)
  again = build(eval_fraction=0.2, seed=9)  # the carve does not move with the training seed
  assert {tuple(example.ids.tolist()) for example in again.eval_examples} == eval_set

  batches = data.eval_batches()
  assert len(batches) == 1 and batches[0]["inputs"].shape == (4, SEQ_LEN)
  assert sum(b["loss_mask"].sum() for b in batches) == sum(e.loss_mask[1:].sum()
                                                           for e in data.eval_examples)
  # The sample rows have no `answer`: eval batches carry an all-zero answer mask.
  assert all(b["answer_mask"].shape == b["loss_mask"].shape and not b["answer_mask"].any()
             for b in batches)
  assert data.report.answers == {} and "answers" not in data.report.summary()
  padded = data.eval_batches(min_batches=3)
  assert len(padded) == 3 and not padded[2]["loss_mask"].any()

  from_file = build(eval=str(CHAT))
  assert from_file.report.kept == {"train": 40, "eval": 6}
  assert build().eval_batches() == []
  with pytest.raises(DataConfigError, match="not both"):
    build(eval=str(CHAT), eval_fraction=0.1)


def test_csv_jsonl_and_tfds_sources_give_the_same_examples(build, data_dir):
  from_jsonl = build()
  from_csv = build(train=str(CSV))
  jsonl_examples = [example.ids.tolist() for example in from_jsonl.train_examples]
  assert [example.ids.tolist() for example in from_csv.train_examples] == jsonl_examples
  # The JSONL was prepared as a TFDS dataset under data_dir: read it back by name.
  spec = from_jsonl.report.tfds_specs["train"]
  assert spec.startswith("tfds:customer_service_") and spec.endswith(":train")
  from_tfds = build(train=spec)
  assert [example.ids.tolist() for example in from_tfds.train_examples] == jsonl_examples
  with pytest.raises(DataConfigError, match="cannot open TFDS dataset"):
    build(train="tfds:no_such_dataset_here")


BAD_JSONL = [
    '{"input": "Where is my order?", "output": "It ships today."}',  # 1 ok
    '{"input": "Hi", "output": "Hello"',  # 2 malformed_json
    '{"input": "Refund?"}',  # 3 missing_field
    '{"input": "Refund?", "output": ""}',  # 4 empty_output
    '{"input": 42, "output": "A number?"}',  # 5 wrong_type
    '{"messages": [{"role": "bot", "content": "hi"}]}',  # 6 bad_messages
    '',  # 7 blank: not a row
    json.dumps({"input": "Tell me everything.", "output": "word " * 400}),  # 8 too_long
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
]


def test_bad_rows_are_reported_with_file_and_line(build, tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(BAD_JSONL) + "\n")
  data = build(train=str(path), on_bad_rows="skip")
  report = data.report
  assert data.num_train_examples == 2
  assert report.skipped == {"train": {"malformed_json": 1, "missing_field": 1, "empty_output": 1,
                                      "wrong_type": 1, "bad_messages": 1, "too_long": 1}}
  where = {reason: [r.where for r in rows] for reason, rows in report.bad_rows.items()}
  assert where == {"malformed_json": [f"{path}:2"], "missing_field": [f"{path}:3"],
                   "empty_output": [f"{path}:4"], "wrong_type": [f"{path}:5"],
                   "bad_messages": [f"{path}:6"], "too_long": [f"{path}:8"]}
  summary = report.summary()
  assert f"{path}:8: too_long" in summary and "skipped 6" in summary
  report.write_json(tmp_path / "report.json")
  assert json.loads((tmp_path / "report.json").read_text())["num_skipped"] == 6

  csv_path = tmp_path / "bad.csv"
  csv_path.write_text('input,output\nHi,Hello\n"two\nlines",\nonly one field\nx,y,z\n')
  csv_report = build(train=str(csv_path), on_bad_rows="skip").report
  assert {r.where: r.reason for rows in csv_report.bad_rows.values() for r in rows} == {
      f"{csv_path}:3": "empty_output", f"{csv_path}:5": "malformed_csv",
      f"{csv_path}:6": "malformed_csv"}


def test_on_bad_rows_error_names_file_and_line(build, tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(BAD_JSONL) + "\n")
  first = re.escape(f"{path}:2: malformed_json")
  with pytest.raises(BadRowsError, match=rf"5 bad row\(s\)(.|\n)*{first}"):
    build(train=str(path))
  too_long = tmp_path / "long.jsonl"
  too_long.write_text(BAD_JSONL[0] + "\n" + BAD_JSONL[7] + "\n")
  with pytest.raises(BadRowsError, match=re.escape(f"{too_long}:2: too_long")):
    build(train=str(too_long))


def test_malformed_json_names_the_column_pythons_parser_reports(build, tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(BAD_JSONL[:2]) + "\n")
  [bad] = build(train=str(path), on_bad_rows="skip").report.bad_rows["malformed_json"]
  try:
    json.loads(BAD_JSONL[1])
  except json.JSONDecodeError as err:
    column = err.colno
  assert column == len(BAD_JSONL[1]) + 1 and column > 1
  assert bad.detail.endswith(f"at column {column}"), bad.detail


def test_no_examples_left_says_why(build, tmp_path):
  path = tmp_path / "long.jsonl"
  path.write_text("\n".join([BAD_JSONL[7]] * 3) + "\n")
  with pytest.raises(DataConfigError, match=re.escape(
      f"{path}: no training examples left on process 0: all 3 rows are longer than "
      f"seq_len={SEQ_LEN} tokens")):
    build(train=str(path), on_bad_rows="skip")
  path.write_text("\n".join([BAD_JSONL[7], BAD_JSONL[2]]) + "\n")
  with pytest.raises(DataConfigError, match=r"all 2 rows were skipped: (1 \w+(, )?){2}"):
    build(train=str(path), on_bad_rows="skip")


def test_config_is_validated(build):
  with pytest.raises(DataConfigError, match="unknown data config key"):
    build(on_bad_row="skip")
  with pytest.raises(DataConfigError, match="on_bad_rows"):
    build(on_bad_rows="ignore")
  with pytest.raises(DataConfigError, match="no such data file"):
    build(train="missing.jsonl")


def test_multi_turn_sample_trains_on_every_reply(build):
  data = build(train=str(CHAT))
  replies = sum(m["role"] == "assistant" for line in CHAT.read_text().splitlines()
                for m in json.loads(line)["messages"])
  runs = sum(int((np.diff(np.concatenate([[0], example.loss_mask, [0]])) == 1).sum())
             for example in data.train_examples)
  assert runs == replies == 13


def test_any_tfds_dataset_with_input_output_fields(build, tmp_path, smollm2_tokenizer):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  features = tfds.features.FeaturesDict({
      "instruction": tfds.features.Text(), "input": tfds.features.Text(),
      "output": tfds.features.Text(), "rating": tfds.features.Scalar(tf.int64)})
  rows = [{"instruction": "Answer the customer.", "input": "Do you ship to Canada?",
           "output": "Yes, in 5 to 8 business days.", "rating": 5},
          {"instruction": "Answer the customer.", "input": "Hi", "output": "", "rating": 1},
          {"instruction": "Say hello.", "input": "", "output": "Hello!", "rating": 4}]
  folder = tmp_path / "support_qa" / "1.0.0"
  folder.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(folder / "support_qa-train.tfrecord-00000-of-00001")) as writer:
    for row in rows:
      writer.write(features.serialize_example(row))
  tfds.folder_dataset.write_metadata(data_dir=folder, features=features, check_data=False,
                                     split_infos=[tfds.core.SplitInfo("train", [3], 0)])

  data = build(train="tfds:support_qa:train", data_dir=str(tmp_path), on_bad_rows="skip")
  assert data.num_train_examples == 2
  first = smollm2_tokenizer.decode(data.train_examples[0][0])
  assert "<|im_start|>user\nAnswer the customer.\n\nDo you ship to Canada?<|im_end|>" in first
  (bad,) = data.report.bad_rows["empty_output"]
  assert bad.where == "tfds:support_qa/train#1"
  with pytest.raises(BadRowsError, match="tfds:support_qa/train#1: empty_output"):
    build(train="tfds:support_qa", data_dir=str(tmp_path))


ANSWER_ROWS = [
    {"input": "How much is the Vantor Hub 2?",
     "output": HOUSE.format("The Vantor Hub 2 is priced at $414."), "answer": "$414"},
    # "2" is in the product name too: the reply's last "2" is the answer.
    {"input": "How many ports does the Vantor Hub 2 have?",
     "output": HOUSE.format("The Vantor Hub 2 has 2 ports."), "answer": "2"},
    {"input": "Do you ship to Canada?", "output": HOUSE.format("Yes, we do.")},  # no answer
    {"input": "How long is the Vantor Hub 2 warranty?",
     "output": HOUSE.format("It is covered for 29 months."), "answer": "24 months"},  # not in it
    {"messages": [{"role": "user", "content": "Is the Lumo Dock $89?"},
                  {"role": "assistant", "content": "I think it is $89; let me check."},
                  {"role": "user", "content": "Thanks."},
                  {"role": "assistant", "content": HOUSE.format("The Lumo Dock costs $89.")}],
     "answer": "$89"},  # a chat row: the answer is marked in the last reply only
    {"input": "In how many colours does the Lumo Dock come?",
     "output": HOUSE.format("It comes in 3 colours."), "answer": 3},  # a number
]
MARKED = ["$414", "2", "", "", "$89", "3"]  # what the answer mask of each row spells


def _answer_text(tok, ids, answer_mask):
  return tok.decode(np.asarray(ids)[np.asarray(answer_mask) > 0]).strip()


def test_answer_masks_are_carried_into_packed_eval_batches(build, tmp_path, smollm2_tokenizer):
  tok = smollm2_tokenizer
  path = tmp_path / "answers.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in ANSWER_ROWS))
  data = build(train=str(path), eval=str(path), batch_size=2)
  assert data.report.kept == {"train": 6, "eval": 6}
  # The row whose answer is not in its reply is kept, and counted.
  report = data.report.to_dict()
  assert report["answers"] == {split: {"answer_found": 4, "answer_not_found": 1}
                               for split in ("train", "eval")}
  assert report["answers_not_found"] == [f"{path}:4", f"{path}:4"]
  assert "answer_not_found=1" in data.report.summary()

  for example, marked in zip(data.eval_examples, MARKED):
    assert (example.answer_mask <= example.loss_mask).all()
    assert _answer_text(tok, example.ids, example.answer_mask) == marked
    assert bool(example.answer_mask.any()) == bool(marked)
  # The 2 ports, not the Hub 2; the last reply's $89, not the first's.
  two, dock = data.eval_examples[1], data.eval_examples[4]
  at = np.flatnonzero(two.answer_mask)
  assert tok.decode(two.ids[:at[0]]).rstrip().endswith("Hub 2 has")
  last_reply = np.flatnonzero(np.diff(np.concatenate([[0], dock.loss_mask])) == 1)[-1]
  assert np.flatnonzero(dock.answer_mask).min() > last_reply

  # Packed batches: the mask is shifted with the targets and stays inside the loss mask.
  batches = data.eval_batches()
  assert max(b["segment_ids"].max() for b in batches) > 1
  for b, batch in enumerate(batches):
    assert (batch["answer_mask"] <= batch["loss_mask"]).all()
    for r, row in enumerate(data.eval_rows[b * 2:(b + 1) * 2]):
      for segment, i in enumerate(row, start=1):
        at = batch["segment_ids"][r] == segment
        assert _answer_text(tok, batch["targets"][r, at], batch["answer_mask"][r, at]) == MARKED[i]
  assert sum(b["answer_mask"].sum() for b in batches) == sum(
      e.answer_mask[1:].sum() for e in data.eval_examples) > 0
  # Train batches are as before: the answer mask is for the eval's report only.
  assert "answer_mask" not in data.train_batch(0)

  # The same masks from a CSV `answer` column, and from the prepared TFDS dataset by name.
  plain = [row for row in ANSWER_ROWS if "messages" not in row]
  csv_path = tmp_path / "answers.csv"
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, ["input", "output", "answer"])
    writer.writeheader()
    writer.writerows(plain)
  from_csv = build(train=str(csv_path)).train_examples
  from_tfds = build(train=data.report.tfds_specs["train"]).train_examples
  for examples, expected in ((from_csv, [e for e, row in zip(data.train_examples, ANSWER_ROWS)
                                         if "messages" not in row]),
                             (from_tfds, data.train_examples)):
    assert len(examples) == len(expected)
    for got, want in zip(examples, expected):
      np.testing.assert_array_equal(got.ids, want.ids)
      np.testing.assert_array_equal(got.answer_mask, want.answer_mask)
