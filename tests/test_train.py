"""Training invariants: masking, packing, accumulation, mesh layouts, exact resume, LoRA."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ftjax
import ftjax.config
import ftjax.train
from ftjax.training import loop as train_loop
from ftjax.models import lora as lora_lib
from ftjax.config import ConfigError, base_config
from ftjax.models import forward
from ftjax.training.loss import cross_entropy
from ftjax.training.step import make_step_fns, masked_loss_sums

from conftest import SAMPLE_DATA, tiny_train_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tiny_llama_folder):
  return ftjax.load(str(tiny_llama_folder))


def _examples(n=4, seed=0, vocab=500):
  """(ids, loss_mask) pairs: a prompt of zeros in the mask, then an 'answer' with ones."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    prompt, answer = rng.integers(3, vocab, rng.integers(3, 8)), rng.integers(3, vocab,
                                                                               rng.integers(2, 6))
    out.append((np.concatenate([prompt, answer]),
                np.concatenate([np.zeros(len(prompt)), np.ones(len(answer))])))
  return out


def _batch(rows, seq_len):
  """rows: lists of (ids, mask) packed into one row each -> the trainer's batch dict."""
  b = {k: np.zeros((len(rows), seq_len), np.int32) for k in
       ("inputs", "targets", "segment_ids", "positions")}
  b["loss_mask"] = np.zeros((len(rows), seq_len), np.float32)
  for r, row in enumerate(rows):
    offset = 0
    for segment, (ids, mask) in enumerate(row, start=1):
      n = len(ids)
      span = slice(offset, offset + n - 1)
      b["inputs"][r, offset:offset + n] = ids
      b["targets"][r, span] = ids[1:]
      b["loss_mask"][r, span] = mask[1:]
      b["segment_ids"][r, offset:offset + n] = segment
      b["positions"][r, offset:offset + n] = np.arange(n)
      offset += n
  return {k: jnp.asarray(v) for k, v in b.items()}


def test_packed_loss_equals_unpacked_loss(tiny):
  examples = _examples(4)
  packed = _batch([examples[:2], examples[2:]], seq_len=32)
  unpacked = _batch([[e] for e in examples], seq_len=16)
  sums = [masked_loss_sums(tiny.config, tiny.params, None, b, None, None, True)
          for b in (packed, unpacked)]
  (loss_p, n_p), (loss_u, n_u) = [(float(a), float(b)) for a, b in sums]
  assert n_p == n_u == sum(m[1:].sum() for _, m in examples)
  np.testing.assert_allclose(loss_p / n_p, loss_u / n_u, rtol=1e-5)


def test_prompt_tokens_get_zero_gradient(tiny):
  batch = _batch([[e] for e in _examples(3, seed=1)], seq_len=16)

  def loss(params, b):
    total, n = masked_loss_sums(tiny.config, params, None, b, None, None, True)
    return total / n

  value, grads = jax.value_and_grad(loss)(tiny.params, batch)
  # Change every target where the mask is zero (prompt and padding): nothing may move.
  prompt = np.asarray(batch["loss_mask"]) == 0
  scrambled = dict(batch, targets=jnp.where(prompt, (batch["targets"] + 7) % 500,
                                            batch["targets"]))
  value2, grads2 = jax.value_and_grad(loss)(tiny.params, scrambled)
  assert float(value) == float(value2)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), grads, grads2))
  # And the gradient of the loss w.r.t. the logits of prompt positions is exactly zero.
  logits = forward(tiny.config, tiny.params, batch["inputs"], batch["positions"],
                   batch["segment_ids"])
  dlogits = jax.grad(lambda lg: jnp.sum(cross_entropy(lg, batch["targets"]) *
                                        batch["loss_mask"]))(logits)
  assert float(jnp.abs(dlogits[prompt]).max()) == 0.0
  assert float(jnp.abs(dlogits[~prompt]).max()) > 0.0


