"""Export a trained or pretrained model: a Hugging Face folder, a PEFT adapter, or a GGUF file.

  python -m ftjax.export --model WORKDIR --out exported/ --format hf [--merge]
  python -m ftjax.export --model WORKDIR --out adapter/ --format peft
  python -m ftjax.export --model smollm2-135m-instruct --out gguf/ --format gguf --dtype float16

--model is a training workdir (its latest finished checkpoint), a registered name, a HF folder
or a .gguf file. A LoRA run exports as `peft`, or merged into its base (`--merge`) as hf/gguf.
User errors print one `error:` line and exit with status 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ftjax import cli
from ftjax.checkpoints.export import DEFAULT_MAX_SHARD_BYTES, export


def build_parser() -> argparse.ArgumentParser:
  parser = cli.Parser(prog="python -m ftjax.export", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True,
                      help="training workdir, registered name, HF folder or .gguf file")
  parser.add_argument("--out", required=True, help="output folder (written atomically)")
  parser.add_argument("--format", required=True, help="hf | peft | gguf")
  parser.add_argument("--merge", action="store_true",
                      help="fold LoRA adapters into the base (hf, gguf)")
  parser.add_argument("--dtype", default=None,
                      help="float32 | bfloat16 | float16 (default: the params' dtype)")
  parser.add_argument("--gguf_type", default=None,
                      help="f32 | f16 | bf16 | q8_0 (default: from --dtype)")
  parser.add_argument("--max_shard_bytes", type=int, default=DEFAULT_MAX_SHARD_BYTES,
                      help="hf: safetensors shard size limit; default: %(default)s")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as exit:  # a usage error (already printed) or --help
    return exit.code
  return cli.run_main(_export, args, exit=False)


def _export(args: argparse.Namespace) -> int:
  out = export(args.model, args.out, args.format, merge=args.merge, dtype=args.dtype,
               overwrite=args.overwrite, gguf_type=args.gguf_type,
               max_shard_bytes=args.max_shard_bytes)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
