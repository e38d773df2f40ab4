"""Export (HF folder, PEFT adapter, GGUF) loads back with the logits ftjax computes."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import ftjax
from ftjax.checkpoints import ExportError, export
from ftjax.export import main as export_main
from ftjax.models.lora import ALL_TARGETS, Adapters, LoraSpec, init_lora, logical_specs
from ftjax.models import forward, logical_param_specs
from ftjax.sharding import logical_to_shardings, make_mesh
from test_models import FAMILIES, _save_random_model

HERE = Path(__file__).resolve().parent
TOKENS = np.array([[3, 5, 7, 11, 13, 17, 19, 2], [23, 29, 31, 37, 41, 43, 47, 53]])
SPEC = LoraSpec(rank=4, alpha=12.0, dropout=0.0, targets=ALL_TARGETS)


def _ftjax_logits(model, lora=None):
  cfg = model.config if lora is None else lora.model_config(model.config)
  return np.asarray(forward(cfg, model.params, jnp.asarray(TOKENS),
                            lora=None if lora is None else lora.params))


def _torch_logits(hf_model):
  with torch.no_grad():
    return hf_model(input_ids=torch.tensor(TOKENS)).logits.numpy()


def _random_adapters(params, seed=0):
  """LoRA on every projection with random A and B (B non-zero, so the adapter changes the
  logits); drawn with numpy, as eager jax.random would compile once per shape."""
  shapes = jax.eval_shape(lambda: init_lora(params, rank=SPEC.rank, targets=SPEC.targets,
                                            rng=jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)
  return Adapters(SPEC, jax.tree_util.tree_map_with_path(
      lambda path, x: ((0.07 if path[-1].key == "a" else 0.05)
                       * rng.standard_normal(x.shape)).astype(np.float32), shapes))


def _files(folder):
  return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
  """A tiny random HF folder per family (random norms and biases, see test_models)."""
  root = tmp_path_factory.mktemp("families")
  for family, make in FAMILIES.items():
    _save_random_model(make(), root / family)
  return root


def _tiny_tokenizer(split_regex=None):
  """A 300-token byte-level BPE with a chat template (GGUF loads of SmolLM2's 49k are slow);
  GPT-2's split regex, or `split_regex` (as Qwen2's and Llama 3's tokenizers have)."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  if split_regex:
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  text = "What is the code for box 12? It's 1037. Ünïcode, spaces.\n"
  tokenizer.train_from_iterator([text] * 20, trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
      unk_token="<|endoftext|>", pad_token="<|endoftext|>")
  fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                        "assistant\n{% endif %}")
  return fast


@pytest.fixture(scope="module")
def tokenizer_models(tmp_path_factory):
  """Tiny llama (tied) and qwen2 (untied) with a tokenizer and chat template (for GGUF)."""
  from transformers.integrations.gguf.gguf_tokenizer_mapping import _QWEN2_SPLIT
  root = tmp_path_factory.mktemp("with_tokenizer")
  for family, make, tied in (("llama", transformers.LlamaConfig, True),
                             ("qwen2", transformers.Qwen2Config, False)):
    tokenizer = _tiny_tokenizer(_QWEN2_SPLIT if family == "qwen2" else None)
    torch.manual_seed(1)
    config = make(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, tie_word_embeddings=tied,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / family)
    tokenizer.save_pretrained(root / family)
  return root


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_export_matches_transformers(family, tiny_models, tmp_path):
  source = tiny_models / family
  model = ftjax.load(str(source), tokenizer=False)
  # qwen2 is forced into several shards with an index.
  shard = 20_000 if family == "qwen2" else 10**10
  export(str(source), tmp_path / "out", "hf", max_shard_bytes=shard)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", attn_implementation="eager").eval()
  assert type(hf).__name__ == json.loads((source / "config.json").read_text())["architectures"][0]
  assert np.abs(_torch_logits(hf) - _ftjax_logits(model)).max() <= 1e-4
  # Export is the exact inverse of import: the same tensors under the same names.
  written = {}
  for file in (tmp_path / "out").glob("*.safetensors"):
    written.update(load_file(file))
  original = load_file(source / "model.safetensors")
  assert sorted(written) == sorted(original)
  assert all(np.array_equal(written[k], original[k]) for k in original)
  if family == "qwen2":
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "out" /
                                                                "model.safetensors").exists()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_peft_export_matches_peft(family, tiny_models, tmp_path):
  import peft
  source = tiny_models / family
  model = ftjax.load(str(source), tokenizer=False)
  adapters = _random_adapters(model.params)
  export(model._replace(adapters=adapters), tmp_path / "adapter", "peft", base=str(source))
  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert (config["r"], config["lora_alpha"], config["peft_type"], config["task_type"]) == (
      4, 12.0, "LORA", "CAUSAL_LM")
  assert sorted(config["target_modules"]) == sorted(ALL_TARGETS)
  weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
  assert weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (
      4, model.config.hidden_size)
  assert weights["base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"].shape == (
      model.config.hidden_size, 4)
  base = transformers.AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager")
  adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
  ours = _ftjax_logits(model, adapters)
  assert np.abs(_torch_logits(adapted) - ours).max() <= 1e-4
  assert np.abs(ours - _ftjax_logits(model)).max() > 1e-2  # the adapter matters
  # And back: the PEFT folder imports as the same adapters.
  loaded = ftjax.load(str(source), tokenizer=False, adapter=tmp_path / "adapter")
  assert loaded.adapters.spec == SPEC
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded.adapters.params, adapters.params))


