"""Token-level generation: prefill and decode as separate jit-compiled steps over one KV cache.

The cache slots of a batch, left to right:
  [prompts (left-padded)] [new tokens]
Positions count real tokens only and `kv_valid` masks every padding slot. A `PrefixCache` is
computed once (`prefill_prefix_ids`) and then shared by every row of a batch: attention reads its
keys/values (no batch axis) once per step for all rows, next to each row's own cache, in one
softmax. It is never run through the model again nor copied per row (CAG), so a prompt after a
prefix reads exactly `prefix + prompt` while the batch's cache holds only prompts + new tokens.
With `SamplingConfig.share_prefix` the tokens every prompt of a call begins with (a system prompt,
few-shot turns) become such a prefix, prefilled once instead of once per row.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models.config import ModelConfig
from ftjax.models.transformer import Transformer, init_cache

# Cache lengths are rounded up to a multiple of this, so that fewer shapes compile.
LENGTH_MULTIPLE = 32
SHARED_PREFIX_MIN = 64  # SamplingConfig.share_prefix: shorter shared prefixes are not split off
# (39 shared tokens before ~265 of their own saved nothing on the demo's rag arm: BENCHMARKS.md)


@dataclasses.dataclass
class Timing:
  """Where generation's time went, summed over the `generate_ids` calls inside `timed()`.

  `prefill_s` is the time to first token (the prompt's forward pass up to the first token's
  logits), `decode_s` the rest; `compiled` says a call compiled, so its times include XLA
  compilation and should be measured again."""
  prefill_s: float = 0.0
  decode_s: float = 0.0
  new_tokens: int = 0
  calls: int = 0
  compiled: bool = False

  @property
  def decode_tokens_per_s(self) -> float | None:
    # the first token comes from the prefill's logits; the rest from decode steps
    steps = self.new_tokens - self.calls
    return steps / self.decode_s if self.decode_s > 0 and steps > 0 else None


_TIMING: contextvars.ContextVar[Timing | None] = contextvars.ContextVar("timing", default=None)
_ON_BATCH: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("on_batch",
                                                                          default=None)
_COMPILE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("compile_only",
                                                                    default=False)


@contextlib.contextmanager
def timed() -> Iterator[Timing]:
  """Records prefill and decode seconds of every generation inside the block (blocking on the
  results, as a user waiting for the answer would)."""
  timing = Timing()
  token = _TIMING.set(timing)
  try:
    yield timing
  finally:
    _TIMING.reset(token)


@contextlib.contextmanager
def compile_only() -> Iterator[None]:
  """Inside the block, generation compiles the prefill and decode shapes its batches need (ahead
  of time: `jit(...).lower(...).compile()`, which fills jit's cache) and runs nothing: every
  prompt gets no new tokens. Latency measurements warm up this way instead of answering twice."""
  token = _COMPILE_ONLY.set(True)
  try:
    yield
  finally:
    _COMPILE_ONLY.reset(token)


@contextlib.contextmanager
def on_batch(callback: Callable[[BatchDone], None]) -> Iterator[None]:
  """Calls `callback(BatchDone)` after every batch that `generate_ids` runs inside the block
  (progress lines, per-batch throughput)."""
  token = _ON_BATCH.set(callback)
  try:
    yield
  finally:
    _ON_BATCH.reset(token)


@dataclasses.dataclass(frozen=True)
class BatchDone:
  done: int  # prompts answered so far (padding rows excluded)
  total: int  # prompts in the call
  new_tokens: int  # tokens generated so far for those prompts
  seconds: float  # this batch's wall time
  rows: int  # this batch's rows, padding included


_XLA_COMPILES = [0]  # XLA compilations in this process (a jit cache hit, or one filled ahead by
# `compile_only`, compiles nothing; jit's own cache size counts calls that only re-traced)


def _count_compile(event: str, duration: float, **_) -> None:
  if event == "/jax/core/compile/backend_compile_duration":
    _XLA_COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def _compilations() -> int:
  return _XLA_COMPILES[0]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """The generation defaults, for the Python API and the CLI alike: greedy, 64 new tokens."""
  max_new_tokens: int = 64
  greedy: bool = True
  temperature: float = 1.0
  top_k: int = 0  # 0: no top-k filtering
  top_p: float = 1.0  # 1.0: no nucleus filtering
  seed: int = 0
  stop_strings: tuple[str, ...] = ()
  # Prompts per forward pass; 0: all at once. With more prompts than this, prompts are sorted by
  # length and cut into equal batches (the last padded with repeats), so a batch pads its
  # prompts to similar lengths and every batch has one shape (one compilation per length bucket).
  batch_size: int = 0
  # Prefill the token prefix every prompt of a call shares (a system prompt, few-shot turns, an
  # instruction: at least SHARED_PREFIX_MIN tokens) once, and every row reads it from one cache
  # (`PrefixCache`) instead of recomputing it. Same math; bf16 results round differently.
  share_prefix: bool = False

  def __post_init__(self):
    if self.batch_size < 0:
      raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if not self.greedy and self.temperature <= 0:
      raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixCache:
  """The KV cache of a token prefix (batch 1), reused by every generation that continues it.

  cache: {"k", "v": [layers, 1, kv_heads, slots, head_dim]}; slots >= len(token_ids), the tail
  is padding. `config` and `lora` are what it was computed with: generation checks they match.
  """
  token_ids: tuple[int, ...]
  cache: Any
  config: ModelConfig
  lora: Any = None  # the adapter tree it was computed with (None: the base model)

  @property
  def length(self) -> int:
    return len(self.token_ids)

  @property
  def slots(self) -> int:
    return self.cache["k"].shape[3]

  @property
  def valid(self) -> jax.Array:
    """[slots] bool: which slots hold the prefix's tokens (the tail is padding)."""
    return jnp.asarray(np.arange(self.slots) < self.length)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def variables(params, lora) -> dict:
  return {"params": params} if lora is None else {"params": params, "lora": lora}


def sample_tokens(logits, rng, greedy: bool, temperature, top_k: int, top_p):
  """logits [batch, vocab] fp32 -> token ids [batch]."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  # Nucleus: keep the smallest prefix of sorted tokens whose mass reaches top_p (at least one).
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  cutoff_index = jnp.sum(mass_before < top_p, axis=-1) - 1
  cutoff = jnp.take_along_axis(sorted_logits, cutoff_index[:, None], axis=-1)
  logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def shared_prefix(prefix_cache):
  """A PrefixCache's [layers, 1, slots, ...] arrays as the model's shared [layers, slots, ...]
  prefix (dropping the unit batch axis: a reshape, not a copy), or None."""
  if prefix_cache is None:
    return None
  return jax.tree.map(lambda x: x.reshape(x.shape[:1] + x.shape[2:]), prefix_cache)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_empty"), donate_argnames=("cache",))
def prefill(cfg: ModelConfig, params, lora, cache, tokens, positions, kv_valid, cache_index,
            prefix_cache=None, prefix_valid=None, cache_empty: bool = False):
  """Writes `tokens` [batch, seq] into `cache` from slot `cache_index` in one forward pass.

  positions [batch, seq]; kv_valid [batch, slots]: the slots that hold real tokens after this
  write. `prefix_cache` (a PrefixCache's `cache`, batch 1) and `prefix_valid` [prefix_slots]: a
  prefix that every row reads before its own cache, shared, not copied. `cache_empty` (static):
  nothing has been written to `cache` yet, so its slots are not read. Returns (next-token
  logits [batch, vocab] fp32, the updated cache).
  """
  logits, cache = Transformer(cfg).apply(variables(params, lora), tokens, positions, cache=cache,
                                         cache_index=cache_index, kv_valid=kv_valid,
                                         last_only=True, prefix=shared_prefix(prefix_cache),
                                         prefix_valid=prefix_valid, cache_empty=cache_empty)
  return logits[:, -1], cache


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "top_k"),
                   donate_argnames=("cache",))
def decode(cfg: ModelConfig, params, lora, cache, logits, position, kv_valid, start, rng,
           temperature, top_p, eos_ids, pad_id, prefix_cache=None, prefix_valid=None, *,
           max_new_tokens: int, greedy: bool, top_k: int):
  """Samples from `logits` (a prefill's), feeding each new token back at slots `start`, +1, ...

  position [batch]: the first new token's position. Runs in one `lax.while_loop` until every row
  has produced an EOS token or `max_new_tokens`. `prefix_cache`, `prefix_valid`: as `prefill`'s.
  Returns (tokens [batch, max_new_tokens] padded with pad_id, lengths [batch], the cache); the
  cache is donated, so it is updated in place.
  """
  model = Transformer(cfg)
  model_variables = variables(params, lora)
  prefix = shared_prefix(prefix_cache)
  batch = logits.shape[0]
  state = dict(step=jnp.zeros((), jnp.int32), cache=cache, logits=logits, position=position,
               kv_valid=kv_valid, done=jnp.zeros((batch,), bool),
               lengths=jnp.zeros((batch,), jnp.int32),
               out=jnp.full((batch, max_new_tokens), pad_id, jnp.int32))

  def cond(s):
    return (s["step"] < max_new_tokens) & ~jnp.all(s["done"])

  def body(s):
    step = s["step"]
    token = sample_tokens(s["logits"], jax.random.fold_in(rng, step), greedy, temperature, top_k,
                          top_p)
    token = jnp.where(s["done"], pad_id, token)
    lengths = s["lengths"] + (~s["done"]).astype(jnp.int32)
    done = s["done"] | jnp.isin(token, eos_ids)
    slot = start + step
    kv_valid = s["kv_valid"].at[:, slot].set(True)
    logits, cache = model.apply(model_variables, token[:, None], s["position"][:, None],
                                cache=s["cache"], cache_index=slot, kv_valid=kv_valid,
                                prefix=prefix, prefix_valid=prefix_valid)
    return dict(step=step + 1, cache=cache, logits=logits[:, -1], position=s["position"] + 1,
                kv_valid=kv_valid, done=done, lengths=lengths,
                out=s["out"].at[:, step].set(token))

  state = jax.lax.while_loop(cond, body, state)
  return state["out"], state["lengths"], state["cache"]


def prefill_prefix_ids(cfg: ModelConfig, params, prefix_ids: Sequence[int], lora=None,
                       chunk_size: int = 512) -> PrefixCache:
  """The KV cache of `prefix_ids`, prefilled `chunk_size` tokens at a time (bounded memory).

  As `generate_ids`: a raw adapter tree `lora` is applied at `cfg.lora_scale`.
  """
  ids = tuple(int(t) for t in prefix_ids)
  if not ids:
    raise ValueError("the prefix is empty")
  if len(ids) >= cfg.max_position_embeddings:
    raise ValueError(f"the prefix ({len(ids)} tokens) fills the model's context of "
                     f"{cfg.max_position_embeddings}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  slots = _round_up(len(ids), LENGTH_MULTIPLE)
  tokens = np.zeros((1, slots), np.int32)  # the padding's token id does not matter: it is masked
  tokens[0, :len(ids)] = ids
  positions = np.arange(slots, dtype=np.int32)[None]
  kv_valid = (np.arange(slots) < len(ids))[None]
  cache = init_cache(cfg, 1, slots)
  for start in range(0, slots, chunk_size):
    end = min(start + chunk_size, slots)
    _, cache = prefill(cfg, params, lora, cache, tokens[:, start:end], positions[:, start:end],
                       kv_valid, jnp.int32(start), cache_empty=start == 0)
  return PrefixCache(ids, cache, cfg, lora)


def shared_prefix_length(prompt_ids: Sequence[Sequence[int]]) -> int:
  """Tokens every prompt begins with, leaving each prompt at least one token of its own (its
  last token's logits start its generation)."""
  return min(len(os.path.commonprefix([list(p) for p in prompt_ids])),
             min(len(p) for p in prompt_ids) - 1)


def _check_prefix(prefix: PrefixCache, cfg: ModelConfig, lora) -> None:
  if not isinstance(prefix, PrefixCache):
    raise TypeError(f"prefix must be a PrefixCache (from prefill_prefix), got {type(prefix)}")
  if prefix.config != cfg:
    raise ValueError("the prefix cache was prefilled with a different model config (model, "
                     "dtype or LoRA scale); prefill it with the model that generates")
  if prefix.lora is not lora:
    raise ValueError("the prefix cache was prefilled with other LoRA adapters (or with none / "
                     "with some); prefill it with the same adapters as generation")


def generate_ids(cfg: ModelConfig, params, prompt_ids: Sequence[Sequence[int]],
                 sampling: SamplingConfig, eos_ids: Sequence[int], pad_id: int = 0,
                 lora=None, length_multiple: int = LENGTH_MULTIPLE,
                 prefix: PrefixCache | None = None) -> list[list[int]]:
  """Token-level generation: prompt ids in, generated ids out (EOS included if produced), in
  the prompts' order.

  `lora` is a raw adapter tree applied at `cfg.lora_scale`, so `cfg` must carry the adapters'
  scale (`Adapters.model_config(cfg)`; `generate` does this). With `prefix`, every prompt
  continues `prefix.token_ids`: the model reads `prefix.token_ids + prompt` and the prefix's
  cache is reused, not recomputed. More prompts than `sampling.batch_size` run in batches of
  prompts of similar length (see `SamplingConfig.batch_size`).
  """
  if not prompt_ids:
    return []
  if sampling.share_prefix and prefix is None and len(prompt_ids) > 1:
    shared = shared_prefix_length(prompt_ids)
    if shared >= SHARED_PREFIX_MIN:
      prefix = prefill_prefix_ids(cfg, params, prompt_ids[0][:shared], lora=lora)
      prompt_ids = [p[shared:] for p in prompt_ids]
  cached = 0
  if prefix is not None:
    _check_prefix(prefix, cfg, lora)
    cached = prefix.length
  longest = max(len(p) for p in prompt_ids)
  if cached + longest + sampling.max_new_tokens > cfg.max_position_embeddings:
    raise ValueError(f"prefix ({cached} tokens) + prompt ({longest} tokens) + max_new_tokens "
                     f"({sampling.max_new_tokens}) exceeds the model's context of "
                     f"{cfg.max_position_embeddings}")
  total = len(prompt_ids)
  num_batches = -(-total // sampling.batch_size) if sampling.batch_size else 1
  size = -(-total // num_batches)  # equal batches: 83 prompts at 32 run as 3 x 28, not 32+32+19
  order = sorted(range(total), key=lambda i: len(prompt_ids[i])) if num_batches > 1 \
      else list(range(total))
  outputs: list[list[int] | None] = [None] * total
  done = new_tokens = 0
  callback = _ON_BATCH.get()
  for at in range(0, total, size):
    rows = order[at:at + size]
    batch = [prompt_ids[i] for i in rows]
    if num_batches > 1:  # one shape for every batch: pad with repeats of its first prompt
      batch += [batch[0]] * (size - len(batch))
    started = time.perf_counter()
    out = _generate_batch(cfg, params, batch, sampling, eos_ids, pad_id, lora, length_multiple,
                          prefix)
    for i, ids in zip(rows, out):
      outputs[i] = ids
    done += len(rows)
    new_tokens += sum(len(ids) for ids in out[:len(rows)])
    if callback is not None:
      callback(BatchDone(done, total, new_tokens, time.perf_counter() - started, len(batch)))
  return outputs


def _generate_batch(cfg: ModelConfig, params, prompt_ids: Sequence[Sequence[int]],
                    sampling: SamplingConfig, eos_ids: Sequence[int], pad_id: int, lora,
                    length_multiple: int, prefix: PrefixCache | None) -> list[list[int]]:
  """One forward batch of `generate_ids` (checked there): left-padded prompts, prefill, decode."""
  cached = prefix.length if prefix is not None else 0
  longest = max(len(p) for p in prompt_ids)
  batch = len(prompt_ids)
  prompt_len = _round_up(longest, length_multiple)
  # The batch's cache holds the prompts and new tokens only: a prefix is shared, not copied.
  slots = prompt_len + sampling.max_new_tokens
  tokens = np.full((batch, prompt_len), pad_id, np.int32)
  valid = np.zeros((batch, prompt_len), bool)
  for row, ids in enumerate(prompt_ids):
    tokens[row, prompt_len - len(ids):] = ids
    valid[row, prompt_len - len(ids):] = True
  positions = (cached + np.maximum(np.cumsum(valid, axis=-1) - 1, 0)).astype(np.int32)
  kv_valid = np.zeros((batch, slots), bool)
  kv_valid[:, :prompt_len] = valid
  cache = init_cache(cfg, batch, slots)
  prefix_cache, prefix_valid = (prefix.cache, prefix.valid) if prefix is not None else (None, None)
  prefill_args = (cfg, params, lora, cache, tokens, positions, kv_valid, jnp.int32(0),
                  prefix_cache, prefix_valid)

  def decode_args(logits):
    return (cfg, params, lora, cache, logits, positions[:, -1] + 1, kv_valid,
            jnp.int32(prompt_len), jax.random.PRNGKey(sampling.seed),
            jnp.float32(sampling.temperature), jnp.float32(sampling.top_p),
            jnp.asarray(list(eos_ids) or [-1], jnp.int32), jnp.int32(pad_id), prefix_cache,
            prefix_valid)
  decode_kwargs = dict(max_new_tokens=sampling.max_new_tokens, greedy=sampling.greedy,
                       top_k=sampling.top_k)
  if _COMPILE_ONLY.get():  # the same calls, lowered and compiled (jit reuses them), not run
    prefill.lower(*prefill_args, cache_empty=True).compile()
    decode.lower(*decode_args(jnp.zeros((batch, cfg.vocab_size), jnp.float32)),
                 **decode_kwargs).compile()
    return [[] for _ in range(batch)]
  timing = _TIMING.get()
  if timing is not None:
    compiled_before, started = _compilations(), time.perf_counter()
  logits, cache = prefill(*prefill_args, cache_empty=True)
  if timing is not None:
    logits.block_until_ready()
    first_token = time.perf_counter()
  out, lengths, _ = decode(*decode_args(logits), **decode_kwargs)
  out, lengths = np.asarray(out), np.asarray(lengths)
  if timing is not None:
    timing.prefill_s += first_token - started
    timing.decode_s += time.perf_counter() - first_token
    timing.new_tokens += int(lengths.sum())
    timing.calls += batch
    timing.compiled |= _compilations() != compiled_before
  return [out[row, :lengths[row]].tolist() for row in range(batch)]
