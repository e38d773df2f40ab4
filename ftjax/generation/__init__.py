"""Generation: the one decoding path used by the CLI, RAG, CAG and evaluation.

Prompts of different lengths are left-padded into one batch; `prefill` writes them into a KV
cache in one forward pass, then `decode` samples in a jit-compiled `lax.while_loop` until every
row has produced an EOS token or `max_new_tokens`. Stop strings are applied to the decoded text.
A `PrefixCache` (`prefill_prefix`) holds a prefix prefilled once, e.g. a whole corpus, that every
prompt then continues (cache-augmented generation).
"""

from ftjax.generation.decoding import (LENGTH_MULTIPLE, PrefixCache, SamplingConfig, decode,
                                       generate_ids, prefill, prefill_prefix_ids, sample_tokens)
from ftjax.generation.text import (Completion, Prompt, chat_prefix_split, encode_prompts,
                                   eos_token_ids, generate, prefill_prefix)

__all__ = [
    "LENGTH_MULTIPLE", "Completion", "PrefixCache", "Prompt", "SamplingConfig",
    "chat_prefix_split", "decode", "encode_prompts", "eos_token_ids", "generate", "generate_ids",
    "prefill", "prefill_prefix", "prefill_prefix_ids", "sample_tokens",
]
