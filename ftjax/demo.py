"""The main job on the embedded default model (`make demo`).

Today: load SmolLM2-135M-Instruct through ftjax and answer a few customer-service questions on
CPU, greedy. When the comparison experiment lands this becomes base / RAG / fine-tuned side by side.
"""

import time

import ftjax
from ftjax.generate import SamplingConfig, generate

PROMPTS = [
    "My ordered product doesn't work, what should I do?",
    "How do I reset my password?",
    "Can I return a gift without the receipt?",
    "What is the capital of France?",
]


def main():
  start = time.perf_counter()
  model = ftjax.load("smollm2-135m-instruct")
  loaded = time.perf_counter()
  completions = generate(model, PROMPTS, SamplingConfig(max_new_tokens=96))
  done = time.perf_counter()
  for prompt, completion in zip(PROMPTS, completions):
    print(f"\n### {prompt}\n{completion.text.strip()}")
  new_tokens = sum(len(c.token_ids) for c in completions)
  print(f"\nmodel: smollm2-135m-instruct ({model.config.num_layers} layers, fp32, CPU); "
        f"load {loaded - start:.1f}s; {new_tokens} new tokens in {done - loaded:.1f}s "
        f"(including compilation)")


if __name__ == "__main__":
  main()
