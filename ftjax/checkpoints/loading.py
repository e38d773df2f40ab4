"""`load(name_or_path)` -> Pretrained(config, params, tokenizer, adapters): the entry point for
every tool.

`name_or_path` names a model (registered name, folder, .gguf file, hub id) or a training workdir
(`ftjax.train`): then the base model recorded in its model.json, with the trainable params of its
latest finished checkpoint (the full tree, or LoRA adapters with their spec).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ftjax.checkpoints import gguf_quant
from ftjax.checkpoints.hf_import import CheckpointError, load_params, read_hf_config
from ftjax.checkpoints.registry import RUN_MODEL_FILE, gguf_file, is_workdir, resolve
from ftjax.config import ConfigError
from ftjax.models import quant as quant_lib
from ftjax.models.lora import Adapters, LoraSpec
from ftjax.models.config import ModelConfig, from_hf_config


class Pretrained(NamedTuple):
  """A loaded model. `adapters` (a `ftjax.models.lora.Adapters`, or None) are applied by everything
  that takes a model (generation, RAG, evaluation) at their own scale; `config` is the base's."""
  config: ModelConfig
  params: Any
  tokenizer: Any
  adapters: Any = None


@dataclasses.dataclass(frozen=True)
class RunModel:
  """What a training run trains, written to WORKDIR/model.json at its start so that loading the
  run never guesses: the base model, the LoRA spec (None: full fine-tuning) and the dtypes."""
  base_model: str
  lora: LoraSpec | None
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def method(self) -> str:
    return "full" if self.lora is None else "lora"

  def to_json(self) -> dict:
    return {"base_model": self.base_model, "method": self.method,
            "lora": None if self.lora is None else self.lora.to_json(),
            "dtype": self.dtype, "param_dtype": self.param_dtype}

  @classmethod
  def from_json(cls, obj: dict) -> "RunModel":
    if obj["method"] not in ("lora", "full"):
      raise ValueError(f"method {obj['method']!r} is not lora or full")
    lora = LoraSpec.from_json(obj["lora"]) if obj["method"] == "lora" else None
    return cls(str(obj["base_model"]), lora, str(obj["dtype"]), str(obj["param_dtype"]))

  def write(self, workdir: str | os.PathLike):
    path = Path(workdir) / RUN_MODEL_FILE
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps(self.to_json(), indent=2) + "\n")
    staged.replace(path)

  @classmethod
  def read(cls, workdir: str | os.PathLike) -> "RunModel":
    path = Path(workdir) / RUN_MODEL_FILE
    if not path.is_file():
      raise CheckpointError(f"{workdir}: no {RUN_MODEL_FILE}, so what the run trained is unknown "
                            "(not a training workdir, or one from before ftjax wrote it)")
    try:
      return cls.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
      raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def latest_trained_step(workdir: str | os.PathLike) -> int:
  """The step of a run's latest finished checkpoint; CheckpointError if it has none."""
  from ftjax.checkpoints.orbax_store import latest_step  # Orbax: only for workdirs
  directory = Path(workdir) / "checkpoints"
  step = latest_step(directory)
  if step is None:
    raise CheckpointError(f"{workdir}: no finished checkpoint in {directory} "
                          "(the run has not saved one yet)")
  return step


def load_tokenizer(name_or_path: str | os.PathLike):
  """The tokenizer (with chat template) that ships beside the weights (a run's: its base's)."""
  if is_workdir(name_or_path):
    return load_tokenizer(RunModel.read(name_or_path).base_model)
  from transformers import AutoTokenizer
  folder = resolve(name_or_path)
  try:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
  except (OSError, ValueError) as err:
    raise CheckpointError(f"{folder}: could not load a tokenizer ({err})") from err
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer


def model_config(name_or_path, **config_args) -> ModelConfig:
  """The ModelConfig of a registered name, folder, hub id or training workdir, no weights loaded
  (a run's is its base's: training never changes the architecture)."""
  if is_workdir(name_or_path):
    return model_config(RunModel.read(name_or_path).base_model, **config_args)
  return from_hf_config(read_hf_config(resolve(name_or_path)), **config_args)


