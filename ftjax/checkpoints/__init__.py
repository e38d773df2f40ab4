"""Checkpoint import: model names -> local folders -> (ModelConfig, params, tokenizer)."""

from ftjax.checkpoints.hf_import import CheckpointError, load_params
from ftjax.checkpoints.loading import Pretrained, load, load_tokenizer
from ftjax.checkpoints.registry import DEFAULT_ENCODER, DEFAULT_MODEL, REGISTRY, resolve

__all__ = ["CheckpointError", "DEFAULT_ENCODER", "DEFAULT_MODEL", "Pretrained", "REGISTRY",
           "load", "load_params", "load_tokenizer", "resolve"]