def test_exported_files_all_have_the_same_mode(tiny_models, tmp_path):
  import os
  import stat
  source = tiny_models / "llama"
  model = ftjax.load(str(source), tokenizer=False)
  previous = os.umask(0o022)
  try:
    export(model._replace(adapters=_random_adapters(model.params)), tmp_path / "adapter", "peft",
           base=str(source))
    export(model, tmp_path / "hf", "hf", base=str(source))
  finally:
    os.umask(previous)
  modes = {f"{folder}/{f.name}": stat.S_IMODE(f.stat().st_mode)
           for folder in ("adapter", "hf") for f in (tmp_path / folder).iterdir()}
  assert "adapter/adapter_model.safetensors" in modes and "hf/model.safetensors" in modes
  assert set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_adapter_made_by_peft_imports(family, tiny_models, tmp_path):
  import peft
  source = tiny_models / family
  torch.manual_seed(3)
  base = transformers.AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager")
  config = peft.LoraConfig(r=3, lora_alpha=7, lora_dropout=0.1, target_modules=list(ALL_TARGETS),
                           init_lora_weights=False, task_type="CAUSAL_LM")  # random B
  adapted = peft.get_peft_model(base, config).eval()
  adapted.save_pretrained(tmp_path / "adapter")
  loaded = ftjax.load(str(source), tokenizer=False, adapter=tmp_path / "adapter")
  assert loaded.adapters.spec == LoraSpec(3, 7.0, 0.1, ALL_TARGETS)
  ours = _ftjax_logits(loaded, loaded.adapters)
  assert np.abs(_torch_logits(adapted) - ours).max() <= 1e-4
  assert np.abs(ours - _ftjax_logits(loaded)).max() > 1e-2


# Each GGUF type once (the writer's quantization does not depend on the family), f32 for both.
GGUF_TOLERANCE = {"f32": 1e-4, "f16": 2e-3, "bf16": 1e-2, "q8_0": 3e-2}


@pytest.mark.parametrize("family,gguf_types", [("llama", ("f32", "bf16", "q8_0")),
                                               ("qwen2", ("f32", "f16"))], ids=["llama", "qwen2"])
def test_gguf_export_loads_in_transformers_and_ftjax(family, gguf_types, tokenizer_models,
                                                     tmp_path, monkeypatch):
  monkeypatch.setenv("FTJAX_CACHE", str(tmp_path / "cache"))
  source = tokenizer_models / family
  ours = _ftjax_logits(ftjax.load(str(source), tokenizer=False))
  for gguf_type in gguf_types:
    out = tmp_path / gguf_type
    export(str(source), out, "gguf", gguf_type=gguf_type)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        out, gguf_file="model.gguf", dtype=torch.float32).eval()
    assert hf.config.model_type == family
    assert np.abs(_torch_logits(hf) - ours).max() <= GGUF_TOLERANCE[gguf_type], gguf_type
    reloaded = ftjax.load(str(out / "model.gguf"), tokenizer=gguf_type == "f32")
    assert np.abs(_ftjax_logits(reloaded) - ours).max() <= GGUF_TOLERANCE[gguf_type], gguf_type
  # The tokenizer and chat template travel in the metadata (both loaders read the same keys).
  original = transformers.AutoTokenizer.from_pretrained(source)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "f32", gguf_file="model.gguf")
  text = "What is the code for box 12345? It's <|im_start|> ünïcode\n\n  spaces"
  assert tokenizer(text)["input_ids"] == original(text)["input_ids"]
  assert tokenizer.chat_template == original.chat_template
  reloaded = ftjax.load_tokenizer(tmp_path / "f32" / "model.gguf")
  assert reloaded(text)["input_ids"] == original(text)["input_ids"]
  assert reloaded.eos_token_id == original.eos_token_id


