"""One process of a two-process CPU training run (see test_multihost.py)."""

import json
import os
import sys

process_id, num_processes, port, workdir, model, data = sys.argv[1:7]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(num_processes),
                           process_id=int(process_id))

from ftjax.training import loop as train_loop  # noqa: E402
from ftjax.config import base_config  # noqa: E402

config = base_config()
config.model = model
config.data.train = data
config.seq_len = 128
config.batch_size = 8
config.num_steps = 3
config.eval_every_steps = 3
config.checkpoint.every_steps = 3
config.optimizer.learning_rate = 1e-3
config.optimizer.warmup_steps = 1
config.mesh.data = 2
config.mesh.fsdp = 2
config.mesh.tensor = 2
result = train_loop.run(config, workdir)
print("RESULT " + json.dumps({
    "process_index": jax.process_index(), "device_count": jax.device_count(),
    "losses": [h["loss"] for h in result.history],
    "eval_loss": result.eval_history[-1]["eval_loss"]}), flush=True)
