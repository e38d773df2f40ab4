"""The default experiment (`make demo`): an invented company's customer service on SmolLM2-135M.

The domain (data/support, written by data/make_support_domain.py) is fiction, so no pretrained
model knows its facts: what an arm gets right it got from its documents or its training.
Sized for a 2-core CPU: the whole comparison runs in well under half an hour.

  python -m ftjax.experiment --config configs/experiments/support.py --workdir runs/support
"""

import json
from pathlib import Path

from ftjax.experiment import experiment_config

DATA = Path(__file__).resolve().parents[2] / "data" / "support"


def get_config():
  c = experiment_config()
  c.name = "support"
  c.model = "smollm2-135m-instruct"
  c.num_seeds = 1

  for key in ("docs", "train", "eval", "unanswerable", "general", "updates", "update_train",
              "update_eval"):
    c.data[key] = str(DATA / f"{key}.jsonl")
  c.data.decline_train = str(DATA / "train_decline.jsonl")
  c.data.use_decline = True  # examples that decline politely when no document covers a question

  style = json.loads((DATA / "style.json").read_text())
  c.style.pattern = style["pattern"]
  c.style.instruction = style["instruction"]

  # Sized for a 2-core CPU: 48 of the 79 held-out questions (a fixed random sample), all 16
  # unanswerable and 34 general ones; 2 questions timed alone per arm for latency.
  c.data.max_eval_questions = 48
  c.sampling.max_new_tokens = 48
  c.sampling.batch_size = 32
  c.sampling.latency_questions = 2

  c.retrieval.method = "hybrid"
  c.retrieval.k = 3
  c.retrieval.max_prompt_tokens = 640

  # LoRA on every projection: 12 steps of 2,048 tokens, ~1.4 epochs over the 253 short examples
  # (a step takes ~14 s on the 2-core CPU).
  c.finetune.seq_len = 512  # RAFT examples (question + 2 passages) need more than 256
  c.finetune.batch_size = 4
  c.finetune.num_steps = 12
  c.finetune.optimizer.learning_rate = 2e-3
  c.finetune.optimizer.warmup_steps = 3
  c.finetune.lora.rank = 16
  c.finetune.lora.alpha = 32.0
  c.finetune.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj")
  c.finetune.log_every_steps = 5
  # Measure learning while training: every 6 steps the model answers 32 dev phrasings (one per
  # training fact, held out of training) and 32 of its training questions; the step with the best
  # dev accuracy is kept, and a tuned arm whose train accuracy ends below 90% is reported as
  # under-trained rather than as evidence. 12 steps is what this CPU affords today (issue 22).
  c.finetune.eval_every_steps = 6
  c.finetune.select = "best_dev"
  c.finetune.eval_questions = 32
  c.finetune.learned_threshold = 0.9

  c.raft.num_distractors = 1
  c.raft.max_examples = 64  # RAFT examples are ~5x longer: a seeded sample keeps 12 steps ~1.5 epochs
  c.raft.num_steps = 12
  c.knowledge_update.num_steps = 4
  c.knowledge_update.max_unchanged = 16

  # Security (report section "Security"): 2 canaries in 5 of the 253 training examples, ranked
  # against 63 random codes; 20% of training examples / documents poisoned with wrong values: one
  # extra 12-step training run (fraction 0 is the `finetuned` arm itself), ~4 min on 2 cores.
  c.data.audit = "warn"  # the audit's summary line on stderr; counts in the report
  c.security.enabled = True
  c.security.canaries = 2
  c.security.canary_share = 0.02
  c.security.canary_candidates = 63
  c.security.poison_fractions = (0.0, 0.2)

  c.cost.device = "2-core CPU"
  c.cost.price_per_device_hour = 0.10
  return c
