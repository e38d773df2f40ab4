"""The train state: made fresh, seeded from a finished run (`init_from`), or restored.

`state` is the one pytree Orbax saves: {"step", "params", "opt_state", "rng"}, where "params" are
the trainable params (the full tree, or the LoRA adapters). A LoRA run's frozen base lives beside
it (`frozen`) and never enters the optimizer.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from ftjax.models import lora as lora_lib
from ftjax.models import quant
from ftjax.checkpoints import CheckpointError, Pretrained
from ftjax.checkpoints.loading import RunModel, latest_trained_step
from ftjax.checkpoints.registry import REGISTRY, RUN_MODEL_FILE
from ftjax.config import ConfigError
from ftjax.models.config import ModelConfig
from ftjax.models.transformer import logical_param_specs
from ftjax.sharding import DEFAULT_RULES, logical_to_shardings, make_mesh, replicated
from ftjax.checkpoints.orbax_store import Checkpointer, abstract_like, restore_params
from ftjax.training.step import make_optimizer


@dataclasses.dataclass
class TrainState:
  state: dict[str, Any]  # step, params (the trainable ones), opt_state, rng; on the mesh
  shardings: dict[str, Any]  # NamedShardings, the same tree as `state`
  frozen: Any  # a LoRA run's frozen base params on the mesh; None for full fine-tuning
  frozen_shardings: Any
  model_config: ModelConfig  # the base's, with LoRA scale and dropout for LoRA runs
  lora: lora_lib.LoraSpec | None
  optimizer: optax.GradientTransformation
  schedule: Callable  # step -> learning rate
  num_trainable: int
  num_total: int
  start_step: int = 0  # > 0 when restored from this run's own checkpoint
  data_state: dict | None = None  # the data iterator's position, when restored
  init_from_step: int | None = None  # the checkpoint of `init_from` that seeded the params


def make_train_mesh(config: ml_collections.ConfigDict) -> tuple[Mesh, tuple]:
  """The device mesh and logical axis rules of `config`; checks that the batch divides them."""
  shape = {k: v for k, v in config.mesh.items() if k != "num_devices"}
  if config.mesh.num_devices > jax.device_count():
    raise ConfigError(f"config key mesh.num_devices: {config.mesh.num_devices} devices asked for, "
                      f"{jax.device_count()} available")
  mesh = make_mesh(shape, jax.devices()[:config.mesh.num_devices or None])
  rules = tuple(tuple(r) for r in config.logical_axis_rules) + DEFAULT_RULES
  micro_batch = config.batch_size // config.grad_accum_steps
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if micro_batch % batch_shards:
    raise ConfigError(f"config key batch_size: a micro-batch of {micro_batch} rows (batch_size / grad_accum_steps) is not "
                      f"divisible by the data x fsdp mesh size {batch_shards}")
  if config.batch_size % jax.process_count():
    raise ConfigError(f"config key batch_size: {config.batch_size} is not divisible by "
                      f"{jax.process_count()} processes")
  return mesh, rules


def lora_spec(config: ml_collections.ConfigDict) -> lora_lib.LoraSpec | None:
  if not config.lora.enabled:
    return None
  return lora_lib.LoraSpec(rank=config.lora.rank, alpha=float(config.lora.alpha),
                           dropout=float(config.lora.dropout),
                           targets=lora_lib.validate_targets(config.lora.targets),
                           variant=config.lora.variant, base_quant=config.lora.base_quant,
                           quant_block_size=config.lora.quant_block_size)


def _model_name(name: str) -> str:
  """Local paths made absolute, so a run's model.json is valid from any working directory."""
  path = Path(name).expanduser()
  return str(path.resolve()) if name not in REGISTRY and path.exists() else name


def run_model(config: ml_collections.ConfigDict) -> RunModel:
  """What this run trains: written to WORKDIR/model.json, read by `ftjax.load(WORKDIR)`."""
  return RunModel(_model_name(config.model), lora_spec(config), config.dtype, config.param_dtype)


