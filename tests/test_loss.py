"""The chunked cross-entropy equals the whole-vocabulary one (values and gradients) and never holds
every position's logits at once."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ftjax.models import init_params
from ftjax.models.config import ModelConfig
from ftjax.sharding import make_mesh
from ftjax.training.step import masked_loss_sums

FAMILIES = {
    "untied": dict(tie_word_embeddings=False),
    "tied": dict(tie_word_embeddings=True),
    "tied_softcap": dict(tie_word_embeddings=True, final_logit_softcap=3.0),
}


def _setup(family, vocab=300, seq=24, batch=4):
  cfg = ModelConfig(family="llama", vocab_size=vocab, hidden_size=32, intermediate_size=48,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, **FAMILIES[family])
  params = init_params(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, (batch, seq + 1))
  segments = np.ones((batch, seq), np.int32)
  segments[0, 15:] = 2  # a packed row
  segments[1, 20:] = 0  # padding
  positions = np.broadcast_to(np.arange(seq), (batch, seq)).copy()
  positions[0, 15:] = np.arange(seq - 15)
  batch_ = {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
            "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
            "segment_ids": jnp.asarray(segments), "positions": jnp.asarray(positions),
            "loss_mask": jnp.asarray(segments != 0, jnp.float32)}
  return cfg, params, batch_


def _loss_and_grads(cfg, params, batch):
  def loss(p):
    total, count = masked_loss_sums(cfg, p, None, batch, None, None, True)
    return total / count
  return jax.jit(jax.value_and_grad(loss))(params)


@functools.cache
def _whole_vocabulary(family):
  """(cfg, params, batch, loss, grads) without chunking: computed (and compiled) once per family
  for the three chunk sizes."""
  cfg, params, batch = _setup(family)
  return (cfg, params, batch, *_loss_and_grads(cfg, params, batch))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chunk", [5, 8, 24])  # 5 leaves a ragged last chunk
def test_chunked_loss_equals_whole_vocabulary_loss(family, chunk):
  cfg, params, batch, want_loss, want_grads = _whole_vocabulary(family)
  got_loss, got_grads = _loss_and_grads(cfg.replace(loss_chunk=chunk), params, batch)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for path, got in jax.tree_util.tree_leaves_with_path(got_grads):
    want = want_grads
    for key in path:
      want = want[key.key]
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


def test_chunked_loss_on_a_data_fsdp_mesh_equals_single_device():
  cfg, params, batch = _setup("tied", batch=8)
  cfg = cfg.replace(loss_chunk=8)
  want = _loss_and_grads(cfg, params, batch)[0]
  mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  sharded = jax.device_put(batch, NamedSharding(mesh, P(("data", "fsdp"))))
  got = jax.jit(lambda p, b: masked_loss_sums(cfg, p, None, b, None, mesh, True))(params, sharded)
  np.testing.assert_allclose(got[0] / got[1], want, rtol=1e-6)


def test_chunking_shrinks_the_compiled_step_s_temporary_memory():
  """A vocabulary-heavy shape: the whole-batch logits dominate the step's scratch memory."""
  cfg, params, batch = _setup("tied", vocab=16384, seq=64, batch=8)

  def temp_bytes(c):
    fn = jax.jit(jax.grad(lambda p: masked_loss_sums(c, p, None, batch, None, None, True)[0]))
    return fn.lower(params).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(cfg), temp_bytes(cfg.replace(loss_chunk=8))
  logits_bytes = 8 * 64 * 16384 * 4
  assert whole >= logits_bytes  # the full fp32 logits exist at least once
  assert chunked < whole - logits_bytes // 2


def test_chunked_loss_in_bf16_matches_the_whole_vocabulary_bf16_loss():
  """Under bf16 the chunked head runs the model's own bf16 product (`matmul.project`): the loss
  and gradients equal the unchunked bf16 step's to bf16 rounding."""
  cfg, params, batch = _setup("tied")
  cfg = cfg.replace(dtype="bfloat16")
  want_loss, want_grads = _loss_and_grads(cfg, params, batch)
  got_loss, got_grads = _loss_and_grads(cfg.replace(loss_chunk=8), params, batch)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-3)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    scale = float(jnp.max(jnp.abs(want))) + 1e-6
    assert float(jnp.max(jnp.abs(got - want))) <= 0.02 * scale


