"""Hugging Face checkpoints (safetensors folders, GGUF files) -> ftjax params.

Weights are read tensor by tensor from safetensors (never through pickle). A GGUF file is
dequantized once by `transformers` and cached as a safetensors folder, so later loads are fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ftjax.models import layout
from ftjax.models.layout import expected_tensor_names
from ftjax.models.config import ModelConfig, UnsupportedModelError, from_hf_config
from ftjax.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(ValueError, UserError):
  """A checkpoint folder or file is missing, incomplete or of a refused kind."""


def convert_state(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray], available: set[str],
                  source: str, param_dtype=None) -> dict:
  """Builds the ftjax params tree by pulling HF tensors one at a time through `get_tensor`
  (names and transforms from `ftjax.models.layout`)."""
  missing = [n for n in expected_tensor_names(cfg) if n not in available]
  if missing:
    shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
    raise CheckpointError(f"{source}: checkpoint is missing {len(missing)} tensor(s): {shown}")
  import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
  dtype = np.dtype(param_dtype or cfg.param_dtype)
  return layout.from_hf(cfg, lambda name: np.asarray(get_tensor(name)).astype(dtype, copy=False))


def read_hf_config(folder: Path) -> dict:
  path = folder / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{folder}: no config.json (not a Hugging Face model folder)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise CheckpointError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None


def _safetensors_files(folder: Path) -> list[Path]:
  """The weight files of `folder` (its index's shards, all inside the folder), each checked to
  be as long as its header says: a truncated download fails here, naming the file."""
  def check_length(path: Path):
    """CheckpointError unless `path` holds a readable safetensors header (8-byte length, JSON) and
    at least the bytes its tensors' offsets reach."""
    size = path.stat().st_size
    try:
      with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if size < 8 or header_len > size - 8:
          raise ValueError(f"a header of {header_len} bytes")
        header = json.loads(f.read(header_len))
      end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
                default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
      raise CheckpointError(f"{path}: not a readable safetensors file ({err}); "
                            "download it again") from None
    if size < 8 + header_len + end:
      raise CheckpointError(f"{path}: truncated ({size} bytes, its header needs "
                            f"{8 + header_len + end}); download it again")

  index = folder / "model.safetensors.index.json"
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
      names = set(weight_map.values())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
      raise CheckpointError(f"{index}: unreadable ({type(err).__name__}: {err})") from None
    inside = folder.resolve()
    outside = sorted(str(n) for n in names
                     if not isinstance(n, str) or not (folder / n).resolve().is_relative_to(inside))
    if outside:
      raise CheckpointError(f"{index}: shard file(s) outside the model folder: "
                            f"{', '.join(outside)}")
    files = sorted({folder / f for f in names})
    absent = [f.name for f in files if not f.is_file()]
    if absent:
      raise CheckpointError(f"{index}: shard file(s) listed but not present: {', '.join(absent)}")
  else:
    files = sorted(folder.glob("*.safetensors"))
  for f in files:
    check_length(f)
  return files


def load_params(folder: str | os.PathLike, cfg: ModelConfig | None = None,
                allow_pickle: bool = False, param_dtype=None) -> tuple[ModelConfig, dict]:
  """Reads a HF model folder into (ModelConfig, params as numpy arrays)."""
  folder = Path(folder)
  if not folder.is_dir():
    raise CheckpointError(f"{folder}: no such model folder")
  if cfg is None:
    cfg = from_hf_config(read_hf_config(folder))
  files = _safetensors_files(folder)
  if files:
    from safetensors import safe_open
    handles = {}
    where: dict[str, Path] = {}
    for f in files:
      handles[f] = safe_open(str(f), framework="numpy")
      for key in handles[f].keys():
        where[key] = f

    def get_tensor(name):
      return _read_safetensor(handles[where[name]], where[name], name)

    return cfg, convert_state(cfg, get_tensor, set(where), str(folder), param_dtype)

  pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
  if not pickles:
    raise CheckpointError(f"{folder}: no *.safetensors weights found")
  if not allow_pickle:
    raise CheckpointError(
        f"{folder}: only pickle checkpoint(s) found ({', '.join(p.name for p in pickles)}). "
        "Loading pickles can run arbitrary code, so ftjax refuses by default; convert to "
        "safetensors, or pass allow_pickle=True (--allow_pickle) if you trust this file.")
  import torch  # only for the explicit opt-in path
  state = {}
  for p in pickles:
    state.update(torch.load(p, map_location="cpu", weights_only=True))
  tensors = {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
             for k, v in state.items()}
  return cfg, convert_state(cfg, tensors.__getitem__, set(tensors), str(folder), param_dtype)


def _read_safetensor(handle, path: Path, name: str) -> np.ndarray:
  from safetensors import SafetensorError, safe_open
  try:
    try:
      return handle.get_tensor(name)
    except TypeError:  # bf16 has no numpy dtype: read through JAX, which keeps it as ml_dtypes
      return np.asarray(safe_open(str(path), framework="flax").get_tensor(name))
  except (SafetensorError, OSError) as err:
    raise CheckpointError(f"{path}: cannot read tensor {name} ({err})") from None


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
  """Dequantizes a GGUF file through `transformers` and saves it as a safetensors HF folder."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  folder, name = str(gguf_path.parent), gguf_path.name
  tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  # The weights are dequantized fp32 now: save them as a plain (unquantized) checkpoint.
  model.hf_quantizer = None
  if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
  model.save_pretrained(out_dir)
  tokenizer.save_pretrained(out_dir)
  (out_dir / "ftjax_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
  return out_dir
