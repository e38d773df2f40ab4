"""Cache-augmented generation: a prefilled prefix reads exactly as the same tokens in a prompt."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ftjax
from ftjax.models import lora as lora_lib
from ftjax.generation import (PrefixCache, SamplingConfig, chat_prefix_split, encode_prompts,
                            generate, prefill_prefix)
from ftjax.generation import decoding

CORPUS = "\n\n".join(
    ["Answer questions using the documents below."] +
    [f"[{i}] Store {i}: open {8 + i % 3}am to {5 + i % 4}pm, closed on {day}s; returns within "
     f"{10 + 5 * i} days with a receipt; the manager is {name}."
     for i, (day, name) in enumerate(zip(["Mon", "Tue", "Wed", "Thu", "Fri"],
                                          ["Ada", "Brian", "Chen", "Dara", "Emil"]), 1)])
QUESTIONS = ["Who runs store 3?",
             "Which store is closed on Fridays, and how many days do I have to return things?",
             "Hours?"]
SAMPLING = SamplingConfig(max_new_tokens=8)


@pytest.fixture(autouse=True)
def full_precision_matmuls():
  # These tests compare two computations of the same math to 1e-4; TF32/bf16 matmul passes (the
  # GPU/TPU default for fp32) would compare rounding instead. A no-op on CPU.
  with jax.default_matmul_precision("float32"):
    yield


@pytest.fixture(scope="module")
def tiny(tiny_llama_folder):
  return ftjax.load(str(tiny_llama_folder))


@pytest.fixture
def prefill_calls(monkeypatch):
  """Records (tokens shape, next-token logits) of every `prefill` call that generation makes."""
  calls = []
  real = decoding.prefill

  def recording(cfg, params, lora, cache, tokens, *rest, **kwargs):
    logits, cache = real(cfg, params, lora, cache, tokens, *rest, **kwargs)
    calls.append((tokens.shape, np.asarray(logits)))
    return logits, cache

  monkeypatch.setattr(decoding, "prefill", recording)
  return calls


def _corpus_messages(question=None):
  messages = [{"role": "system", "content": CORPUS}]
  return messages + ([{"role": "user", "content": question}] if question else [])


def _split(tokenizer):
  splits = [chat_prefix_split(tokenizer, _corpus_messages(), q) for q in QUESTIONS]
  prefix_ids = splits[0][0]
  assert all(p == prefix_ids for p, _ in splits)
  return prefix_ids, [s for _, s in splits]


def test_chat_prefix_split_is_the_rendered_conversation(tiny):
  prefix_ids, suffixes = _split(tiny.tokenizer)
  for question, suffix in zip(QUESTIONS, suffixes):
    [full] = encode_prompts(tiny.tokenizer, [_corpus_messages(question)])
    assert prefix_ids + suffix == full
    assert question in tiny.tokenizer.decode(suffix)
  assert CORPUS in tiny.tokenizer.decode(prefix_ids)


def test_chat_prefix_split_rejects_templates_that_do_not_split(tiny):
  tokenizer = copy.deepcopy(tiny.tokenizer)
  tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
  # "dol" + "lars" is one word: a token spans the boundary.
  with pytest.raises(ValueError, match="split cleanly"):
    chat_prefix_split(tokenizer, [{"role": "system", "content": "It costs twelve dol"}], "lars.")
  tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] != 'system' %}"
                             "{{ m['content'] }}{% endif %}{% endfor %}")
  with pytest.raises(ValueError, match="verbatim"):
    chat_prefix_split(tokenizer, _corpus_messages(), "Who runs store 3?")


def test_cag_reads_exactly_the_corpus_in_the_prompt(tiny, prefill_calls):
  prefix_ids, suffixes = _split(tiny.tokenizer)
  # Several chunks, and a padded tail between the prefix and the prompt block.
  prefix = prefill_prefix(tiny, prefix_ids, chunk_size=64)
  assert prefix.slots > prefix.length > 2 * 64
  start = len(prefill_calls)
  cag = generate(tiny, suffixes, SAMPLING, prefix=prefix)
  [(_, cag_logits)] = prefill_calls[start:]
  full = generate(tiny, [_corpus_messages(q) for q in QUESTIONS], SAMPLING)
  (_, full_logits) = prefill_calls[-1]
  # First-step logits agree to float rounding (max 2e-7 measured on CPU). Greedy tokens then
  # agree as long as no step is a near-tie: the smallest top-1 margin here is 0.5.
  np.testing.assert_allclose(cag_logits, full_logits, rtol=0, atol=1e-4)
  assert [c.token_ids for c in cag] == [c.token_ids for c in full]
  assert all(len(c.token_ids) == SAMPLING.max_new_tokens for c in full)  # no early EOS


def test_prefix_is_prefilled_once_and_left_intact(tiny, prefill_calls):
  prefix_ids, suffixes = _split(tiny.tokenizer)
  prefix = prefill_prefix(tiny, prefix_ids, chunk_size=64)
  num_chunks = len(prefill_calls)
  assert num_chunks == -(-prefix.slots // 64) > 1  # the prefix's chunks, once
  assert sum(shape[1] for shape, _ in prefill_calls) == prefix.slots
  keys = np.asarray(prefix.cache["k"])
  first = generate(tiny, suffixes, SAMPLING, prefix=prefix)
  second = generate(tiny, suffixes[:1], SAMPLING, prefix=prefix)  # another batch size
  later = [shape for shape, _ in prefill_calls[num_chunks:]]
  # Each call prefills its prompt block only (its longest prompt rounded up to the length
  # multiple), never the prefix again.
  block = lambda ids: -(-max(map(len, ids)) // decoding.LENGTH_MULTIPLE) * \
      decoding.LENGTH_MULTIPLE  # noqa: E731
  assert len(later) == 2
  assert later == [(3, block(suffixes)), (1, block(suffixes[:1]))]
  assert block(suffixes) < prefix.length
  assert second[0].token_ids == first[0].token_ids
  np.testing.assert_array_equal(np.asarray(prefix.cache["k"]), keys)


def test_prompt_token_counts(tiny):
  prefix_ids, suffixes = _split(tiny.tokenizer)
  prefix = prefill_prefix(tiny, prefix_ids)
  for completion, suffix in zip(generate(tiny, suffixes, SAMPLING, prefix=prefix), suffixes):
    assert completion.num_cached_tokens == len(prefix_ids) == prefix.length
    assert completion.num_prompt_tokens == len(prefix_ids) + len(suffix)
  [plain] = generate(tiny, [_corpus_messages(QUESTIONS[0])], SAMPLING)
  assert plain.num_cached_tokens == 0
  assert plain.num_prompt_tokens == len(prefix_ids) + len(suffixes[0])


def test_prefix_misuse_is_rejected(tiny):
  prefix_ids, suffixes = _split(tiny.tokenizer)
  prefix = prefill_prefix(tiny, prefix_ids)
  assert isinstance(prefix, PrefixCache) and prefix.token_ids == tuple(prefix_ids)
  with pytest.raises(TypeError, match="token ids"):
    generate(tiny, QUESTIONS, SAMPLING, prefix=prefix)
  with pytest.raises(ValueError, match="system prompt"):
    generate(tiny, suffixes, SAMPLING, prefix=prefix, system_prompt="Be brief.")
  bf16 = ftjax.Pretrained(tiny.config.replace(dtype="bfloat16"), tiny.params, tiny.tokenizer)
  with pytest.raises(ValueError, match="different model config"):
    generate(bf16, suffixes, SAMPLING, prefix=prefix)
  with pytest.raises(ValueError, match="exceeds the model's context"):
    generate(tiny, suffixes, SamplingConfig(max_new_tokens=1024 - len(prefix_ids)), prefix=prefix)
  with pytest.raises(ValueError, match="empty"):
    prefill_prefix(tiny, [])


def _adapters(tiny, rank=4, alpha=32.0):
  """Adapters with a non-zero `b`, so that they (and their scale, 8) change the logits by ~0.5;
  small enough that greedy steps keep a clear top-1 margin (>= 0.17 measured)."""
  spec = lora_lib.LoraSpec(rank=rank, alpha=alpha, targets=lora_lib.ALL_TARGETS)
  tree = lora_lib.init_lora(tiny.params, rank=rank, targets=spec.targets,
                            rng=jax.random.PRNGKey(1))
  tree = jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.random.normal(jax.random.PRNGKey(len(path)), x.shape) * 0.02
                       if path[-1].key == "b" else x), tree)
  return lora_lib.Adapters(spec, tree)


def test_lora_takes_adapters_at_their_own_scale(tiny, prefill_calls):
  adapters = _adapters(tiny)
  prompts = QUESTIONS
  with pytest.raises(TypeError, match=r"Adapters\(spec, params\)"):
    generate(tiny, prompts, SAMPLING, lora=adapters.params)
  adapted = generate(tiny, prompts, SAMPLING, lora=adapters)
  adapted_logits = prefill_calls[-1][1]
  merged_params = lora_lib.merge(adapters.model_config(tiny.config), tiny.params, adapters.params)
  merged = generate(tiny._replace(params=merged_params), prompts, SAMPLING)
  np.testing.assert_allclose(prefill_calls[-1][1], adapted_logits, rtol=0, atol=1e-4)
  assert [c.token_ids for c in adapted] == [c.token_ids for c in merged]
  # The adapters matter, and so does their scale: the base and scale 1 both read differently.
  generate(tiny, prompts, SAMPLING)
  assert np.abs(prefill_calls[-1][1] - adapted_logits).max() > 1e-2
  unscaled = lora_lib.merge(tiny.config, tiny.params, adapters.params)  # lora_scale 1.0
  generate(tiny._replace(params=unscaled), prompts, SAMPLING)
  assert np.abs(prefill_calls[-1][1] - adapted_logits).max() > 1e-2
  # A model's own adapters apply the same way.
  carried = generate(tiny._replace(adapters=adapters), prompts, SAMPLING)
  assert [c.token_ids for c in carried] == [c.token_ids for c in adapted]
  with pytest.raises(ValueError, match="carries adapters"):
    generate(tiny._replace(adapters=adapters), prompts, SAMPLING, lora=adapters)


def test_cag_with_adapters(tiny):
  adapters = _adapters(tiny)
  prefix_ids, suffixes = _split(tiny.tokenizer)
  prefix = prefill_prefix(tiny, prefix_ids, lora=adapters)
  cag = generate(tiny, suffixes, SAMPLING, lora=adapters, prefix=prefix)
  full = generate(tiny, [_corpus_messages(q) for q in QUESTIONS], SAMPLING, lora=adapters)
  assert [c.token_ids for c in cag] == [c.token_ids for c in full]
  with pytest.raises(ValueError, match="LoRA"):  # a base-model prefix under adapters
    generate(tiny, suffixes, SAMPLING, lora=adapters, prefix=prefill_prefix(tiny, prefix_ids))


@pytest.mark.slow
def test_smollm2_cag_answers_as_corpus_in_prompt(smollm2, prefill_calls):
  prefix_ids, suffixes = _split(smollm2.tokenizer)
  prefix = prefill_prefix(smollm2, prefix_ids)
  sampling = SamplingConfig(max_new_tokens=24)
  cag = generate(smollm2, suffixes, sampling, prefix=prefix)
  cag_logits = prefill_calls[-1][1]
  full = generate(smollm2, [_corpus_messages(q) for q in QUESTIONS], sampling)
  np.testing.assert_allclose(cag_logits, prefill_calls[-1][1], rtol=0, atol=1e-3)
  assert [c.text for c in cag] == [c.text for c in full]
  assert "Chen" in cag[0].text  # the corpus is read: store 3's manager


@pytest.mark.slow
def test_smollm2_cag_in_bf16(smollm2, prefill_calls):
  """bf16 compute (the demo's) through every product of a prefix read at prefill and at each
  decode step: XLA:CPU runs bf16 x bf16 -> fp32 products only in canonical layouts, so a shared
  segment's product once failed to run here ("Unsupported element type for DotThunk").

  The bf16 answers themselves are not asserted: greedy text under bf16 rounding differs between
  CPUs (on an AVX2-only EPYC store 3's manager came out as "Dara", on an AVX512-BF16 one as
  "Chen"). What holds on any machine is the math: the next-token distribution after the prefix is
  the fp32 one within bf16's tolerances (`test_smollm2_bf16_stays_close`), and reading the corpus
  from a prefix cache equals reading it in the prompt, in bf16 as in fp32 (measured on the AVX2
  EPYC: KL 0.0009 and 0.0013, mean |dlogit| 0.11 and 0.11)."""
  prefix_ids, suffixes = _split(smollm2.tokenizer)
  sampling = SamplingConfig(max_new_tokens=24)
  generate(smollm2, suffixes, sampling, prefix=prefill_prefix(smollm2, prefix_ids))
  fp32 = prefill_calls[-1][1]
  bf16 = ftjax.Pretrained(smollm2.config.replace(dtype="bfloat16"), smollm2.params,
                          smollm2.tokenizer)
  cag = generate(bf16, suffixes, sampling, prefix=prefill_prefix(bf16, prefix_ids))
  cag_logits = prefill_calls[-1][1]
  assert all(len(c.token_ids) > 1 for c in cag)  # decode steps ran over the shared prefix
  generate(bf16, [_corpus_messages(q) for q in QUESTIONS], SamplingConfig(max_new_tokens=1))
  in_prompt = prefill_calls[-1][1]

  def kl(p_logits, q_logits):
    logp, logq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    return float((jnp.exp(logp) * (logp - logq)).sum(-1).mean())

  assert kl(fp32, cag_logits) < 0.01 and np.abs(cag_logits - fp32).mean() < 0.3
  assert kl(in_prompt, cag_logits) < 0.01 and np.abs(cag_logits - in_prompt).mean() < 0.3


@pytest.fixture
def decode_calls(monkeypatch):
  """Records the arguments of every `decode` call that generation makes."""
  calls = []
  real = decoding.decode

  def recording(*args, **kwargs):
    calls.append((args, kwargs))
    return real(*args, **kwargs)

  monkeypatch.setattr(decoding, "decode", recording)
  return calls


def _decode_shapes(args, kwargs):
  """Every array shape in the traced `decode` of one recorded call (cfg stays static)."""
  real = ftjax.generation.decode  # the package's own binding: not the recording wrapper
  jaxpr = jax.make_jaxpr(lambda *a: real(args[0], *a, **kwargs))(*args[1:]).jaxpr
  return _jaxpr_shapes(jaxpr)


def _jaxpr_shapes(jaxpr):
  """Every variable's shape in `jaxpr` and the jaxprs nested in it (while, scan, pjit, ...)."""
  shapes = [v.aval.shape for v in jaxpr.invars]
  for eqn in jaxpr.eqns:
    shapes += [v.aval.shape for v in eqn.outvars]
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else [param]):
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, "eqns"):
          shapes += _jaxpr_shapes(sub)
  return shapes


