"""Sharding rules: logical names map onto any mesh; the 8B recipe fits an 8-device mesh."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers

from ftjax.models import lora as lora_lib
from ftjax.config import validate
from ftjax.models import from_hf_config, init_params, logical_param_specs
from ftjax.sharding import MeshConfigError, logical_to_shardings, make_mesh

REPO = Path(__file__).resolve().parent.parent


def _recipe(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", ["smollm2_full", "smollm2_lora", "llama3_8b_lora_v5e8"])
def test_recipes_validate(name):
  validate(_recipe(name))


def test_llama3_8b_recipe_shards_over_8_devices():
  config = _recipe("llama3_8b_lora_v5e8")
  hf = transformers.LlamaConfig(
      vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192})
  cfg = from_hf_config(hf, dtype=config.dtype, param_dtype=config.param_dtype)
  mesh = make_mesh({k: v for k, v in config.mesh.items() if k != "num_devices"})
  abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  shardings = logical_to_shardings(logical_param_specs(cfg), abstract, mesh)
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  per_device = sum(
      np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
      for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
  assert 15e9 < total < 17e9  # 8B params in bf16
  assert per_device <= total / 8 * 1.01  # every large tensor is split 8 ways (fsdp 4 x tensor 2)
  adapters = jax.eval_shape(lambda: lora_lib.init_lora(
      abstract, rank=config.lora.rank, targets=config.lora.targets, rng=jax.random.PRNGKey(0)))
  assert lora_lib.count_params(adapters) == 32 * 16 * (
      (4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))


def test_indivisible_dims_fall_back_to_replication():
  mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  cfg = from_hf_config(transformers.LlamaConfig(
      vocab_size=96, hidden_size=24, intermediate_size=40, num_hidden_layers=1,
      num_attention_heads=6, num_key_value_heads=3))
  abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  shardings = logical_to_shardings(logical_param_specs(cfg), abstract, mesh)
  k_spec = shardings["layers"]["self_attn"]["k_proj"]["kernel"].spec
  assert tuple(k_spec) == (None, "fsdp", None, None)  # 3 kv heads cannot split 4 ways
  mlp_spec = shardings["layers"]["mlp"]["up_proj"]["kernel"].spec
  assert tuple(mlp_spec) == (None, "fsdp", "tensor")
  params = jax.device_put(init_params(cfg, jax.random.PRNGKey(0)), shardings)
  assert params["layers"]["self_attn"]["k_proj"]["kernel"].shape == (1, 24, 3, 4)


def test_bad_mesh_is_a_clear_error():
  with pytest.raises(MeshConfigError, match="needs 16 devices, but 8 are present"):
    make_mesh({"data": 4, "fsdp": 4})
  with pytest.raises(MeshConfigError, match="unknown axis"):
    make_mesh({"model": 2})
  with pytest.raises(MeshConfigError, match="at most one axis may be -1"):
    make_mesh({"data": -1, "fsdp": -1})


def test_no_involuntary_rematerialization_on_a_data_fsdp_tensor_mesh(tiny_llama_folder, tmp_path):
  """XLA warns (C++ log, stderr) when it can only reshard a tensor by replicating it; the
  embedding lookup on a data x fsdp x tensor mesh used to trigger it."""
  import os
  import subprocess
  import sys
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_ENABLE_COMPILATION_CACHE": "false"}  # the warning comes from compiling
  done = subprocess.run(
      [sys.executable, "-m", "ftjax.train", "--config", str(REPO / "configs" / "smollm2_full.py"),
       "--workdir", str(tmp_path), f"--config.model={tiny_llama_folder}",
       f"--config.data.train={REPO / 'data' / 'samples' / 'customer_service.jsonl'}",
       "--config.num_steps=1", "--config.seq_len=128", "--config.batch_size=8",
       "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
       "--config.mesh.num_devices=8", "--config.eval_every_steps=0"],
      capture_output=True, text=True, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "step 1:" in done.stdout + done.stderr
  assert "Involuntary full rematerialization" not in done.stderr, done.stderr[-3000:]