def _one_step(model, batch, accum_steps):
  # An "optimizer" that keeps the gradient it is given in its state, so the test compares the
  # gradients themselves (Adam's first step would amplify rounding in near-zero gradients).
  optimizer = optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))
  fns = make_step_fns(model.config, optimizer, accum_steps=accum_steps, lora=False, mesh=None)
  state = {"step": jnp.int32(0), "params": model.params,
           "opt_state": optimizer.init(model.params), "rng": jax.random.PRNGKey(0)}
  return jax.jit(fns.train_step)(state, None, batch)


def test_gradient_accumulation_equals_one_large_batch(tiny):
  # Examples of different answer lengths: a per-micro-batch mean would weight them wrongly.
  batch = _batch([[e] for e in _examples(8, seed=2)], seq_len=16)
  state_1, metrics_1 = _one_step(tiny, batch, accum_steps=1)
  state_4, metrics_4 = _one_step(tiny, batch, accum_steps=4)
  np.testing.assert_allclose(float(metrics_4["loss"]), float(metrics_1["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(metrics_4["grad_norm"]), float(metrics_1["grad_norm"]),
                             rtol=1e-5)
  for grad_1, grad_4 in zip(jax.tree.leaves(state_1["opt_state"]),
                            jax.tree.leaves(state_4["opt_state"])):
    grad_1, grad_4 = np.asarray(grad_1), np.asarray(grad_4)
    assert np.abs(grad_1).max() > 0
    np.testing.assert_allclose(grad_4, grad_1, rtol=1e-4, atol=1e-5 * np.abs(grad_1).max())


def test_vocab_parallel_cross_entropy_matches_plain():
  from ftjax.sharding import make_mesh
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 6, 32)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 32, (4, 6)), jnp.int32)
  plain = cross_entropy(logits, targets)
  sharded = jax.jit(lambda lg, t: cross_entropy(lg, t, mesh))(logits, targets)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), rtol=1e-6)
  g_plain = jax.grad(lambda lg: cross_entropy(lg, targets).sum())(logits)
  g_sharded = jax.jit(jax.grad(lambda lg: cross_entropy(lg, targets, mesh).sum()))(logits)
  np.testing.assert_allclose(np.asarray(g_sharded), np.asarray(g_plain), atol=1e-6)


MESHES = {
    "one device": {"mesh.data": 1, "mesh.num_devices": 1},
    "data=8": {"mesh.data": 8},
    "fsdp=8": {"mesh.data": 1, "mesh.fsdp": 8},
    "data2 x fsdp2 x tensor2": {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},
}


def test_mesh_layouts_give_the_same_losses(tiny_llama_folder, tmp_path):
  assert jax.device_count() == 8
  losses = {}
  for name, mesh in MESHES.items():
    result = train_loop.run(tiny_train_config(tiny_llama_folder, **mesh), tmp_path / name.replace(" ", "_"))
    losses[name] = np.array([h["loss"] for h in result.history])
    # The sample rows have no `answer`: no answer loss is reported, rather than a 0 or a NaN.
    assert "eval_loss" in result.eval_history[-1]
    assert "eval_answer_loss" not in result.eval_history[-1]
  reference = losses["one device"]
  assert len(reference) == 3 and reference[-1] < reference[0]
  for name, values in losses.items():
    np.testing.assert_allclose(values, reference, rtol=1e-5, err_msg=name)


