"""Shared test set-up: 8 simulated CPU devices, and session-wide embedded models."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Must be set before JAX initialises its backend: sharding tests use 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Most tests compile a tiny model and run it once or twice, so XLA:CPU's compile time is most of
# their time: LLVM at -O1 and the older loop-fusion emitters compile a tiny model's gradient in
# 0.96 s instead of 2.3 s, with the same losses (the SmolLM2 overfit test logs the same values
# at the same speed; SmolLM2 bf16 decoding runs 15-25% slower, measured in BENCHMARKS.md).
# Subprocesses (`python -m ftjax.train`) inherit them. FTJAX_TEST_XLA_DEFAULTS=1 leaves XLA's own.
if os.environ.get("FTJAX_TEST_XLA_DEFAULTS") != "1":
  for flag in ("--xla_backend_optimization_level=1", "--xla_cpu_use_fusion_emitters=false"):
    if flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
      os.environ["XLA_FLAGS"] += " " + flag
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
# TensorFlow (the data pipeline's tf.data / TFDS) eagerly imports Keras 3, and Keras pulls in
# scikit-learn: ~5 s of every `python -m ftjax.train` start-up, and nothing here uses Keras. With
# this set TF tries `tf_keras` instead, which is not installed, and skips the import.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

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


# The tiny test models' vocabulary: SmolLM2's 49,152 tokens would make the embedding ~3.1M
# parameters beside ~74k in the two layers, so every tiny step and compile would be spent on it.
TINY_VOCAB_SIZE = 2048
REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = str(REPO / "data" / "samples" / "customer_service.jsonl")
# The invented support company's house style, around a reply's body.
HOUSE = "Hi there! {} Anything else? — Quillory Care"


def tiny_train_config(model, **changes):
  """The tests' small training run (`ftjax.training.loop.run`'s config): `model` on the sample
  data, 128-token rows, 8 a batch, 3 steps at learning rate 1e-3 after 1 warm-up step, no eval;
  `changes` are flattened config keys (`num_steps=6`, `**{"lora.rank": 4}`)."""
  from ftjax.config import base_config
  c = base_config()
  c.model = str(model)
  c.data.train = SAMPLE_DATA
  c.seq_len = 128
  c.batch_size = 8
  c.num_steps = 3
  c.eval_every_steps = 0
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 1
  c.update_from_flattened_dict(changes)
  return c


@pytest.fixture(scope="session")
def tiny_tokenizer(smollm2_tokenizer):
  """A 2,048-token byte-level BPE trained on the repository's own texts (data/, tests/data/),
  which it tokenizes into about as many tokens as SmolLM2's tokenizer does (~5% more on
  data/samples); SmolLM2's special tokens (the same ids 0-2), bos/eos/pad/unk and chat
  template."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  # The template's default system prompt is in every rendered example: weighted so that it is
  # as few tokens as with SmolLM2's tokenizer, and every sample example still fits 128 tokens.
  texts = [smollm2_tokenizer.chat_template] * 20
  for pattern in ("data/**/*.jsonl", "data/**/*.csv", "tests/data/**/*.jsonl"):
    texts += [p.read_text(encoding="utf-8") for p in sorted(REPO.glob(pattern))]
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=TINY_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
      pad_token="<|im_end|>", unk_token="<|endoftext|>")
  fast.chat_template = smollm2_tokenizer.chat_template
  assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (
      smollm2_tokenizer.bos_token_id, smollm2_tokenizer.eos_token_id,
      smollm2_tokenizer.pad_token_id)
  return fast


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory, tiny_tokenizer):
  """A tiny random Llama with a small tokenizer and SmolLM2's chat template, saved as a HF
  folder."""
  import torch
  import transformers
  folder = tmp_path_factory.mktemp("tiny_llama")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=1024, tie_word_embeddings=True,
      eos_token_id=tiny_tokenizer.eos_token_id, bos_token_id=tiny_tokenizer.bos_token_id,
      pad_token_id=tiny_tokenizer.pad_token_id)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
  tiny_tokenizer.save_pretrained(folder)
  return folder
