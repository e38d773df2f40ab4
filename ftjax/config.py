"""The base training config: every key a recipe may set, with its default and type.

Recipes in `configs/` start from `base_config()` and change what matters. `validate(config)`
runs at start: unknown keys, wrong types and inconsistent values fail with the key's name.
"""

from __future__ import annotations

import math

import ml_collections

from ftjax.errors import UserError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "smollm2-135m-instruct"  # registered name, local folder / .gguf, or hub id
  c.dtype = "float32"  # compute dtype: float32 | bfloat16 (master weights stay param_dtype)
  c.param_dtype = "float32"
  # Rematerialisation of each decoder layer in the backward pass: auto | none | full | dots |
  # dots_no_batch. "auto": full on the CPU, where recomputing the layer beats stacking its
  # residuals across the layer scan (1.3-1.4x a train step, BENCHMARKS.md), none elsewhere.
  c.remat_policy = "auto"
  # Training attention kernel (ftjax.models.attention): auto (the backend's fused kernel where it
  # applies, else the reference) | xla | cudnn | pallas_gpu | splash.
  c.attention = "auto"
  # Loss over the vocabulary this many positions at a time (0: all at once); bounds the fp32
  # logits' memory at large vocabularies (ftjax.training.loss).
  c.loss_chunk = 0
  # targets: the train step computes the LM head only at each row's loss positions (a row's
  # answer tokens, gathered; sized from the packed data), where that skips a quarter of the
  # positions or more; all: at every position (ftjax.training.step.token_losses).
  c.loss_positions = "targets"
  c.seed = 0
  # A finished run's workdir whose trained params (or LoRA adapters) start this run, with a fresh
  # optimizer at step 0; same model and LoRA rank/alpha/targets. Empty: start from `model`.
  c.init_from = ""

  c.data = ml_collections.ConfigDict()
  c.data.train = "data/samples/customer_service.jsonl"  # path, or "tfds:NAME[:split]"
  c.data.eval = ""  # path; empty: carve eval_fraction out of train
  c.data.eval_fraction = 0.1
  c.data.format = "auto"  # auto | jsonl | csv
  c.data.packing = True
  c.data.system_prompt = ""
  c.data.on_bad_rows = "skip"  # skip (counted and reported) | error
  c.data.data_dir = ""  # where TFDS prepares local files; empty: <workdir>/tfds
  # `ftjax.audit` of the train/eval files before training: off | warn (a summary line) | error
  # (personal data, secrets or train/eval contamination stop the run) | redact (train on copies
  # with [EMAIL], [CARD], ... placeholders, written to <workdir>/audit).
  c.data.audit = "off"

  c.seq_len = 512
  c.batch_size = 8  # global examples (packed rows) per optimizer step
  c.grad_accum_steps = 1  # micro-batches per step; batch_size must divide evenly
  c.num_steps = 100

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-5
  c.optimizer.schedule = "cosine"  # cosine | linear | constant (after warmup)
  c.optimizer.warmup_steps = 10
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 1.0  # 0 disables clipping

  c.lora = ml_collections.ConfigDict()
  c.lora.enabled = False
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.0
  c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj")
  c.lora.variant = "lora"  # lora | dora (a magnitude per output unit, PEFT's use_dora)
  # QLoRA: store the frozen base's projections block-quantized (none | int8 | nf4), dequantized
  # inside each matmul; blocks of quant_block_size along each kernel's input axis.
  c.lora.base_quant = "none"
  c.lora.quant_block_size = 64

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.num_devices = 0  # 0: all devices; n: the first n (e.g. 1 for a single-device run)
  # Extra (logical name, mesh axes) rules placed before ftjax.sharding.DEFAULT_RULES.
  c.logical_axis_rules = ()

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.train = ml_collections.ConfigDict()
  # A step whose loss or gradient is NaN/inf is skipped (params unchanged); this many in a row
  # stop the run as diverged.
  c.train.max_consecutive_nonfinite = 5

  c.eval_every_steps = 50  # 0: only at the end
  c.log_every_steps = 10
  c.peak_tflops_per_device = 0.0  # for MFU; 0: look the device up, else MFU is not reported
  return c


_CHOICES = {
    "dtype": ("float32", "bfloat16"),
    "param_dtype": ("float32", "bfloat16"),
    "remat_policy": ("auto", "none", "full", "dots", "dots_no_batch"),
    "loss_positions": ("targets", "all"),
    "attention": ("auto", "xla", "cudnn", "pallas_gpu", "splash"),
    "data.format": ("auto", "jsonl", "csv"),
    "data.on_bad_rows": ("skip", "error"),
    "data.audit": ("off", "warn", "error", "redact"),
    "optimizer.schedule": ("cosine", "linear", "constant"),
    "lora.variant": ("lora", "dora"),
    "lora.base_quant": ("none", "int8", "nf4"),
}


