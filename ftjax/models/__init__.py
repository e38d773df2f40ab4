"""Models: the decoder (one config dataclass and one Flax module for every supported family) and
the BERT sentence encoder used by dense retrieval (`ftjax.models.bert`), LoRA adapters
(`ftjax.models.lora`) and the one HF <-> ftjax parameter table (`ftjax.models.layout`)."""

from ftjax.models.bert import BertEncoder, Encoder, EncoderConfig
from ftjax.models.config import ModelConfig, UnsupportedModelError, from_hf_config
from ftjax.models.transformer import Transformer, forward, init_cache, init_params, logical_param_specs

__all__ = ["BertEncoder", "Encoder", "EncoderConfig", "ModelConfig", "Transformer",
           "UnsupportedModelError", "forward", "from_hf_config", "init_cache", "init_params",
           "logical_param_specs"]