def load(name_or_path: str | os.PathLike = "smollm2-135m-instruct", *, dtype: str | None = None,
         param_dtype: str | None = None, allow_pickle: bool = False, tokenizer: bool = True,
         device_put: bool = True, adapter: str | os.PathLike | None = None,
         step: int | None = None, quant: str | None = None, quant_block_size: int = 64,
         **config_overrides) -> Pretrained:
  """Loads a pretrained decoder by registered name, local folder / .gguf file, or hub id, or
  the trained model of a training workdir.

  `dtype` is the compute dtype (e.g. "bfloat16"); `param_dtype` the storage dtype of params
  (default float32, or for a workdir the run's). `adapter` is a PEFT LoRA adapter folder
  (adapter_config.json + adapter_model.safetensors) for this base, returned as `adapters`.
  `step` picks a training workdir's checkpoint (default: its latest), e.g. the one an early-
  stopping rule selected. `quant` ("int8" | "nf4") stores every projection's kernel
  block-quantized (QLoRA's frozen base; blocks of `quant_block_size`, `ftjax.models.quant`);
  a LoRA workdir's base is quantized as it was trained unless `quant` says otherwise. A GGUF
  file with `quant="int8", quant_block_size=32` keeps its Q8_0 projections as stored
  (`ftjax.checkpoints.gguf_quant`), never dequantized nor converted to an fp32 folder.
  Returns params as a plain pytree of jax arrays (numpy if `device_put=False`).
  """
  if adapter is not None:
    if is_workdir(name_or_path):
      raise CheckpointError(f"{name_or_path}: a training workdir brings its own adapters; "
                            "pass its base model with adapter=")
    model = load(name_or_path, dtype=dtype, param_dtype=param_dtype, allow_pickle=allow_pickle,
                 tokenizer=tokenizer, device_put=device_put, quant=quant,
                 quant_block_size=quant_block_size, **config_overrides)
    adapters = load_peft_adapter(adapter, model.config)
    if device_put:
      adapters = dataclasses.replace(adapters, params=jax.tree.map(jnp.asarray, adapters.params))
    return model._replace(adapters=adapters)
  if is_workdir(name_or_path):
    return _load_run(Path(name_or_path).expanduser(), dtype=dtype, param_dtype=param_dtype,
                     allow_pickle=allow_pickle, tokenizer=tokenizer, device_put=device_put,
                     step=step, quant=quant, quant_block_size=quant_block_size,
                     **config_overrides)
  if step is not None:
    raise CheckpointError(f"{name_or_path}: step= applies to a training workdir only")
  gguf = gguf_file(name_or_path)
  if quant == "int8" and quant_block_size == gguf_quant.BLOCK and gguf is not None:
    # GGUF's Q8_0 is this int8 format: its projections are taken as stored, and the file is
    # never converted to an fp32 folder.
    hf = gguf_quant.hf_config(gguf)
    cfg = from_hf_config(hf, dtype=dtype or "float32",
                         param_dtype=param_dtype or "float32", **config_overrides)
    if cfg.family in gguf_quant.FAMILIES:
      try:
        quant_lib.check_model(cfg, quant, quant_block_size)
      except ValueError as err:
        raise ConfigError(f"config key {err}") from None
      loaded = gguf_quant.load_int8(gguf, cfg, hf)
      params = loaded.params
      if device_put:
        params = jax.tree.map(jnp.asarray, params)
      return Pretrained(cfg.replace(base_quant="int8", quant_block_size=gguf_quant.BLOCK),
                        params, gguf_quant.tokenizer(gguf) if tokenizer else None)
  folder = resolve(name_or_path)
  cfg = from_hf_config(read_hf_config(folder), dtype=dtype or "float32",
                       param_dtype=param_dtype or "float32", **config_overrides)
  quant = quant or "none"
  if quant != "none":
    try:
      quant_lib.check_model(cfg, quant, quant_block_size)
    except ValueError as err:
      raise ConfigError(f"config key {err}") from None
  cfg, params = load_params(folder, cfg, allow_pickle=allow_pickle)
  if quant != "none":
    params = quant_lib.quantize_params(jax.device_get(params), quant_lib.projections(cfg),
                                       mode=quant, block_size=quant_block_size)
    cfg = cfg.replace(base_quant=quant, quant_block_size=quant_block_size)
  if device_put:
    params = jax.tree.map(jnp.asarray, params)
  return Pretrained(cfg, params, load_tokenizer(folder) if tokenizer else None)


def _load_run(workdir: Path, *, dtype, param_dtype, allow_pickle, tokenizer, device_put,
              step: int | None = None, quant: str | None = None, quant_block_size: int = 64,
         **config_overrides) -> Pretrained:
  """A run's base plus the trainable params of its checkpoint at `step` (default: the latest
  finished one), on one device; the optimizer state is not read."""
  from ftjax.checkpoints.orbax_store import restore_params
  run = RunModel.read(workdir)
  step = latest_trained_step(workdir) if step is None else step
  dtype, param_dtype = dtype or run.dtype, param_dtype or run.param_dtype
  if run.lora is None:  # the checkpoint holds every param: the base's weights are not read
    cfg = model_config(run.base_model, dtype=dtype, param_dtype=param_dtype, **config_overrides)
    params = restore_params(workdir / "checkpoints", step, dtype=jnp.dtype(param_dtype))
    adapters = None
  else:
    if quant is None:
      quant, quant_block_size = run.lora.base_quant, run.lora.quant_block_size
    base = load(run.base_model, dtype=dtype, param_dtype=param_dtype, allow_pickle=allow_pickle,
                tokenizer=False, device_put=False, quant=quant,
                quant_block_size=quant_block_size, **config_overrides)
    cfg, params = base.config, base.params
    adapters = Adapters(run.lora, restore_params(workdir / "checkpoints", step))
    _check_adapters(workdir, adapters)
  if device_put:
    params = jax.tree.map(jnp.asarray, params)
  else:
    params = jax.device_get(params)
    if adapters is not None:
      adapters = dataclasses.replace(adapters, params=jax.device_get(adapters.params))
  return Pretrained(cfg, params, load_tokenizer(run.base_model) if tokenizer else None, adapters)