def test_gguf_runs_in_llama_cpp(tokenizer_models, tmp_path):
  llama_cpp = pytest.importorskip(
      "llama_cpp", reason="llama-cpp-python is not installed: pip finds no binary wheel for this "
      "platform (`pip download llama-cpp-python --only-binary :all:`), and building the sdist "
      "needs a C++ toolchain and CMake")
  source = tokenizer_models / "llama"
  export(str(source), tmp_path / "gguf", "gguf", gguf_type="f32")
  ours = _ftjax_logits(ftjax.load(str(source), tokenizer=False))
  llm = llama_cpp.Llama(str(tmp_path / "gguf" / "model.gguf"), n_ctx=64, logits_all=True,
                        verbose=False)
  for row, tokens in enumerate(TOKENS.tolist()):
    llm.reset()
    llm.eval(tokens)
    assert np.abs(np.asarray(llm.scores[:len(tokens)]) - ours[row]).max() <= 1e-3


@pytest.mark.slow
def test_smollm2_exports_load_in_transformers(smollm2, tmp_path):
  """The README's commands on the embedded model: the HF folder gives its logits (fp32, 30
  layers: ≤ 1e-3, as the import parity), the f16 GGUF within f16 rounding, the same tokens."""
  ids = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "What is JAX?"}],
                                              add_generation_prompt=True, return_dict=True)
  tokens = np.asarray([ids["input_ids"]])
  ours = np.asarray(forward(smollm2.config, smollm2.params, jnp.asarray(tokens)))
  assert export_main(["--model", "smollm2-135m-instruct", "--out", str(tmp_path / "hf"),
                      "--format", "hf"]) == 0
  assert export_main(["--model", "smollm2-135m-instruct", "--out", str(tmp_path / "gguf"),
                      "--format", "gguf", "--dtype", "float16"]) == 0
  for folder, kwargs, tolerance in ((tmp_path / "hf", {}, 1e-3),
                                    (tmp_path / "gguf", {"gguf_file": "model.gguf"}, 0.1)):
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                           **kwargs).eval()
    with torch.no_grad():
      theirs = hf(input_ids=torch.tensor(tokens)).logits.numpy()
    assert np.abs(theirs - ours).max() <= tolerance, folder.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    assert tokenizer.chat_template == smollm2.tokenizer.chat_template
    text = "What is JAX? It's 12345 ünïcode\n\n  spaces"
    assert tokenizer(text)["input_ids"] == smollm2.tokenizer(text)["input_ids"]


def test_sharded_export_equals_single_device(tiny_models, tmp_path):
  source = tiny_models / "qwen2"
  model = ftjax.load(str(source), tokenizer=False)
  adapters = _random_adapters(model.params)
  mesh = make_mesh({"fsdp": 8})
  params = jax.device_put(model.params, logical_to_shardings(
      logical_param_specs(model.config), model.params, mesh))
  lora = jax.device_put(adapters.params, logical_to_shardings(
      logical_specs(adapters.params), adapters.params, mesh))
  kernel = params["layers"]["mlp"]["up_proj"]["kernel"]
  assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
  single = model._replace(adapters=adapters)
  sharded = model._replace(params=params, adapters=Adapters(SPEC, lora))
  for name, fmt, kwargs in (("hf", "hf", dict(merge=True, max_shard_bytes=30_000)),
                            ("peft", "peft", {}),
                            ("bf16", "hf", dict(merge=True, dtype="bfloat16"))):
    export(single, tmp_path / f"single_{name}", fmt, base=str(source), **kwargs)
    export(sharded, tmp_path / f"sharded_{name}", fmt, base=str(source), **kwargs)
    assert _files(tmp_path / f"single_{name}") == _files(tmp_path / f"sharded_{name}")
  # The merged export is the adapted model.
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "single_hf").eval()
  assert np.abs(_torch_logits(hf) - _ftjax_logits(model, adapters)).max() <= 1e-4


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_export_once(tiny_models, tmp_path):
  source = tiny_models / "llama"
  port = str(_free_port())
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / "export_worker.py"), str(i), "2", port, str(source),
       str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # The JSON right after "RESULT ": Gloo's C++ logging can land on the same line.
    [at] = [i for i in range(len(out)) if out.startswith("RESULT {", i)]
    results.append(json.JSONDecoder().raw_decode(out, at + len("RESULT "))[0])
  assert {r["process_index"]: r["wrote"] for r in results} == {0: 1, 1: 0}
  assert all(r["device_count"] == 8 for r in results)
  export(str(source), tmp_path / "single", "hf", max_shard_bytes=100_000)
  assert _files(tmp_path / "out") == _files(tmp_path / "single")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "single"]  # no temp folders


