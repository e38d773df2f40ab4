"""ftjax params -> Hugging Face folder, PEFT adapter folder, or GGUF file.

Every format reads the names and layouts of `ftjax.models.layout`, the table import reads.
Params may be sharded over devices and processes: each leaf is gathered to the host (a
collective every process joins), and only process 0 writes. The output is written into a
temporary folder beside `out` and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ftjax.models import layout, quant
from ftjax.checkpoints.hf_import import CheckpointError, read_hf_config
from ftjax.checkpoints.loading import Pretrained, RunModel, latest_trained_step, load
from ftjax.checkpoints.registry import is_workdir, resolve
from ftjax.models.lora import Adapters, merge as merge_lora

FORMATS = ("hf", "peft", "gguf")
DTYPES = ("float32", "bfloat16", "float16")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_FAMILIES = ("llama", "qwen2")
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30  # as transformers' save_pretrained
GGUF_FILE = "model.gguf"
# Files of a HF folder that describe the tokenizer and the chat template.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")


class ExportError(CheckpointError):
  """A bad export request (format, dtype, output folder, a model the format cannot hold)."""


@dataclasses.dataclass(frozen=True)
class _Source:
  model: Pretrained
  base_name: str  # what the base model was loaded from (registered name, folder, hub id)
  base_folder: Path  # a HF folder: config.json, generation_config.json, tokenizer files


def export(model: str | os.PathLike | Pretrained, out: str | os.PathLike, format: str = "hf", *,
           merge: bool = False, dtype: str | None = None, overwrite: bool = False,
           base: str | os.PathLike | None = None, gguf_type: str | None = None,
           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
  """Writes `model` (a workdir, model name or folder, or a loaded `Pretrained` with `base` naming
  the model it was loaded from) to the folder `out` as `format`:

    hf    config.json, generation_config.json, tokenizer files, model*.safetensors (sharded with
          an index above `max_shard_bytes`). A LoRA run needs `merge=True` (merged at its scale).
    peft  adapter_config.json + adapter_model.safetensors (a LoRA run's adapters; DoRA's with
          use_dora and lora_magnitude_vector). A QLoRA run's adapters load with PEFT on the
          unquantized base; its `hf --merge` folder holds the dequantized base plus the adapters.
    gguf  out/model.gguf (llama, qwen2), `gguf_type` f32 | f16 | bf16 | q8_0 (default: `dtype`).

  `dtype` is the stored dtype (default: the params'). Returns `out`.
  """
  out = Path(out).expanduser()
  _check_request(format, dtype, gguf_type, merge, out, overwrite)
  src = _source(model, base)
  cfg, adapters = src.model.config, src.model.adapters
  if format == "peft" and adapters is None:
    raise ExportError(f"{src.base_name}: no LoRA adapters to export as peft (a full fine-tune or "
                      "a base model); use --format hf")
  if format != "peft" and adapters is not None and not merge:
    raise ExportError("the model has LoRA adapters: pass --merge to fold them into the base "
                      "(--format hf/gguf), or export them alone with --format peft")
  if format == "gguf":
    _check_gguf_model(cfg)
    tokenizer_meta = _gguf_tokenizer_metadata(src.base_folder, cfg)  # before any collective
  # Every process gathers (a collective); only process 0 writes.
  if format == "peft":
    tree = to_host(adapters.params)
  else:
    params = to_host(src.model.params)
    if adapters is not None:  # merged on the host, so the sharding cannot change a bit
      params = _merged(cfg, params, dataclasses.replace(adapters,
                                                        params=to_host(adapters.params)))
    elif cfg.base_quant != "none":  # a quantized base is written dequantized
      params = quant.dequantize_params(params, quant.projections(cfg), mode=cfg.base_quant,
                                       block_size=cfg.quant_block_size, dtype=np.float32)
    cfg = cfg.replace(base_quant="none")
  if jax.process_index() == 0:
    with _staged(out, overwrite) as staging:
      if format == "hf":
        _write_hf(staging, cfg, params, src, dtype, max_shard_bytes)
      elif format == "peft":
        _write_peft(staging, cfg, adapters.spec, tree, src.base_name, dtype)
      else:
        _write_gguf(staging / GGUF_FILE, cfg, params, tokenizer_meta,
                    gguf_type or _GGUF_FOR_DTYPE[dtype or _dtype_of(params)])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("ftjax.export")
  return out


def _check_request(format, dtype, gguf_type, merge, out: Path, overwrite: bool):
  if format not in FORMATS:
    raise ExportError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
  if dtype is not None and dtype not in DTYPES:
    raise ExportError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
  if gguf_type is not None:
    if format != "gguf":
      raise ExportError("--gguf_type applies to --format gguf only")
    if gguf_type not in GGUF_TYPES:
      raise ExportError(f"unsupported GGUF type {gguf_type!r}; supported: {', '.join(GGUF_TYPES)}")
  if merge and format == "peft":
    raise ExportError("--merge folds the adapters into the base: use it with --format hf or gguf")
  if out.exists() and not out.is_dir():
    raise ExportError(f"{out}: exists and is not a folder")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise ExportError(f"{out}: folder is not empty (pass --overwrite to replace it)")


def _source(model, base) -> _Source:
  if isinstance(model, Pretrained):
    if base is None:
      raise ExportError("exporting a loaded Pretrained needs `base`: the model name or folder it "
                        "was loaded from (for config.json and the tokenizer)")
    return _Source(model, str(base), resolve(base))
  name = str(model)
  if is_workdir(name):
    run = RunModel.read(name)
    latest_trained_step(name)  # a clear error for a run with no finished checkpoint
    base_name = run.base_model
  else:
    base_name = name
  loaded = load(name, tokenizer=False, device_put=False)
  return _Source(loaded, base_name, resolve(base_name))


def to_host(tree) -> Any:
  """A pytree of (possibly sharded, multi-process) arrays -> numpy arrays, in every process."""
  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(gather, tree)


def _merged(cfg, params, adapters: Adapters):
  """Adapters folded into the kernels at their own scale (alpha / rank)."""
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    merged = merge_lora(adapters.model_config(cfg), params, adapters.params)
    return jax.tree.map(np.asarray, merged)


def _dtype_of(tree) -> str:
  dtypes = {str(np.asarray(x).dtype) for x in jax.tree.leaves(tree)}
  return "float32" if dtypes - set(DTYPES) or len(dtypes) != 1 else dtypes.pop()


def _cast(x: np.ndarray, dtype: str | None) -> np.ndarray:
  import ml_dtypes
  if dtype is None:
    return x
  return x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype), copy=False)


class _staged:
  """A temporary folder beside `out`, renamed to `out` on success and removed on failure."""

  def __init__(self, out: Path, overwrite: bool):
    self.out, self.overwrite = out, overwrite
    self.tmp = out.with_name(f".{out.name}.export-{os.getpid()}")

  def __enter__(self) -> Path:
    self.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(self.tmp, ignore_errors=True)
    self.tmp.mkdir()
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)
      return False
    old = None
    if self.out.exists():
      old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
      self.out.rename(old)
    self.tmp.rename(self.out)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
    return False


def _write_json(path: Path, obj: dict):
  path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _save_safetensors(path: Path, tensors: dict[str, np.ndarray]):
  from safetensors.numpy import save_file
  save_file(tensors, str(path), metadata={"format": "pt"})
  # safetensors creates its files 0600; give them the mode every other exported file gets
  # (0666 less the umask: 0644 by default), so that the folder can be shared as a whole.
  umask = os.umask(0)
  os.umask(umask)
  path.chmod(0o666 & ~umask)


def _write_hf(folder: Path, cfg, params, src: _Source, dtype, max_shard_bytes: int):
  dtype = dtype or _dtype_of(params)
  state = {k: _cast(v, dtype) for k, v in layout.to_hf_state(cfg, params).items()}
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, tensor in state.items():
    if shards[-1] and size + tensor.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensor
    size += tensor.nbytes
  if len(shards) == 1:
    _save_safetensors(folder / "model.safetensors", shards[0])
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      _save_safetensors(folder / file, shard)
      weight_map.update(dict.fromkeys(shard, file))
    _write_json(folder / "model.safetensors.index.json", {
        "metadata": {"total_size": sum(t.nbytes for t in state.values())},
        "weight_map": weight_map})
  hf_config = read_hf_config(src.base_folder)
  hf_config.pop("torch_dtype", None)
  hf_config.pop("quantization_config", None)
  hf_config["dtype"] = dtype
  _write_json(folder / "config.json", hf_config)
  generation = src.base_folder / "generation_config.json"
  if generation.is_file():
    shutil.copyfile(generation, folder / "generation_config.json")
  else:
    _write_json(folder / "generation_config.json", {
        k: v for k, v in (("bos_token_id", cfg.bos_token_id), ("pad_token_id", cfg.pad_token_id),
                          ("eos_token_id", list(cfg.eos_token_ids) or None)) if v is not None})
  for name in TOKENIZER_FILES:
    if (src.base_folder / name).is_file():
      shutil.copyfile(src.base_folder / name, folder / name)


def _write_peft(folder: Path, cfg, spec, adapters: dict, base_name: str, dtype):
  tensors = {}
  for group in adapters["layers"].values():
    for target, ab in group.items():
      for i in range(cfg.num_layers):
        lora_a, lora_b = layout.lora_to_peft(target, np.asarray(ab["a"][i]),
                                             np.asarray(ab["b"][i]))
        tensors[layout.peft_key(i, target, "A")] = _cast(lora_a, dtype)
        tensors[layout.peft_key(i, target, "B")] = _cast(lora_b, dtype)
        if "m" in ab:
          tensors[layout.peft_key(i, target, "magnitude")] = _cast(
              np.ascontiguousarray(np.asarray(ab["m"][i]).reshape(-1)), dtype)
  _save_safetensors(folder / "adapter_model.safetensors", tensors)
  _write_json(folder / "adapter_config.json", {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
      "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
      "target_modules": sorted(spec.targets), "bias": "none", "fan_in_fan_out": False,
      "inference_mode": True, "use_rslora": False, "use_dora": spec.variant == "dora",
      "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
      "init_lora_weights": True, "revision": None})


# GGUF ------------------------------------------------------------------------------------------

_GGUF_FOR_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _check_gguf_model(cfg):
  """GGUF holds what llama.cpp and transformers' GGUF loader read back: say what it cannot."""
  if cfg.family not in GGUF_FAMILIES:
    raise ExportError(f"GGUF export supports {', '.join(GGUF_FAMILIES)} models, not "
                      f"{cfg.family!r}; use --format hf")
  unsupported = []
  if cfg.family == "llama" and (cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias):
    unsupported.append("attention/MLP biases")
  if cfg.rope_llama3_scaling or cfg.rope_linear_factor != 1.0:
    unsupported.append("RoPE scaling")
  if cfg.sliding_window:
    unsupported.append("sliding-window attention")
  if cfg.family == "qwen2" and cfg.head_dim * cfg.num_heads != cfg.hidden_size:
    unsupported.append("head_dim != hidden_size / num_heads")
  if unsupported:
    raise ExportError(f"GGUF export of this {cfg.family} model would lose "
                      f"{', '.join(unsupported)}; use --format hf")


def _gguf_tokenizer_metadata(folder: Path, cfg) -> dict:
  """The byte-level BPE vocabulary, merges, special ids and chat template, as GGUF stores them."""
  path = folder / "tokenizer.json"
  if not path.is_file():
    raise ExportError(f"{folder}: no tokenizer.json; GGUF export needs the tokenizer")
  spec = json.loads(path.read_text())
  model = spec.get("model") or {}
  if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
    raise ExportError(f"{path}: GGUF export supports byte-level BPE tokenizers (GPT-2 style); "
                      f"this one is {model.get('type')!r}")
  tokens = {i: t for t, i in model["vocab"].items()}
  types = dict.fromkeys(tokens, 1)  # NORMAL
  for added in spec.get("added_tokens", []):
    tokens[added["id"]] = added["content"]
    types[added["id"]] = 3 if added.get("special") else 4  # CONTROL / USER_DEFINED
  size = max(max(tokens) + 1, cfg.vocab_size)
  if size > cfg.vocab_size:
    raise ExportError(f"{path}: the tokenizer has {size} tokens, the model {cfg.vocab_size}")
  token_list = [tokens.get(i, f"[PAD{i}]") for i in range(size)]
  type_list = [types.get(i, 5) for i in range(size)]  # 5: UNUSED padding
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(folder))
  with_special = tokenizer("a")["input_ids"]
  meta = {"tokens": token_list, "types": type_list, "merges": merges, "pre": _gguf_pre(spec),
          "add_bos": bool(tokenizer.bos_token_id is not None and with_special
                          and with_special[0] == tokenizer.bos_token_id),
          "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str)
          else None}
  for key in ("bos", "eos", "unk", "pad"):
    meta[key] = getattr(tokenizer, f"{key}_token_id")
  return meta


