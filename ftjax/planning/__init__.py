"""Planning: the cost and memory model of a run (`estimate`), the devices it prices
(`hardware`), and measured runs to check it against (`measure`). Commands: `python -m
ftjax.plan`, `python -m ftjax.measure`."""

from ftjax.planning.estimate import (PlanInputs, break_even, inference_flops, lora_param_count,
                                     matmul_params, memory, param_count, plan)
from ftjax.planning.hardware import HARDWARE_NAMES, Hardware, get_hardware

__all__ = ["HARDWARE_NAMES", "Hardware", "PlanInputs", "break_even", "get_hardware",
           "inference_flops", "lora_param_count", "matmul_params", "memory", "param_count", "plan"]