def _per_row_kv(shapes, cfg, min_slots):
  """Shapes of K/V-like arrays ([..., kv_heads, slots, head_dim] as the cache stores them, or
  [..., slots, kv_heads, head_dim] as a projection makes them) holding >= min_slots slots for
  more than one row per layer: a copy of a min_slots-long prefix in every row of a batch."""
  kv, d = cfg.num_kv_heads, cfg.head_dim
  return [s for s in shapes
          if len(s) >= 3 and int(np.prod(s[:-3])) > cfg.num_layers
          and ((s[-3] == kv and s[-1] == d and s[-2] >= min_slots)
               or (tuple(s[-2:]) == (kv, d) and s[-3] >= min_slots))]


def test_batch_cache_holds_no_copy_of_the_prefix(tiny, decode_calls):
  prefix_ids, suffixes = _split(tiny.tokenizer)
  prefix = prefill_prefix(tiny, prefix_ids, chunk_size=64)
  cfg = tiny.config
  generate(tiny, suffixes, SAMPLING, prefix=prefix)
  [(args, kwargs)] = decode_calls
  # The batch's cache: the prompt block (the longest prompt rounded up to the length multiple)
  # + new tokens per row, not prefix + continuation.
  cache = args[3]
  block = -(-max(map(len, suffixes)) // decoding.LENGTH_MULTIPLE) * decoding.LENGTH_MULTIPLE
  assert cache["k"].shape == (cfg.num_layers, len(suffixes), cfg.num_kv_heads,
                              block + SAMPLING.max_new_tokens, cfg.head_dim)
  assert cache["k"].shape[3] < prefix.length
  # Nothing inside the decode loop (all layers, every step) holds the prefix's K/V per row: the
  # prefix arrays keep their single row and the attention einsums broadcast them.
  shapes = _decode_shapes(args, kwargs)
  assert (cfg.num_layers, 1, cfg.num_kv_heads, prefix.slots, cfg.head_dim) in shapes
  assert _per_row_kv(shapes, cfg, prefix.length) == []
  # The same check does flag the corpus-in-prompt decode, whose cache copies the corpus per row.
  generate(tiny, [_corpus_messages(q) for q in QUESTIONS], SAMPLING)
  args, kwargs = decode_calls[-1]
  assert _per_row_kv(_decode_shapes(args, kwargs), cfg, prefix.length)


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory, tiny_tokenizer):
  """A tiny random Mistral whose sliding window (24) is much shorter than the corpus."""
  import torch
  import transformers
  folder = tmp_path_factory.mktemp("tiny_mistral")
  torch.manual_seed(0)
  config = transformers.MistralConfig(
      vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
      max_position_embeddings=1024, sliding_window=24, tie_word_embeddings=False,
      eos_token_id=tiny_tokenizer.eos_token_id, bos_token_id=tiny_tokenizer.bos_token_id,
      pad_token_id=tiny_tokenizer.pad_token_id)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
  tiny_tokenizer.save_pretrained(folder)
  return ftjax.load(str(folder))


