"""Two processes on localhost (jax.distributed, CPU gloo collectives), 4 fake devices each, FSDP
over the 8 global devices: the same losses as one process with 8 devices; each process reads only
its own data shard; the checkpoint is written once and both processes resume from it."""
import os
import socket
import subprocess
import sys

import numpy as np

from ptm_jax import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(nproc: int, local_devices: int, workdir: str, steps: int, data_dir: str):
  env = dict(os.environ, PTM_JAX_DATA_DIR=data_dir, PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, str(p), str(nproc), str(port),
                             str(local_devices), workdir, str(steps)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for p in range(nproc)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return [out for out, _ in outs]


def _losses(workdir):
  return [r["loss"] for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r]


def test_two_processes_match_one_process(data_dir, tmp_path):
  # Prepare the corpus and tokenizer once, so the two workers only read them.
  single = str(tmp_path / "single")
  _launch(1, 8, single, 3, data_dir)
  multi = str(tmp_path / "multi")
  outs = _launch(2, 4, multi, 3, data_dir)
  assert "process 0/2 devices 8" in outs[0] and "process 1/2 devices 8" in outs[1]
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert len(_losses(multi)) == 3
  # One checkpoint directory, written once (process 0 writes metadata; both wrote their shards).
  assert sorted(d for d in os.listdir(os.path.join(multi, "checkpoints")) if d.isdigit()) == ["3"]
  # Both processes restore it and continue to step 4.
  outs = _launch(2, 4, multi, 4, data_dir)
  assert all("step 4" in o for o in outs)
  assert len(_losses(multi)) == 4
