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
  assert pick("auto", platform="cpu") == "xla"
  assert pick("auto", platform="gpu") == "cudnn"
  assert pick("auto", platform="gpu", dtype=jnp.float32) == "xla"  # cuDNN: half precision only
  assert pick("auto", platform="gpu", softcap=50.0) == "xla"
  assert pick("auto", platform="tpu", softcap=50.0) == "splash"  # splash soft-caps in-kernel
  assert pick("auto", platform="tpu", seq_len=100) == "xla"
  with pytest.raises(attention.AttentionUnsupported, match="bfloat16 or float16"):
    pick("cudnn", platform="gpu", dtype=jnp.float32)
  with pytest.raises(attention.AttentionUnsupported, match="divisible by 128"):
    pick("splash", platform="tpu", seq_len=100)
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
@pytest.mark.parametrize("impl", ["splash", "pallas_gpu"])
def test_decoder_logits_equal_with_every_kernel(family, impl):
  cfg = from_hf_config(FAMILIES[family]().to_dict())
  if impl == "pallas_gpu" and (cfg.attn_logit_softcap or cfg.sliding_window):
    pytest.skip("pallas_gpu has no soft-capping or sliding window (auto falls back)")
  params = init_params(cfg, jax.random.PRNGKey(0))
  segments = _packed_segments()
  tokens = jax.random.randint(jax.random.PRNGKey(2), segments.shape, 1, cfg.vocab_size)
  tokens = jnp.where(segments != 0, tokens, 0)
  positions = jnp.asarray(np.stack([np.r_[np.arange(40), np.arange(50), np.arange(30),
                                          np.zeros(8)], np.arange(SEQ)]).astype(np.int32))
  ref = forward(cfg.replace(attention_impl="xla"), params, tokens, positions, segments)
  out = forward(cfg.replace(attention_impl=impl), params, tokens, positions, segments)
  real = np.asarray(segments != 0)
  assert np.abs(np.asarray(out) - np.asarray(ref))[real].max() < 1e-4
