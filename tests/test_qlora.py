"""QLoRA (a block-quantized frozen base) and DoRA: quantization error, forward and gradient
invariants, training on a mesh, PEFT parity and export."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import ftjax
import ftjax.train
from ftjax.training import loop as train_loop
from ftjax.checkpoints import export
from ftjax.config import ConfigError, validate
from ftjax.models import forward, logical_param_specs, matmul, quant
from ftjax.models import lora as lora_lib
from ftjax.models.lora import ALL_TARGETS, Adapters, LoraSpec

from conftest import SAMPLE_DATA, tiny_train_config

REPO = Path(__file__).resolve().parent.parent
TOKENS = np.array([[3, 5, 7, 11, 13, 17, 19, 2], [23, 29, 31, 37, 41, 43, 47, 53]])
BLOCK = 16  # divides the tiny Llama's hidden 64, head_dim 16 and mlp 128


@pytest.fixture(scope="module")
def tiny(tiny_llama_folder):
  return ftjax.load(str(tiny_llama_folder), tokenizer=False)


def _random_adapters(params, spec: LoraSpec, seed=0):
  """Adapters with non-zero a and b (and for DoRA a magnitude away from the base norm), so that
  every part of the adapter changes the logits."""
  fresh = lora_lib.init_lora(params, rank=spec.rank, targets=spec.targets,
                             rng=jax.random.PRNGKey(seed), variant=spec.variant)
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = path[-1].key
    if name == "m":
      return (np.asarray(x) * rng.uniform(0.5, 1.5, x.shape)).astype(np.float32)
    return ((0.07 if name == "a" else 0.05) * rng.standard_normal(x.shape)).astype(np.float32)
  return Adapters(spec, jax.tree_util.tree_map_with_path(perturb, fresh))


def _logits(cfg, params, adapters=None):
  if adapters is not None:
    cfg = adapters.model_config(cfg)
  return np.asarray(forward(cfg, params, jnp.asarray(TOKENS),
                            lora=None if adapters is None else adapters.params))


def _torch_logits(model):
  with torch.no_grad():
    return model(input_ids=torch.tensor(TOKENS)).logits.numpy()


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantize_dequantize_error_is_within_the_format_bound(mode):
  rng = np.random.default_rng(0)
  w = rng.standard_normal((3, 64, 10)).astype(np.float32)
  w[0, 5, 2] = 40.0  # an outlier only widens its own block
  codes, scales = quant.quantize(jnp.asarray(w), mode=mode, block_size=BLOCK, axis=1)
  assert codes.dtype == (jnp.int8 if mode == "int8" else jnp.uint8)
  assert codes.shape == (3, 64 if mode == "int8" else 32, 10) and scales.shape == (3, 4, 10)
  back = np.asarray(quant.dequantize(codes, scales, mode=mode, block_size=BLOCK, axis=1))
  absmax = np.abs(w.reshape(3, 4, BLOCK, 10)).max(axis=2, keepdims=True)
  error = np.abs(back - w).reshape(3, 4, BLOCK, 10)
  assert np.all(error <= quant.error_bound(mode) * absmax * (1 + 1e-6) + 1e-7)
  # The bound is tight enough to mean something: typical errors are far below the block max.
  assert error.mean() < 0.1 * absmax.mean()
  # The other blocks of the outlier's column keep their own, small scale.
  assert np.abs(back[0, BLOCK:, 2] - w[0, BLOCK:, 2]).max() < 0.5


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_qlora_forward_equals_lora_on_the_dequantized_weights(tiny, mode):
  qcfg = tiny.config.replace(base_quant=mode, quant_block_size=BLOCK)
  qparams = quant.quantize_params(jax.device_get(tiny.params), quant.projections(tiny.config),
                                  mode=mode, block_size=BLOCK)
  # Every projection is stored quantized, with the logical names of the kernel it replaces.
  specs = logical_param_specs(qcfg)["layers"]["self_attn"]["o_proj"]
  assert set(specs) == {"codes", "scales"}
  assert tuple(specs["scales"]) == ("layers", "heads", "head_dim", "embed")
  plain = quant.dequantize_params(qparams, quant.projections(tiny.config), mode=mode,
                                  block_size=BLOCK, dtype=np.float32)
  adapters = _random_adapters(qparams, LoraSpec(rank=4, alpha=8.0, targets=ALL_TARGETS))
  ours = _logits(qcfg, qparams, adapters)
  np.testing.assert_allclose(ours, _logits(tiny.config, plain, adapters), atol=2e-5)
  # bf16 compute: the dequantized weight feeds the same bf16 x bf16 -> fp32 product.
  bf16 = {"dtype": "bfloat16"}
  np.testing.assert_allclose(_logits(qcfg.replace(**bf16), qparams, adapters),
                             _logits(tiny.config.replace(**bf16), plain, adapters), atol=1e-3)
  # Quantization did change the model (by a bounded amount): nf4 more than int8.
  drift = np.abs(_logits(qcfg, qparams) - _logits(tiny.config, tiny.params)).max()
  assert 0 < drift < (0.05 if mode == "int8" else 1.5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_quantized_matmul_gives_input_gradients_and_none_to_the_base(dtype):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 3, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((32, 4, 8)), jnp.float32)
  codes, scales = quant.quantize(w, mode="nf4", block_size=8, axis=0)
  deq = quant.dequantize(codes, scales, mode="nf4", block_size=8, axis=0)

  def loss(x, scales):
    y = matmul.project_quantized(x, codes, scales, 1, dtype, mode="nf4", block_size=8)
    return jnp.sum(y.astype(jnp.float32) ** 2)
  dx, dscales = jax.grad(loss, argnums=(0, 1))(x, scales)
  dx_ref = jax.grad(lambda x: jnp.sum(matmul.project(x, deq, 1, dtype).astype(jnp.float32) ** 2))(x)
  np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref),
                             rtol=1e-5 if dtype == "float32" else 2e-2, atol=1e-4)
  assert not np.any(np.asarray(dscales))


def _tiny_config(folder, **changes):
  """The shared tiny run with LoRA on every projection: 6 steps at 1e-2, logged every step."""
  return tiny_train_config(folder, **{
      "num_steps": 6, "log_every_steps": 1, "optimizer.learning_rate": 1e-2, "lora.enabled": True,
      "lora.rank": 4, "lora.alpha": 8.0, "lora.targets": ALL_TARGETS,
      "lora.quant_block_size": BLOCK, **changes})


def test_qlora_recipe_validates():
  import importlib.util
  spec = importlib.util.spec_from_file_location("recipe", REPO / "configs" / "smollm2_qlora.py")
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  config = validate(recipe.get_config())
  assert (config.lora.enabled, config.lora.base_quant) == (True, "nf4")


def test_qlora_training_learns_with_a_frozen_quantized_base(tiny_llama_folder, tmp_path):
  config = _tiny_config(tiny_llama_folder, **{"lora.base_quant": "nf4",
                                              "mesh.data": 1, "mesh.num_devices": 1})
  result = train_loop.run(config, tmp_path)
  losses = [h["loss"] for h in result.history]
  assert len(losses) == 6 and losses[-1] < losses[0]
  # The base stayed as quantized at the start (codes bit-identical): it received no update.
  fresh = ftjax.load(str(tiny_llama_folder), tokenizer=False, quant="nf4", quant_block_size=BLOCK)
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                   result.base_params, fresh.params))
  q = result.base_params["layers"]["mlp"]["down_proj"]
  assert set(q) == {"codes", "scales"} and q["codes"].dtype == jnp.uint8
  # Optimizer state exists for the adapters only: nothing of the shape of a code or a scale.
  import orbax.checkpoint as ocp
  saved = ocp.StandardCheckpointer().metadata(tmp_path / "checkpoints" / "6" / "state")
  tree = saved.item_metadata.tree if hasattr(saved, "item_metadata") else saved
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert not [p for p in paths if "codes" in p or "scales" in p or "kernel" in p]
  assert any("opt_state" in p and "['a']" in p for p in paths)
  # A QLoRA workdir loads back with its quantized base and computes what training computed.
  loaded = ftjax.load(str(tmp_path))
  assert loaded.config.base_quant == "nf4" and loaded.adapters.spec.base_quant == "nf4"
  trained = Adapters(loaded.adapters.spec, jax.device_get(result.params))
  np.testing.assert_allclose(_logits(loaded.config, loaded.params, loaded.adapters),
                             _logits(loaded.config, jax.device_get(result.base_params), trained),
                             atol=1e-5)
  # Exported from the workdir: the merged HF folder is the QLoRA model (dequantized base).
  export(str(tmp_path), tmp_path / "merged", "hf", merge=True)
  merged = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "merged", attn_implementation="eager").eval()
  np.testing.assert_allclose(_torch_logits(merged),
                             _logits(loaded.config, loaded.params, loaded.adapters), atol=1e-4)
  from ftjax.generation import SamplingConfig, generate
  [answer] = generate(loaded, ["How do I reset my password?"], SamplingConfig(max_new_tokens=4))
  assert 1 <= len(answer.token_ids) <= 4  # a QLoRA workdir generates


MESHES = {"one device": {"mesh.data": 1, "mesh.num_devices": 1},
          "fsdp=8": {"mesh.data": 1, "mesh.fsdp": 8},
          "data2 x fsdp2 x tensor2": {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}}


def test_qlora_dora_mesh_layouts_give_the_same_losses(tiny_llama_folder, tmp_path):
  assert jax.device_count() == 8
  losses = {}
  for name, mesh in MESHES.items():
    config = _tiny_config(tiny_llama_folder, **{"lora.base_quant": "int8", "lora.variant": "dora",
                                                "num_steps": 3, **mesh})
    result = train_loop.run(config, tmp_path / name.replace(" ", "_"))
    losses[name] = np.array([h["loss"] for h in result.history])
  reference = losses["one device"]
  assert len(reference) == 3 and reference[-1] < reference[0]
  for name, values in losses.items():
    np.testing.assert_allclose(values, reference, rtol=1e-5, err_msg=name)


def test_qlora_resume_continues_exactly(tiny_llama_folder, tmp_path):
  import shutil
  config = _tiny_config(tiny_llama_folder, **{
      "lora.base_quant": "nf4", "lora.variant": "dora", "lora.dropout": 0.1, "mesh.data": 1,
      "mesh.num_devices": 1, "checkpoint.every_steps": 2, "checkpoint.async_save": False})
  straight = train_loop.run(config, tmp_path / "run")
  # As if the run had stopped right after its step-4 checkpoint: it resumes from there.
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "6")
  resumed = train_loop.run(config, tmp_path / "run")
  assert [h["step"] for h in resumed.history] == [5, 6]
  np.testing.assert_allclose([h["loss"] for h in resumed.history],
                             [h["loss"] for h in straight.history[4:]], rtol=1e-6)


@pytest.fixture(scope="module")
def biased_models(tmp_path_factory):
  """Tiny random HF folders with biases (llama with attention and MLP biases; qwen2's qkv):
  DoRA scales the product without the bias, as PEFT does."""
  from test_models import FAMILIES, _save_random_model
  root = tmp_path_factory.mktemp("qlora_families")
  for family in ("llama_bias", "qwen2"):
    _save_random_model(FAMILIES[family](), root / family)
  return root


@pytest.mark.parametrize("family", ["llama_bias", "qwen2"])
def test_dora_matches_peft_and_exports_in_peft_layout(family, biased_models, tmp_path):
  import peft
  from safetensors.numpy import load_file
  source = biased_models / family
  model = ftjax.load(str(source), tokenizer=False)
  spec = LoraSpec(rank=4, alpha=12.0, targets=ALL_TARGETS, variant="dora")
  adapters = _random_adapters(model.params, spec)
  ours = _logits(model.config, model.params, adapters)
  plain_lora = Adapters(LoraSpec(rank=4, alpha=12.0, targets=ALL_TARGETS), {
      "layers": {g: {t: {k: v for k, v in ab.items() if k != "m"} for t, ab in m.items()}
                 for g, m in adapters.params["layers"].items()}})
  assert np.abs(ours - _logits(model.config, model.params, plain_lora)).max() > 1e-2

  export(model._replace(adapters=adapters), tmp_path / "adapter", "peft", base=str(source))
  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert config["use_dora"] is True
  weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
  magnitude = weights["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"]
  assert magnitude.shape == (model.config.num_heads * model.config.head_dim,)
  base = transformers.AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager")
  adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
  np.testing.assert_allclose(_torch_logits(adapted), ours, atol=1e-4)
  # Back: the PEFT DoRA folder imports as the same adapters.
  loaded = ftjax.load(str(source), tokenizer=False, adapter=tmp_path / "adapter")
  assert loaded.adapters.spec.variant == "dora"
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded.adapters.params, adapters.params))
  # Merged: m * (W + s·ab) / ||W + s·ab|| in a plain HF folder.
  export(model._replace(adapters=adapters), tmp_path / "merged", "hf", base=str(source),
         merge=True)
  merged = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "merged", attn_implementation="eager").eval()
  np.testing.assert_allclose(_torch_logits(merged), ours, atol=1e-4)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_qlora_exports_load_in_peft_and_transformers(variant, biased_models, tmp_path):
  import peft
  source = biased_models / "llama_bias"
  full = ftjax.load(str(source), tokenizer=False)
  model = ftjax.load(str(source), tokenizer=False, quant="nf4", quant_block_size=BLOCK)
  assert model.config.base_quant == "nf4"
  spec = LoraSpec(rank=4, alpha=12.0, targets=ALL_TARGETS, variant=variant)
  adapters = _random_adapters(model.params, spec)
  ours = _logits(model.config, model.params, adapters)

  # The adapter is a plain PEFT adapter: on the unquantized base it computes what ftjax computes
  # on the unquantized base.
  export(model._replace(adapters=adapters), tmp_path / "adapter", "peft", base=str(source))
  base = transformers.AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager")
  adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
  np.testing.assert_allclose(_torch_logits(adapted), _logits(full.config, full.params, adapters),
                             atol=1e-4)
  # The dequantized base as a HF folder, with the PEFT adapter on it: exactly the QLoRA model.
  export(model, tmp_path / "dequantized", "hf", base=str(source))
  dequantized = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "dequantized", attn_implementation="eager")
  on_dequantized = peft.PeftModel.from_pretrained(dequantized, tmp_path / "adapter").eval()
  np.testing.assert_allclose(_torch_logits(on_dequantized), ours, atol=1e-4)
  # Merged: the dequantized base with the adapters folded in.
  export(model._replace(adapters=adapters), tmp_path / "merged", "hf", base=str(source),
         merge=True)
  merged = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "merged", attn_implementation="eager").eval()
  np.testing.assert_allclose(_torch_logits(merged), ours, atol=1e-4)


@pytest.mark.parametrize("changes, key", [
    ({"lora.base_quant": "q4"}, "lora.base_quant"),
    ({"lora.variant": "vera"}, "lora.variant"),
    ({"lora.enabled": False}, "lora.enabled"),
    ({"lora.base_quant": "nf4", "lora.quant_block_size": 15}, "lora.quant_block_size"),
    ({"lora.variant": "dora", "lora.targets": ("q_proj", "lm_head")}, "lora.targets"),
])
def test_bad_qlora_and_dora_settings_name_the_key(changes, key):
  config = _tiny_config("unused", **{"lora.base_quant": "int8", **changes})
  with pytest.raises(ConfigError, match=f"config key {key}"):
    validate(config)


def test_block_size_that_does_not_divide_an_input_dim_is_one_error_line(tiny_llama_folder,
                                                                       tmp_path, capsys):
  argv = ["ftjax.train", "--config", str(REPO / "configs" / "smollm2_lora.py"),
          "--workdir", str(tmp_path), f"--config.model={tiny_llama_folder}",
          "--config.lora.base_quant=int8", "--config.lora.quant_block_size=48",
          f"--config.data.train={SAMPLE_DATA}"]
  with pytest.raises(SystemExit) as exit_info:
    ftjax.train.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: config key lora.quant_block_size:")
  assert "48 does not divide" in err[0]


@pytest.mark.parametrize("mode", ["none", "int8", "nf4"])
def test_planner_counts_the_stored_bytes_of_a_quantized_base(tiny, mode):
  from ftjax.planning import estimate, hardware
  params = tiny.params
  if mode != "none":
    params = quant.quantize_params(jax.device_get(tiny.params), quant.projections(tiny.config),
                                   mode=mode, block_size=BLOCK)
  inputs = estimate.PlanInputs(method="lora", train_tokens=1e4, seq_len=64, batch=2, lora_rank=4,
                               lora_variant="dora", base_quant=mode, quant_block_size=BLOCK)
  memory = estimate.memory(tiny.config, inputs, hardware.ACCELERATORS["h100"])
  assert memory["params"] == sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))
  assert (memory["dequantized_layer"] > 0) == (mode != "none")
  adapters = lora_lib.init_lora(params, rank=4, targets=ALL_TARGETS, rng=jax.random.PRNGKey(0),
                                variant="dora")
  assert estimate.trainable_count(tiny.config, inputs) == lora_lib.count_params(adapters)
  assert lora_lib.count_params(params) == estimate.param_count(tiny.config)


def test_experiment_sweeps_base_quant_and_variant():
  from ftjax.config import check_keys_and_types
  from ftjax.experiment import config as experiment
  c = experiment.experiment_config()
  c.sweep = ("finetune.lora.base_quant=none,int8,nf4", "finetune.lora.variant=lora,dora")
  points = experiment.sweep_points(c)
  assert len(points) == 6
  assert {(p["finetune.lora.base_quant"], p["finetune.lora.variant"]) for p in points} == {
      (q, v) for q in ("none", "int8", "nf4") for v in ("lora", "dora")}
  c.finetune.lora.base_quant = "q4"
  with pytest.raises(ConfigError, match="finetune.lora.base_quant"):
    check_keys_and_types(c, experiment.experiment_config(), experiment._CHOICES)
  c.finetune.lora.base_quant = "nf4"
  c.finetune.lora.quant_block_size = 7
  with pytest.raises(ConfigError, match="finetune: config key lora.quant_block_size"):
    experiment.training_config(c, train_file="train.jsonl", seed=0)
