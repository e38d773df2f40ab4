"""Cross-entropy over the vocabulary: whole, vocab-parallel on a `tensor` mesh, or a chunk of
positions at a time. The one implementation: the train step, the eval step and the security
measurement's sequence scores all use it.

`chunked_token_losses` is the training loss's memory saver: for each chunk of positions it computes
[batch, chunk, vocab] fp32 logits from the hidden states, reduces them to -log p(target), and drops
them; `jax.checkpoint` makes the backward pass recompute a chunk's logits rather than keep them. At
the 1B shape (8,192 tokens x 128,256 vocab) the whole-batch logits are 4.2 GB; chunks of 512
positions x batch 4 need 263 MB. The result equals the whole-vocabulary loss to fp32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from ftjax.sharding import BATCH_AXES


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """-log p(target): logits [..., vocab] fp32, targets [...] -> [...]."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  return logz - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def cross_entropy(logits: jax.Array, targets: jax.Array, mesh: Mesh | None = None) -> jax.Array:
  """Per-token -log p(target): logits [batch, seq, vocab] fp32, targets [batch, seq] -> [b, s].

  With a `tensor` mesh axis that divides the vocabulary, the softmax is computed where the
  logits live (vocab-sharded) with hand-written collectives in `shard_map`, instead of
  gathering [batch, seq, vocab] onto every device.
  """
  vocab = logits.shape[-1]
  if mesh is None or mesh.shape["tensor"] == 1 or vocab % mesh.shape["tensor"]:
    return token_cross_entropy(logits, targets)

  def local(logits_shard, targets_shard):
    shard_vocab = logits_shard.shape[-1]
    offset = jax.lax.axis_index("tensor") * shard_vocab
    row_max = jax.lax.pmax(jax.lax.stop_gradient(logits_shard).max(axis=-1), "tensor")
    sum_exp = jax.lax.psum(jnp.exp(logits_shard - row_max[..., None]).sum(axis=-1), "tensor")
    local_target = targets_shard - offset
    in_shard = (local_target >= 0) & (local_target < shard_vocab)
    picked = jnp.take_along_axis(
        logits_shard, jnp.clip(local_target, 0, shard_vocab - 1)[..., None], axis=-1)[..., 0]
    target_logit = jax.lax.psum(jnp.where(in_shard, picked, 0.0), "tensor")
    return jnp.log(sum_exp) + row_max - target_logit

  batch_axes = BATCH_AXES if logits.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0 \
      else None
  return jax.shard_map(local, mesh=mesh, in_specs=(P(batch_axes, None, "tensor"),
                                                   P(batch_axes, None)),
                       out_specs=P(batch_axes, None))(logits, targets)


def head_logits(hidden: jax.Array, head: jax.Array, head_layout: str,
                softcap: float | None = None) -> jax.Array:
  """hidden [..., hidden] @ head ([vocab, hidden] "ve" or [hidden, vocab] "ev") -> fp32 logits."""
  # The model's own head product (bf16 inputs with f32 accumulation under bf16, forward and
  # backward), so the chunked loss takes the CPU's bf16 units like the unchunked one.
  from ftjax.models.matmul import project
  if head_layout not in ("ve", "ev"):
    raise ValueError(f"head_layout must be 've' or 'ev', got {head_layout!r}")
  logits = project(hidden, head, 1, hidden.dtype, jnp.float32,
                   kernel_out_first=head_layout == "ve")
  if softcap:
    logits = jnp.tanh(logits / softcap) * softcap
  return logits


def chunked_token_losses(hidden: jax.Array, head: jax.Array, head_layout: str,
                         targets: jax.Array, *, chunk: int,
                         softcap: float | None = None) -> jax.Array:
  """-log p(target) [batch, seq] from hidden [batch, seq, hidden], `chunk` positions at a time."""
  batch, seq, width = hidden.shape
  num_chunks = -(-seq // chunk)
  pad = num_chunks * chunk - seq
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  # [chunks, batch, chunk, ...]: the batch axis keeps its sharding inside every chunk.
  hidden = hidden.reshape(batch, num_chunks, chunk, width).swapaxes(0, 1)
  targets = targets.reshape(batch, num_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(head, hidden_chunk, target_chunk):
    return token_cross_entropy(head_logits(hidden_chunk, head, head_layout, softcap),
                               target_chunk)

  losses = jax.lax.map(lambda xs: one_chunk(head, *xs), (hidden, targets))
  return losses.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :seq]
