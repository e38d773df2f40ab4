"""Generation: the one decoding path used by the CLI, RAG, CAG and evaluation.

Prompts are sorted by length into batches of `SamplingConfig.batch_size` (all in one by default)
and left-padded within a batch; `prefill` writes them into a KV
cache in one forward pass, then `decode` samples in a jit-compiled `lax.while_loop` until every
row has produced an EOS token or `max_new_tokens`. Stop strings are applied to the decoded text.
A `PrefixCache` (`prefill_prefix`) holds a prefix prefilled once, e.g. a whole corpus, that every
prompt then continues (cache-augmented generation).
"""

from ftjax.generation.decoding import (LENGTH_MULTIPLE, BatchDone, PrefixCache, SamplingConfig,
                                       decode, generate_ids, on_batch, prefill, prefill_prefix_ids,
                                       sample_tokens)
from ftjax.generation.text import (Completion, Prompt, chat_prefix_split, encode_prompts,
                                   eos_token_ids, generate, prefill_prefix)

__all__ = [
    "LENGTH_MULTIPLE", "BatchDone", "Completion", "PrefixCache", "Prompt", "SamplingConfig",
    "chat_prefix_split", "decode", "encode_prompts", "eos_token_ids", "generate", "generate_ids",
    "on_batch", "prefill", "prefill_prefix", "prefill_prefix_ids", "sample_tokens",
]
