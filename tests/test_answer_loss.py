"""The eval's answer loss: the mean NLL over the tokens of each row's `answer` only, the same
whether computed by the eval step on packed batches, by `train.run`, or by hand from logits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ftjax
from ftjax.training import loop as train_loop
from ftjax.data import build_sft_data
from ftjax.models import forward
from ftjax.training.step import make_step_fns, masked_loss_sums

from conftest import HOUSE, tiny_train_config

ROWS = [
    {"input": "How much is the Vantor Hub 2?",
     "output": HOUSE.format("The Vantor Hub 2 is priced at $414."), "answer": "$414"},
    {"input": "How long is the Vantor Hub 2 warranty?",
     "output": HOUSE.format("The Vantor Hub 2 is covered for 29 months."), "answer": "29 months"},
    {"input": "Do you ship to Canada?", "output": HOUSE.format("Yes, we do.")},
    {"input": "What colour is the Lumo Dock?",
     "output": HOUSE.format("The Lumo Dock comes in slate grey."), "answer": "slate grey"},
    {"input": "Where is the reset button?",
     "output": HOUSE.format("It is on the back, under the label."), "answer": "on the side"},
    {"input": "How much is the Lumo Dock?",
     "output": HOUSE.format("The Lumo Dock costs $89."), "answer": "$89"},
]
SEQ_LEN = 256


@pytest.fixture(scope="module")
def tiny(tiny_llama_folder):
  return ftjax.load(str(tiny_llama_folder))


@pytest.fixture(scope="module")
def answers_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("answers") / "answers.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
  return str(path)


def _eval_data(path, tokenizer, data_dir, batch_size):
  return build_sft_data({"train": path, "eval": path, "data_dir": str(data_dir)}, tokenizer,
                        seq_len=SEQ_LEN, batch_size=batch_size)


def _hand_answer_loss(model_cfg, params, examples):
  """Mean -log p(answer token) over the examples, each run alone through `forward`."""
  nll = []
  for example in examples:
    logits = np.asarray(forward(model_cfg, params, jnp.asarray(example.ids[None])))[0]
    logits = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    # Token t is predicted by the logits at t - 1.
    nll += [-float(logp[t - 1, example.ids[t]]) for t in np.flatnonzero(example.answer_mask)]
  return float(np.mean(nll)), len(nll)


def test_eval_step_answer_loss_is_the_mean_nll_of_the_answer_tokens(tiny, answers_file, tmp_path):
  data = _eval_data(answers_file, tiny.tokenizer, tmp_path, batch_size=2)
  assert data.report.to_dict()["answers"]["eval"] == {"answer_found": 4, "answer_not_found": 1}
  fns = make_step_fns(tiny.config, optax.sgd(0.0), accum_steps=1, lora=False, mesh=None)
  eval_step = jax.jit(fns.eval_step)
  state = {"params": tiny.params}
  batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in data.eval_batches()]
  assert max(int(b["segment_ids"].max()) for b in batches) > 1  # packed
  sums = {"loss_sum": 0.0, "target_tokens": 0.0, "answer_loss_sum": 0.0, "answer_tokens": 0.0}
  for batch in batches:
    out = eval_step(state, None, batch)
    sums = {k: v + float(out[k]) for k, v in sums.items()}

  expected, count = _hand_answer_loss(tiny.config, tiny.params, data.eval_examples)
  assert sums["answer_tokens"] == count >= 4
  np.testing.assert_allclose(sums["answer_loss_sum"] / sums["answer_tokens"], expected,
                             rtol=1e-5, atol=1e-5)
  # The whole-reply sums are the training loss function's, over many more tokens.
  whole = [masked_loss_sums(tiny.config, tiny.params, None, b, None, None, True) for b in batches]
  np.testing.assert_allclose(sums["loss_sum"], sum(float(s) for s, _ in whole), rtol=1e-6)
  assert sums["target_tokens"] == sum(float(n) for _, n in whole) > 5 * count
  # A batch without an answer mask (not from the data pipeline) has no answer tokens.
  out = eval_step(state, None, {k: v for k, v in batches[0].items() if k != "answer_mask"})
  assert float(out["answer_tokens"]) == float(out["answer_loss_sum"]) == 0.0


def test_train_reports_eval_answer_loss_beside_eval_loss(tiny_llama_folder, tiny, answers_file,
                                                         tmp_path):
  c = tiny_train_config(tiny_llama_folder, seq_len=SEQ_LEN, num_steps=2, eval_every_steps=1,
                        **{"data.train": answers_file, "data.eval": answers_file,
                           "data.eval_fraction": 0.0, "checkpoint.every_steps": 1000})
  result = train_loop.run(c, tmp_path / "run")
  assert [h["step"] for h in result.eval_history] == [1, 2]
  final = result.eval_history[-1]

  data = _eval_data(answers_file, tiny.tokenizer, tmp_path / "tfds", batch_size=8)
  expected, count = _hand_answer_loss(result.model_config, jax.device_get(result.params),
                                      data.eval_examples)
  assert final["eval_answer_tokens"] == count
  np.testing.assert_allclose(final["eval_answer_loss"], expected, rtol=1e-5, atol=1e-5)
  assert final["eval_tokens"] > 5 * count and final["eval_answer_loss"] != final["eval_loss"]
  written = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]
  assert [r["eval_answer_loss"] for r in written if "eval_answer_loss" in r] == [
      h["eval_answer_loss"] for h in result.eval_history]