def _write_workdir(workdir, base, lora, trainable):
  """A workdir with one finished checkpoint, written as `ftjax.train` writes one: model.json,
  then the train state through its Checkpointer. (test_load_workdir loads workdirs of real
  training runs; a run here would cost a minute of compiling.)"""
  from ftjax.checkpoints.loading import RunModel
  from ftjax.checkpoints.orbax_store import Checkpointer
  workdir.mkdir(exist_ok=True)
  RunModel(str(base), lora).write(workdir)
  checkpointer = Checkpointer(workdir / "checkpoints", every_steps=1, keep=1, async_save=False)
  checkpointer.save(2, {"step": jnp.asarray(2), "params": trainable}, {"position": 0},
                    force=True)
  checkpointer.close()
  return workdir


@pytest.fixture(scope="module")
def lora_workdir(tokenizer_models, tmp_path_factory):
  """A LoRA run (every projection) of the tiny llama with a tokenizer."""
  base = tokenizer_models / "llama"
  adapters = _random_adapters(ftjax.load(str(base), tokenizer=False, device_put=False).params)
  return _write_workdir(tmp_path_factory.mktemp("lora_run"), base, SPEC, adapters.params)


def test_workdir_exports_by_cli(lora_workdir, tokenizer_models, tmp_path, monkeypatch):
  import peft
  monkeypatch.setenv("FTJAX_CACHE", str(tmp_path / "cache"))
  run = ftjax.load(str(lora_workdir), tokenizer=False)
  ours = _ftjax_logits(run, run.adapters)
  assert np.abs(ours - _ftjax_logits(run)).max() > 1e-2  # the adapters matter
  for fmt in ("hf", "peft", "gguf"):
    argv = ["--model", str(lora_workdir), "--out", str(tmp_path / fmt), "--format", fmt]
    assert export_main(argv + ([] if fmt == "peft" else ["--merge"])) == 0
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  assert np.abs(_torch_logits(hf) - ours).max() <= 1e-4
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    assert (tmp_path / "hf" / name).is_file()
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert tokenizer.chat_template == ftjax.load_tokenizer(tokenizer_models / "llama").chat_template
  base = transformers.AutoModelForCausalLM.from_pretrained(tokenizer_models / "llama")
  adapted = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
  assert np.abs(_torch_logits(adapted) - ours).max() <= 1e-4
  gguf = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "gguf", gguf_file="model.gguf", dtype=torch.float32).eval()
  assert np.abs(_torch_logits(gguf) - ours).max() <= 1e-4


def test_full_finetune_workdir_exports(tiny_models, tmp_path):
  base = tiny_models / "qwen2"
  params = ftjax.load(str(base), tokenizer=False, device_put=False).params
  rng = np.random.default_rng(0)
  tuned = jax.tree.map(lambda x: x + 0.02 * rng.standard_normal(x.shape).astype(x.dtype), params)
  workdir = _write_workdir(tmp_path / "full_run", base, None, tuned)
  assert export_main(["--model", str(workdir), "--out", str(tmp_path / "hf"), "--format",
                      "hf"]) == 0
  run = ftjax.load(str(workdir), tokenizer=False)
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  assert type(hf).__name__ == "Qwen2ForCausalLM"
  assert np.abs(_torch_logits(hf) - _ftjax_logits(run)).max() <= 1e-4
  assert np.abs(_ftjax_logits(run) - _ftjax_logits(ftjax.load(str(base), tokenizer=False))
                ).max() > 1e-2  # the tuned weights, not the base's


def _cli_error(capsys, argv):
  assert export_main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  return err