def check_same_model(config: ml_collections.ConfigDict, other: RunModel, source: str):
  """ConfigError naming each key in which `config` trains something other than `other` (the
  model, LoRA or not, and the LoRA rank, alpha and targets: what the trained params depend on)."""
  mine = run_model(config)
  differ = []
  if _model_name(other.base_model) != mine.base_model:
    differ.append(f"model: {other.base_model} there, {config.model} here")
  if (other.lora is None) != (mine.lora is None):
    differ.append(f"lora.enabled: {other.lora is not None} there, {mine.lora is not None} here")
  elif mine.lora is not None:
    for key, there, here in [("rank", other.lora.rank, mine.lora.rank),
                             ("alpha", other.lora.alpha, mine.lora.alpha),
                             ("targets", sorted(other.lora.targets), sorted(mine.lora.targets)),
                             ("variant", other.lora.variant, mine.lora.variant),
                             ("base_quant", other.lora.base_quant, mine.lora.base_quant),
                             ("quant_block_size", other.lora.quant_block_size,
                              mine.lora.quant_block_size)]:
      if there != here:
        differ.append(f"lora.{key}: {there} there, {here} here")
  if differ:
    raise ConfigError(f"{source} trained a different model than this config: "
                      + "; ".join(differ))


def put_on_mesh(tree, shardings):
  """Host numpy pytree -> global jax arrays laid out by `shardings` (works across processes)."""
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: np.asarray(x)[index]),
      tree, shardings)


def optimizer_shardings(optimizer, trainable, trainable_shardings, mesh: Mesh):
  """Optimizer moments take their parameter's sharding; counters etc. are replicated."""
  abstract_opt = jax.eval_shape(optimizer.init, trainable)
  rep = replicated(mesh)
  return optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt,
                               trainable_shardings, transform_non_params=lambda _: rep)


def init_train_state(config: ml_collections.ConfigDict, base: Pretrained, mesh: Mesh,
                     rules) -> TrainState:
  """A fresh state at step 0 on `mesh`: the base params (full fine-tuning) or new adapters (on
  a base quantized as `lora.base_quant` says: QLoRA)."""
  spec = lora_spec(config)
  base = quantized_base(base, spec)
  model_cfg = base.config
  if spec is not None:
    model_cfg = lora_lib.with_lora(model_cfg, rank=spec.rank, alpha=spec.alpha,
                                   dropout=spec.dropout)
  param_shardings = logical_to_shardings(logical_param_specs(model_cfg), base.params, mesh, rules)
  params = put_on_mesh(base.params, param_shardings)
  rng = jax.random.PRNGKey(config.seed)
  if spec is None:
    trainable, trainable_shardings = params, param_shardings
    frozen, frozen_shardings = None, None
  else:
    init_rng, rng = jax.random.split(rng)
    adapters = lora_lib.init_lora(base.params, rank=spec.rank, targets=spec.targets, rng=init_rng,
                                  variant=spec.variant)
    trainable_shardings = logical_to_shardings(lora_lib.logical_specs(adapters), adapters, mesh,
                                               rules)
    trainable = put_on_mesh(jax.device_get(adapters), trainable_shardings)
    frozen, frozen_shardings = params, param_shardings

  optimizer, schedule = make_optimizer(config.optimizer, config.num_steps)
  opt_shardings = optimizer_shardings(optimizer, trainable, trainable_shardings, mesh)
  shardings = {"step": replicated(mesh), "params": trainable_shardings,
               "opt_state": opt_shardings, "rng": replicated(mesh)}
  state = {
      "step": jnp.zeros((), jnp.int32),
      "params": trainable,
      "opt_state": jax.jit(optimizer.init, out_shardings=opt_shardings)(trainable),
      "rng": rng,
  }
  return TrainState(
      state=jax.device_put(state, shardings), shardings=shardings, frozen=frozen,
      frozen_shardings=frozen_shardings, model_config=model_cfg, lora=spec, optimizer=optimizer,
      schedule=schedule, num_trainable=lora_lib.count_params(trainable),
      num_total=lora_lib.count_params(base.params))


