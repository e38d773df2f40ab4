"""Training internals: the step, checkpoints, metrics. The entry point is `ftjax.train`."""
