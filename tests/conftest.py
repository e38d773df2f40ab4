"""Shared test set-up: 8 simulated CPU devices, and session-wide embedded models."""

import atexit
import os
import shutil
import tempfile

# Must be set before JAX initialises its backend: sharding tests use 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# JAX's persistent compilation cache, fresh for each session (or the folder a developer names):
# many tests train the same tiny model, in this process and in `python -m ftjax.train`
# subprocesses (restarts after SIGKILL), and would otherwise compile the same step again and
# again. Tests that look at compilation itself turn it off (JAX_ENABLE_COMPILATION_CACHE=false).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ftjax-test-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
  """The embedded SmolLM2-135M-Instruct as (config, params, tokenizer), fp32."""
  import ftjax
  return ftjax.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_folder():
  from ftjax.checkpoints import resolve
  return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
  import ftjax
  return ftjax.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory, smollm2_tokenizer):
  """A tiny random Llama with SmolLM2's tokenizer and chat template, saved as a HF folder."""
  import torch
  import transformers
  folder = tmp_path_factory.mktemp("tiny_llama")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=1024, tie_word_embeddings=True,
      eos_token_id=smollm2_tokenizer.eos_token_id, bos_token_id=1, pad_token_id=2)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
  smollm2_tokenizer.save_pretrained(folder)
  return folder
