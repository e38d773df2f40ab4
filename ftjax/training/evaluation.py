"""Held-out loss during training: `Evaluator(eval_step, data, mesh, rules, writer)(state, frozen,
step)` runs the jitted eval step over every eval batch, appends to `history` and writes it out."""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import numpy as np

from ftjax.sharding import shard_batch
from ftjax.training.metrics import MetricWriter


class Evaluator:
  """Held-out loss and perplexity; and, where eval rows carry an `answer`, the loss on the
  answer's tokens alone (eval_answer_loss), which the reply's boilerplate cannot dilute."""

  def __init__(self, eval_step: Callable, data, mesh, rules, writer: MetricWriter):
    self.eval_step, self.mesh, self.rules, self.writer = eval_step, mesh, rules, writer
    # step, eval_loss, eval_perplexity, eval_tokens (+ eval_answer_loss, eval_answer_tokens)
    self.history: list[dict] = []
    # Every host must run the same number of eval steps, though their shards may differ in size.
    self.batches = data.eval_batches()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      most = int(np.max(multihost_utils.process_allgather(np.int32(len(self.batches)))))
      self.batches = data.eval_batches(min_batches=most)

  def __call__(self, state, frozen, step: int):
    """Evaluates once per step (a second call at the same step does nothing)."""
    if not self.batches or (self.history and self.history[-1]["step"] == step):
      return
    sums = {"loss_sum": 0.0, "target_tokens": 0.0, "answer_loss_sum": 0.0, "answer_tokens": 0.0}
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      for batch in self.batches:
        out = jax.device_get(self.eval_step(state, frozen, shard_batch(batch, self.mesh)))
        sums = {k: v + float(out[k]) for k, v in sums.items()}
    tokens = sums["target_tokens"]
    loss = sums["loss_sum"] / max(tokens, 1.0)
    metrics = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
               "eval_tokens": tokens}
    if sums["answer_tokens"]:  # absent, not 0 or NaN, when no eval row has a located answer
      metrics.update(eval_answer_loss=sums["answer_loss_sum"] / sums["answer_tokens"],
                     eval_answer_tokens=sums["answer_tokens"])
    self.history.append({"step": step, **metrics})
    self.writer.write(step, metrics, echo=True)
