"""One process of a two-process export (see test_export.py): params sharded over 8 devices in
2 processes, exported by `ftjax.checkpoints.export` as a HF folder (process 0 writes)."""

import json
import os
import sys

process_id, num_processes, port, model, out = sys.argv[1:6]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(num_processes),
                           process_id=int(process_id))

import ftjax  # noqa: E402
from ftjax.checkpoints import export  # noqa: E402
from ftjax.models import logical_param_specs  # noqa: E402
from ftjax.sharding import logical_to_shardings, make_mesh  # noqa: E402

writes = []
module = sys.modules["ftjax.checkpoints.export"]
original = module._write_hf
module._write_hf = lambda *args, **kwargs: (writes.append(1), original(*args, **kwargs))

host = ftjax.load(model, tokenizer=False, device_put=False)
mesh = make_mesh({"fsdp": 8})
shardings = logical_to_shardings(logical_param_specs(host.config), host.params, mesh)
params = jax.tree.map(
    lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
    host.params, shardings)
assert not all(x.is_fully_addressable for x in jax.tree.leaves(params))
export(host._replace(params=params), out, "hf", base=model, max_shard_bytes=100_000)
print("RESULT " + json.dumps({"process_index": jax.process_index(), "wrote": len(writes),
                              "device_count": jax.device_count()}), flush=True)
