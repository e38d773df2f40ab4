"""Checkpoints: model names -> local folders -> (ModelConfig, params, tokenizer), and back out
(`export`: Hugging Face folder, PEFT adapter, GGUF), both through the one table in `layout`."""

from ftjax.checkpoints import layout  # first: ftjax.lora reads its table
from ftjax.checkpoints.hf_import import CheckpointError, load_params
from ftjax.checkpoints.loading import Pretrained, load, load_peft_adapter, load_tokenizer
from ftjax.checkpoints.registry import DEFAULT_ENCODER, DEFAULT_MODEL, REGISTRY, resolve
# The function: it shadows the submodule of the same name (reach that through sys.modules).
from ftjax.checkpoints.export import ExportError, export

__all__ = ["CheckpointError", "DEFAULT_ENCODER", "DEFAULT_MODEL", "ExportError", "Pretrained",
           "REGISTRY", "export", "layout", "load", "load_params", "load_peft_adapter",
           "load_tokenizer", "resolve"]
