"""The default experiment (`make demo`): an invented company's customer service on SmolLM2-135M.

The domain (data/support_small: 20 documents, 33 facts, written by
`data/make_support_domain.py --num_docs 20`) is fiction, so no pretrained model knows its facts:
what an arm gets right it got from its documents or its training. Sized for a 2-core CPU with
train-until-learned budgets (bf16 compute on the CPU's bf16 units); the full 47-document domain
with the same recipe is configs/experiments/support_full.py.

  python -m ftjax.experiment --config configs/experiments/support.py --workdir runs/support
"""

import json
from pathlib import Path

from ftjax.experiment import experiment_config

DATA = Path(__file__).resolve().parents[2] / "data" / "support_small"


def get_config():
  c = experiment_config()
  c.name = "support"
  c.model = "smollm2-135m-instruct"
  c.dtype = "bfloat16"  # bf16 products with f32 accumulation, fp32 master weights
  c.num_seeds = 1

  for key in ("docs", "train", "eval", "unanswerable", "general", "updates", "update_train",
              "update_eval"):
    c.data[key] = str(DATA / f"{key}.jsonl")
  c.data.decline_train = str(DATA / "train_decline.jsonl")
  c.data.use_decline = True  # examples that decline politely when no document covers a question

  style = json.loads((DATA / "style.json").read_text())
  c.style.pattern = style["pattern"]
  c.style.instruction = style["instruction"]

  # Every held-out question (33), all 16 unanswerable and 34 general ones; 5 eval questions
  # answered alone per arm for latency, first token and decode speed (30 is the experiment
  # default and support_full.py's; 5 keeps the demo within 15 minutes on a 2-core CPU without
  # touching the accuracy questions or the training budgets, and the table shows n).
  c.data.max_eval_questions = 0
  c.sampling.max_new_tokens = 48
  c.sampling.batch_size = 32
  c.sampling.latency_questions = 5

  c.retrieval.method = "hybrid"
  c.retrieval.k = 3
  c.retrieval.max_prompt_tokens = 640

  # LoRA on every projection. Train until learned: at most 48 steps of 1,024 tokens (about 9
  # epochs over the fine-tuning examples); every 12 steps the model answers 32 dev phrasings (one
  # per training fact, held out of training); the step with the best dev accuracy is kept,
  # training stops after 2 evaluations without a better one, and an arm whose accuracy on its 32
  # training questions (answered at the kept step with the other questions) is below 90% is
  # reported as under-trained, not as evidence. The learning curve leaves the training questions
  # out (curve_train_accuracy; RAFT's are answered with retrieved passages, ~40 s an evaluation):
  # support_full.py draws both curves.
  c.finetune.seq_len = 512  # RAFT examples (question + 2 passages) need more than 256
  c.finetune.batch_size = 2
  c.finetune.num_steps = 48
  c.finetune.optimizer.learning_rate = 2e-3
  c.finetune.optimizer.warmup_steps = 3
  c.finetune.lora.rank = 16
  c.finetune.lora.alpha = 32.0
  c.finetune.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj")
  c.finetune.log_every_steps = 6
  c.finetune.eval_every_steps = 12
  c.finetune.select = "best_dev"
  c.finetune.early_stop_patience = 2
  c.finetune.eval_questions = 32
  c.finetune.curve_train_accuracy = False
  c.finetune.learned_threshold = 0.9

  # RAFT as published: the retriever's top hit from another document as the distractor, the
  # oracle in 80% of the examples; a seeded 48 of the examples (they are ~5x longer).
  c.raft.num_distractors = 1
  c.raft.distractors = "retrieved"
  c.raft.max_examples = 48
  c.raft.num_steps = 48
  c.knowledge_update.num_steps = 4
  c.knowledge_update.max_unchanged = 16

  # Security (report section "Security"): 2 canaries in 2% of the training examples, ranked
  # against 63 random codes. Poisoning needs one more training run: support_full.py measures it.
  c.data.audit = "warn"  # the audit's summary line on stderr; counts in the report
  c.security.enabled = True
  c.security.canaries = 2
  c.security.canary_share = 0.02
  c.security.canary_candidates = 63
  c.security.poison_fractions = ()

  c.cost.device = "2-core CPU"
  c.cost.price_per_device_hour = 0.10
  return c