def _gguf_pre(spec: dict) -> str:
  """llama.cpp's name for the tokenizer's split regex ("default": GPT-2's), found by matching the
  regexes transformers' GGUF loader knows, so the file splits text as the tokenizer did."""
  try:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
  except ImportError:
    return "default"
  pre_tokenizer = json.dumps(spec.get("pre_tokenizer"))
  for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
    if json.dumps(regex)[1:-1] in pre_tokenizer:
      return name
  return "default"


def _llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's Q/K row order (rotary pairs interleaved); transformers undoes it on load."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _write_gguf(path: Path, cfg, params, tok: dict, gguf_type: str):
  import gguf
  arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[cfg.family]
  names = gguf.get_tensor_name_map(arch, cfg.num_layers)
  # --dtype -> (tensor type, file type); the two must agree.
  qtype, file_type = {
      "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
      "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
      "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
      "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}[gguf_type]
  writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
  writer.add_name(f"{cfg.family} (ftjax export)")
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_block_count(cfg.num_layers)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.num_kv_heads)
  writer.add_key_length(cfg.head_dim)
  writer.add_value_length(cfg.head_dim)
  writer.add_rope_dimension_count(cfg.head_dim)
  writer.add_rope_freq_base(cfg.rope_theta)
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  writer.add_file_type(file_type)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(tok["pre"])
  writer.add_token_list(tok["tokens"])
  writer.add_token_types(tok["types"])
  writer.add_token_merges(tok["merges"])
  for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                   ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
    if tok[key] is not None:
      add(tok[key])
  writer.add_add_bos_token(tok["add_bos"])
  if tok["chat_template"]:
    writer.add_chat_template(tok["chat_template"])
  for hf_name, tensor in layout.to_hf_state(cfg, params).items():
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    tensor = np.asarray(tensor, np.float32)
    if cfg.family == "llama" and hf_name.endswith("q_proj.weight"):
      tensor = _llama_permute(tensor, cfg.num_heads)
    elif cfg.family == "llama" and hf_name.endswith("k_proj.weight"):
      tensor = _llama_permute(tensor, cfg.num_kv_heads)
    kind = qtype
    if tensor.ndim == 1:  # norms and biases stay f32, as llama.cpp keeps them
      kind = gguf.GGMLQuantizationType.F32
    elif kind == gguf.GGMLQuantizationType.Q8_0 and tensor.shape[-1] % 32:
      kind = gguf.GGMLQuantizationType.F16  # rows that do not fill Q8_0 blocks (llama.cpp too)
    if kind == gguf.GGMLQuantizationType.F32:
      writer.add_tensor(name, tensor)
    elif kind == gguf.GGMLQuantizationType.F16:
      writer.add_tensor(name, tensor.astype(np.float16))
    else:
      writer.add_tensor(name, gguf.quants.quantize(tensor, kind), raw_dtype=kind)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
