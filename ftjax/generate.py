"""Text generation: the one decoding path used by the CLI, RAG and evaluation.

Prompts of different lengths are left-padded into one batch; prefill fills a KV cache, then a
`lax.while_loop` decodes inside a single jit-compiled function until every row has produced an
EOS token or `max_new_tokens` is reached. Stop strings are applied to the decoded text.

  python -m ftjax.generate --model smollm2-135m-instruct --prompt "Hello" --greedy
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models.config import ModelConfig
from ftjax.models.transformer import Transformer, init_cache

Prompt = str | Sequence[dict]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  greedy: bool = True
  temperature: float = 1.0
  top_k: int = 0  # 0: no top-k filtering
  top_p: float = 1.0  # 1.0: no nucleus filtering
  seed: int = 0
  stop_strings: tuple[str, ...] = ()

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if not self.greedy and self.temperature <= 0:
      raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclasses.dataclass
class Completion:
  text: str
  token_ids: list[int]
  num_prompt_tokens: int
  finish_reason: str  # "eos" | "stop" | "length"


def encode_prompts(tokenizer, prompts: Sequence[Prompt], chat: bool = True,
                   system_prompt: str | None = None) -> list[list[int]]:
  """Token ids per prompt. Chat prompts go through the tokenizer's chat template."""
  if isinstance(prompts, str):
    raise TypeError("prompts must be a list of prompts, not a single string")
  encoded = []
  for i, prompt in enumerate(prompts):
    if chat and tokenizer.chat_template:
      messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
      if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + messages
      ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
      if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    else:
      if not isinstance(prompt, str):
        raise TypeError(f"prompt {i}: message lists need chat=True and a chat template")
      ids = tokenizer(prompt)["input_ids"]
    if not ids:
      raise ValueError(f"prompt {i} is empty after tokenization")
    encoded.append(list(ids))
  return encoded


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _sample(logits, rng, greedy: bool, temperature, top_k: int, top_p):
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


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "top_k"))
def _decode(cfg: ModelConfig, params, lora, tokens, valid, rng, temperature, top_p, eos_ids,
            pad_id, *, max_new_tokens: int, greedy: bool, top_k: int):
  """tokens/valid [batch, prompt_len] (left-padded) -> (new tokens [batch, max_new], lengths)."""
  batch, prompt_len = tokens.shape
  max_len = prompt_len + max_new_tokens
  model = Transformer(cfg)
  variables = {"params": params} if lora is None else {"params": params, "lora": lora}
  positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0).astype(jnp.int32)
  kv_valid = jnp.zeros((batch, max_len), bool).at[:, :prompt_len].set(valid.astype(bool))
  logits, cache = model.apply(variables, tokens, positions, cache=init_cache(cfg, batch, max_len),
                              cache_index=jnp.zeros((), jnp.int32), kv_valid=kv_valid,
                              last_only=True)
  state = dict(step=jnp.zeros((), jnp.int32), cache=cache, logits=logits[:, -1],
               position=positions[:, -1] + 1, kv_valid=kv_valid,
               done=jnp.zeros((batch,), bool), lengths=jnp.zeros((batch,), jnp.int32),
               out=jnp.full((batch, max_new_tokens), pad_id, jnp.int32))

  def cond(s):
    return (s["step"] < max_new_tokens) & ~jnp.all(s["done"])

  def body(s):
    step = s["step"]
    token = _sample(s["logits"], jax.random.fold_in(rng, step), greedy, temperature, top_k, top_p)
    token = jnp.where(s["done"], pad_id, token)
    lengths = s["lengths"] + (~s["done"]).astype(jnp.int32)
    done = s["done"] | jnp.isin(token, eos_ids)
    slot = prompt_len + step
    kv_valid = s["kv_valid"].at[:, slot].set(True)
    logits, cache = model.apply(variables, token[:, None], s["position"][:, None],
                                cache=s["cache"], cache_index=slot, kv_valid=kv_valid)
    return dict(step=step + 1, cache=cache, logits=logits[:, -1], position=s["position"] + 1,
                kv_valid=kv_valid, done=done, lengths=lengths,
                out=s["out"].at[:, step].set(token))

  state = jax.lax.while_loop(cond, body, state)
  return state["out"], state["lengths"]


def eos_token_ids(cfg: ModelConfig, tokenizer) -> list[int]:
  ids = set(cfg.eos_token_ids)
  if tokenizer is not None and tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  return sorted(ids)


