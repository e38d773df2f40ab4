"""The one continuation scorer (lm_eval's loglikelihood and the canary ranks both use it)."""

import jax
import numpy as np

import ftjax
from ftjax.generation.scoring import continuation_logprobs, continuation_scores
from ftjax.models import forward


def test_continuation_logprob_is_the_sum_of_the_tokens_log_probabilities(tiny_llama_folder):
  model = ftjax.load(str(tiny_llama_folder))
  context = [5, 17, 42, 8]
  logits = np.asarray(forward(model.config, model.params, np.array([context], np.int32)))[0]
  logprobs = np.asarray(jax.nn.log_softmax(logits.astype(np.float64), axis=-1))
  greedy_next = int(np.argmax(logits[-1]))
  continuations = [[greedy_next], [(greedy_next + 1) % model.config.vocab_size], [9, 3, 11]]

  scores = continuation_scores(model, [(context, c) for c in continuations], batch_size=2)
  assert scores[0] == (scores[0][0], True) and scores[1][1] is False
  np.testing.assert_allclose([s for s, _ in scores[:2]],
                             [logprobs[-1, c[0]] for c in continuations[:2]], atol=1e-4)
  whole = context + continuations[2]
  logits = np.asarray(forward(model.config, model.params, np.array([whole], np.int32)))[0]
  logprobs = np.asarray(jax.nn.log_softmax(logits.astype(np.float64), axis=-1))
  expected = sum(logprobs[len(context) - 1 + i, t] for i, t in enumerate(continuations[2]))
  np.testing.assert_allclose(scores[2][0], expected, atol=1e-4)
  # Batching and order do not change a score.
  np.testing.assert_allclose(continuation_logprobs(model, context, continuations[::-1],
                                                   batch_size=1)[::-1],
                             [s for s, _ in scores], atol=1e-5)


def test_many_continuations_of_one_context_read_it_from_a_shared_prefix(tiny_llama_folder):
  """`continuation_logprobs` (a canary's candidates) runs the context once as a prefix cache and
  only the continuations per row: the scores are those of the whole sequences, in any batch."""
  from ftjax.generation import scoring
  model = ftjax.load(str(tiny_llama_folder))
  rng = np.random.default_rng(0)
  context = rng.integers(3, model.config.vocab_size, 70).tolist()
  continuations = [rng.integers(3, model.config.vocab_size, n).tolist()
                   for n in (1, 4, 9, 2, 7, 3, 5)]
  expected = [s for s, _ in continuation_scores(model, [(context, c) for c in continuations])]
  before = scoring.token_logprobs_after_prefix._cache_size()
  np.testing.assert_allclose(continuation_logprobs(model, context, continuations, batch_size=3),
                             expected, rtol=1e-5, atol=1e-4)
  assert scoring.token_logprobs_after_prefix._cache_size() > before  # the prefix path ran
  # With LoRA adapters (their own scale) the prefix is prefilled through them as well.
  from ftjax.models import lora as lora_lib
  spec = lora_lib.LoraSpec(rank=4, alpha=32.0, targets=lora_lib.ALL_TARGETS)
  tree = jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.random.normal(jax.random.PRNGKey(len(path)), x.shape) * 0.02
                       if path[-1].key == "b" else x),
      lora_lib.init_lora(model.params, rank=4, targets=spec.targets, rng=jax.random.PRNGKey(1)))
  adapted = model._replace(adapters=lora_lib.Adapters(spec, tree))
  tuned = [s for s, _ in continuation_scores(adapted, [(context, c) for c in continuations])]
  assert np.max(np.abs(np.subtract(tuned, expected))) > 1e-2  # the adapters change the scores
  np.testing.assert_allclose(continuation_logprobs(adapted, context, continuations),
                             tuned, rtol=1e-5, atol=1e-4)
  # One continuation, or a one-token context, takes the general path and agrees as well.
  np.testing.assert_allclose(continuation_logprobs(model, context, continuations[:1]),
                             expected[:1], atol=1e-5)
