"""Chat examples <-> TFDS datasets, so that every source is read through `tfds` and `tf.data`.

A local file's examples are written once as a TFDS dataset (TFRecord shards plus TFDS metadata)
under `data_dir/<file stem>_<content hash>/1.0.0`, and from then on read like any TFDS dataset:
`tfds.builder(name, data_dir=data_dir)`, i.e. `train="tfds:<name>"` in a config reads it back.
The content hash names the dataset, so an edited file is prepared again and an unchanged one is not.

TensorFlow is imported inside the functions: `import ftjax.data` stays light for code that only
renders examples.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from ftjax.data.report import BadRow, DataConfigError
from ftjax.data.sources import RowError, answer_text, to_messages

VERSION = "1.0.0"
SPLIT = "train"  # a local file becomes the single split `train`; eval is carved or a second file
EXAMPLE_FIELDS = ("messages", "instruction", "input", "output", "answer", "line")


class TfdsSource(NamedTuple):
  builder: Any  # a tfds DatasetBuilder (prepared)
  split: str
  label: str  # how rows are named in reports: a file path, or "tfds:name/split"
  has_lines: bool  # rows carry the file line they came from

  @property
  def spec(self) -> str:
    """The config string that reads this dataset back (with the same data_dir)."""
    return f"tfds:{self.builder.name}:{self.split}"


@functools.cache
def _tf():
  """TensorFlow, kept off the accelerators: only JAX should hold GPU / TPU memory."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except RuntimeError:  # TF was already initialised by someone else; leave it as it is
    pass
  return tf


def _features(with_answer: bool):
  """Only files with answers get the `answer` feature: those without are written as before."""
  import tensorflow_datasets as tfds
  tf = _tf()
  features = {
      "messages": tfds.features.Sequence(
          {"role": tfds.features.Text(), "content": tfds.features.Text()}),
      "line": tfds.features.Scalar(tf.int64),
  }
  if with_answer:
    features["answer"] = tfds.features.Text()
  return tfds.features.FeaturesDict(features)


def dataset_name(path: str, examples: list[dict]) -> str:
  """A valid TFDS name that changes whenever the parsed examples change."""
  digest = hashlib.sha1(json.dumps(examples, sort_keys=True).encode()).hexdigest()[:12]
  stem = re.sub(r"[^a-z0-9]+", "_", Path(path).stem.lower()).strip("_") or "data"
  if not stem[0].isalpha():
    stem = "d_" + stem
  return f"{stem}_{digest}"


def prepare_local(path: str, examples: list[dict], data_dir: str | os.PathLike) -> TfdsSource:
  """Writes `examples` (file order) as a TFDS dataset unless an identical one exists; opens it."""
  import tensorflow_datasets as tfds
  tf = _tf()
  data_dir = Path(data_dir).expanduser()
  name = dataset_name(path, examples)
  if not (data_dir / name / VERSION / "dataset_info.json").is_file():
    # TFDS's path for TFRecords written outside a builder class: no download manager involved.
    # Written under a private folder and renamed: concurrent runs never see a half dataset.
    staging = data_dir / f".staging-{name}-{uuid.uuid4().hex[:8]}"
    folder = staging / name / VERSION
    shutil.rmtree(staging, ignore_errors=True)
    folder.mkdir(parents=True)
    with_answer = any("answer" in example for example in examples)
    features = _features(with_answer)
    num_bytes = 0
    with tf.io.TFRecordWriter(str(folder / f"{name}-{SPLIT}.tfrecord-00000-of-00001")) as writer:
      for example in examples:
        row = {"messages": {"role": [m["role"] for m in example["messages"]],
                            "content": [m["content"] for m in example["messages"]]},
               "line": example["line"]}
        if with_answer:
          row["answer"] = example.get("answer", "")
        record = features.serialize_example(row)
        num_bytes += len(record)
        writer.write(record)
    tfds.folder_dataset.write_metadata(
        data_dir=folder, features=features, check_data=False,
        split_infos=[tfds.core.SplitInfo(name=SPLIT, shard_lengths=[len(examples)],
                                         num_bytes=num_bytes)],
        description=f"ftjax SFT examples from {path}")
    try:
      (staging / name).rename(data_dir / name)
    except OSError:  # another process finished first
      if not (data_dir / name / VERSION / "dataset_info.json").is_file():
        raise
    shutil.rmtree(staging, ignore_errors=True)
  builder = tfds.builder_from_directory(str(data_dir / name / VERSION))
  return TfdsSource(builder, SPLIT, path, has_lines=True)


