"""What every stage of an experiment shares: the config, the data, the stage cache, the progress
line, the base model (loaded once) and its key (a local folder's weights hashed)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import ml_collections

from ftjax.experiment import data as data_lib
from ftjax.experiment.cache import StageCache
from ftjax.generation import SamplingConfig

SPLITS = ("eval", "unanswerable", "general")


class Progress:
  """One line per batch: arm, stage, questions done, tokens/s, ETA."""

  def __init__(self, stream=sys.stdout):
    self.stream = stream
    self.started = time.perf_counter()

  def say(self, text: str):
    elapsed = time.perf_counter() - self.started
    print(f"{elapsed:6.0f}s {text}", file=self.stream, flush=True)

  def batch(self, arm: str, stage: str, done: int, total: int, tokens: int, seconds: float):
    rate = tokens / seconds if seconds else 0.0
    eta = seconds / done * (total - done) if done else 0.0
    self.say(f"[{arm}] {stage}: {done}/{total} questions, {rate:,.0f} tok/s, ETA {eta:.0f}s")


@dataclasses.dataclass
class Context:
  config: ml_collections.ConfigDict
  data: data_lib.ExperimentData
  cache: StageCache
  progress: Progress
  _base: Any = None
  _indexes: dict = dataclasses.field(default_factory=dict)
  _tuned: dict = dataclasses.field(default_factory=dict)

  _weights: Any = None

  @property
  def model_key(self) -> dict:
    """The model's name, dtype and, for a local folder or file, a hash of its weight files: a
    folder whose weights change in place is a new model to every stage that uses it."""
    if self._weights is None:
      self._weights = weights_digest(self.config.model)
    return {"model": self.config.model, "dtype": self.config.dtype, "weights": self._weights}

  def base_model(self):
    if self._base is None:
      import ftjax
      self.progress.say(f"loading {self.config.model} ({self.config.dtype})")
      self._base = ftjax.load(self.config.model, dtype=self.config.dtype)
    return self._base

  def sampling(self, **overrides) -> SamplingConfig:
    s = self.config.sampling
    fields = dict(max_new_tokens=s.max_new_tokens, greedy=s.greedy, temperature=s.temperature,
                  top_k=s.top_k, top_p=s.top_p, seed=self.config.seed, batch_size=s.batch_size,
                  share_prefix=s.get("share_prefix", False))
    fields.update(overrides)
    return SamplingConfig(**fields)


def weights_digest(model: str) -> str:
  """sha256 over a local model's config and weight files (names and contents); "" for a
  registered or hub model (a registered model is versioned by its package)."""
  import hashlib
  from ftjax.checkpoints.registry import REGISTRY
  path = Path(model).expanduser()
  if model in REGISTRY or not path.exists():
    return ""
  files = [path] if path.is_file() else sorted(
      f for f in path.iterdir() if f.is_file() and (f.name == "config.json" or f.suffix in (
          ".safetensors", ".gguf", ".bin", ".pt", ".pth", ".npz", ".msgpack")))
  h = hashlib.sha256()
  for f in files:
    h.update(f.name.encode())
    with f.open("rb") as stream:
      for block in iter(lambda: stream.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()[:16]
