"""A measured train step, to check the planner (`python -m ftjax.plan`) against.

  python -m ftjax.measure --model smollm2-135m-instruct --method lora --batch 4 \\
      --seq_len 256 --steps 1   # prints one JSON line: peak RSS, step seconds, ...

`ftjax.planning.measure.measure_here` in this process; `measure_many` runs several configurations,
each in a fresh process pinned to one core.
"""

import json


def main(argv=None):
  from ftjax import cli
  parser = cli.Parser(prog="python -m ftjax.measure", description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="smollm2-135m-instruct")
  parser.add_argument("--method", choices=("lora", "full"), default="lora")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--steps", type=int, default=1)
  parser.add_argument("--lora_rank", type=int, default=16)
  parser.add_argument("--remat", choices=("none", "full", "dots"), default="none")
  parser.add_argument("--lora_variant", choices=("lora", "dora"), default="lora")
  parser.add_argument("--base_quant", choices=("none", "int8", "nf4"), default="none")
  parser.add_argument("--quant_block_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-5)
  args = parser.parse_args(argv)
  from ftjax.planning.measure import measure_here
  result = cli.run_main(measure_here, args.model, args.method, args.batch, args.seq_len,
                        args.steps, args.lora_rank, args.remat, args.lora_variant,
                        args.base_quant, args.quant_block_size, args.learning_rate)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
