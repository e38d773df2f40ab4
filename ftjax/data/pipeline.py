"""`build_sft_data`: config + tokenizer -> SFTData, the trainer's train iterator and eval batches.

    source (JSONL / CSV / tfds:NAME) -> TFDS dataset -> tf.data (this host's rows only)
      -> chat template render + tokenize + assistant loss mask (+ answer mask, for rows with an
         `answer`) -> rows (packed or padded) -> batches

The tokenized examples of a host's shard are held in memory (SFT sets are small) and packed once
into rows; each epoch visits the rows in a fresh order drawn from (seed, epoch). The train stream
is the concatenation of those epochs cut into batches, so batch n is a pure function of
(data, seed, n): the iterator state is the single int `batches_consumed`, the same on every host,
and restoring it is O(1).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from pathlib import Path
from typing import Any, Iterator, Mapping

import ml_collections
import numpy as np

from ftjax.data import packing, render, sources, tfds_builder
from ftjax.data.report import BadRow, DataConfigError, DataReport, raise_bad_rows
from ftjax.data.sources import RowError

# The eval rows carved from train do not depend on the training seed, so runs with different
# seeds are compared on the same held-out examples.
EVAL_CARVE_SEED = 0
ON_BAD_ROWS = ("error", "skip")


def default_config() -> ml_collections.ConfigDict:
  """Every data key with its default; `build_sft_data` refuses keys not listed here."""
  return ml_collections.ConfigDict({
      "train": "",  # a .jsonl / .csv path, or "tfds:NAME[:SPLIT]"
      "eval": "",  # same forms; "" -> carve eval_fraction from train (or no eval if 0)
      "eval_fraction": 0.0,
      "format": "auto",  # auto (from the extension) | jsonl | csv
      "packing": True,
      "system_prompt": "",  # prepended to examples that have no system message
      "on_bad_rows": "error",  # error: stop, naming file:line | skip: skip and report
      "data_dir": "",  # where TFDS datasets are prepared; "" -> $FTJAX_CACHE/tfds
  })


def _validated(data_cfg: Mapping[str, Any]) -> ml_collections.ConfigDict:
  given = dict(data_cfg.items())
  cfg = default_config()
  unknown = sorted(set(given) - set(cfg))
  if unknown:
    raise DataConfigError(f"unknown data config key(s) {unknown}; known: {sorted(cfg)}")
  try:
    cfg.update(given)
  except TypeError as err:  # ConfigDict keeps each key's type
    raise DataConfigError(f"data config: {err}") from None
  if not isinstance(cfg.train, str) or not cfg.train:
    raise DataConfigError("data.train must name a .jsonl / .csv file or tfds:NAME[:SPLIT]")
  if not 0.0 <= float(cfg.eval_fraction) < 1.0:
    raise DataConfigError(f"data.eval_fraction={cfg.eval_fraction} must be in [0, 1)")
  if cfg.eval and cfg.eval_fraction:
    raise DataConfigError("set data.eval (a file) or data.eval_fraction (carved from train), "
                          "not both")
  if cfg.format not in ("auto", *sources.FORMATS):
    raise DataConfigError(f"data.format={cfg.format!r} is not one of auto, jsonl, csv")
  if cfg.on_bad_rows not in ON_BAD_ROWS:
    raise DataConfigError(f"data.on_bad_rows={cfg.on_bad_rows!r} is not one of {ON_BAD_ROWS}")
  return cfg


def _default_data_dir() -> Path:
  from ftjax.paths import cache_dir
  return cache_dir() / "tfds"


def _record_bad(report: DataReport, split: str, bad: list[BadRow], on_bad_rows: str):
  for row in bad:
    report.add_bad(split, row)
  if bad and on_bad_rows == "error":
    raise_bad_rows(bad, len(bad))


def _open(spec: str, fmt: str, data_dir: Path, report: DataReport, split: str,
          on_bad_rows: str) -> tfds_builder.TfdsSource:
  if spec.startswith("tfds:"):
    source = tfds_builder.open_named(spec, data_dir)
  else:
    parsed = sources.read_file(spec, fmt)
    _record_bad(report, split, parsed.bad_rows, on_bad_rows)
    if not parsed.examples:
      first = f"; the first: {parsed.bad_rows[0]}" if parsed.bad_rows else ""
      raise DataConfigError(f"{spec}: no usable examples ({len(parsed.bad_rows)} bad rows{first})")
    source = tfds_builder.prepare_local(spec, parsed.examples, data_dir)
  report.tfds_specs[split] = source.spec
  return source


def _tokenized(source: tfds_builder.TfdsSource, indices: np.ndarray, tokenizer, cfg,
               seq_len: int, report: DataReport, split: str) -> list[packing.Example]:
  """The rows at `indices` rendered and tokenized; rejects go to the report by file:line, and so
  do kept rows whose answer is not in their reply (they stay, without answer tokens)."""
  rows, bad = [], []
  for item in tfds_builder.read_examples(source, indices):
    (bad if isinstance(item, BadRow) else rows).append(item)
  rendered = render.render_examples([r["messages"] for r in rows], tokenizer, cfg.system_prompt,
                                    answers=[r["answer"] for r in rows])
  examples = []
  for row, result in zip(rows, rendered):
    if isinstance(result, RowError):
      bad.append(BadRow(row["where"], result.reason, result.detail))
      continue
    example = render.trim_untrained_tail(result)
    if len(example.ids) > seq_len:
      bad.append(BadRow(row["where"], "too_long",
                        f"{len(example.ids)} tokens > seq_len {seq_len}"))
      continue
    if row["answer"]:
      report.add_answer(split, row["where"], found=bool(example.answer_mask.any()))
    examples.append(example)
  _record_bad(report, split, bad, cfg.on_bad_rows)
  report.set_kept(split, len(examples))
  return examples


def _why_none_left(report: DataReport, rows_here: int, seq_len: int) -> str:
  """Why no training example is left: every row too long, or skipped for these reasons."""
  counts = report.skipped.get("train", {})
  if not rows_here and not counts:
    return "the file has no rows for this process"
  skipped = sum(counts.values())
  if set(counts) == {"too_long"}:
    return f"all {skipped} rows are longer than seq_len={seq_len} tokens"
  reasons = ", ".join(f"{n} {reason}" + (f" (longer than seq_len={seq_len} tokens)"
                                         if reason == "too_long" else "")
                      for reason, n in counts.most_common())
  return f"all {skipped} rows were skipped: {reasons}"


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_rows: int) -> np.ndarray:
  return np.random.default_rng([seed, 0, epoch]).permutation(num_rows)


def _batches_consumed(state) -> int:
  if state is None:
    return 0
  try:
    n = int(state["batches_consumed"])
  except (KeyError, TypeError, ValueError) as err:
    raise DataConfigError(f"data iterator state {state!r} has no int 'batches_consumed'") from err
  if n < 0:
    raise DataConfigError(f"data iterator state {state!r}: batches_consumed must be >= 0")
  return n


@dataclasses.dataclass(frozen=True, eq=False)
class SFTData:
  """This host's tokenized train and eval examples, and the batches made from them."""
  train_examples: list[packing.Example]
  train_rows: list[list[int]]  # indices into train_examples; packed once, shuffled per epoch
  eval_examples: list[packing.Example]
  eval_rows: list[list[int]]
  seq_len: int
  batch_size: int  # rows per batch on this host
  seed: int
  report: DataReport

  @property
  def num_train_examples(self) -> int:
    return len(self.train_examples)

  @property
  def num_target_tokens(self) -> int:
    """Tokens in the loss per epoch (the first token of an example is never a target)."""
    return int(sum(example.loss_mask[1:].sum() for example in self.train_examples))

  @property
  def max_row_targets(self) -> int:
    """The most loss tokens in any train row (rows are packed once, so this bounds every batch's
    rows in every epoch): what the train step's `loss_positions` must cover."""
    return max((int(sum(self.train_examples[i].loss_mask[1:].sum() for i in row))
                for row in self.train_rows), default=0)

  @property
  def batches_per_epoch(self) -> float:
    return len(self.train_rows) / self.batch_size

  def epoch(self, state) -> float:
    """How many epochs the stream has covered at `state` (for logging)."""
    return _batches_consumed(state) / self.batches_per_epoch

  def train_batch(self, n: int) -> dict[str, np.ndarray]:
    """Batch n of the endless train stream: rows n*B .. n*B+B-1 of epoch after epoch."""
    num_rows = len(self.train_rows)
    rows = []
    for position in range(n * self.batch_size, (n + 1) * self.batch_size):
      epoch, i = divmod(position, num_rows)
      rows.append(self.train_rows[_epoch_order(self.seed, epoch, num_rows)[i]])
    return packing.make_batch(rows, self.train_examples, self.seq_len)

  def train_iterator(self, state=None) -> Iterator[tuple[dict[str, np.ndarray], dict[str, int]]]:
    """Endless (batch, state after it); `train_iterator(state)` resumes exactly after `state`."""
    start = _batches_consumed(state)  # checked now, not at the first next()
    return ((self.train_batch(n), {"batches_consumed": n + 1}) for n in itertools.count(start))

  def eval_batches(self, min_batches: int = 0) -> list[dict[str, np.ndarray]]:
    """The eval rows in order, in full batches (padding rows carry no loss). Unlike train
    batches, they hold `answer_mask` too: the eval reports the loss on the answer tokens apart.

    With several hosts, pass the largest count over hosts as `min_batches`, so that every host
    runs the same number of eval steps.
    """
    rows = list(self.eval_rows)
    num_batches = max(-(-len(rows) // self.batch_size), min_batches)
    rows += [[]] * (num_batches * self.batch_size - len(rows))
    return [packing.make_batch(rows[b * self.batch_size:(b + 1) * self.batch_size],
                               self.eval_examples, self.seq_len, answer_mask=True)
            for b in range(num_batches)]


def _rows(examples: list[packing.Example], seq_len: int, packed: bool, order) -> list[list[int]]:
  if packed:
    return packing.pack_rows([len(example.ids) for example in examples], seq_len, order)
  return packing.pad_rows(order)


def build_sft_data(data_cfg: Mapping[str, Any], tokenizer, *, seq_len: int, batch_size: int,
                   seed: int = 0, process_index: int = 0, process_count: int = 1) -> SFTData:
  """Reads, checks, tokenizes and packs this host's share of the train and eval data.

  `batch_size` is global: each of the `process_count` hosts gets `batch_size // process_count`
  rows a batch, from its own shard (every process_count-th example).
  """
  cfg = _validated(data_cfg)
  if seq_len < 2 or batch_size < 1 or seed < 0:
    raise DataConfigError(f"need seq_len >= 2, batch_size >= 1, seed >= 0; got "
                          f"{seq_len}, {batch_size}, {seed}")
  if not 0 <= process_index < process_count or batch_size % process_count:
    raise DataConfigError(f"process {process_index} of {process_count}: the global batch_size "
                          f"{batch_size} must split evenly over the processes")
  data_dir = Path(cfg.data_dir).expanduser() if cfg.data_dir else _default_data_dir()
  report = DataReport()

  train = _open(cfg.train, cfg.format, data_dir, report, "train", cfg.on_bad_rows)
  train_indices = np.arange(tfds_builder.num_examples(train))
  eval_source, eval_indices = None, np.arange(0)
  if cfg.eval:
    eval_source = _open(cfg.eval, cfg.format, data_dir, report, "eval", cfg.on_bad_rows)
    eval_indices = np.arange(tfds_builder.num_examples(eval_source))
  elif cfg.eval_fraction:
    order = np.random.default_rng(EVAL_CARVE_SEED).permutation(len(train_indices))
    num_eval = max(1, round(cfg.eval_fraction * len(order)))
    if num_eval >= len(order):
      raise DataConfigError(f"{cfg.train}: eval_fraction={cfg.eval_fraction} of "
                            f"{len(order)} examples leaves none to train on")
    eval_source, eval_indices = train, np.sort(order[:num_eval])
    train_indices = np.sort(order[num_eval:])

  shard = slice(process_index, None, process_count)
  train_examples = _tokenized(train, train_indices[shard], tokenizer, cfg, seq_len, report,
                              "train")
  if not train_examples:
    raise DataConfigError(f"{cfg.train}: no training examples left on process {process_index}: "
                          f"{_why_none_left(report, len(train_indices[shard]), seq_len)} "
                          "(see the data report)")
  eval_examples = (_tokenized(eval_source, eval_indices[shard], tokenizer, cfg, seq_len, report,
                              "eval") if eval_source else [])

  pack_order = np.random.default_rng([int(seed), 1]).permutation(len(train_examples))
  train_rows = _rows(train_examples, seq_len, cfg.packing, pack_order)
  eval_rows = _rows(eval_examples, seq_len, cfg.packing, range(len(eval_examples)))
  data = SFTData(train_examples, train_rows, eval_examples, eval_rows, seq_len,
                 batch_size // process_count, int(seed), report)
  train_tokens = sum(len(example.ids) for example in train_examples)
  report.stats.update({
      "train_rows": len(train_rows),
      "train_tokens": train_tokens,
      "train_target_tokens": data.num_target_tokens,
      "row_fill": train_tokens / (len(train_rows) * seq_len),
      "eval_rows": len(eval_rows),
  })
  return data
