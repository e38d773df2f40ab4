"""Supervised fine-tuning, full or LoRA, on any device mesh, resumable from its working directory.

  python -m ftjax.train --config configs/smollm2_lora.py --workdir runs/lora [--config.key=value]

`ftjax.cli`'s config parsing around `ftjax.training.loop.run`, which composes `ftjax.training`
top to bottom (config -> mesh -> audit gate -> model -> data -> state -> jit step -> loop) and is
the same thing as a function. The workdir's model.json says what was trained, so
`ftjax.load(workdir)` returns the trained model.
"""


def main(argv=None):
  """The command line. Every user error (config, data, checkpoint, divergence) ends it with one
  `error: ...` line on stderr and exit status 2. Callable more than once in a process."""
  from ftjax import cli
  from ftjax.config import base_config
  from ftjax.training.loop import run
  config, workdir = cli.parse_config_flags(
      argv, doc=__doc__, config_help="recipe file (configs/*.py)",
      workdir_help="run directory (checkpoints, metrics, resolved config)",
      known_keys=cli.config_keys(base_config()))
  cli.run_main(run, config, workdir)


if __name__ == "__main__":
  main()
