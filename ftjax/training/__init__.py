"""Training: the loop (`loop.run`), the step, checkpoints, metrics. The command line is
`python -m ftjax.train`."""