class ConfigError(ValueError, UserError):
  pass


def _flatten(cfg, prefix=""):
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flatten(value, name + ".")
    else:
      yield name, value


def check_keys_and_types(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                         choices: dict[str, tuple]) -> dict:
  """Every key of `config` exists in `schema` with a compatible type (and one of `choices` where
  listed); returns the flattened config. Errors name the key."""
  reference = dict(_flatten(schema))
  given = dict(_flatten(config))
  unknown = sorted(set(given) - set(reference))
  if unknown:
    raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
  for key, value in given.items():
    expected = reference[key]
    ok = isinstance(value, type(expected)) or (
        isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(expected, tuple) and isinstance(value, list))
    if isinstance(expected, int) and isinstance(value, bool) and not isinstance(expected, bool):
      ok = False
    if not ok:
      raise ConfigError(f"config key {key}: expected {type(expected).__name__}, "
                        f"got {type(value).__name__} ({value!r})")
    if key in choices and value not in choices[key]:
      raise ConfigError(f"config key {key}: {value!r} is not one of {choices[key]}")
  return given


def check_lora_options(lora: ml_collections.ConfigDict):
  """DoRA and a quantized base: only with LoRA on, only on the linear projections, and blocks
  that pair up for nf4. Whether the block size divides each kernel's input dim needs the model:
  `ftjax.models.quant.check_model` (called by `ftjax.load`)."""
  from ftjax.models.lora import ALL_TARGETS
  special = [f"{key}={lora[key]!r}" for key, plain in (("variant", "lora"), ("base_quant", "none"))
             if lora[key] != plain]
  if special and not lora.enabled:
    raise ConfigError(f"config key lora.enabled: {', '.join(special)} needs "
                      "lora.enabled=True (the base is frozen only under LoRA)")
  if special:
    unsupported = [t for t in lora.targets if t not in ALL_TARGETS]
    if unsupported:
      raise ConfigError(f"config key lora.targets: {', '.join(special)} applies to the linear "
                        f"projections {', '.join(ALL_TARGETS)}; not to {', '.join(unsupported)}")
  if lora.base_quant == "nf4" and lora.quant_block_size % 2:
    raise ConfigError(f"config key lora.quant_block_size: nf4 packs two 4-bit codes per byte "
                      f"within a block, so the block size must be even, "
                      f"got {lora.quant_block_size}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys and types against `base_config()` and the values that must agree."""
  given = check_keys_and_types(config, base_config(), _CHOICES)
  for key in ("seq_len", "batch_size", "grad_accum_steps", "num_steps", "lora.rank",
              "lora.quant_block_size",
              "checkpoint.every_steps", "checkpoint.keep", "log_every_steps",
              "train.max_consecutive_nonfinite"):
    if given[key] < 1:
      raise ConfigError(f"config key {key}: must be >= 1, got {given[key]}")
  for key in ("optimizer.warmup_steps", "optimizer.weight_decay", "optimizer.grad_clip_norm",
              "eval_every_steps", "loss_chunk", "mesh.num_devices", "peak_tflops_per_device"):
    if not given[key] >= 0:  # `not >=` also refuses NaN
      raise ConfigError(f"config key {key}: must be >= 0, got {given[key]}")
  for key in ("optimizer.learning_rate", "optimizer.eps", "lora.alpha"):
    if not 0 < given[key] < math.inf:
      raise ConfigError(f"config key {key}: must be finite and > 0, got {given[key]}")
  for key in ("optimizer.b1", "optimizer.b2", "lora.dropout"):
    if not 0 <= given[key] < 1:
      raise ConfigError(f"config key {key}: must be in [0, 1), got {given[key]}")
  if not 0 <= given["optimizer.min_lr_ratio"] <= 1:
    raise ConfigError(f"config key optimizer.min_lr_ratio: must be in [0, 1], "
                      f"got {given['optimizer.min_lr_ratio']}")
  for axis in ("data", "fsdp", "tensor"):
    if given[f"mesh.{axis}"] < 1 and given[f"mesh.{axis}"] != -1:
      raise ConfigError(f"config key mesh.{axis}: must be >= 1, or -1 (the remaining devices), "
                        f"got {given[f'mesh.{axis}']}")
  if config.batch_size % config.grad_accum_steps:
    raise ConfigError(f"config key batch_size: batch_size ({config.batch_size}) must be "
                      f"divisible by grad_accum_steps ({config.grad_accum_steps})")
  check_lora_options(config.lora)
  if not 0 <= config.data.eval_fraction < 1:
    raise ConfigError(f"config key data.eval_fraction: must be in [0, 1), "
                      f"got {config.data.eval_fraction}")
  return config