def test_lora_freezes_base_and_starts_at_base_logits(tiny_llama_folder, tiny, tmp_path):
  adapters = lora_lib.init_lora(tiny.params, rank=4, targets=("q_proj", "v_proj", "down_proj"),
                                rng=jax.random.PRNGKey(1))
  cfg = lora_lib.with_lora(tiny.config, rank=4, alpha=8.0, dropout=0.0)
  tokens = jnp.asarray([[5, 6, 7, 8, 9]])
  np.testing.assert_array_equal(np.asarray(forward(cfg, tiny.params, tokens, lora=adapters)),
                                np.asarray(forward(tiny.config, tiny.params, tokens)))

  config = tiny_train_config(tiny_llama_folder, **{
      "lora.enabled": True, "lora.rank": 4, "lora.alpha": 8.0, "lora.dropout": 0.1,
      "lora.targets": ("q_proj", "v_proj", "down_proj"), "optimizer.learning_rate": 1e-2})
  result = train_loop.run(config, tmp_path)
  e, h, kv, d, f, layers = 64, 4, 2, 16, 128, 2
  expected = layers * ((e * 4 + 4 * h * d) + (e * 4 + 4 * kv * d) + (f * 4 + 4 * e))
  assert result.trainable_params == expected
  assert json.loads((tmp_path / "run_info.json").read_text())["trainable_params"] == expected
  fresh = ftjax.load(str(tiny_llama_folder), tokenizer=False)
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                   result.base_params, fresh.params))
  # The adapters did train, and only they are in the checkpoint.
  assert float(jnp.abs(result.params["layers"]["mlp"]["down_proj"]["b"]).max()) > 0
  import orbax.checkpoint as ocp
  saved = ocp.StandardCheckpointer().metadata(tmp_path / "checkpoints" / "3" / "state")
  saved_tree = saved.item_metadata.tree if hasattr(saved, "item_metadata") else saved
  assert set(saved_tree["params"]["layers"]["self_attn"]) == {"q_proj", "v_proj"}
  assert "embedding" not in saved_tree["params"]


def _cli(workdir, folder, *extra):
  return [sys.executable, "-m", "ftjax.train", "--config", str(REPO / "configs" / "smollm2_full.py"),
          "--workdir", str(workdir), f"--config.model={folder}", f"--config.data.train={SAMPLE_DATA}",
          "--config.seq_len=128", "--config.batch_size=4", "--config.num_steps=40",
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.num_devices=4",
          "--config.checkpoint.every_steps=2", "--config.eval_every_steps=0",
          "--config.optimizer.learning_rate=0.001", "--config.optimizer.warmup_steps=2",
          "--config.log_every_steps=1", *extra]


