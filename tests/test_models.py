"""JAX logits equal transformers' logits for tiny random models of every supported family."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import ftjax
from ftjax.checkpoints import CheckpointError, load_params
from ftjax.models import UnsupportedModelError, forward, init_params
from ftjax.models.config import ModelConfig

COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=False),
    "llama3_rope_tied": lambda: transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}),
    "llama_bias": lambda: transformers.LlamaConfig(**COMMON, attention_bias=True, mlp_bias=True),
    "mistral_sliding": lambda: transformers.MistralConfig(**COMMON, sliding_window=4),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True),
    "gemma": lambda: transformers.GemmaConfig(**COMMON, head_dim=16),
    "gemma2": lambda: transformers.Gemma2Config(
        **COMMON, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **COMMON, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                            "rope_theta": 100000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}}),
}


def _save_random_model(hf_config, folder):
  torch.manual_seed(0)
  hf_config._attn_implementation = "eager"
  model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
  with torch.no_grad():  # random norm weights and biases, so a mixed-up mapping cannot pass
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(torch.randn_like(p) * 0.1 + (0.0 if "gemma" in hf_config.model_type else 1.0))
  model.save_pretrained(folder)
  return model


def _padded_batch(padding_side, seq=10):
  rng = np.random.default_rng(0)
  lengths = [seq, 7, 4]
  tokens = np.zeros((3, seq), np.int64)
  mask = np.zeros((3, seq), np.int64)
  for row, n in enumerate(lengths):
    span = slice(seq - n, seq) if padding_side == "left" else slice(0, n)
    tokens[row, span] = rng.integers(1, COMMON["vocab_size"], n)
    mask[row, span] = 1
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  return tokens, mask, positions


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(family, padding_side, tmp_path):
  hf_model = _save_random_model(FAMILIES[family](), tmp_path)
  model = ftjax.load(str(tmp_path), tokenizer=False)
  tokens, mask, positions = _padded_batch(padding_side)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                   position_ids=torch.tensor(positions)).logits.numpy()
  out = np.asarray(forward(model.config, model.params, jnp.asarray(tokens),
                           jnp.asarray(positions), jnp.asarray(mask)))
  valid = mask.astype(bool)
  assert out.shape == ref.shape
  assert np.abs(out - ref)[valid].max() <= 1e-4


def test_packed_segments_match_separate_sequences(tmp_path):
  """Two examples packed in one row give the same logits as each run alone."""
  cfg = ModelConfig(family="llama", vocab_size=50, hidden_size=32, intermediate_size=48,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
  import jax
  params = init_params(cfg, jax.random.PRNGKey(0))
  a, b = np.arange(1, 6), np.arange(10, 17)
  packed = np.concatenate([a, b, [0, 0]])[None]
  segments = np.array([[1] * 5 + [2] * 7 + [0, 0]])
  positions = np.array([list(range(5)) + list(range(7)) + [0, 0]])
  out = np.asarray(forward(cfg, params, packed, positions, segments))[0]
  alone_a = np.asarray(forward(cfg, params, a[None]))[0]
  alone_b = np.asarray(forward(cfg, params, b[None]))[0]
  np.testing.assert_allclose(out[:5], alone_a, atol=1e-5)
  np.testing.assert_allclose(out[5:12], alone_b, atol=1e-5)


def test_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(CheckpointError, match="no such model folder"):
    ftjax.load(str(tmp_path / "nope"))


def test_unsupported_architecture_is_named(tmp_path):
  transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
  with pytest.raises(UnsupportedModelError, match="'gpt2'.*supported model types: llama"):
    ftjax.load(str(tmp_path), tokenizer=False)


def test_unsupported_rope_type_is_named(tmp_path):
  cfg = transformers.LlamaConfig(**COMMON, rope_parameters={"rope_type": "yarn", "factor": 2.0,
                                                            "rope_theta": 1e4})
  cfg.save_pretrained(tmp_path)
  with pytest.raises(UnsupportedModelError, match="rope_type 'yarn'"):
    ftjax.load(str(tmp_path), tokenizer=False)


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  _save_random_model(FAMILIES["llama"](), tmp_path)
  weights = load_file(tmp_path / "model.safetensors")
  del weights["model.layers.1.mlp.up_proj.weight"]
  save_file(weights, tmp_path / "model.safetensors")
  with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): model.layers.1.mlp.up_proj"):
    load_params(tmp_path)


def test_sharded_safetensors_index(tmp_path):
  from safetensors.numpy import load_file, save_file
  _save_random_model(FAMILIES["qwen2"](), tmp_path)
  reference = load_params(tmp_path)[1]
  weights = load_file(tmp_path / "model.safetensors")
  (tmp_path / "model.safetensors").unlink()
  names = sorted(weights)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for file, keys in shards.items():
    save_file({k: weights[k] for k in keys}, tmp_path / file)
  index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  params = load_params(tmp_path)[1]
  import jax
  assert jax.tree.all(jax.tree.map(np.array_equal, params, reference))


def test_pickle_checkpoint_refused_unless_opted_in(tmp_path):
  hf_model = _save_random_model(FAMILIES["llama"](), tmp_path)
  (tmp_path / "model.safetensors").unlink()
  torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
  with pytest.raises(CheckpointError, match="pickle.*allow_pickle=True"):
    ftjax.load(str(tmp_path), tokenizer=False)
  model = ftjax.load(str(tmp_path), tokenizer=False, allow_pickle=True)
  assert model.params["layers"]["mlp"]["up_proj"]["kernel"].shape == (3, 64, 96)


def test_not_a_model_folder(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(CheckpointError, match="not a model folder"):
    ftjax.load(str(tmp_path))


def test_hub_ids_go_through_snapshot_download(tmp_path, monkeypatch):
  import huggingface_hub
  _save_random_model(FAMILIES["qwen2"](), tmp_path / "snapshot")
  calls = []

  def fake_download(repo_id, allow_patterns=None, **kwargs):
    calls.append((repo_id, allow_patterns))
    if repo_id == "org/missing":
      raise OSError("offline")
    return str(tmp_path / "snapshot")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
  model = ftjax.load("org/tiny-qwen", tokenizer=False)
  assert model.config.family == "qwen2"
  assert calls[0][0] == "org/tiny-qwen"
  assert "*.safetensors" in calls[0][1] and not any(p.endswith(".bin") for p in calls[0][1])
  with pytest.raises(CheckpointError, match="org/missing: could not download.*offline"):
    ftjax.load("org/missing")


def test_param_dtype_is_applied_on_load(tmp_path):
  _save_random_model(FAMILIES["llama"](), tmp_path)
  model = ftjax.load(str(tmp_path), tokenizer=False, dtype="bfloat16", param_dtype="bfloat16")
  import jax
  assert {x.dtype for x in jax.tree.leaves(model.params)} == {jnp.dtype("bfloat16")}
  logits = forward(model.config, model.params, jnp.asarray([[1, 2, 3]]))
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


def test_dropout_keep_mask_rate_and_independence():
  from ftjax.models.transformer import dropout_keep_mask
  shape = (32, 64, 96)
  a = np.asarray(dropout_keep_mask(jax.random.PRNGKey(3), shape, 0.1))
  b = np.asarray(dropout_keep_mask(jax.random.PRNGKey(4), shape, 0.1))
  n = a.size
  assert abs(a.mean() - 0.9) < 5 * math.sqrt(0.09 / n)  # 5 sigma
  assert abs((a == b).mean() - 0.82) < 0.01  # two keys: independent masks
  flat = a.reshape(-1).astype(np.float64)
  for lag in (1, 96, 64 * 96):  # neighbours along every axis are uncorrelated
    assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.02
  np.testing.assert_array_equal(a, dropout_keep_mask(jax.random.PRNGKey(3), shape, 0.1))
  assert np.asarray(dropout_keep_mask(jax.random.PRNGKey(0), (999,), 0.0)).all()


def _tiny_config(**changes):
  return ModelConfig(family="llama", vocab_size=97, hidden_size=64, intermediate_size=96,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, **changes)


def test_remat_auto_is_full_on_the_cpu_and_explicit_policies_pass_through():
  from ftjax.config import base_config
  from ftjax.models.transformer import resolve_remat
  assert base_config().remat_policy == "auto"  # the training default
  assert resolve_remat("auto") == ("full" if jax.default_backend() == "cpu" else "none")
  for policy in ("none", "full", "dots", "dots_no_batch"):
    assert resolve_remat(policy) == policy
  # "auto" on the CPU traces the layer under a remat (checkpoint) like "full", unlike "none".
  cfg = _tiny_config()
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jnp.zeros((1, 8), jnp.int32)
  def jaxpr_of(policy):
    return str(jax.make_jaxpr(jax.grad(
        lambda p: forward(cfg.replace(remat_policy=policy), p, tokens).sum()))(params))
  if jax.default_backend() == "cpu":
    assert "remat" in jaxpr_of("auto") and "remat" not in jaxpr_of("none")


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_logits_close_to_fp32(tied):
  cfg = _tiny_config(tie_word_embeddings=tied)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab_size)
  fp32 = forward(cfg, params, tokens)
  bf16 = forward(cfg.replace(dtype="bfloat16"), params, tokens)
  assert bf16.dtype == jnp.float32  # the head accumulates and returns fp32 logits
  scale = float(jnp.abs(fp32).mean())
  assert float(jnp.abs(bf16 - fp32).mean()) < 0.02 * scale
  assert float((bf16.argmax(-1) == fp32.argmax(-1)).mean()) >= 0.9


@pytest.mark.parametrize("num_contract,kernel_out_first", [(1, False), (2, False), (1, True)])
def test_bf16_matmul_gradients_match_fp32(num_contract, kernel_out_first):
  """The bf16 custom-vjp product: bf16 inputs, fp32 accumulation in all three products; its
  gradients are jax.grad of the fp32 dot to bf16 rounding, and fp32 weights get fp32 gradients."""
  from ftjax.models import matmul
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 40) + (4, 16)[2 - num_contract:]), jnp.float32)
  in_shape, out_shape = x.shape[2:], (24,)
  kernel = jnp.asarray(rng.standard_normal(
      out_shape + in_shape if kernel_out_first else in_shape + out_shape), jnp.float32)
  probe = jnp.asarray(rng.standard_normal((3, 40, 24)), jnp.float32)

  def loss(x, kernel, dtype):
    y = matmul.project(x, kernel, len(in_shape), dtype, kernel_out_first=kernel_out_first)
    return jnp.sum(y.astype(jnp.float32) * probe)

  want = jax.grad(loss, argnums=(0, 1))(x, kernel, jnp.float32)
  got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(x, kernel, jnp.bfloat16)
  assert got[1].dtype == jnp.float32 and got[0].dtype == jnp.float32
  for g, w in zip(got, want):
    assert float(jnp.linalg.norm(g - w) / jnp.linalg.norm(w)) < 1e-2
  # fp32 stays the plain dot_general, gradients and all.
  plain = jax.grad(lambda x, k: jnp.sum(matmul.plain_project(
      x, k, len(in_shape), jnp.float32, kernel_out_first=kernel_out_first) * probe),
      argnums=(0, 1))(x, kernel)
  for g, w in zip(want, plain):
    np.testing.assert_array_equal(g, w)


def test_bf16_lora_train_step_runs_and_tracks_fp32():
  """A bf16 LoRA train step compiles (every dot form of the backward pass) and its loss is the
  fp32 step's to bf16 rounding."""
  import optax
  from ftjax.models import lora as lora_lib
  from ftjax.training.step import make_step_fns
  cfg = lora_lib.with_lora(_tiny_config(tie_word_embeddings=True), rank=4, alpha=8.0,
                           dropout=0.0)
  params = init_params(cfg, jax.random.PRNGKey(0))
  adapters = lora_lib.init_lora(params, rank=4, rng=jax.random.PRNGKey(1),
                                targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                         "up_proj", "down_proj"))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, cfg.vocab_size)
  batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, 1),
           "loss_mask": jnp.ones(tokens.shape, jnp.float32),
           "segment_ids": jnp.ones(tokens.shape, jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(16), tokens.shape)}
  losses = {}
  for dtype in ("float32", "bfloat16"):
    optimizer = optax.adamw(1e-2)
    fns = make_step_fns(cfg.replace(dtype=dtype), optimizer, accum_steps=1, lora=True, mesh=None)
    state = {"step": jnp.int32(0), "params": adapters, "opt_state": optimizer.init(adapters),
             "rng": jax.random.PRNGKey(3)}
    step = jax.jit(fns.train_step)
    for _ in range(2):
      state, metrics = step(state, params, batch)
    losses[dtype] = float(metrics["loss"])
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype("float32")}
  assert abs(losses["bfloat16"] - losses["float32"]) < 0.02 * losses["float32"]


def test_bf16_speed_note_only_on_a_cpu_without_bf16_units(monkeypatch, capsys):
  from ftjax import provenance
  from ftjax.models import matmul
  monkeypatch.setattr(matmul, "_NOTED", [])
  without = {"model": "AMD EPYC", "features": ["avx2", "fma"], "bf16_units": False}
  monkeypatch.setattr(provenance, "cpu", lambda: without)
  assert jax.default_backend() == "cpu"
  assert matmul.bf16_speed_note("float32") is None
  note = matmul.bf16_speed_note("bfloat16")
  assert note.startswith("note: dtype bfloat16") and "(AMD EPYC:" in note
  said = []
  for _ in range(2):  # once a process
    matmul.note_bf16_speed("bfloat16", said.append)
    matmul.note_bf16_speed("bfloat16")
  assert said == [note] and capsys.readouterr().err == ""
  for units in (True, None):  # the units, or flags unknown: nothing to say
    monkeypatch.setattr(provenance, "cpu", lambda units=units: {**without, "bf16_units": units})
    assert matmul.bf16_speed_note("bfloat16") is None