def _loss_and_grads_at(cfg, params, batch, loss_positions):
  def loss(p):
    total, count = masked_loss_sums(cfg, p, None, batch, None, None, True,
                                    loss_positions=loss_positions)
    return total / count
  return jax.jit(jax.value_and_grad(loss))(params)


def _assert_same(got, want, rtol=1e-6):
  got_loss, got_grads = got
  want_loss, want_grads = want
  np.testing.assert_allclose(got_loss, want_loss, rtol=rtol)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads),
                          jax.tree_util.tree_leaves(want_grads)):
    np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", ["untied", "tied_softcap"])
@pytest.mark.parametrize("chunk", [0, 4])
def test_loss_at_the_target_positions_only_equals_the_whole_loss(family, chunk):
  """A prompt-masked batch (answers at ragged spots, a padded row, a row with no target): the head
  at only each row's loss positions gives the same loss and gradients as at every position."""
  cfg, params, batch = _setup(family)
  mask = np.zeros(batch["loss_mask"].shape, np.float32)
  mask[0, 3:7] = mask[0, 17:22] = 1  # two examples packed in a row, answers apart
  mask[1, 10:19] = 1
  mask[2, 23] = 1  # the last position
  batch = {**batch, "loss_mask": jnp.asarray(mask)}  # row 3: no target at all
  want = _loss_and_grads(cfg, params, batch)
  cfg = cfg.replace(loss_chunk=chunk)
  for n in (9, 16):  # the most targets in a row; more (filler positions weigh 0)
    _assert_same(_loss_and_grads_at(cfg, params, batch, n), want)


def test_target_positions_pick_each_row_s_targets_in_order():
  from ftjax.training.step import target_positions
  mask = jnp.asarray([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1]], jnp.float32)
  index, weight = target_positions(mask, 3)
  np.testing.assert_array_equal(index[0], [1, 2, 4])
  np.testing.assert_array_equal(index[2][:2], [0, 4])
  np.testing.assert_array_equal(weight, [[1, 1, 1], [0, 0, 0], [1, 1, 0]])


def test_loss_positions_are_sized_from_the_data_and_dropped_when_they_save_little():
  from ftjax.training.step import loss_positions_for
  assert loss_positions_for(60, 512) == 64
  assert loss_positions_for(129, 512) == 192
  assert loss_positions_for(0, 512) == 64
  assert loss_positions_for(400, 512) == 0  # 448 of 512: under a quarter saved
  assert loss_positions_for(384, 512) == 384


def test_the_train_step_with_target_positions_matches_every_position():
  """The whole train step (LoRA, two accumulated micro-batches, AdamW): the same loss and update."""
  import optax
  from ftjax.models import lora as lora_lib
  from ftjax.training.step import make_step_fns
  cfg, params, batch = _setup("untied")
  mask = np.zeros(batch["loss_mask"].shape, np.float32)
  mask[:, 12:20] = 1
  mask[1, 2:5] = 1
  batch = {**batch, "loss_mask": jnp.asarray(mask)}
  cfg = lora_lib.with_lora(cfg, rank=4, alpha=8.0, dropout=0.0)
  adapters = lora_lib.init_lora(params, rank=4, targets=("q_proj", "down_proj"),
                                rng=jax.random.PRNGKey(1))
  adapters = jax.tree.map(lambda x: x + 0.01, adapters)  # non-zero b: every gradient flows
  optimizer = optax.adamw(1e-2)
  state = {"step": jnp.int32(0), "rng": jax.random.PRNGKey(0), "params": adapters,
           "opt_state": optimizer.init(adapters)}
  out = {}
  for n in (0, 16):
    fns = make_step_fns(cfg, optimizer, accum_steps=2, lora=True, mesh=None, loss_positions=n)
    out[n] = jax.jit(fns.train_step)(state, params, batch)
  (s0, m0), (s16, m16) = out[0], out[16]
  np.testing.assert_allclose(m16["loss"], m0["loss"], rtol=1e-6)
  np.testing.assert_allclose(m16["target_tokens"], m0["target_tokens"])
  for a, b in zip(jax.tree_util.tree_leaves(s16["params"]), jax.tree_util.tree_leaves(s0["params"])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
