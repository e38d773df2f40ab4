"""The train step: prompt-masked cross-entropy, gradient accumulation, Optax update.

One function serves full fine-tuning and LoRA: `trainable` is either the full params tree or the
adapter tree; with LoRA the frozen base is a separate, non-donated argument that never enters the
optimizer state. Losses are normalised by the number of target tokens over all micro-batches,
so k accumulated micro-batches give the same update as one k-times larger batch.

The eval step also sums the loss over the batch's `answer_mask` (the tokens of a row's answer, a
subset of the loss mask), since the whole reply's loss can be dominated by easy boilerplate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ftjax.models.config import ModelConfig
from ftjax.models.transformer import forward, hidden_states, lm_head_weights
from ftjax.training.loss import (chunked_token_losses, cross_entropy, head_logits,
                                 token_cross_entropy)

Batch = dict[str, jax.Array]


def target_positions(mask: jax.Array, num_positions: int) -> tuple[jax.Array, jax.Array]:
  """The first `num_positions` positions of each row where `mask` is set: (index [batch, n] into
  the row, weight [batch, n]: the mask there, 0 for the filler past a row's last target)."""
  index = jax.vmap(lambda row: jnp.nonzero(row, size=num_positions, fill_value=0)[0])(mask)
  count = jnp.sum(mask != 0, axis=1, keepdims=True)
  weight = jnp.take_along_axis(mask, index, axis=1).astype(jnp.float32)
  return index, jnp.where(jnp.arange(num_positions) < count, weight, 0.0)


def token_losses(model_cfg: ModelConfig, params, lora, batch: Batch, rng, mesh,
                 deterministic: bool, loss_positions: int = 0) -> jax.Array:
  """-log p(target) at every position of the batch: [batch, seq], fp32, unmasked.

  With `loss_positions` (n > 0) only the LM head's rows that enter the loss are computed: the
  first n positions of each row where `loss_mask` is set, gathered from the hidden states, so a
  row whose answer is 60 of its 512 tokens pays for 60 rows of [hidden x vocab] logits (forward and
  backward), not 512. The result is then [batch, n] and the batch's "loss_mask" must be read
  through `target_positions` (`masked_loss_sums` does); n must be at least the most targets in a
  row (the trainer takes it from the packed data), or the rest of a row's targets are left out.

  With `model_cfg.loss_chunk` the logits are made a chunk of positions at a time (see
  `ftjax.training.loss`), except on a vocab-sharded (`tensor`) mesh, where the vocab-parallel
  softmax of `cross_entropy` already keeps each device's logits to its share of the vocabulary
  (and where `loss_positions` is not used).
  """
  vocab_parallel = mesh is not None and mesh.shape["tensor"] > 1
  if (model_cfg.loss_chunk or loss_positions) and not vocab_parallel:
    hidden = hidden_states(model_cfg, params, batch["inputs"], batch["positions"],
                           batch["segment_ids"], lora=lora, deterministic=deterministic,
                           rngs=None if rng is None else {"dropout": rng})
    targets = batch["targets"]
    if loss_positions:
      index, _ = target_positions(batch["loss_mask"], loss_positions)
      hidden = jnp.take_along_axis(hidden, index[:, :, None], axis=1)
      targets = jnp.take_along_axis(targets, index, axis=1)
    head, layout = lm_head_weights(model_cfg, params)
    if not model_cfg.loss_chunk:
      return token_cross_entropy(head_logits(hidden, head, layout, model_cfg.final_logit_softcap),
                                 targets)
    return chunked_token_losses(hidden, head, layout, targets,
                                chunk=min(model_cfg.loss_chunk, targets.shape[1]),
                                softcap=model_cfg.final_logit_softcap)
  logits = forward(model_cfg, params, batch["inputs"], batch["positions"], batch["segment_ids"],
                   lora=lora, deterministic=deterministic,
                   rngs=None if rng is None else {"dropout": rng})
  return cross_entropy(logits, batch["targets"], mesh)


def _masked_sums(token_loss: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  mask = mask.astype(jnp.float32)
  return jnp.sum(token_loss * mask), jnp.sum(mask)


def masked_loss_sums(model_cfg: ModelConfig, params, lora, batch: Batch, rng, mesh,
                     deterministic: bool, loss_positions: int = 0):
  """(sum of masked token losses, number of target tokens) for one micro-batch."""
  token_loss = token_losses(model_cfg, params, lora, batch, rng, mesh, deterministic,
                            loss_positions)
  if token_loss.shape != batch["loss_mask"].shape:  # gathered: [batch, loss_positions]
    _, weight = target_positions(batch["loss_mask"], loss_positions)
    return jnp.sum(token_loss * weight), jnp.sum(batch["loss_mask"].astype(jnp.float32))
  return _masked_sums(token_loss, batch["loss_mask"])


@dataclasses.dataclass(frozen=True)
class StepFns:
  train_step: Callable  # (state, frozen, batch) -> (state, metrics)
  # (state, frozen, batch) -> {"loss_sum", "target_tokens", "answer_loss_sum", "answer_tokens"}
  eval_step: Callable


def split_micro_batches(batch: Batch, accum_steps: int) -> Batch:
  """[accum * micro, seq] -> [accum, micro, seq], taking rows strided so that every device keeps
  its share of each micro-batch when the batch axis is sharded in contiguous blocks."""
  def split(x):
    micro = x.shape[0] // accum_steps
    return x.reshape(micro, accum_steps, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_step_fns(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, *,
                  accum_steps: int, lora: bool, mesh: Mesh | None,
                  loss_positions: int = 0) -> StepFns:
  """`loss_positions` > 0: the train step computes the LM head only at that many loss positions
  a row (see `token_losses`; `loss_positions_for` sizes it from the data)."""
  def params_and_lora(trainable, frozen):
    return (frozen, trainable) if lora else (trainable, None)

  def loss_sums(trainable, frozen, micro, rng):
    params, adapters = params_and_lora(trainable, frozen)
    return masked_loss_sums(model_cfg, params, adapters, micro, rng, mesh, deterministic=False,
                            loss_positions=loss_positions)

  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

  def train_step(state: dict[str, Any], frozen, batch: Batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    micro_batches = split_micro_batches(batch, accum_steps)

    def accumulate(carry, inputs):
      index, micro = inputs
      (loss_sum, num_tokens), grads = grad_fn(state["params"], frozen, micro,
                                              jax.random.fold_in(rng, index))
      carry_loss, carry_tokens, carry_grads = carry
      return (carry_loss + loss_sum, carry_tokens + num_tokens,
              jax.tree.map(jnp.add, carry_grads, grads)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
    (loss_sum, num_tokens, grads), _ = jax.lax.scan(
        accumulate, (jnp.float32(0), jnp.float32(0), zeros),
        (jnp.arange(accum_steps), micro_batches))
    denom = jnp.maximum(num_tokens, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state["params"])
    loss = loss_sum / denom
    # A non-finite loss or gradient skips the update: params and optimizer state stay as they
    # were, the step still counts. Decided on device (no host sync) from the loss and the global
    # gradient norm (non-finite iff some gradient is, or their squares overflow), and taken with
    # `lax.cond`, so a finite step pays no extra pass over params and optimizer state; the loop
    # stops the run after too many in a row.
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(_):
      updates, new_opt_state = optimizer.update(grads, state["opt_state"], state["params"])
      return optax.apply_updates(state["params"], updates), new_opt_state

    params, opt_state = jax.lax.cond(finite, update,
                                     lambda _: (state["params"], state["opt_state"]), None)
    metrics = {"loss": loss, "target_tokens": num_tokens, "grad_norm": grad_norm,
               "nonfinite": 1.0 - finite.astype(jnp.float32)}
    new_state = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, metrics

  def eval_step(state, frozen, batch: Batch):
    params, adapters = params_and_lora(state["params"], frozen)
    token_loss = token_losses(model_cfg, params, adapters, batch, None, mesh, deterministic=True)
    loss_sum, num_tokens = _masked_sums(token_loss, batch["loss_mask"])
    # A batch without answer_mask (not from the data pipeline) has no answer tokens.
    answer_mask = batch.get("answer_mask", jnp.zeros_like(batch["loss_mask"]))
    answer_loss_sum, answer_tokens = _masked_sums(token_loss, answer_mask)
    return {"loss_sum": loss_sum, "target_tokens": num_tokens,
            "answer_loss_sum": answer_loss_sum, "answer_tokens": answer_tokens}

  return StepFns(train_step, eval_step)


def loss_positions_for(max_row_targets: int, seq_len: int, multiple: int = 64) -> int:
  """The train step's `loss_positions` for rows with at most `max_row_targets` loss tokens: that,
  rounded up to `multiple`; 0 (every position) where it would save less than a quarter."""
  n = -(-max(max_row_targets, 1) // multiple) * multiple
  return 0 if n > seq_len * 3 // 4 else n


def jit_step_fns(fns: StepFns, train, mesh: Mesh) -> StepFns:
  """The step functions jit-compiled for `train` (a `training.state.TrainState`) on `mesh`: the
  trainable state is donated to the train step; metrics come back replicated."""
  from ftjax.sharding import batch_sharding, replicated
  in_shardings = (train.shardings, train.frozen_shardings, batch_sharding(mesh))
  return StepFns(
      train_step=jax.jit(fns.train_step, in_shardings=in_shardings,
                         out_shardings=(train.shardings, replicated(mesh)), donate_argnums=(0,)),
      eval_step=jax.jit(fns.eval_step, in_shardings=in_shardings,
                        out_shardings=replicated(mesh)))


def make_optimizer(opt_cfg, num_steps: int) -> tuple[optax.GradientTransformation, Callable]:
  """AdamW with warmup then cosine / linear / constant decay, and global-norm clipping."""
  peak = opt_cfg.learning_rate
  warmup = min(opt_cfg.warmup_steps, max(num_steps - 1, 0))
  end = peak * opt_cfg.min_lr_ratio
  if opt_cfg.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(num_steps, warmup + 1),
                                                  end)
  elif opt_cfg.schedule == "linear":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup),
         optax.linear_schedule(peak, end, max(num_steps - warmup, 1))], [warmup])
  elif opt_cfg.schedule == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  else:
    raise ValueError(f"optimizer.schedule: {opt_cfg.schedule!r} is not one of "
                     "cosine, linear, constant")
  chain = []
  if opt_cfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                           weight_decay=opt_cfg.weight_decay))
  return optax.chain(*chain), schedule
