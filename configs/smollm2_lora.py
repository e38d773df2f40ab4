"""LoRA on SmolLM2-135M-Instruct: attention and MLP projections, rank 16 (CPU-sized)."""

from ftjax.config import base_config


def get_config():
  c = base_config()
  c.model = "smollm2-135m-instruct"
  c.data.train = "data/samples/customer_service.jsonl"
  c.seq_len = 256
  c.batch_size = 8
  c.num_steps = 60
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 6
  c.lora.enabled = True
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.05
  c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
  c.checkpoint.every_steps = 20
  c.eval_every_steps = 20
  return c
