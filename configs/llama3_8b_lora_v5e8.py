"""Llama-3-8B-Instruct LoRA on an 8-chip mesh (TPU v5e-8 or 8 GPUs).

fsdp=4 x tensor=2: the frozen bf16 base (16 GB) is split over fsdp and tensor; the LoRA adapters
and their optimizer state are tiny. Needs the hub (or a local copy of the checkpoint folder).
"""

from ftjax.config import base_config


def get_config():
  c = base_config()
  c.model = "meta-llama/Meta-Llama-3-8B-Instruct"
  c.dtype = "bfloat16"
  c.param_dtype = "bfloat16"  # frozen base in bf16; adapters are created in fp32
  c.remat_policy = "dots_no_batch"
  c.seq_len = 2048
  c.batch_size = 32
  c.grad_accum_steps = 2
  c.num_steps = 1000
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 50
  c.lora.enabled = True
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.05
  c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
  c.mesh.data = 1
  c.mesh.fsdp = 4
  c.mesh.tensor = 2
  c.checkpoint.every_steps = 100
  c.eval_every_steps = 100
  return c
