"""QLoRA on SmolLM2-135M-Instruct: the smollm2_lora recipe on an nf4 base (blocks of 64).

Set `lora.variant = "dora"` for QDoRA, `lora.base_quant = "int8"` for an 8-bit base."""

import importlib.util
from pathlib import Path


def get_config():
  spec = importlib.util.spec_from_file_location(
      "smollm2_lora", Path(__file__).resolve().parent / "smollm2_lora.py")
  lora = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(lora)
  c = lora.get_config()
  c.lora.base_quant = "nf4"
  c.lora.quant_block_size = 64
  return c
