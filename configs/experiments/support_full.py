"""The full-size support experiment: the default's recipe (configs/experiments/support.py) on all
47 documents and 79 facts of data/support, with 30 latency questions and poisoning (one more
training run). About three times the default's training and answering time.

  python -m ftjax.experiment --config configs/experiments/support_full.py --workdir runs/full
"""

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "data" / "support"


def get_config():
  spec = importlib.util.spec_from_file_location("support_default", HERE / "support.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.name = "support_full"
  for key in ("docs", "train", "eval", "unanswerable", "general", "updates", "update_train",
              "update_eval"):
    c.data[key] = str(DATA / f"{key}.jsonl")
  c.data.decline_train = str(DATA / "train_decline.jsonl")
  c.sampling.latency_questions = 30
  # 237 examples, about 2.4x the default's: the same number of epochs needs 2.4x the steps.
  c.finetune.num_steps = 120
  c.finetune.eval_every_steps = 24
  c.raft.max_examples = 120
  c.raft.num_steps = 120
  c.finetune.curve_train_accuracy = True  # both learning curves (train and dev accuracy)
  c.security.poison_fractions = (0.0, 0.2)
  return c