def quantized_base(base: Pretrained, spec: lora_lib.LoraSpec | None) -> Pretrained:
  """`base` with its projections quantized as `spec` asks (a no-op if `ftjax.load` did it)."""
  mode = "none" if spec is None else spec.base_quant
  have = (base.config.base_quant, base.config.quant_block_size)
  if mode == "none" or have == (mode, spec.quant_block_size):
    if base.config.base_quant != "none" and mode == "none":
      raise ConfigError(f"config key lora.base_quant: the base is loaded {have[0]}-quantized, "
                        "the config says none")
    return base
  if have[0] != "none":
    raise ConfigError(f"config key lora.base_quant: the base is loaded as {have}, the config "
                      f"asks for {(mode, spec.quant_block_size)}")
  try:
    quant.check_model(base.config, mode, spec.quant_block_size)
  except ValueError as err:
    raise ConfigError(f"config key {err}") from None
  params = quant.quantize_params(jax.device_get(base.params), quant.projections(base.config),
                                 mode=mode, block_size=spec.quant_block_size)
  return base._replace(config=base.config.replace(base_quant=mode,
                                                  quant_block_size=spec.quant_block_size),
                       params=params)


def seed_from_run(train: TrainState, workdir: str | Path, step: int) -> TrainState:
  """`train` with the trainable params of `workdir`'s checkpoint `step`: step 0, fresh optimizer."""
  params = restore_params(Path(workdir) / "checkpoints", step,
                          abstract_like(train.state["params"], train.shardings["params"]))
  opt_state = jax.jit(train.optimizer.init, out_shardings=train.shardings["opt_state"])(params)
  return dataclasses.replace(train, state={**train.state, "params": params,
                                           "opt_state": opt_state}, init_from_step=step)


def _init_from_step(config: ml_collections.ConfigDict) -> int:
  """The checkpoint of `config.init_from` to start from, once it is known to fit this config."""
  source = f"config key init_from: {config.init_from}"
  try:
    other = RunModel.read(config.init_from)
    check_same_model(config, other, source)
    return latest_trained_step(config.init_from)
  except CheckpointError as err:
    raise ConfigError(f"config key init_from: {err}") from None


def restore_or_init(config: ml_collections.ConfigDict, base: Pretrained, mesh: Mesh, rules,
                    checkpointer: Checkpointer, workdir: str | Path) -> TrainState:
  """The latest intact checkpoint in this run's `workdir` if there is one (init_from only seeds
  a fresh run); else a fresh state, with the trained params of `config.init_from` if set.
  Damaged checkpoints are set aside (`Checkpointer.restore_latest_intact`)."""
  latest = checkpointer.latest_step()
  init_from_step = None
  if latest is not None and (Path(workdir) / RUN_MODEL_FILE).is_file():
    check_same_model(config, RunModel.read(workdir), f"workdir {workdir}")
  elif latest is None and config.init_from:
    init_from_step = _init_from_step(config)

  train = init_train_state(config, base, mesh, rules)
  if latest is not None:
    try:
      restored = checkpointer.restore_latest_intact(abstract_like(train.state, train.shardings))
    except ConfigError as err:
      raise ConfigError(f"workdir {workdir}: {err}") from None
    if restored is not None:
      _, state, data_state = restored
      return dataclasses.replace(train, state=state, data_state=data_state,
                                 start_step=int(state["step"]))
    print(f"warning: no intact checkpoint in {checkpointer.directory}; starting from step 0",
          file=sys.stderr, flush=True)
    if config.init_from:
      init_from_step = _init_from_step(config)
  if init_from_step is not None:
    return seed_from_run(train, config.init_from, init_from_step)
  return train
