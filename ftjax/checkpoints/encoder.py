"""BERT sentence encoders from a folder (all-MiniLM-L6-v2 and other BERT checkpoints).

config.json (+ sentence_bert_config.json, 1_Pooling) -> `EncoderConfig`; model.safetensors read
tensor by tensor (no pickle) through one HF -> Flax mapping into the params of
`ftjax.models.bert.BertEncoder`; `load_encoder` adds the tokenizer and resolves registered names.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.checkpoints.hf_import import CheckpointError
from ftjax.checkpoints.registry import DEFAULT_ENCODER, resolve
from ftjax.models.bert import Encoder, EncoderConfig


def config_from_folder(folder: Path) -> EncoderConfig:
  """Reads config.json (+ sentence_bert_config.json and 1_Pooling when present)."""
  hf = json.loads((folder / "config.json").read_text())
  if hf.get("model_type") != "bert":
    raise CheckpointError(f"{folder}: model_type {hf.get('model_type')!r}; only BERT encoders "
                          "are supported")
  if hf.get("position_embedding_type", "absolute") != "absolute" or hf.get("hidden_act") != "gelu":
    raise CheckpointError(f"{folder}: only absolute positions and exact GELU are supported")
  pooling = folder / "1_Pooling" / "config.json"
  if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
    raise CheckpointError(f"{pooling}: only mean pooling is supported")
  st = folder / "sentence_bert_config.json"
  max_seq = json.loads(st.read_text())["max_seq_length"] if st.is_file() else None
  return EncoderConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf["max_position_embeddings"],
      type_vocab_size=hf["type_vocab_size"], layer_norm_eps=hf["layer_norm_eps"],
      max_seq_length=min(max_seq or hf["max_position_embeddings"], hf["max_position_embeddings"]))


def _hf_layer_map(cfg: EncoderConfig) -> dict[str, tuple[str, Any]]:
  """HF per-layer tensor name -> (param path under `layers`, HF->Flax transform)."""
  e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  m = {}
  for name in ("query", "key", "value"):
    m[f"attention.self.{name}.weight"] = (f"{name}/kernel", lambda w: w.T.reshape(e, h, d))
    m[f"attention.self.{name}.bias"] = (f"{name}/bias", lambda w: w.reshape(h, d))
  m["attention.output.dense.weight"] = ("attention_out/kernel", lambda w: w.T.reshape(h, d, e))
  m["attention.output.dense.bias"] = ("attention_out/bias", lambda w: w)
  m["attention.output.LayerNorm.weight"] = ("attention_norm/scale", lambda w: w)
  m["attention.output.LayerNorm.bias"] = ("attention_norm/bias", lambda w: w)
  m["intermediate.dense.weight"] = ("intermediate/kernel", lambda w: w.T)
  m["intermediate.dense.bias"] = ("intermediate/bias", lambda w: w)
  m["output.dense.weight"] = ("output/kernel", lambda w: w.T)
  m["output.dense.bias"] = ("output/bias", lambda w: w)
  m["output.LayerNorm.weight"] = ("output_norm/scale", lambda w: w)
  m["output.LayerNorm.bias"] = ("output_norm/bias", lambda w: w)
  return m


def load_params(folder: Path, cfg: EncoderConfig) -> dict:
  """BERT weights from model.safetensors (read tensor by tensor, no pickle) -> params pytree."""
  from safetensors import safe_open
  path = folder / "model.safetensors"
  if not path.is_file():
    raise CheckpointError(f"{folder}: no model.safetensors (pickle checkpoints are refused)")
  with safe_open(str(path), framework="numpy") as f:
    names = set(f.keys())
    # Some exports prefix every tensor with "bert.".
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in names else ""

    def get(name):
      if prefix + name not in names:
        raise CheckpointError(f"{path}: missing tensor {prefix + name}")
      return np.asarray(f.get_tensor(prefix + name), np.float32)

    params = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embedding_norm": {"scale": get("embeddings.LayerNorm.weight"),
                           "bias": get("embeddings.LayerNorm.bias")},
        "layers": {},
    }
    for hf_name, (path_in_layer, fn) in _hf_layer_map(cfg).items():
      module, leaf = path_in_layer.split("/")
      stacked = np.stack([fn(get(f"encoder.layer.{i}.{hf_name}")) for i in range(cfg.num_layers)])
      params["layers"].setdefault(module, {})[leaf] = stacked
  return params


def load_encoder(name_or_path: str | os.PathLike | None = None, dtype: str = "float32"
                 ) -> Encoder:
  """Loads a BERT sentence encoder (registered name, local folder or hub id); None loads
  `DEFAULT_ENCODER`."""
  from transformers import AutoTokenizer  # heavy: only when an encoder is loaded
  name_or_path = DEFAULT_ENCODER if name_or_path is None else name_or_path
  folder = resolve(name_or_path)
  cfg = dataclasses.replace(config_from_folder(folder), dtype=dtype)
  params = jax.tree.map(jnp.asarray, load_params(folder, cfg))
  tokenizer = AutoTokenizer.from_pretrained(str(folder))
  return Encoder(cfg, params, tokenizer, str(name_or_path))
