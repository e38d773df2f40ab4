"""`load(name_or_path)` -> Pretrained(config, params, tokenizer): the entry point for every tool."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ftjax.checkpoints.hf_import import CheckpointError, load_params, read_hf_config
from ftjax.checkpoints.registry import resolve
from ftjax.models.config import ModelConfig, from_hf_config


class Pretrained(NamedTuple):
  """A loaded model. `adapters` (a `ftjax.lora.Adapters`, or None) are applied by everything
  that takes a model (generation, RAG, evaluation) at their own scale; `config` is the base's."""
  config: ModelConfig
  params: Any
  tokenizer: Any
  adapters: Any = None


def load_tokenizer(name_or_path: str | os.PathLike):
  """The tokenizer (with chat template) that ships beside the weights."""
  from transformers import AutoTokenizer
  folder = resolve(name_or_path)
  try:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
  except (OSError, ValueError) as err:
    raise CheckpointError(f"{folder}: could not load a tokenizer ({err})") from err
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer


def load(name_or_path: str | os.PathLike = "smollm2-135m-instruct", *, dtype: str = "float32",
         param_dtype: str = "float32", allow_pickle: bool = False, tokenizer: bool = True,
         device_put: bool = True, **config_overrides) -> Pretrained:
  """Loads a pretrained decoder by registered name, local folder / .gguf file, or hub id.

  `dtype` is the compute dtype (e.g. "bfloat16"); `param_dtype` the storage dtype of params.
  Returns params as a plain pytree of jax arrays (numpy if `device_put=False`).
  """
  folder = resolve(name_or_path)
  cfg = from_hf_config(read_hf_config(folder), dtype=dtype, param_dtype=param_dtype,
                       **config_overrides)
  cfg, params = load_params(folder, cfg, allow_pickle=allow_pickle)
  if device_put:
    params = jax.tree.map(jnp.asarray, params)
  return Pretrained(cfg, params, load_tokenizer(folder) if tokenizer else None)
