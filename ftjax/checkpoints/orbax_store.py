"""Orbax checkpoints of the whole train state plus the data iterator's position.

Each checkpoint step holds `state` (step, trainable params, optimizer state, RNG: for LoRA runs
the trainable params are the adapters only) and `data` (the iterator position, JSON).
`latest_step` and `restore_params` read a finished run's trainable params alone, for loading it
(`ftjax.load(workdir)`) or seeding another run (`init_from`).

A state with NaN/inf values is never saved. Resuming tries the newest step first; one that cannot
be read, or holds non-finite values, is renamed `<step>.damaged-<time>` (kept, never deleted) and
the next older one is tried; one `warning:` line says so, and what Orbax and TensorStore print
while a read fails is held back (`_attempt`).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from ftjax.config import ConfigError


class Checkpointer:
  def __init__(self, directory: str | Path, *, every_steps: int, keep: int, async_save: bool):
    self.every_steps = every_steps
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Saves (asynchronously) every `every_steps` steps, or now if `force`; once per step. A
    state with non-finite values is not saved (a warning says so), so it never rotates a good
    checkpoint out."""
    if (not force and step % self.every_steps) or step == self.manager.latest_step():
      return False
    if not all_finite(state):
      _warn(f"step {step}: the train state holds NaN/inf values; not saved as a checkpoint")
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """`abstract_state`: a pytree of jax.ShapeDtypeStruct with shardings (where to put it)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"])

  def restore_latest_intact(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, data position) of the newest checkpoint that restores with finite values;
    damaged newer ones are set aside with a warning. None if there is no intact checkpoint.
    ConfigError if a readable checkpoint holds a state of other shapes than `abstract_state`
    (a config change, not damage: nothing is set aside)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      saved, failure = _attempt(lambda: self._saved_state_metadata(step))
      if failure is not None:
        self._set_aside(step, failure)
        continue
      _check_fits(step, saved, abstract_state)
      restored, failure = _attempt(lambda: self.restore(step, abstract_state))
      if failure is not None:
        self._set_aside(step, failure)
        continue
      state, data_state = restored
      if not all_finite(state):
        self._set_aside(step, _Failure("ValueError", "it holds NaN/inf values"))
        continue
      return step, state, data_state
    return None

  def _saved_state_metadata(self, step: int):
    with _reader(self.directory) as reader:
      saved = reader.item_metadata(step)["state"]
    if saved is None:
      raise ValueError("no metadata for its train state")
    return saved

  def _set_aside(self, step: int, err: _Failure):
    """Renames a damaged step's folder so that neither Orbax nor a rerun picks it again."""
    folder = self.directory / str(step)
    aside = folder.with_name(f"{step}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    reason = (str(err).strip().splitlines() or [""])[0]
    reason = reason.split(" See full TensorStore details")[0][:200]  # not its JSON spec
    if jax.process_index() == 0:
      folder.rename(aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"ftjax set aside checkpoint {step}")
    self.manager.reload()
    _warn(f"checkpoint step {step} in {self.directory} is damaged ({err.kind}: "
          f"{reason}); moved to {aside.name}, trying the previous one")

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


def all_finite(tree) -> bool:
  """Whether every float leaf of `tree` (global arrays) is free of NaN and inf."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return True
  return bool(_all_finite(leaves))


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _check_fits(step: int, saved_tree: Any, abstract_state: Any):
  """ConfigError naming the leaves whose presence or shape differ between the checkpoint's
  metadata and the state this config makes."""
  def shapes(tree):
    return {jax.tree_util.keystr(path, simple=True, separator="."): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  tree = getattr(saved_tree, "tree", saved_tree)
  there, here = shapes(tree), shapes(abstract_state)
  differ = [f"{name}: {there.get(name, 'absent')} there, {here.get(name, 'absent')} here"
            for name in sorted(set(there) | set(here)) if there.get(name) != here.get(name)]
  if differ:
    shown = "; ".join(differ[:3]) + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else "")
    raise ConfigError(
        f"checkpoint step {step} holds a train state of other shapes than this config makes "
        f"({shown}); resuming needs the same model, lora.rank/targets, and "
        "optimizer.grad_clip_norm on or off as the run that saved it")


class _Failure(Exception):
  """What a failed read raised, kept as text: no traceback, so nothing it referenced (Orbax's
  pending reads) outlives the attempt."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def _attempt(fn: Callable[[], Any]) -> tuple[Any, _Failure | None]:
  """(fn(), None), or (None, the failure) if it raised. A failing restore prints more than its
  exception: Orbax/absl log records, asyncio's "exception was never retrieved", and tracebacks
  from TensorStore's reads of the other arrays as they finish after the event loop closed
  (thousands of lines for one damaged file). All of that is held back here, with the abandoned
  reads collected inside the quiet window; the caller reports the failure as one `warning:` line.
  A successful call's output passes through."""
  hooks = sys.unraisablehook, threading.excepthook
  disabled = logging.root.manager.disable
  buffer = io.StringIO()
  failure = None
  logging.disable(logging.CRITICAL)
  sys.unraisablehook = threading.excepthook = lambda *args: None
  try:
    with contextlib.redirect_stderr(buffer):
      try:
        return fn(), None
      except Exception as err:  # noqa: BLE001  (Orbax raises many kinds for unreadable files)
        failure = _Failure(type(err).__name__, str(err))
      for _ in range(3):  # the exception is gone: its pending reads can finish and be collected
        gc.collect()
        time.sleep(0.1)
      return None, failure
  finally:
    sys.unraisablehook, threading.excepthook = hooks
    logging.disable(disabled)
    if failure is None and buffer.getvalue():
      sys.stderr.write(buffer.getvalue())


def _warn(message: str):
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)
