"""SFT data: JSONL / CSV / TFDS sources -> chat-templated, loss-masked, packed batches."""

from ftjax.data.packing import BATCH_KEYS, Example, make_batch, pack_rows, pad_rows
from ftjax.data.pipeline import SFTData, build_sft_data, default_config
from ftjax.data.render import render_example, render_examples
from ftjax.data.report import BadRow, BadRowsError, DataConfigError, DataReport
from ftjax.data.sources import RowError, read_file, to_messages

__all__ = ["BATCH_KEYS", "BadRow", "BadRowsError", "DataConfigError", "DataReport", "Example",
           "RowError", "SFTData", "build_sft_data", "default_config", "make_batch", "pack_rows",
           "pad_rows", "read_file", "render_example", "render_examples", "to_messages"]
