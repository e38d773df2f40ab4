"""Checkpoints: model names -> local folders -> (ModelConfig, params, tokenizer), and back out
(`export`: Hugging Face folder, PEFT adapter, GGUF), both through the one table in
`ftjax.models.layout`."""

from ftjax.checkpoints.hf_import import CheckpointError, load_params
from ftjax.checkpoints.loading import (Pretrained, load, load_peft_adapter, load_tokenizer,
                                      model_config)
from ftjax.checkpoints.registry import DEFAULT_ENCODER, DEFAULT_MODEL, REGISTRY, resolve
from ftjax.checkpoints.encoder import load_encoder
# The function: it shadows the submodule of the same name (reach that through sys.modules).
from ftjax.checkpoints.export import ExportError, export

__all__ = ["CheckpointError", "DEFAULT_ENCODER", "DEFAULT_MODEL", "ExportError", "Pretrained",
           "REGISTRY", "export", "load", "load_params", "load_peft_adapter",
           "load_encoder", "load_tokenizer", "model_config", "resolve"]
