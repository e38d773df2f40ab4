"""A GGUF file's Q8_0 projections loaded as ftjax's int8 base (QLoRA) without dequantizing them.

GGUF's Q8_0 and ftjax's int8 (`ftjax.models.quant`, block size 32) are the same format: blocks of
32 consecutive input entries of one output row, each block one scale (absolute maximum / 127;
fp16 in GGUF, fp32 here) and 32 int8 codes. So a Q8_0 projection's codes are used as they are
(transposed into the kernel's layout, llama's Q/K rows put back in Hugging Face order) and its
scales widened to fp32: the weights a model computes with are exactly `scale * code`, the values
`transformers` dequantizes the file to. A projection stored otherwise (F16 rows that do not fill
Q8_0 blocks, Q4 types) is dequantized alone and quantized to int8 like any checkpoint; norms and
embeddings are dequantized (they are not quantized in a QLoRA base). Config and tokenizer are read
from the file's metadata through `transformers`, so the file is never converted to an fp32
folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ftjax.models import layout
from ftjax.models import quant as quant_lib
from ftjax.models.config import ModelConfig

BLOCK = 32  # Q8_0's block: 32 int8 codes after one fp16 scale
FAMILIES = ("llama", "qwen2")


@dataclasses.dataclass
class Loaded:
  config: dict  # the Hugging Face config, read from the file's metadata
  params: dict  # ftjax params, projections as {"codes", "scales"} (numpy)
  direct: int  # projection tensors taken as Q8_0 codes, never dequantized
  requantized: int  # projection tensors of other types, dequantized and quantized to int8


def hf_config(path: Path) -> dict:
  from transformers import AutoConfig
  return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()


def tokenizer(path: Path):
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  if tok.pad_token_id is None:
    tok.pad_token = tok.eos_token
  return tok


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's Q/K row order (rotary pairs interleaved) -> Hugging Face's, for the rows of any
  array (codes or scales): the inverse of `export._llama_permute`."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _q8_0(tensor) -> tuple[np.ndarray, np.ndarray]:
  """A Q8_0 tensor's (codes int8 [rows, cols], scales fp32 [rows, cols / 32])."""
  raw = np.asarray(tensor.data, np.uint8)
  rows = raw.shape[0]
  blocks = raw.reshape(rows, -1, 2 + BLOCK)
  scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
  codes = blocks[..., 2:].copy().view(np.int8).reshape(rows, -1)
  return codes, scales


def _dense(tensor) -> np.ndarray:
  import gguf
  return np.asarray(gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type),
                    np.float32)


def load_int8(path: Path, cfg: ModelConfig, config: dict | None = None) -> Loaded:
  """The params of the GGUF file at `path` for `cfg`, every projection int8 in blocks of 32;
  `config` is the file's Hugging Face config when the caller has read it already (reading the
  metadata costs seconds: a GGUF carries its tokenizer's vocabulary)."""
  import gguf
  if cfg.family not in FAMILIES:
    raise ValueError(f"{cfg.family}: quantized GGUF loading supports {', '.join(FAMILIES)}")
  reader = gguf.GGUFReader(str(path))
  tensors = {t.name: t for t in reader.tensors}
  arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[cfg.family]
  names = gguf.get_tensor_name_map(arch, cfg.num_layers)

  def find(hf_name):
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name not in tensors:
      raise KeyError(f"{path}: no tensor {name} ({hf_name})")
    return tensors[name]

  def heads_of(hf_name):
    if cfg.family != "llama":
      return None
    if hf_name.endswith("q_proj.weight"):
      return cfg.num_heads
    return cfg.num_kv_heads if hf_name.endswith("k_proj.weight") else None

  params: dict = {}
  direct = requantized = 0
  dtype = np.dtype(cfg.param_dtype)
  projections = quant_lib.projections(cfg)
  for row in layout.GLOBAL:
    if row.when(cfg):
      layout.set_path(params, row.path,
                      layout.to_ftjax(cfg, row, _dense(find(row.hf))).astype(dtype))
  for row in layout.LAYER:
    if not row.when(cfg):
      continue
    is_projection = row.layout == "linear" and row.module in projections
    parts = []
    for i in range(cfg.num_layers):
      hf_name = f"model.layers.{i}.{row.hf}"
      tensor, heads = find(hf_name), heads_of(hf_name)
      if is_projection and tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        codes, scales = _q8_0(tensor)
        if heads:
          codes, scales = _unpermute(codes, heads), _unpermute(scales, heads)
        in_shape = layout._shape(cfg, row.in_axes)
        out_shape = layout._shape(cfg, row.out_axes)
        parts.append((codes.T.reshape(*in_shape, *out_shape),
                      scales.T.reshape(*in_shape[:-1], in_shape[-1] // BLOCK, *out_shape)))
        direct += 1
        continue
      w = _dense(tensor)
      if heads:
        w = _unpermute(w, heads)
      w = layout.to_ftjax(cfg, row, w)
      if is_projection:
        codes, scales = quant_lib.quantize(w, mode="int8", block_size=BLOCK,
                                           axis=len(row.in_axes) - 1)
        parts.append((np.asarray(codes), np.asarray(scales)))
        requantized += 1
      else:
        parts.append(w.astype(dtype))
    if is_projection:  # {"codes", "scales"} in place of "kernel", as quant.quantize_params
      module = "layers/" + row.path.rsplit("/", 1)[0]
      layout.set_path(params, module + "/codes", np.stack([c for c, _ in parts]))
      layout.set_path(params, module + "/scales", np.stack([s for _, s in parts]))
    else:
      layout.set_path(params, "layers/" + row.path, np.stack(parts))
  return Loaded(config if config is not None else hf_config(path), params, direct, requantized)
