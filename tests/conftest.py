"""Shared test set-up: 8 simulated CPU devices, and session-wide embedded models."""

import os

# Must be set before JAX initialises its backend: sharding tests use 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