def test_bad_inputs_are_one_line_errors(lora_workdir, tiny_models, tmp_path, capsys):
  full = ["--model", str(tiny_models / "llama")]
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "keep.txt").write_text("mine")
  unfinished = tmp_path / "unfinished"
  (unfinished / "checkpoints" / "2.orbax-checkpoint-tmp-1").mkdir(parents=True)
  (unfinished / "model.json").write_text((lora_workdir / "model.json").read_text())
  cases = {
      "not empty": full + ["--out", str(tmp_path / "busy"), "--format", "hf"],
      "unknown format": full + ["--out", str(tmp_path / "a"), "--format", "onnx"],
      "unknown dtype": full + ["--out", str(tmp_path / "a"), "--format", "hf", "--dtype", "int8"],
      "no finished checkpoint": ["--model", str(unfinished), "--out", str(tmp_path / "a"),
                                 "--format", "hf", "--merge"],
      "unsupported GGUF type": full + ["--out", str(tmp_path / "a"), "--format", "gguf",
                                       "--gguf_type", "q4_k"],
      "GGUF export supports": ["--model", str(tiny_models / "gemma"), "--out",
                               str(tmp_path / "a"), "--format", "gguf"],
      "no LoRA adapters": full + ["--out", str(tmp_path / "a"), "--format", "peft"],
      "pass --merge": ["--model", str(lora_workdir), "--out", str(tmp_path / "a"),
                       "--format", "hf"],
      "required": ["--out", str(tmp_path / "a")],
  }
  for expected, argv in cases.items():
    assert expected in _cli_error(capsys, argv)
  assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
  assert not (tmp_path / "a").exists()
  # --overwrite replaces the folder.
  assert export_main(full + ["--out", str(tmp_path / "busy"), "--format", "hf",
                             "--overwrite"]) == 0
  assert not (tmp_path / "busy" / "keep.txt").exists()
  assert (tmp_path / "busy" / "config.json").is_file()


def test_failed_export_leaves_nothing(tiny_models, tmp_path, monkeypatch):
  module = sys.modules["ftjax.checkpoints.export"]
  calls = []

  def fail_on_second(path, tensors):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full")
    original(path, tensors)

  original = module._save_safetensors
  monkeypatch.setattr(module, "_save_safetensors", fail_on_second)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "old.txt").write_text("previous export")
  with pytest.raises(OSError, match="disk full"):
    export(str(tiny_models / "llama"), tmp_path / "out", "hf", max_shard_bytes=20_000,
           overwrite=True)
  assert len(calls) == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left
  assert _files(tmp_path / "out") == {"old.txt": b"previous export"}  # the old one intact


def test_cli_process_exit_code(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "ftjax.export", "--model", "x", "--out",
                         str(tmp_path / "o"), "--format", "tflite"],
                        capture_output=True, text=True, cwd=HERE.parent, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: unknown format 'tflite'; choose from hf, "
                                              "peft, gguf"]


def test_export_error_is_a_checkpoint_error():
  with pytest.raises(ExportError, match="needs `base`"):
    export(ftjax.Pretrained(None, {}, None), "/nonexistent/out", "hf")


@pytest.mark.parametrize("family,make", [("llama", transformers.LlamaConfig),
                                         ("qwen2", transformers.Qwen2Config)])
def test_q8_0_gguf_loads_as_the_int8_base_without_dequantizing(family, make, tmp_path,
                                                               monkeypatch):
  """GGUF's Q8_0 is ftjax's int8 with blocks of 32: its codes and scales are taken as stored
  (llama's Q/K rows reordered), the file is never converted, and the weights equal the ones
  transformers dequantizes the same file to."""
  from transformers.integrations.gguf.gguf_tokenizer_mapping import _QWEN2_SPLIT
  from ftjax.checkpoints import gguf_quant
  from ftjax.models import quant
  monkeypatch.setenv("FTJAX_CACHE", str(tmp_path / "cache"))
  tokenizer = _tiny_tokenizer(_QWEN2_SPLIT if family == "qwen2" else None)
  torch.manual_seed(2)
  config = make(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                max_position_embeddings=256, tie_word_embeddings=family == "llama",
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)  # head_dim 32: o_proj fills Q8_0 blocks
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
  tokenizer.save_pretrained(tmp_path / "hf")
  export(str(tmp_path / "hf"), tmp_path / "q8", "gguf", gguf_type="q8_0")
  path = tmp_path / "q8" / "model.gguf"

  model = ftjax.load(str(path), quant="int8", quant_block_size=32)
  assert model.config.base_quant == "int8" and model.config.quant_block_size == 32
  assert not (tmp_path / "cache" / "gguf").exists()  # no fp32 folder was written
  assert model.tokenizer("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
  loaded = gguf_quant.load_int8(path, model.config)
  assert (loaded.direct, loaded.requantized) == (2 * 7, 0)  # every projection as stored

  dense = ftjax.load(str(path), tokenizer=False)  # through transformers' dequantization
  for target, (group, n_in) in quant.projections(model.config).items():
    module = model.params["layers"][group][target]
    assert module["codes"].dtype == jnp.int8
    weights = quant.dequantize(module["codes"], module["scales"], mode="int8", block_size=32,
                               axis=n_in)  # stacked [layers, ...]: the blocked axis is n_in
    np.testing.assert_allclose(weights, dense.params["layers"][group][target]["kernel"],
                               rtol=1e-6, atol=1e-8, err_msg=target)
  assert np.abs(_ftjax_logits(model) - _ftjax_logits(dense)).max() < 1e-4
