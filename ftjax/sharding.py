"""Device meshes and the one table that maps the model's logical axis names to mesh axes.

Model code names logical axes only (`embed`, `heads`, `activation_batch`, ...). A recipe picks a
mesh shape (`data`, `fsdp`, `tensor`) and, if it wants, its own rules; everything else follows.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ftjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or tuple of axes, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("lora_rank", None),
)


class MeshConfigError(ValueError, UserError):
  pass


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`shape` maps each of data/fsdp/tensor to a size; one size may be -1 (the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise MeshConfigError(f"mesh: unknown axis {sorted(unknown)}; axes are {MESH_AXES}")
  sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise MeshConfigError(f"mesh: at most one axis may be -1, got {free}")
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % known:
      raise MeshConfigError(f"mesh: {len(devices)} devices are not divisible by {known}")
    sizes[free[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise MeshConfigError(
        f"mesh {sizes} needs {math.prod(sizes.values())} devices, but {len(devices)} are present")
  grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
  return Mesh(grid, MESH_AXES)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide a dimension (e.g. 3 kv heads on a tensor axis of 2)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    for axis in axes:
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
        kept.append(axis)
    fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*fitted)


def logical_to_shardings(logical_specs, abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """Pytree of logical PartitionSpecs (+ matching shapes) -> pytree of NamedShardings."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh)),
      mesh_specs, abstract_tree, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[batch, seq] arrays: batch split over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax arrays (each process passes its own rows)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
