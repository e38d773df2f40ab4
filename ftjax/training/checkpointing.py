"""Orbax checkpoints of the whole train state plus the data iterator's position.

Each checkpoint step holds `state` (step, trainable params, optimizer state, RNG: for LoRA runs
the trainable params are the adapters only) and `data` (the iterator position, JSON).
`latest_step` and `restore_params` read a finished run's trainable params alone, for loading it
(`ftjax.load(workdir)`) or seeding another run (`init_from`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str | Path, *, every_steps: int, keep: int, async_save: bool):
    self.every_steps = every_steps
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Saves (asynchronously) every `every_steps` steps, or now if `force`; once per step."""
    if (not force and step % self.every_steps) or step == self.manager.latest_step():
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """`abstract_state`: a pytree of jax.ShapeDtypeStruct with shardings (where to put it)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"])

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _reader(directory: str | Path) -> ocp.CheckpointManager:
  """A manager that only reads: creates nothing, and skips unfinished (temporary) saves."""
  return ocp.CheckpointManager(
      Path(directory).absolute(),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(create=False))


def latest_step(directory: str | Path) -> int | None:
  """The latest finished checkpoint step in `directory`, or None if there is none."""
  if not Path(directory).is_dir():
    return None
  with _reader(directory) as manager:
    return manager.latest_step()


def restore_params(directory: str | Path, step: int, abstract_params: Any = None, *,
                   sharding: jax.sharding.Sharding | None = None, dtype=None) -> Any:
  """The trainable params of checkpoint `step` (no optimizer state, RNG or data position).

  `abstract_params`: ShapeDtypeStructs with shardings, as training lays them out. None: as saved,
  every leaf on `sharding` (default: the first local device), cast to `dtype` if given.
  """
  with _reader(directory) as manager:
    if abstract_params is None:
      saved = manager.item_metadata(step)["state"].tree["params"]
      sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract_params = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=sharding), saved)
    target = {"params": abstract_params}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
  return restored["state"]["params"]


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