def _losses(workdir):
  rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_sigkill_then_restart_continues_exactly(tiny_llama_folder, tmp_path):
  reference = tmp_path / "reference"
  # The uninterrupted reference runs in-process (the same CLI, without a process's start-up).
  assert ftjax.train.main(["ftjax.train", *_cli(reference, tiny_llama_folder)[3:]]) is None
  expected = _losses(reference)
  assert sorted(expected) == list(range(1, 41))

  interrupted = tmp_path / "interrupted"
  proc = subprocess.Popen(_cli(interrupted, tiny_llama_folder), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (interrupted / "checkpoints" / "6").is_dir() and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  before = _losses(interrupted)
  assert 6 <= max(before) < 40, "the run finished before it could be killed"

  resumed = subprocess.run(_cli(interrupted, tiny_llama_folder), capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stdout
  info = json.loads((interrupted / "run_info.json").read_text())
  assert 6 <= info["resumed_at_step"] < 40
  # metrics.jsonl is appended to: the last value per step is the resumed run's.
  after = _losses(interrupted)
  assert sorted(after) == list(range(1, 41))
  for step in range(info["resumed_at_step"] + 1, 41):
    np.testing.assert_allclose(after[step], expected[step], rtol=1e-6, err_msg=f"step {step}")


def test_sigterm_saves_and_exits(tiny_llama_folder, tmp_path):
  proc = subprocess.Popen(_cli(tmp_path, tiny_llama_folder, "--config.num_steps=100000",
                               "--config.checkpoint.every_steps=1000"),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  deadline = time.time() + 300
  while time.time() < deadline:
    metrics = tmp_path / "metrics.jsonl"
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0
  assert "SIGTERM: saved step" in out
  steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps and max(steps) >= 3 and max(steps) < 1000


def test_cli_rejects_unknown_key_and_wrong_type(tmp_path, capsys):
  def fails(*overrides):  # in-process: the message is the point, not the process
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
      ftjax.train.main(["ftjax.train", "--config", str(REPO / "configs" / "smollm2_lora.py"),
                        "--workdir", str(tmp_path), *overrides])
    assert exit_info.value.code not in (0, None)
    return capsys.readouterr().err

  assert "rnak" in fails("--config.lora.rnak=4")
  wrong = fails("--config.lora.rank=four")
  assert "rank" in wrong and "Traceback" not in wrong


def test_validate_names_the_key():
  c = base_config()
  c.unlock()
  c.lora.rnak = 4
  with pytest.raises(ConfigError, match="unknown config key.*lora.rnak"):
    ftjax.config.validate(c)
  c = base_config()
  c.batch_size = 6
  c.grad_accum_steps = 4
  with pytest.raises(ConfigError, match="batch_size .6. must be divisible by grad_accum_steps"):
    ftjax.config.validate(c)
  c = base_config()
  c.dtype = "float16"
  with pytest.raises(ConfigError, match="config key dtype"):
    ftjax.config.validate(c)


@pytest.mark.slow
def test_smollm2_lora_overfits_4_examples(tmp_path):
  rows = [json.loads(line) for line in Path(SAMPLE_DATA).read_text().splitlines()][:4]
  train = tmp_path / "four.jsonl"
  train.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = base_config()
  c.data.train = str(train)
  c.data.eval_fraction = 0.0
  c.seq_len = 256  # the 4 examples pack into 2 rows: one batch is one epoch
  c.batch_size = 2
  c.dtype = "bfloat16"  # bf16 compute with fp32 master weights: the CPU's bf16 units
  c.num_steps = 10
  c.eval_every_steps = 0
  c.checkpoint.every_steps = 1000
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = "constant"
  c.lora.enabled = True
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.targets = lora_lib.ALL_TARGETS
  c.mesh.data = 1
  c.mesh.num_devices = 1
  result = train_loop.run(c, tmp_path / "run")
  losses = [h["loss"] for h in result.history]
  print("SmolLM2 LoRA overfit losses:", [round(x, 3) for x in losses])
  assert losses[-1] < 0.1 < losses[0]


def test_remat_gives_the_same_losses_and_bf16_keeps_fp32_master_weights(tiny_llama_folder,
                                                                        tmp_path):
  # "none" explicitly: the default ("auto") is itself "full" on the CPU.
  plain = train_loop.run(tiny_train_config(tiny_llama_folder, remat_policy="none"),
                         tmp_path / "plain")
  remat = train_loop.run(tiny_train_config(tiny_llama_folder, remat_policy="full"), tmp_path / "remat")
  np.testing.assert_allclose([h["loss"] for h in remat.history],
                             [h["loss"] for h in plain.history], rtol=1e-5)
  bf16 = train_loop.run(tiny_train_config(tiny_llama_folder, dtype="bfloat16", num_steps=6),
                         tmp_path / "bf16")
  assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jnp.dtype("float32")}
  losses = [h["loss"] for h in bf16.history]
  assert losses[-1] < losses[0]
  np.testing.assert_allclose(losses[0], plain.history[0]["loss"], rtol=2e-2)


def test_lora_merge_equals_adapted_forward(tiny):
  adapters = lora_lib.init_lora(tiny.params, rank=4, targets=lora_lib.ALL_TARGETS,
                                rng=jax.random.PRNGKey(2))
  # Non-zero b, as after training.
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
                          adapters)
  cfg = lora_lib.with_lora(tiny.config, rank=4, alpha=8.0, dropout=0.0)
  tokens = jnp.asarray([[5, 6, 7, 8, 9, 10]])
  adapted = forward(cfg, tiny.params, tokens, lora=adapters)
  merged = forward(tiny.config, lora_lib.merge(cfg, tiny.params, adapters), tokens)
  assert float(jnp.abs(adapted - forward(tiny.config, tiny.params, tokens)).max()) > 1e-3
  np.testing.assert_allclose(np.asarray(merged), np.asarray(adapted), atol=1e-4)
