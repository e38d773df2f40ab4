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
