"""Where ftjax keeps files between runs; imported by checkpoints/ and data/ alike."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
  """`$FTJAX_CACHE`, default `~/.cache/ftjax`: dequantized GGUF checkpoints, prepared TFDS data."""
  return Path(os.environ.get("FTJAX_CACHE", Path.home() / ".cache" / "ftjax"))