def generate_ids(cfg: ModelConfig, params, prompt_ids: Sequence[Sequence[int]],
                 sampling: SamplingConfig, eos_ids: Sequence[int], pad_id: int = 0,
                 lora=None, length_multiple: int = 32) -> list[list[int]]:
  """Token-level generation: prompt ids in, generated ids out (EOS included if produced)."""
  if not prompt_ids:
    return []
  longest = max(len(p) for p in prompt_ids)
  if longest + sampling.max_new_tokens > cfg.max_position_embeddings:
    raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({sampling.max_new_tokens}) "
                     f"exceeds the model's context of {cfg.max_position_embeddings}")
  # Bucketed prompt length: fewer recompilations across calls.
  prompt_len = _round_up(longest, length_multiple)
  tokens = np.full((len(prompt_ids), prompt_len), pad_id, np.int32)
  valid = np.zeros((len(prompt_ids), prompt_len), np.int32)
  for row, ids in enumerate(prompt_ids):
    tokens[row, prompt_len - len(ids):] = ids
    valid[row, prompt_len - len(ids):] = 1
  out, lengths = _decode(
      cfg, params, lora, jnp.asarray(tokens), jnp.asarray(valid),
      jax.random.PRNGKey(sampling.seed), jnp.float32(sampling.temperature),
      jnp.float32(sampling.top_p), jnp.asarray(list(eos_ids) or [-1], jnp.int32),
      jnp.int32(pad_id), max_new_tokens=sampling.max_new_tokens, greedy=sampling.greedy,
      top_k=sampling.top_k)
  out, lengths = np.asarray(out), np.asarray(lengths)
  return [out[row, :lengths[row]].tolist() for row in range(len(prompt_ids))]


def _apply_stop_strings(tokenizer, ids: list[int], stops: Sequence[str]):
  text = tokenizer.decode(ids, skip_special_tokens=True)
  hits = [text.find(s) for s in stops if s and s in text]
  if not hits:
    return text, ids, False
  cut = min(hits)
  for n in range(1, len(ids) + 1):  # the shortest token prefix that reaches the stop string
    if len(tokenizer.decode(ids[:n], skip_special_tokens=True)) > cut:
      ids = ids[:n]
      break
  return text[:cut], ids, True


def generate(model, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None, *,
             chat: bool = True, system_prompt: str | None = None, lora=None) -> list[Completion]:
  """Generates one completion per prompt.

  model: a `ftjax.Pretrained` (config, params, tokenizer). prompts: user messages (str) or chat
  message lists; with `chat=False`, raw text continued as-is. `lora`: adapters from `ftjax.lora`.
  """
  sampling = sampling or SamplingConfig()
  cfg, params, tokenizer = model.config, model.params, model.tokenizer
  adapters = getattr(model, "adapters", None)
  if adapters is not None:
    if lora is not None:
      raise ValueError("the model carries adapters already; do not pass lora= as well")
    cfg, lora = adapters.model_config(cfg), adapters.params
  prompt_ids = encode_prompts(tokenizer, prompts, chat=chat, system_prompt=system_prompt)
  eos = eos_token_ids(cfg, tokenizer)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  outputs = generate_ids(cfg, params, prompt_ids, sampling, eos, pad_id, lora=lora)
  completions = []
  for ids, prompt in zip(outputs, prompt_ids):
    finish = "length"
    if ids and ids[-1] in eos:
      finish = "eos"
    text, ids, stopped = _apply_stop_strings(tokenizer, ids, sampling.stop_strings)
    completions.append(Completion(text, ids, len(prompt), "stop" if stopped else finish))
  return completions


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ftjax.generate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="smollm2-135m-instruct",
                      help="registered name, local HF folder / .gguf file, or hub id")
  parser.add_argument("--prompt", action="append", required=True,
                      help="prompt text; repeat for a batch")
  parser.add_argument("--max_new_tokens", type=int, default=128)
  parser.add_argument("--greedy", action="store_true", help="argmax decoding (default: sample)")
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--top_p", type=float, default=0.9)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
  parser.add_argument("--system", default=None, help="system prompt")
  parser.add_argument("--no_chat", action="store_true", help="continue raw text, no template")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--allow_pickle", action="store_true",
                      help="allow loading .bin/.pt pickle checkpoints (runs their code)")
  args = parser.parse_args(argv)

  from ftjax.checkpoints import CheckpointError, load
  from ftjax.models.config import UnsupportedModelError
  try:
    model = load(args.model, dtype=args.dtype, allow_pickle=args.allow_pickle)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              seed=args.seed, stop_strings=tuple(args.stop))
    completions = generate(model, args.prompt, sampling, chat=not args.no_chat,
                           system_prompt=args.system)
  except (CheckpointError, UnsupportedModelError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  for prompt, completion in zip(args.prompt, completions):
    if len(args.prompt) > 1:
      print(f"### {prompt}")
    print(completion.text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