def open_named(spec: str, data_dir: str | os.PathLike) -> TfdsSource:
  """`tfds:NAME[:SPLIT]` -> the prepared TFDS dataset (prepared here if its builder can)."""
  import tensorflow_datasets as tfds
  _tf()
  parts = spec[len("tfds:"):].split(":")
  if not parts[0] or len(parts) > 2:
    raise DataConfigError(f"{spec!r}: expected tfds:NAME or tfds:NAME:SPLIT")
  name, split = parts[0], (parts[1] if len(parts) == 2 else "train")
  try:
    builder = tfds.builder(name, data_dir=str(Path(data_dir).expanduser()))
    if not builder.is_prepared():
      builder.download_and_prepare()
  except Exception as err:  # unknown name, no network, ...: all are config errors to the user
    raise DataConfigError(f"{spec}: cannot open TFDS dataset {name!r} under {data_dir} "
                          f"({type(err).__name__}: {err})") from err
  if split not in builder.info.splits:
    raise DataConfigError(f"{spec}: no split {split!r} (has {sorted(builder.info.splits)})")
  return TfdsSource(builder, split, f"tfds:{name}/{split}", has_lines=False)


def num_examples(source: TfdsSource) -> int:
  return source.builder.info.splits[source.split].num_examples


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_decode(v) for v in value.tolist()]
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  return value


def _record_messages(record: dict) -> Any:
  """A TFDS row -> the raw record `to_messages` reads (columnar `messages` become a list)."""
  messages = record.get("messages")
  if isinstance(messages, dict) and {"role", "content"} <= set(messages):
    record = {**record, "messages": [{"role": r, "content": c} for r, c
                                     in zip(messages["role"], messages["content"])]}
  return record


def _unbatch(batch: dict, i: int) -> dict:
  return {k: _unbatch(v, i) if isinstance(v, dict) else _decode(v[i]) for k, v in batch.items()}


def read_examples(source: TfdsSource, indices: np.ndarray, read_batch: int = 1024
                  ) -> Iterator[dict | BadRow]:
  """Yields the rows at `indices` (sorted) as {"messages", "answer", "where", "index"} or as
  BadRow ("answer" is "" where the row has none).

  Only the chosen rows are decoded: the rest are dropped in the tf.data graph, so a host pays
  for its own shard only. Rows cross into Python in ragged batches (one at a time is slow).
  """
  tf = _tf()
  keep = np.zeros(num_examples(source), bool)
  keep[indices] = True
  keep = tf.constant(keep)

  # Only the fields an example can come from; a TFDS dataset may hold much else (e.g. images).
  fields = sorted(set(source.builder.info.features) & set(EXAMPLE_FIELDS))

  @tf.autograph.experimental.do_not_convert
  def chosen(index, row):
    return tf.gather(keep, index)

  @tf.autograph.experimental.do_not_convert
  def example_fields(index, row):
    return index, {k: row[k] for k in fields}

  ds = source.builder.as_dataset(split=source.split, shuffle_files=False)
  ds = ds.enumerate().filter(chosen).map(example_fields).ragged_batch(read_batch)
  for batch_indices, batch in ds.as_numpy_iterator():
    for i, index in enumerate(batch_indices.tolist()):
      record = _unbatch(batch, i)
      where = (f"{source.label}:{record['line']}" if source.has_lines
               else f"{source.label}#{index}")
      try:
        yield {"messages": to_messages(_record_messages(record)), "answer": answer_text(record),
               "where": where, "index": index}
      except RowError as err:
        yield BadRow(where, err.reason, err.detail)