def _check_adapters(workdir: Path, adapters: Adapters):
  """The saved adapters have the rank and targets that model.json records."""
  targets = {t for group in adapters.params["layers"].values() for t in group}
  ranks = {ab["a"].shape[-1] for group in adapters.params["layers"].values()
           for ab in group.values()}
  if targets != set(adapters.spec.targets) or ranks != {adapters.spec.rank}:
    raise CheckpointError(
        f"{workdir}: the checkpoint's adapters (targets {sorted(targets)}, rank {sorted(ranks)}) "
        f"do not match {RUN_MODEL_FILE} (targets {list(adapters.spec.targets)}, "
        f"rank {adapters.spec.rank})")


# Options of a PEFT LoraConfig that change what the adapter computes; ftjax applies LoRA or DoRA
# (scale alpha / r, no bias) and refuses the others rather than ignore them.
_PEFT_PLAIN = {"bias": "none", "use_rslora": False, "fan_in_fan_out": False,
               "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {},
               "alpha_pattern": {}}


def load_peft_adapter(folder: str | os.PathLike, cfg: ModelConfig) -> Adapters:
  """A PEFT LoRA adapter folder -> `Adapters` (the layouts and names of `layout`)."""
  import numpy as np
  from safetensors.numpy import load_file

  from ftjax.models import layout
  folder = Path(folder).expanduser()
  config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
  if not config_path.is_file() or not weights_path.is_file():
    raise CheckpointError(f"{folder}: not a PEFT adapter folder (needs adapter_config.json and "
                          "adapter_model.safetensors)")
  try:
    peft = json.loads(config_path.read_text())
  except json.JSONDecodeError as err:
    raise CheckpointError(f"{config_path}: invalid JSON at line {err.lineno}: {err.msg}") from None
  if peft.get("peft_type") != "LORA":
    raise CheckpointError(f"{config_path}: peft_type {peft.get('peft_type')!r} is not LORA")
  for key, plain in _PEFT_PLAIN.items():
    if peft.get(key, plain) not in (plain, None, {}, False, "none"):
      raise CheckpointError(f"{config_path}: {key}={peft[key]!r} is not supported (ftjax "
                            "imports plain LoRA adapters)")
  targets = peft.get("target_modules")
  if isinstance(targets, str) or not targets or set(targets) - set(layout.PROJECTIONS):
    raise CheckpointError(f"{config_path}: target_modules {targets!r}: ftjax adapts a list of "
                          f"{', '.join(layout.PROJECTIONS)}")
  rank = int(peft["r"])
  dora = bool(peft.get("use_dora", False))
  spec = LoraSpec(rank=rank, alpha=float(peft["lora_alpha"]),
                  dropout=float(peft.get("lora_dropout", 0.0)), variant="dora" if dora else "lora",
                  targets=tuple(t for t in layout.PROJECTIONS if t in targets))
  weights = load_file(str(weights_path))
  params: dict = {}
  for target in spec.targets:
    a_layers, b_layers, m_layers = [], [], []
    for i in range(cfg.num_layers):
      keys = [layout.peft_key(i, target, m) for m in ("A", "B", "magnitude")[:3 if dora else 2]]
      absent = [k for k in keys if k not in weights]
      if absent:
        raise CheckpointError(f"{weights_path}: missing {absent[0]}")
      a, b = layout.lora_from_peft(cfg, target, weights[keys[0]].astype(np.float32),
                                   weights[keys[1]].astype(np.float32))
      if a.shape[-1] != rank:
        raise CheckpointError(f"{weights_path}: {keys[0]} has rank {a.shape[-1]}, config r={rank}")
      a_layers.append(a)
      b_layers.append(b)
      if dora:
        m_layers.append(weights[keys[2]].astype(np.float32).reshape(b.shape[1:]))
    group = layout.PROJECTIONS[target].group
    params.setdefault("layers", {}).setdefault(group, {})[target] = {
        "a": np.stack(a_layers), "b": np.stack(b_layers)}
    if dora:
      params["layers"][group][target]["m"] = np.stack(m_layers)
  return Adapters(spec, params)
