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


def test_bf16_embeddings_stay_close_to_fp32(encoder):
  """bf16 compute (bf16 products with fp32 accumulation, fp32 params): each embedding within
  cosine 0.995 of fp32's, and every sentence's nearest other sentence unchanged."""
  bf16 = dense.load_encoder("all-minilm-l6-v2", dtype="bfloat16")
  assert bf16.config.dtype == "bfloat16"
  want = dense.encode(encoder, SENTENCES, batch_size=4).embeddings
  got = dense.encode(bf16, SENTENCES, batch_size=4).embeddings
  assert got.dtype == want.dtype == np.float32
  cosine = np.sum(got * want, -1)
  assert cosine.min() >= 0.995, cosine
  nearest = lambda e: np.argsort(-(e @ e.T - 2 * np.eye(len(e))), axis=-1)[:, 0]
  np.testing.assert_array_equal(nearest(got), nearest(want))


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


# Scores of unit vectors agree with float64 to this; rows closer than this may come in any order.
SCORE_TOL = 1e-5


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def assert_exact_top_k(scores, rows, reference, k):
  """`rows`/`scores` are a top-k of `reference` ([q, n] float64, -inf = invalid row) up to
  SCORE_TOL: each score is its row's score, rows are distinct and ranked by reference score,
  nothing better was left out, and empty slots come last."""
  for q in range(reference.shape[0]):
    top = min(k, int(np.isfinite(reference[q]).sum()))
    got_rows, got_scores = rows[q, :top], scores[q, :top]
    assert (rows[q, top:] == -1).all() and np.isneginf(scores[q, top:]).all()
    assert len(set(got_rows.tolist())) == top and np.isfinite(reference[q, got_rows]).all()
    np.testing.assert_allclose(got_scores, reference[q, got_rows], rtol=0, atol=SCORE_TOL)
    ranked = reference[q, got_rows]
    assert (ranked[1:] <= ranked[:-1] + SCORE_TOL).all(), "rows out of score order"
    best = np.sort(reference[q][np.isfinite(reference[q])])[::-1][:top]
    np.testing.assert_allclose(ranked, best, rtol=0, atol=SCORE_TOL)


def assert_copies_adjacent(scores, rows, copies):
  """Rows with identical embeddings come together, lower row first, with one score."""
  for q_scores, q_rows in zip(scores, rows):
    where = [i for i, r in enumerate(q_rows.tolist()) if r in copies]
    if where:
      assert q_rows[where].tolist() == sorted(copies)[:len(where)]
      assert where == list(range(where[0], where[0] + len(where)))
      assert len(set(q_scores[where].tolist())) == 1


@pytest.mark.parametrize("num_rows, k, devices, block_rows", [
    (1003, 1, 8, 4096), (1003, 10, 8, 4096), (1003, 300, 8, 4096), (37, 50, 8, 4096),
    (1003, 10, 2, 64), (1003, 300, 4, 128), (5000, 20, 8, 64), (5000, 20, 3, 256)])
def test_sharded_top_k_equals_unsharded(num_rows, k, devices, block_rows):
  """Sharded and unsharded search both give the exact top-k (up to float32 rounding), and put
  identical rows together, lower row first. Bit-level agreement between the two is not assumed:
  XLA's matmul rounding may depend on shapes and kernels."""
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 simulated CPU devices"
  rng = np.random.default_rng(num_rows + k)
  embeddings = _unit(rng.standard_normal((num_rows, 64)))
  copies = [3, num_rows // 2, num_rows - 1]  # identical rows in different shards and blocks
  embeddings[copies] = embeddings[3]
  queries = _unit(rng.standard_normal((16, 64)))
  queries[0] = embeddings[3]
  queries[1] = _unit(embeddings[3] + 0.3 * embeddings[5])  # copies rank below the top
  valid = rng.random(num_rows) > 0.1
  valid[copies[1:]] = True
  reference = np.where(valid[None], queries.astype(np.float64) @ embeddings.T.astype(np.float64),
                       -np.inf)
  valid_copies = [r for r in copies if valid[r]]

  mesh = Mesh(np.array(jax.devices()[:devices]), ("shard",))
  sharded = dense.place_index(embeddings, valid, mesh=mesh, block_rows=block_rows)
  assert sharded.embeddings.sharding.num_devices == devices
  assert sharded.copies == {valid_copies[0]: valid_copies[1:]}
  one = Mesh(np.array(jax.devices()[:1]), ("shard",))
  unsharded = dense.place_index(embeddings, valid, mesh=one, block_rows=sharded.block_rows)
  for index in (sharded, unsharded):
    scores, rows = dense.search(index, queries, k)
    assert scores.shape == rows.shape == (16, k)
    assert_exact_top_k(scores, rows, reference, k)
    assert_copies_adjacent(scores, rows, valid_copies)
    assert rows[0, :min(k, len(valid_copies))].tolist() == valid_copies[:k]


def test_identical_rows_at_the_kth_place_keep_the_lower_rows():
  """Three copies of a row, k=2: the two lowest rows win on any mesh and block size."""
  rng = np.random.default_rng(0)
  embeddings = _unit(rng.standard_normal((700, 32)))
  embeddings[[650, 10, 333]] = embeddings[650]
  query = embeddings[10:11]
  valid = np.ones(700, bool)
  for devices, block_rows in [(1, 64), (2, 64), (8, 4096), (5, 128)]:
    mesh = Mesh(np.array(jax.devices()[:devices]), ("shard",))
    index = dense.place_index(embeddings, valid, mesh=mesh, block_rows=block_rows)
    scores, rows = dense.search(index, query, 2)
    assert rows.tolist() == [[10, 333]] and scores[0, 0] == scores[0, 1]
    valid[10] = False
    index = dense.place_index(embeddings, valid, mesh=mesh, block_rows=block_rows)
    assert dense.search(index, query, 5)[1][0, :2].tolist() == [333, 650]
    valid[10] = True


def test_find_copies():
  embeddings = np.zeros((7, 64), np.float32)
  embeddings[:, 0] = [1, 2, 1, 3, 1, 2, 1]
  embeddings[4, 1] = 1e-3  # equal to row 0 in the hashed columns only: not a copy
  embeddings[6, 9] = -0.0  # equal to row 0 in value but not in bits: not merged
  valid = np.array([True, True, True, True, True, False, True])
  assert dense.find_copies(embeddings, valid) == {0: [2]}
  assert dense.find_copies(embeddings[:1], valid[:1]) == {}
