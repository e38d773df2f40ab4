"""Dense retrieval: Flax MiniLM equals sentence-transformers; sharded top-k equals unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from ftjax.retrieval import dense

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, I saw it twice!",
    "Lighthouses guided ships along the rocky coast for centuries.",
    "Quantum computers use qubits, which can be in superpositions of 0 and 1.",
    "Das Wetter ist heute schön.",
    "Who designed the bridge over the river near the old town?",
    "BM25 is a bag-of-words ranking function used by search engines.",
    "x",
]


@pytest.fixture(scope="module")
def encoder():
  return dense.load_encoder("all-minilm-l6-v2")


def test_params_match_the_module_structure(encoder):
  cfg = encoder.config
  tokens = jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: dense.BertEncoder(cfg).init(
      jax.random.PRNGKey(0), tokens, tokens > 0))["params"]
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape,
                                                                encoder.params)
  assert (cfg.hidden_size, cfg.num_layers, cfg.max_seq_length) == (384, 6, 256)


def test_embeddings_equal_sentence_transformers(encoder):
  from sentence_transformers import SentenceTransformer
  from ftjax.checkpoints import resolve
  reference = SentenceTransformer(str(resolve("all-minilm-l6-v2")), device="cpu")
  long_text = "retrieval " * 400  # over the 256-piece limit: both truncate the same way
  texts = SENTENCES + [long_text]
  expected = reference.encode(texts, batch_size=4, convert_to_numpy=True)
  got = dense.encode(encoder, texts, batch_size=4)
  cosine = np.sum(got.embeddings * expected, -1) / np.linalg.norm(expected, axis=-1)
  assert cosine.min() >= 0.9999, cosine
  np.testing.assert_allclose(np.linalg.norm(got.embeddings, axis=-1), 1.0, atol=1e-5)
  assert got.truncated.tolist() == [False] * len(SENTENCES) + [True]


def test_batching_and_padding_do_not_change_embeddings(encoder):
  one_by_one = np.concatenate([dense.encode(encoder, [s]).embeddings for s in SENTENCES[:4]])
  batched = dense.encode(encoder, SENTENCES[:4], batch_size=64).embeddings
  np.testing.assert_allclose(one_by_one, batched, atol=2e-6)


def test_overlong_input_is_truncated_or_refused(encoder):
  long_query = "who designed the bridge " * 100  # 500+ word pieces
  got = dense.encode(encoder, [long_query, "short"])
  assert got.truncated.tolist() == [True, False]
  assert got.num_tokens[0] > 256
  # Truncation keeps the first 254 pieces, as sentence-transformers does.
  prefix = encoder.tokenizer.decode(
      encoder.tokenizer(long_query, add_special_tokens=False)["input_ids"][:254])
  np.testing.assert_allclose(got.embeddings[0], dense.encode(encoder, [prefix]).embeddings[0],
                             atol=2e-6)
  with pytest.raises(dense.InputTooLongError, match=r"1 text\(s\) exceed .* limit of 256"):
    dense.encode(encoder, [long_query], on_overflow="error")


def test_empty_batch(encoder):
  assert dense.encode(encoder, []).embeddings.shape == (0, 384)


@pytest.mark.parametrize("num_rows, k", [(1003, 1), (1003, 10), (1003, 300), (37, 50)])
def test_sharded_top_k_equals_unsharded(num_rows, k):
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 simulated CPU devices"
  rng = np.random.default_rng(num_rows + k)
  embeddings = rng.standard_normal((num_rows, 64)).astype(np.float32)
  embeddings[num_rows - 1] = embeddings[num_rows // 2] = embeddings[3]  # ties across shards
  queries = rng.standard_normal((16, 64)).astype(np.float32)
  queries[0] = embeddings[3]
  valid = rng.random(num_rows) > 0.1

  sharded = dense.place_index(embeddings, valid)  # all 8 devices
  assert sharded.embeddings.sharding.num_devices == 8
  scores, rows = dense.search(sharded, queries, k)

  one = Mesh(np.array(jax.devices()[:1]), ("shard",))
  unsharded = dense.place_index(embeddings, valid, mesh=one, block_rows=sharded.block_rows)
  k_eff = min(k, unsharded.embeddings.shape[0])
  ref_scores, ref_rows = jax.jit(dense.top_k, static_argnums=(3, 4))(
      queries, np.asarray(unsharded.embeddings), np.asarray(unsharded.valid), k_eff,
      sharded.block_rows)
  ref_scores, ref_rows = np.asarray(ref_scores), np.asarray(ref_rows)
  ref_rows = np.where(np.isfinite(ref_scores), ref_rows, -1)
  np.testing.assert_array_equal(scores[:, :k_eff], ref_scores)
  np.testing.assert_array_equal(rows[:, :k_eff], ref_rows)
  # And both are the exact top-k of the full score matrix, ties to the lower row.
  full = np.where(valid[None], queries @ embeddings.T, -np.inf)
  order = np.lexsort((np.broadcast_to(np.arange(num_rows), full.shape), -full), axis=1)
  top = min(k, int(valid.sum()))
  np.testing.assert_array_equal(rows[:, :top], order[:, :top])
  np.testing.assert_allclose(scores[:, :top], np.take_along_axis(full, order[:, :top], 1),
                             rtol=1e-5, atol=1e-5)
  assert (rows[:, top:] == -1).all() and np.isneginf(scores[:, top:]).all()
