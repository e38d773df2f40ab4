"""Decoder models: one config dataclass and one Flax module for every supported family."""

from ftjax.models.config import ModelConfig, UnsupportedModelError, from_hf_config
from ftjax.models.transformer import Transformer, forward, init_cache, init_params, logical_param_specs

__all__ = ["ModelConfig", "Transformer", "UnsupportedModelError", "forward", "from_hf_config",
           "init_cache", "init_params", "logical_param_specs"]
