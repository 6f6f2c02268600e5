"""One process of the localhost multi-host test (run by tests/test_multihost.py, not collected).

argv: process_id num_processes port local_devices workdir steps
"""
import os
import sys

pid, nproc, port, local_devices, workdir, steps = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if int(nproc) > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=int(nproc),
                             process_id=int(pid))

from ptm_jax import train  # noqa: E402
from ptm_jax.configs import load_experiment as _load_experiment  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cfg = _load_experiment(os.path.join(REPO, "experiments/gpt.py:runlocal"))
cfg.mesh.preset = "fsdp"
cfg.data.num_shards = 2          # the same data order for 1 and 2 processes
cfg.data.num_threads = 1
cfg.train.update(steps=int(steps), batch_size=8, log_every=1, eval_every=0, checkpoint_every=3)
result = train.train(cfg, workdir)
print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} "
      f"step {result.step} loss {result.train_loss:.6f}")
