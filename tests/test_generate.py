"""Decoding with the KV cache matches transformers' generate; sampling is seeded and filtered."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

import ftjax
from ftjax.generation import SamplingConfig, encode_prompts, generate, generate_ids

SMOL_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about compilers.",
    "List three uses of a paperclip.",
    "Explain gradient descent in one sentence to a child, please.",
]


def _hf_greedy(hf_model, prompt_ids, pad_id, max_new_tokens):
  longest = max(map(len, prompt_ids))
  tokens = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in prompt_ids])
  mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompt_ids])
  with torch.no_grad():
    out = hf_model.generate(input_ids=tokens, attention_mask=mask, do_sample=False,
                            max_new_tokens=max_new_tokens, pad_token_id=pad_id)
  return out[:, longest:].tolist()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny_qwen2")
  torch.manual_seed(0)
  cfg = transformers.Qwen2Config(vocab_size=101, hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 eos_token_id=100, max_position_embeddings=256)
  cfg._attn_implementation = "eager"
  hf_model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
  hf_model.generation_config.eos_token_id = 100
  hf_model.save_pretrained(folder)
  return hf_model, ftjax.load(str(folder), tokenizer=False)


def test_tiny_batched_greedy_matches_transformers(tiny):
  hf_model, model = tiny
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, 100, n).tolist() for n in (3, 9, 5, 14)]
  ours = generate_ids(model.config, model.params, prompts, SamplingConfig(max_new_tokens=20),
                      eos_ids=[100], pad_id=0)
  ref = _hf_greedy(hf_model, prompts, pad_id=0, max_new_tokens=20)
  for got, want in zip(ours, ref):
    assert got == want[:len(got)]
    assert len(got) == 20 or got[-1] == 100


def test_batches_sorted_by_prompt_length_answer_in_input_order(tiny):
  hf_model, model = tiny
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, 100, n).tolist() for n in (3, 40, 9, 5, 14)]
  seen = []
  with ftjax.generation.on_batch(seen.append):
    ours = generate_ids(model.config, model.params, prompts,
                        SamplingConfig(max_new_tokens=20, batch_size=2), eos_ids=[100], pad_id=0)
  # 5 prompts at batch_size 2: 3 equal batches of 2 rows (the last padded), shortest first
  assert [(b.done, b.total, b.rows) for b in seen] == [(2, 5, 2), (4, 5, 2), (5, 5, 2)]
  assert seen[-1].new_tokens == sum(len(o) for o in ours)
  ref = _hf_greedy(hf_model, prompts, pad_id=0, max_new_tokens=20)
  for got, want in zip(ours, ref):  # each answer back at its prompt's place
    assert got == want[:len(got)]
    assert len(got) == 20 or got[-1] == 100


def test_batching_groups_prompts_of_similar_length(monkeypatch):
  from ftjax.generation import decoding
  batches = []

  def fake(cfg, params, batch, *args):
    batches.append([len(p) for p in batch])
    return [[len(p)] for p in batch]
  monkeypatch.setattr(decoding, "_generate_batch", fake)

  class Cfg:
    max_position_embeddings = 1024
  lengths = [7, 1, 30, 2, 9, 3, 8]
  out = decoding.generate_ids(Cfg, None, [[1] * n for n in lengths],
                              SamplingConfig(max_new_tokens=4, batch_size=3), eos_ids=[])
  assert out == [[n] for n in lengths]
  assert batches == [[1, 2, 3], [7, 8, 9], [30, 30, 30]]  # 7 at 3: three batches of 3
  with pytest.raises(ValueError, match="batch_size"):
    SamplingConfig(batch_size=-1)


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny):
  _, model = tiny
  prompts = [[5, 6, 7], [8, 9]]
  run = lambda **kw: generate_ids(model.config, model.params, prompts,
                                  SamplingConfig(max_new_tokens=12, **kw), eos_ids=[], pad_id=0)
  greedy = run()
  a = run(greedy=False, temperature=1.5, seed=3)
  assert a == run(greedy=False, temperature=1.5, seed=3)
  assert a != run(greedy=False, temperature=1.5, seed=4)
  assert run(greedy=False, temperature=1.0, top_k=1, seed=7) == greedy
  assert run(greedy=False, temperature=1.0, top_p=1e-6, seed=7) == greedy


def test_bad_sampling_settings_are_rejected():
  with pytest.raises(ValueError, match="max_new_tokens"):
    SamplingConfig(max_new_tokens=0)
  with pytest.raises(ValueError, match="top_p"):
    SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    SamplingConfig(greedy=False, temperature=0.0)


def test_prompt_longer_than_context_is_rejected(tiny):
  _, model = tiny
  with pytest.raises(ValueError, match="exceeds the model's context"):
    generate_ids(model.config, model.params, [[1] * 250], SamplingConfig(max_new_tokens=10), [])


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2, smollm2_folder):
  import jax.numpy as jnp
  from ftjax.models import forward
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(smollm2_folder), dtype=torch.float32).eval()
  ids = encode_prompts(smollm2.tokenizer, SMOL_PROMPTS)
  longest = max(map(len, ids))
  tokens = np.array([[0] * (longest - len(p)) + p for p in ids])
  mask = np.array([[0] * (longest - len(p)) + [1] * len(p) for p in ids])
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                   position_ids=torch.tensor(positions)).logits.numpy()
  out = np.asarray(forward(smollm2.config, smollm2.params, jnp.asarray(tokens),
                           jnp.asarray(positions), jnp.asarray(mask)))
  assert np.abs(out - ref)[mask.astype(bool)].max() <= 1e-3


@pytest.mark.slow
def test_smollm2_batched_greedy_matches_transformers(smollm2, smollm2_folder):
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(smollm2_folder), dtype=torch.float32).eval()
  # Open-ended prompts of different lengths, so that no row stops at EOS before 32 tokens.
  prompts = ["Write a short story about a robot who learns to paint.",
             "Describe the water cycle in detail.", "Write a poem about the sea.",
             "Explain, step by step and for a beginner, how a bicycle turns pedalling into motion."]
  completions = generate(smollm2, prompts, SamplingConfig(max_new_tokens=40))
  ids = encode_prompts(smollm2.tokenizer, prompts)
  ref = _hf_greedy(hf_model, ids, smollm2.tokenizer.pad_token_id, 40)
  for completion, want in zip(completions, ref):
    assert len(completion.token_ids) >= 32
    assert completion.token_ids == want[:len(completion.token_ids)]
    assert completion.num_prompt_tokens > 0


@pytest.mark.slow
def test_smollm2_bf16_stays_close(smollm2):
  """Measured on SmolLM2 (bf16 params and compute): mean |dlogit| 0.17, KL 0.0025, top-1 97%."""
  import jax
  import jax.numpy as jnp
  from ftjax.models import forward
  ids = encode_prompts(smollm2.tokenizer, SMOL_PROMPTS)
  longest = max(map(len, ids))
  tokens = jnp.array([[0] * (longest - len(p)) + p for p in ids])
  mask = jnp.array([[0] * (longest - len(p)) + [1] * len(p) for p in ids])
  positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
  ref = forward(smollm2.config, smollm2.params, tokens, positions, mask)
  valid = np.asarray(mask, bool)
  variants = {
      "bf16 compute, fp32 params": (smollm2.config.replace(dtype="bfloat16"), smollm2.params),
      "bf16 compute and params": (
          smollm2.config.replace(dtype="bfloat16", param_dtype="bfloat16"),
          jax.tree.map(lambda p: p.astype(jnp.bfloat16), smollm2.params)),
  }
  for name, (cfg, params) in variants.items():
    out = forward(cfg, params, tokens, positions, mask)
    assert out.dtype == jnp.float32
    logp, logq = jax.nn.log_softmax(ref), jax.nn.log_softmax(out)
    kl = np.asarray((jnp.exp(logp) * (logp - logq)).sum(-1))[valid].mean()
    mean_abs = np.abs(np.asarray(out - ref))[valid].mean()
    top1 = (np.asarray(out.argmax(-1)) == np.asarray(ref.argmax(-1)))[valid].mean()
    assert kl < 0.01 and mean_abs < 0.3 and top1 > 0.9, (name, kl, mean_abs, top1)
  bf16_model = ftjax.Pretrained(variants["bf16 compute and params"][0],
                                variants["bf16 compute and params"][1], smollm2.tokenizer)
  [completion] = generate(bf16_model, ["What is the capital of France?"],
                          SamplingConfig(max_new_tokens=16))
  assert "Paris" in completion.text


@pytest.mark.slow
def test_stop_strings_cut_the_text(smollm2):
  [full] = generate(smollm2, ["List three uses of a paperclip."], SamplingConfig(max_new_tokens=40))
  assert "\n" in full.text
  [cut] = generate(smollm2, ["List three uses of a paperclip."],
                   SamplingConfig(max_new_tokens=40, stop_strings=("\n",)))
  assert cut.finish_reason == "stop"
  assert cut.text == full.text[:full.text.index("\n")]
  assert len(cut.token_ids) < len(full.token_ids)


@pytest.mark.slow
def test_generate_cli(smollm2):
  [api] = generate(smollm2, ["What is the capital of France?"], SamplingConfig(max_new_tokens=12))
  result = subprocess.run(
      [sys.executable, "-m", "ftjax.generate", "--model", "smollm2-135m-instruct",
       "--prompt", "What is the capital of France?", "--max_new_tokens", "12"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == api.text.strip()


def test_cli_defaults_are_the_sampling_config_defaults():
  from ftjax.generate import build_parser, sampling_from_args
  parse = lambda *argv: sampling_from_args(build_parser().parse_args(["--prompt", "x", *argv]))
  assert parse() == SamplingConfig()
  assert parse("--greedy") == SamplingConfig(greedy=True)
  assert parse("--sample") == SamplingConfig(greedy=False)
  assert (parse("--sample", "--temperature", "0.7", "--top_p", "0.9", "--max_new_tokens", "128")
          == SamplingConfig(greedy=False, temperature=0.7, top_p=0.9, max_new_tokens=128))
  with pytest.raises(SystemExit):
    parse("--greedy", "--sample")


def test_generate_cli_matches_the_api(tiny_llama_folder, capsys):
  from ftjax.generate import main
  [api] = generate(ftjax.load(str(tiny_llama_folder)), ["Hello there"])
  assert main(["--model", str(tiny_llama_folder), "--prompt", "Hello there"]) == 0
  assert capsys.readouterr().out == api.text + "\n"


def test_generate_cli_reports_bad_model(tmp_path, capsys):
  from ftjax.generate import main  # in-process: the message is the point (test_generate_cli
  # runs the process)
  capsys.readouterr()
  assert main(["--model", str(tmp_path / "missing"), "--prompt", "hi"]) == 2
  err = capsys.readouterr().err
  assert "no such model folder" in err
  assert "Traceback" not in err


def test_timed_splits_first_token_from_decode(tiny):
  from ftjax.generation.decoding import timed
  _, model = tiny
  prompts = [[11, 12, 13, 14, 15, 16, 17]]  # a prompt length no other test compiles
  run = lambda: generate_ids(model.config, model.params, prompts,  # noqa: E731
                             SamplingConfig(max_new_tokens=9), eos_ids=[], pad_id=0)
  with timed() as first:
    out = run()
  with timed() as again:
    assert run() == out
  assert first.compiled and not again.compiled  # a new shape compiles once
  assert again.calls == 1 and again.new_tokens == len(out[0]) == 9
  assert again.prefill_s > 0 and again.decode_s > 0
  assert again.decode_tokens_per_s == pytest.approx(8 / again.decode_s)
  run()  # outside the block nothing is recorded
  assert again.calls == 1


def test_compile_only_compiles_a_shape_ahead_and_runs_nothing(tiny):
  """`compile_only()` (the latency measurement's warm-up): the call compiles its batch shapes and
  returns no tokens; the same call afterwards compiles nothing and generates as usual."""
  from ftjax.generation.decoding import compile_only, timed
  _, model = tiny
  prompts = [[21, 22, 23, 24, 25, 26, 27, 28, 29, 30] * 4]  # a prompt length no other test uses
  sampling = SamplingConfig(max_new_tokens=7)
  with timed() as ahead, compile_only():
    assert generate_ids(model.config, model.params, prompts, sampling, [], 0) == [[]]
  assert ahead.calls == 0  # nothing ran, so nothing was timed
  with timed() as after:
    out = generate_ids(model.config, model.params, prompts, sampling, [], 0)
  assert not after.compiled and after.calls == 1 and len(out[0]) == 7
