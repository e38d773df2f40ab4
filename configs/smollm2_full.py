"""Full fine-tuning of SmolLM2-135M-Instruct on the sample customer-service data (CPU-sized)."""

from ftjax.config import base_config


def get_config():
  c = base_config()
  c.model = "smollm2-135m-instruct"
  c.data.train = "data/samples/customer_service.jsonl"
  c.seq_len = 256
  c.batch_size = 8
  c.num_steps = 60
  c.optimizer.learning_rate = 3e-5
  c.optimizer.warmup_steps = 6
  c.checkpoint.every_steps = 20
  c.eval_every_steps = 20
  return c
