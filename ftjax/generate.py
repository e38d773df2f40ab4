"""Text generation from the command line (the API is `ftjax.generation`).

Greedy decoding of 64 new tokens by default (the `SamplingConfig` defaults); `--sample` samples
with `--temperature/--top_k/--top_p`.

  python -m ftjax.generate --model smollm2-135m-instruct --prompt "Hello"
  python -m ftjax.generate --prompt "Write a poem" --sample --temperature 0.7 --top_p 0.9
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ftjax.generation import SamplingConfig, generate


def build_parser() -> argparse.ArgumentParser:
  defaults = SamplingConfig()  # the one place generation defaults live
  from ftjax import cli
  parser = cli.Parser(prog="python -m ftjax.generate", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="smollm2-135m-instruct",
                      help="registered name, local HF folder / .gguf file, or hub id")
  parser.add_argument("--prompt", action="append", required=True,
                      help="prompt text; repeat for a batch")
  parser.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens,
                      help="default: %(default)s")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--greedy", dest="greedy", action="store_true", default=defaults.greedy,
                    help="argmax decoding" + (" (the default)" if defaults.greedy else ""))
  mode.add_argument("--sample", dest="greedy", action="store_false",
                    help="sample" + ("" if defaults.greedy else " (the default)"))
  parser.add_argument("--temperature", type=float, default=defaults.temperature,
                      help="when sampling; default: %(default)s")
  parser.add_argument("--top_k", type=int, default=defaults.top_k,
                      help="when sampling; default: %(default)s (off)")
  parser.add_argument("--top_p", type=float, default=defaults.top_p,
                      help="when sampling; default: %(default)s (off)")
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument("--batch_size", type=int, default=defaults.batch_size,
                      help="prompts per batch, sorted by length; default: %(default)s (all)")
  parser.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
  parser.add_argument("--system", default=None, help="system prompt")
  parser.add_argument("--no_chat", action="store_true", help="continue raw text, no template")
  parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                      help="compute dtype (default: float32, or a training run's own)")
  parser.add_argument("--allow_pickle", action="store_true",
                      help="allow loading .bin/.pt pickle checkpoints (runs their code)")
  return parser


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
  return SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=args.seed, stop_strings=tuple(args.stop),
                        batch_size=args.batch_size)


def main(argv: Sequence[str] | None = None) -> int:
  from ftjax import cli
  args = build_parser().parse_args(argv)
  return cli.run_main(_generate, args, errors=(ValueError,), exit=False)


def _generate(args: argparse.Namespace) -> int:
  from ftjax.checkpoints import load
  model = load(args.model, dtype=args.dtype, allow_pickle=args.allow_pickle)
  completions = generate(model, args.prompt, sampling_from_args(args), chat=not args.no_chat,
                         system_prompt=args.system)
  for prompt, completion in zip(args.prompt, completions):
    if len(args.prompt) > 1:
      print(f"### {prompt}")
    print(completion.text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
