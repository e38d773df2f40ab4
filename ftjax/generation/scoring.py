"""Scoring text instead of generating it: log p(continuation | context) under a model (its LoRA
adapters applied), and whether greedy decoding would produce the continuation. The one
implementation behind lm_eval's loglikelihood requests (`ftjax.evaluation.harness`) and the
security measurement's canary ranks (`ftjax.experiment.security`).

Rows are sorted longest first and batched right-padded to a multiple of LENGTH_MULTIPLE
positions, each batch filled to `batch_size` rows, so a run compiles few shapes; padding is
masked by `segment_ids`. Many continuations of one context (`continuation_logprobs`: a canary's
candidates) run the context once, as a shared prefix cache, and only the continuations per row.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.generation.decoding import (LENGTH_MULTIPLE, prefill_prefix_ids, shared_prefix,
                                       variables)
from ftjax.models.transformer import Transformer, forward, init_cache


CONTINUATION_MULTIPLE = 8  # rows of continuations alone are short (a canary's secret: ~15 tokens)


def _target_scores(logits, targets):
  """logits [batch, seq, vocab] -> (log p(target), target is the argmax): [batch, seq] each."""
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  target_logprob = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
  return target_logprob, jnp.argmax(logits, axis=-1) == targets


@functools.partial(jax.jit, static_argnums=0)
def token_logprobs(cfg, params, lora, tokens, segment_ids, targets):
  """log p(target) and whether target is the argmax, at every position: [batch, seq] each."""
  return _target_scores(forward(cfg, params, tokens, segment_ids=segment_ids, lora=lora),
                        targets)


@functools.partial(jax.jit, static_argnums=0)
def token_logprobs_after_prefix(cfg, params, lora, prefix_cache, prefix_valid, tokens, valid,
                                targets):
  """As `token_logprobs`, every row continuing one prefix (a `PrefixCache`'s `cache`, its
  `prefix_valid` [prefix_slots]) that is read from its cache, not run again. Rows are
  right-padded: `valid` [batch, seq] marks their tokens."""
  batch, seq = tokens.shape
  positions = jnp.sum(prefix_valid, dtype=jnp.int32) + jnp.broadcast_to(
      jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  logits, _ = Transformer(cfg).apply(
      variables(params, lora), tokens, positions, cache=init_cache(cfg, batch, seq),
      cache_index=jnp.int32(0), kv_valid=valid, prefix=shared_prefix(prefix_cache),
      prefix_valid=prefix_valid, cache_empty=True)
  return _target_scores(logits, targets)


def model_config_and_lora(model):
  """(the config to run, the adapter params or None): adapters at their own scale."""
  if getattr(model, "adapters", None) is None:
    return model.config, None
  return model.adapters.model_config(model.config), model.adapters.params


def continuation_scores(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                        batch_size: int = 16, max_length: int | None = None
                        ) -> list[tuple[float, bool]]:
  """(log p(continuation | context), the continuation is greedy) for each (context ids,
  continuation ids) pair; both non-empty. Pairs longer than `max_length` + 1 tokens (default:
  the model's context) lose tokens on the left, as lm_eval's hf backend does."""
  cfg, lora = model_config_and_lora(model)
  max_length = max_length or cfg.max_position_embeddings
  rows = []  # (input ids, target ids, continuation length)
  for context, continuation in pairs:
    if not len(context) or not len(continuation):
      raise ValueError("scoring needs a non-empty context and continuation")
    whole = (list(context) + list(continuation))[-(max_length + 1):]
    rows.append((whole[:-1], whole[1:], min(len(continuation), len(whole) - 1)))
  order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # longest first
  results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    length = min(-(-len(rows[chunk[0]][0]) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE, max_length)
    tokens = np.zeros((batch_size, length), np.int32)  # padded rows: fewer compiles
    targets = np.zeros_like(tokens)
    segment_ids = np.zeros_like(tokens)
    segment_ids[:, 0] = 1  # keeps rows of padding from attending to nothing
    for row, index in enumerate(chunk):
      inputs, target_ids, _ = rows[index]
      tokens[row, :len(inputs)] = inputs
      targets[row, :len(inputs)] = target_ids
      segment_ids[row, :len(inputs)] = 1
    logprob, greedy = jax.device_get(token_logprobs(cfg, model.params, lora, tokens,
                                                    segment_ids, targets))
    for row, index in enumerate(chunk):
      inputs, _, continuation_length = rows[index]
      span = slice(len(inputs) - continuation_length, len(inputs))
      results[index] = (float(np.sum(logprob[row, span], dtype=np.float64)),
                        bool(np.all(greedy[row, span])))
  return results


def continuation_logprobs(model, prompt_ids: Sequence[int],
                          continuations: Sequence[Sequence[int]], batch_size: int = 16
                          ) -> list[float]:
  """log p(continuation | prompt), one per continuation. The prompt but its last token is
  prefilled once and shared by every row (`token_logprobs_after_prefix`); each row reads the
  prompt's last token and its continuation."""
  cfg, lora = model_config_and_lora(model)
  longest = max((len(c) for c in continuations), default=0)
  if (len(continuations) < 2 or len(prompt_ids) < 2 or min(len(c) for c in continuations) < 1
      or len(prompt_ids) + longest > cfg.max_position_embeddings):
    return [logprob for logprob, _ in continuation_scores(
        model, [(prompt_ids, c) for c in continuations], batch_size=batch_size)]
  prefix = prefill_prefix_ids(cfg, model.params, prompt_ids[:-1], lora=lora)
  length = -(-longest // CONTINUATION_MULTIPLE) * CONTINUATION_MULTIPLE
  out = []
  for start in range(0, len(continuations), batch_size):
    chunk = continuations[start:start + batch_size]
    tokens = np.zeros((batch_size, length), np.int32)  # padded rows: one shape
    targets = np.zeros_like(tokens)
    valid = np.zeros(tokens.shape, bool)
    valid[:, 0] = True  # keeps rows of padding from attending to nothing
    for row, continuation in enumerate(chunk):
      inputs = [prompt_ids[-1], *continuation[:-1]]
      tokens[row, :len(inputs)] = inputs
      targets[row, :len(inputs)] = continuation
      valid[row, :len(inputs)] = True
    logprob = np.asarray(token_logprobs_after_prefix(cfg, model.params, lora, prefix.cache,
                                                     prefix.valid, tokens, valid, targets)[0])
    out += [float(np.sum(logprob[row, :len(c)], dtype=np.float64))
            for row, c in enumerate(chunk)]
  return out
