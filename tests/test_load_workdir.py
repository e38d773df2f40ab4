"""A training workdir loads as the model it trained; `init_from` continues a finished run."""

import json
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import ftjax
from ftjax.training import loop as train_loop
from ftjax.checkpoints import CheckpointError
from ftjax.config import ConfigError
from ftjax.models.lora import LoraSpec
from ftjax.models import forward

from conftest import tiny_train_config

TOKENS = jnp.asarray([[5, 6, 7, 8, 9, 10, 11, 12]])
LORA = {"lora.enabled": True, "lora.rank": 4, "lora.alpha": 32.0, "lora.dropout": 0.05,
        "lora.targets": ("q_proj", "v_proj", "down_proj")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("data")
  for split, n in (("train", 12), ("eval", 4)):
    rows = [{"input": f"What is the code for box {split} {i}?",
             "output": f"Box {split} {i} opens with code {1000 + 37 * i}."} for i in range(n)]
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return folder


def _config(model, data, **changes):
  c = tiny_train_config(model, seq_len=64, batch_size=4,
                        **{"data.train": str(data / "train.jsonl"),
                           "data.eval": str(data / "eval.jsonl"),
                           "data.data_dir": str(data / "tfds"),
                           "optimizer.learning_rate": 1e-2, "mesh.data": 1,
                           "mesh.num_devices": 1})
  c.update_from_flattened_dict(changes)
  return c


@pytest.fixture(scope="module")
def base(tiny_llama_folder):
  return ftjax.load(str(tiny_llama_folder))


@pytest.fixture(scope="module")
def lora_run(tiny_llama_folder, data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lora_run")
  return train_loop.run(_config(tiny_llama_folder, data, **LORA), workdir)


@pytest.fixture(scope="module")
def full_run(tiny_llama_folder, data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full_run")
  return train_loop.run(_config(tiny_llama_folder, data), workdir)


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(a - b)))


def test_lora_workdir_loads_the_trained_adapters(lora_run, base):
  loaded = ftjax.load(str(lora_run.workdir))
  assert loaded.config == base.config
  assert loaded.tokenizer is not None
  logits = forward(loaded.adapters.model_config(loaded.config), loaded.params, TOKENS,
                   lora=loaded.adapters.params)
  trained = forward(lora_run.adapters.model_config(base.config), lora_run.base_params, TOKENS,
                    lora=lora_run.adapters.params)
  assert _max_diff(logits, trained) <= 1e-6
  assert _max_diff(logits, forward(base.config, base.params, TOKENS)) > 1e-3  # it did train
  # The frozen base is the base model's.
  for mine, theirs in zip(*map(_leaves, (loaded.params, base.params))):
    np.testing.assert_array_equal(mine, theirs)


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_loaded_spec_is_the_configured_one(lora_run):
  spec = LoraSpec(rank=4, alpha=32.0, dropout=0.05, targets=("q_proj", "v_proj", "down_proj"))
  assert lora_run.adapters.spec == spec
  assert ftjax.load(str(lora_run.workdir), tokenizer=False).adapters.spec == spec
  assert spec.scale == 8.0  # a default scale (1, or 16 / 8) would not match the training
  saved = json.loads((lora_run.workdir / "model.json").read_text())
  assert saved == {"base_model": saved["base_model"], "method": "lora", "lora": spec.to_json(),
                   "dtype": "float32", "param_dtype": "float32"}


def test_full_workdir_loads_the_trained_params(full_run, base):
  loaded = ftjax.load(str(full_run.workdir), tokenizer=False)
  assert loaded.adapters is None and full_run.adapters is None
  logits = forward(loaded.config, loaded.params, TOKENS)
  assert _max_diff(logits, forward(base.config, full_run.params, TOKENS)) <= 1e-6
  assert _max_diff(logits, forward(base.config, base.params, TOKENS)) > 1e-3
  assert json.loads((full_run.workdir / "model.json").read_text())["method"] == "full"
  # Numpy on request, and another storage dtype on request.
  host = ftjax.load(str(full_run.workdir), tokenizer=False, device_put=False,
                    param_dtype="bfloat16")
  assert {type(x) for x in _leaves(host.params)} == {np.ndarray}
  assert {str(x.dtype) for x in _leaves(host.params)} == {"bfloat16"}


def test_workdir_without_a_finished_checkpoint_is_refused(lora_run, tmp_path):
  started = tmp_path / "started"
  (started / "checkpoints" / "7.orbax-checkpoint-tmp-1").mkdir(parents=True)  # an unfinished save
  for name in ("model.json", "run_info.json", "config.json"):
    shutil.copy(lora_run.workdir / name, started / name)
  with pytest.raises(CheckpointError, match=re.escape(str(started)) + ".*no finished checkpoint"):
    ftjax.load(str(started))


def test_init_from_continues_a_finished_run(lora_run, full_run, tiny_llama_folder, data,
                                            tmp_path):
  # eval every step; the first step's learning rate is 0 (warmup), so the first eval sees the
  # params the run started from.
  config = _config(tiny_llama_folder, data, init_from=str(lora_run.workdir), eval_every_steps=1,
                   **LORA)
  second = train_loop.run(config, tmp_path / "second")
  assert second.history[0]["step"] == 1 and second.history[0]["learning_rate"] == 0.0
  np.testing.assert_allclose(second.eval_history[0]["eval_loss"],
                             lora_run.eval_history[-1]["eval_loss"], rtol=1e-6)
  assert second.eval_history[-1]["eval_loss"] < second.eval_history[0]["eval_loss"]
  info = json.loads((tmp_path / "second" / "run_info.json").read_text())
  assert info["init_from_step"] == 3 and info["resumed_at_step"] == 0
  assert ftjax.load(str(tmp_path / "second")).adapters.spec == lora_run.adapters.spec

  # A run with its own checkpoint resumes from it; init_from only seeds a fresh run.
  config.num_steps = 4
  resumed = train_loop.run(config, tmp_path / "second")
  assert [h["step"] for h in resumed.history] == [4]
  info = json.loads((tmp_path / "second" / "run_info.json").read_text())
  assert info["resumed_at_step"] == 3 and info["init_from_step"] is None

  with pytest.raises(ConfigError, match=r"init_from.*lora\.rank: 4 there, 2 here"):
    train_loop.run(_config(tiny_llama_folder, data, init_from=str(lora_run.workdir),
                            **{**LORA, "lora.rank": 2}), tmp_path / "rank2")
  with pytest.raises(ConfigError, match=r"init_from.*lora\.enabled: False there, True here"):
    train_loop.run(_config(tiny_llama_folder, data, init_from=str(full_run.workdir), **LORA),
                    tmp_path / "lora_on_full")
  started = tmp_path / "started"
  (started / "checkpoints").mkdir(parents=True)
  shutil.copy(lora_run.workdir / "model.json", started / "model.json")
  with pytest.raises(ConfigError, match=r"init_from.*no finished checkpoint"):
    train_loop.run(_config(tiny_llama_folder, data, init_from=str(started), **LORA),
                    tmp_path / "from_nothing")