def test_cag_with_a_sliding_window(tiny_mistral, prefill_calls):
  model = tiny_mistral
  assert model.config.sliding_window == 24 and all(model.config.layer_is_sliding)
  prefix_ids, suffixes = _split(model.tokenizer)
  prefix = prefill_prefix(model, prefix_ids, chunk_size=64)
  assert prefix.slots > prefix.length  # padding between the prefix and the prompts
  cag = generate(model, suffixes, SAMPLING, prefix=prefix)
  cag_logits = prefill_calls[-1][1]
  full = generate(model, [_corpus_messages(q) for q in QUESTIONS], SAMPLING)
  np.testing.assert_allclose(cag_logits, prefill_calls[-1][1], rtol=0, atol=1e-4)
  assert [c.token_ids for c in cag] == [c.token_ids for c in full]
  # The window matters here: without it, the same weights read differently.
  unwindowed = model.config.replace(sliding_window=None, sliding_layers=())
  generate(model._replace(config=unwindowed), [_corpus_messages(q) for q in QUESTIONS], SAMPLING)
  assert np.abs(prefill_calls[-1][1] - cag_logits).max() > 1e-2


def test_share_prefix_prefills_the_common_prefix_once(tiny, prefill_calls):
  """`SamplingConfig.share_prefix`: the tokens every prompt begins with are prefilled once, each
  row prefills its own tokens only, and greedy generation is the same as without sharing."""
  prefix_ids, suffixes = _split(tiny.tokenizer)
  prompts = [list(prefix_ids) + list(s) for s in suffixes]
  assert decoding.shared_prefix_length(prompts) >= len(prefix_ids) >= decoding.SHARED_PREFIX_MIN
  cfg, params = tiny.config, tiny.params
  plain = decoding.generate_ids(cfg, params, prompts, SAMPLING, eos_ids=[], pad_id=0)
  plain_calls = list(prefill_calls)
  del prefill_calls[:]
  shared_sampling = dataclasses.replace(SAMPLING, share_prefix=True)
  shared = decoding.generate_ids(cfg, params, prompts, shared_sampling, eos_ids=[], pad_id=0)
  assert shared == plain and all(len(o) == SAMPLING.max_new_tokens for o in shared)
  shared_len = decoding.shared_prefix_length(prompts)
  # One batch-1 prefill of the shared prefix (its slots), then the rows' own tokens only.
  assert prefill_calls[0][0][0] == 1
  rows = [shape for shape, _ in prefill_calls if shape[0] == len(prompts)]
  assert len(rows) == 1 and rows[0][1] < plain_calls[-1][0][1]
  block = -(-max(len(p) - shared_len for p in prompts) // decoding.LENGTH_MULTIPLE) \
      * decoding.LENGTH_MULTIPLE
  assert rows[0][1] == block
  # Next-token logits of the rows match the unshared prefill's.
  np.testing.assert_allclose(prefill_calls[-1][1], plain_calls[-1][1], atol=1e-4, rtol=1e-4)


def test_share_prefix_leaves_short_or_single_prompts_alone(tiny, prefill_calls):
  cfg, params = tiny.config, tiny.params
  sampling = dataclasses.replace(SAMPLING, share_prefix=True)
  # Every prompt keeps at least one token of its own; a short common prefix is not split off.
  assert decoding.shared_prefix_length([[1, 2, 3], [1, 2, 3, 4], [1, 2, 3]]) == 2
  assert decoding.shared_prefix_length([[5, 6], [7, 8]]) == 0
  prompts = [[11] * 10 + [12, 13], [11] * 10 + [14]]  # 10 shared tokens: under the minimum
  decoding.generate_ids(cfg, params, prompts, sampling, eos_ids=[], pad_id=0)
  decoding.generate_ids(cfg, params, [[11] * 40 + [12]], sampling, eos_ids=[], pad_id=0)
  assert [shape[0] for shape, _ in prefill_calls] == [2, 1]  # no batch-1 prefix prefill first
  assert [shape[1] for shape, _ in prefill_calls] == [32, 64]
