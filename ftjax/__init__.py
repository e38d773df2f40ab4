"""ftjax: fine-tune pretrained language models in JAX, and measure it against retrieval."""

from ftjax.checkpoints import Pretrained, load, load_tokenizer

__all__ = ["Pretrained", "load", "load_tokenizer"]
__version__ = "0.1.0"
