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

from ftjax.models.config import ModelConfig, UnsupportedModelError, from_hf_config

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(ValueError):
  """A checkpoint folder or file is missing, incomplete or of a refused kind."""


def _layer_map(cfg: ModelConfig) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
  """HF per-layer tensor name -> (ftjax param path under `layers`, HF->ftjax transform)."""
  e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  m: dict[str, tuple[str, Callable]] = {
      "self_attn.q_proj.weight": ("self_attn/q_proj/kernel", lambda w: w.T.reshape(e, h, d)),
      "self_attn.k_proj.weight": ("self_attn/k_proj/kernel", lambda w: w.T.reshape(e, kv, d)),
      "self_attn.v_proj.weight": ("self_attn/v_proj/kernel", lambda w: w.T.reshape(e, kv, d)),
      "self_attn.o_proj.weight": ("self_attn/o_proj/kernel", lambda w: w.T.reshape(h, d, e)),
      "mlp.gate_proj.weight": ("mlp/gate_proj/kernel", lambda w: w.T),
      "mlp.up_proj.weight": ("mlp/up_proj/kernel", lambda w: w.T),
      "mlp.down_proj.weight": ("mlp/down_proj/kernel", lambda w: w.T),
      "input_layernorm.weight": ("input_layernorm/scale", lambda w: w),
      "post_attention_layernorm.weight": ("post_attention_layernorm/scale", lambda w: w),
  }
  if cfg.qkv_bias:
    m["self_attn.q_proj.bias"] = ("self_attn/q_proj/bias", lambda w: w.reshape(h, d))
    m["self_attn.k_proj.bias"] = ("self_attn/k_proj/bias", lambda w: w.reshape(kv, d))
    m["self_attn.v_proj.bias"] = ("self_attn/v_proj/bias", lambda w: w.reshape(kv, d))
  if cfg.o_bias:
    m["self_attn.o_proj.bias"] = ("self_attn/o_proj/bias", lambda w: w)
  if cfg.mlp_bias:
    for name in ("gate_proj", "up_proj", "down_proj"):
      m[f"mlp.{name}.bias"] = (f"mlp/{name}/bias", lambda w: w)
  if cfg.qk_norm:
    m["self_attn.q_norm.weight"] = ("self_attn/q_norm/scale", lambda w: w)
    m["self_attn.k_norm.weight"] = ("self_attn/k_norm/scale", lambda w: w)
  if cfg.post_norms:
    m["pre_feedforward_layernorm.weight"] = ("pre_feedforward_layernorm/scale", lambda w: w)
    m["post_feedforward_layernorm.weight"] = ("post_feedforward_layernorm/scale", lambda w: w)
  return m


def expected_tensor_names(cfg: ModelConfig) -> list[str]:
  names = ["model.embed_tokens.weight", "model.norm.weight"]
  if not cfg.tie_word_embeddings:
    names.append("lm_head.weight")
  for i in range(cfg.num_layers):
    names += [f"model.layers.{i}.{n}" for n in _layer_map(cfg)]
  return names


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def convert_state(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray], available: set[str],
                  source: str, param_dtype=None) -> dict:
  """Builds the ftjax params tree by pulling HF tensors one at a time through `get_tensor`."""
  missing = [n for n in expected_tensor_names(cfg) if n not in available]
  if missing:
    shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
    raise CheckpointError(f"{source}: checkpoint is missing {len(missing)} tensor(s): {shown}")
  import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
  dtype = np.dtype(param_dtype or cfg.param_dtype)

  def fetch(name):
    return np.asarray(get_tensor(name)).astype(dtype, copy=False)

  params: dict = {}
  params["embedding"] = fetch("model.embed_tokens.weight")
  params["final_norm"] = {"scale": fetch("model.norm.weight")}
  if not cfg.tie_word_embeddings:
    params["lm_head"] = fetch("lm_head.weight").T
  for hf_name, (path, fn) in _layer_map(cfg).items():
    stacked = np.stack([fn(fetch(f"model.layers.{i}.{hf_name}")) for i in range(cfg.num_layers)])
    _set(params, "layers/" + path, stacked)
  return params


def read_hf_config(folder: Path) -> dict:
  path = folder / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{folder}: no config.json (not a Hugging Face model folder)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise CheckpointError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None


def _safetensors_files(folder: Path) -> list[Path]:
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    files = sorted({folder / f for f in weight_map.values()})
    absent = [f.name for f in files if not f.is_file()]
    if absent:
      raise CheckpointError(f"{index}: shard file(s) listed but not present: {', '.join(absent)}")
    return files
  return sorted(folder.glob("*.safetensors"))


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
  try:
    return handle.get_tensor(name)
  except TypeError:  # bf16 has no numpy dtype: read through JAX, which keeps it as ml_dtypes
    from safetensors import safe_open
    return np.asarray(safe_open(str(path), framework="flax").get_tensor(name))


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
