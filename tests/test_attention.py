"""The fused attention kernels give the reference's outputs and gradients (Pallas kernels run in
interpret mode on CPU); the decoder gives the same logits whichever kernel it uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from ftjax.models import attention, forward, init_params
from ftjax.models.config import from_hf_config

SEQ = 128


def _packed_segments(batch=2, seq=SEQ):
  """Row 0: three examples and trailing padding; row 1: one example filling the row."""
  first = np.r_[np.full(40, 1), np.full(50, 2), np.full(30, 3), np.zeros(seq - 120)]
  return jnp.asarray(np.stack([first, np.ones(seq)])[:batch].astype(np.int32))


def _qkv(heads=4, kv_heads=2, head_dim=32, dtype=jnp.float32, batch=2, seq=SEQ):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (batch, seq, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, seq, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, seq, kv_heads, head_dim), dtype)
  return q, k, v


def _reference(q, k, v, segments, scale, softcap=None, window=None):
  return attention.attention_with_mask(q, k, v, attention.reference_mask(segments, window),
                                       scale=scale, softcap=softcap)


@pytest.mark.parametrize("impl,softcap,window", [
    ("pallas_gpu", None, None),
    ("splash", None, None),
    ("splash", 5.0, None),
    ("splash", None, 16),
])
def test_kernel_matches_reference_values_and_gradients(impl, softcap, window):
  q, k, v = _qkv()
  segments = _packed_segments()
  real = (segments != 0)[:, :, None, None]  # padding rows are free to differ
  weights = jax.random.normal(jax.random.PRNGKey(1), q.shape)

  def loss(fn, q, k, v):
    return jnp.sum(jnp.where(real, fn(q, k, v) * weights, 0.0))

  fused = lambda q, k, v: attention.dot_product_attention(
      q, k, v, segments, scale=0.2, softcap=softcap, sliding_window=window, implementation=impl)
  ref = lambda q, k, v: _reference(q, k, v, segments, 0.2, softcap, window)
  out, expected = fused(q, k, v), ref(q, k, v)
  np.testing.assert_allclose(np.where(real, out, 0), np.where(real, expected, 0), atol=2e-5)
  grads = jax.grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2))(q, k, v)
  expected_grads = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
  for name, got, want in zip("qkv", grads, expected_grads):
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"d{name}")


def test_splash_in_bfloat16_within_bfloat16_tolerance():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  segments = _packed_segments()
  real = np.asarray(segments != 0)[:, :, None, None]
  out = attention.dot_product_attention(q, k, v, segments, scale=0.2, implementation="splash")
  expected = _reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                        segments, 0.2)
  err = np.abs(np.asarray(out, np.float32) - np.asarray(expected))[np.broadcast_to(real, q.shape)]
  assert err.max() < 0.05 and err.mean() < 5e-3


@pytest.mark.parametrize("window,flag", [(None, None), (16, None), (16, True), (16, False)])
def test_cpu_bf16_kernel_matches_the_reference_in_values_and_gradients(window, flag):
  """bf16 products with fp32 accumulation against the fp32 reference on the same (bf16-rounded)
  inputs: within bf16 rounding of the probabilities and gradients (relative norm)."""
  q, k, v = _qkv(heads=6, kv_heads=2, dtype=jnp.bfloat16)
  segments = _packed_segments()
  real = (segments != 0)[:, :, None, None]
  weights = jax.random.normal(jax.random.PRNGKey(1), q.shape)
  is_sliding = None if flag is None else jnp.asarray(flag)

  def run(impl, q, k, v):
    return attention.dot_product_attention(q, k, v, segments, scale=0.2, sliding_window=window,
                                           is_sliding=is_sliding, implementation=impl)

  def loss(impl, q, k, v):
    return jnp.sum(jnp.where(real, run(impl, q, k, v).astype(jnp.float32) * weights, 0.0))

  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  out, expected = run("cpu_bf16", q, k, v), run("xla", *f32)
  assert out.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out, np.float32) - np.asarray(expected))[np.broadcast_to(real, q.shape)]
  assert err.max() < 0.05 and err.mean() < 5e-3
  grads = jax.grad(lambda *a: loss("cpu_bf16", *a), argnums=(0, 1, 2))(q, k, v)
  expected_grads = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(*f32)
  for name, got, want in zip("qkv", grads, expected_grads):
    assert got.dtype == jnp.bfloat16
    rel = np.linalg.norm(np.asarray(got, np.float32) - want) / np.linalg.norm(want)
    assert rel < 0.02, f"d{name}: relative error {rel:.4f}"


def test_layer_flag_selects_the_window_per_call():
  q, k, v = _qkv()
  segments = _packed_segments()
  for impl in ("xla", "splash"):
    for flag, window in ((True, 16), (False, None)):
      out = attention.dot_product_attention(q, k, v, segments, scale=0.2, sliding_window=16,
                                            is_sliding=jnp.asarray(flag), implementation=impl)
      real = np.asarray(segments != 0)[:, :, None, None]
      np.testing.assert_allclose(np.where(real, out, 0),
                                 np.where(real, _reference(q, k, v, segments, 0.2, None, window),
                                          0), atol=2e-5, err_msg=f"{impl} sliding={flag}")


def test_auto_picks_the_backend_kernel_and_falls_back_where_it_cannot_serve():
  pick = lambda impl, **kw: attention.resolve(impl, **{
      "dtype": jnp.bfloat16, "softcap": None, "seq_len": 2048, "head_dim": 64, **kw})
  assert pick("auto", platform="cpu") == "cpu_bf16"
  assert pick("auto", platform="cpu", dtype=jnp.float32) == "xla"  # fp32 keeps the reference
  assert pick("auto", platform="cpu", softcap=50.0) == "xla"
  assert pick("auto", platform="gpu") == "cudnn"
  assert pick("auto", platform="gpu", dtype=jnp.float32) == "xla"  # cuDNN: half precision only
  assert pick("auto", platform="gpu", softcap=50.0) == "xla"
  assert pick("auto", platform="tpu", softcap=50.0) == "splash"  # splash soft-caps in-kernel
  assert pick("auto", platform="tpu", seq_len=100) == "xla"
  with pytest.raises(attention.AttentionUnsupported, match="bfloat16 or float16"):
    pick("cudnn", platform="gpu", dtype=jnp.float32)
  with pytest.raises(attention.AttentionUnsupported, match="divisible by 128"):
    pick("splash", platform="tpu", seq_len=100)
  with pytest.raises(attention.AttentionUnsupported, match="needs bfloat16"):
    pick("cpu_bf16", platform="cpu", dtype=jnp.float32)
  with pytest.raises(attention.AttentionUnsupported, match="not one of"):
    pick("flash9", platform="gpu")


COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**COMMON),
    "mistral_sliding": lambda: transformers.MistralConfig(**COMMON, sliding_window=24),
    "gemma2_softcap_sliding": lambda: transformers.Gemma2Config(
        **COMMON, head_dim=16, sliding_window=24, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3_sliding_qknorm": lambda: transformers.Gemma3TextConfig(
        **COMMON, head_dim=16, sliding_window=24, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("impl", ["splash", "pallas_gpu", "cpu_bf16"])
def test_decoder_logits_equal_with_every_kernel(family, impl):
  cfg = from_hf_config(FAMILIES[family]().to_dict())
  if impl == "pallas_gpu" and (cfg.attn_logit_softcap or cfg.sliding_window):
    pytest.skip("pallas_gpu has no soft-capping or sliding window (auto falls back)")
  if impl == "cpu_bf16":
    if cfg.attn_logit_softcap:
      pytest.skip("cpu_bf16 has no soft-capping (auto falls back)")
    cfg = cfg.replace(dtype="bfloat16")
  params = init_params(cfg, jax.random.PRNGKey(0))
  segments = _packed_segments()
  tokens = jax.random.randint(jax.random.PRNGKey(2), segments.shape, 1, cfg.vocab_size)
  tokens = jnp.where(segments != 0, tokens, 0)
  positions = jnp.asarray(np.stack([np.r_[np.arange(40), np.arange(50), np.arange(30),
                                          np.zeros(8)], np.arange(SEQ)]).astype(np.int32))
  ref = forward(cfg.replace(attention_impl="xla"), params, tokens, positions, segments)
  out = forward(cfg.replace(attention_impl=impl), params, tokens, positions, segments)
  real = np.asarray(segments != 0)
  out, ref = np.asarray(out)[real], np.asarray(ref)[real]
  if impl == "cpu_bf16":  # both runs bf16: as the bf16 logit checks of test_models
    assert np.abs(out - ref).mean() < 0.02 * np.abs(ref).mean()
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
  else:
    assert np.abs(out - ref).max() < 1e-4


def test_cpu_bf16_prefill_over_segments_matches_the_einsum():
  """Decoding's prefill attention (a shared prefix, then each row's own tokens, one softmax) on
  the CPU in bf16 against the fp32 einsum of the same inputs."""
  from types import SimpleNamespace
  from ftjax.models.transformer import _attend_segments
  b, t, kv, group, d, prefix = 3, 24, 2, 3, 16, 40
  keys = jax.random.split(jax.random.PRNGKey(3), 5)
  q = jax.random.normal(keys[0], (b, t, kv, group, d), jnp.bfloat16)
  k, v = (jax.random.normal(key, (b, kv, t, d), jnp.bfloat16) for key in keys[1:3])
  pk, pv = (jax.random.normal(key, (kv, prefix, d), jnp.bfloat16) for key in keys[3:5])
  causal = jnp.tril(jnp.ones((t, t), bool))
  own_mask = jnp.broadcast_to(causal, (b, t, t)).at[0, :, :5].set(False)  # row 0: 5 pad slots
  prefix_mask = jnp.broadcast_to(jnp.arange(prefix) < 33, (b, t, prefix))  # 7 unused slots
  segments = [(pk, pv, prefix_mask), (k, v, own_mask)]
  out = attention.bf16_rows_segments(q, segments)
  f32 = lambda x: x.astype(jnp.float32)
  want = _attend_segments(SimpleNamespace(attn_logit_softcap=None, attention_impl="xla"), f32(q),
                          [(f32(a), f32(c), m) for a, c, m in segments])
  real = np.asarray(own_mask.any(-1))[:, :, None, None, None]
  err = np.abs(np.asarray(out, np.float32) - np.asarray(want))[np.broadcast_to(real, q.shape)]
  assert out.dtype == jnp.bfloat16 and err.max() < 0.05 and err.mean() < 5e-3
