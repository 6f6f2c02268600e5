"""End-to-end runs of the generic loop on real text: loss falls, exact resume, SIGTERM, bad input."""
import json
import logging
import re
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ptm_jax import configs
from ptm_jax import metrics as metrics_lib
from ptm_jax import checkpoint as ckpt
from ptm_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(spec, **overrides):
  return configs.load_experiment(os.path.join(REPO, spec), overrides)


def _cli(args, data_dir, **kw):
  env = dict(os.environ, PTM_JAX_DATA_DIR=data_dir,
             XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "ptm_jax.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


SMALL = {"mesh.num_devices": 1, "train.steps": 100, "train.batch_size": 16, "train.log_every": 10, "train.eval_every": 100,
         "train.eval_batches": 2, "train.checkpoint_every": 100}


@pytest.mark.runtime_bound  # 100 steps; 2026-11-25 at -O0: BERT 58 -> 91 s, GPT 73 -> 132 s
@pytest.mark.parametrize("spec", ["experiments/bert.py:runlocal", "experiments/gpt.py:runlocal"])
def test_runlocal_loss_falls_on_real_text(spec, data_dir, tmp_path):
  cfg = _load(spec, **SMALL)
  result = train.train(cfg, str(tmp_path))
  records = metrics_lib.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 10
  # "Clearly": at least 1.5 nats below the first logged mean (ln 8000 ≈ 9.0 at init).
  assert losses[-1] < losses[0] - 1.5, losses
  for key in ("step", "loss", "learning_rate", "tokens_per_s"):
    assert key in records[0]
  assert any("eval/loss" in r for r in records)
  assert result.tokens_seen > 100 * 16 * 64
  assert os.path.exists(os.path.join(tmp_path, "config.json"))
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", "100"))
  assert any(f.startswith("events") for f in os.listdir(os.path.join(tmp_path, "tensorboard")))
  # Params-only restore (what --config.init_from reads) from the run directory.
  params = ckpt.restore_params(str(tmp_path))
  assert train.count_params(params) == result.num_params


@pytest.mark.runtime_bound  # 2026-11-25: 42 s fully optimised, 74 s at -O0
def test_exact_resume_in_a_new_process(data_dir, tmp_path):
  common = ["--config", "experiments/gpt.py:runlocal", "--config.train.steps=8",
            "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.train.checkpoint_every=4", "--config.train.batch_size=8"]
  one_go, split = str(tmp_path / "one_go"), str(tmp_path / "split")
  for args in ([*common, "--workdir", one_go],
               [*common, "--config.train.stop_at=4", "--workdir", split],
               [*common, "--workdir", split]):
    proc = _cli(args, data_dir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  a = [r["loss"] for r in metrics_lib.read_jsonl(os.path.join(one_go, "metrics.jsonl"))]
  b = [r["loss"] for r in metrics_lib.read_jsonl(os.path.join(split, "metrics.jsonl"))]
  assert len(a) == len(b) == 8
  np.testing.assert_array_equal(a, b)


def test_sigterm_saves_and_exits_zero(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _cli(["--config", "experiments/bert.py:runlocal", "--workdir", workdir,
               "--config.train.steps=100000", "--config.train.log_every=1",
               "--config.train.eval_every=0", "--config.train.checkpoint_every=100000",
               "--config.train.batch_size=8"], data_dir)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_path) and len(metrics_lib.read_jsonl(metrics_path)) >= 2:
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert steps and max(steps) >= 2


def test_unknown_override_is_one_line_with_suggestion(tmp_path):
  proc = _cli(["--config", "experiments/bert.py:runlocal", "--workdir", str(tmp_path),
               "--config.train.stpes=3"], str(tmp_path))
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert "train.stpes" in lines[0] and "train.steps" in lines[0]


def test_bad_value_is_one_line(tmp_path):
  proc = _cli(["--config", "experiments/bert.py:runlocal", "--workdir", str(tmp_path),
               "--config.train.steps=many"], str(tmp_path))
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert len([l for l in err.strip().splitlines() if l.strip()]) == 1, err


def test_empty_corpus_names_the_source(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  proc = _cli(["--config", "experiments/bert.py:runlocal", "--workdir", str(tmp_path / "w"),
               f"--config.data.source=text:{empty}"], str(tmp_path / "data"))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith("error:") and "empty.txt" in last, err[-2000:]


def test_nonfinite_loss_stops_with_step_and_checkpoint(data_dir, tmp_path):
  cfg = _load("experiments/gpt.py:runlocal", **{
      "train.steps": 30, "train.batch_size": 8, "train.log_every": 1, "train.eval_every": 0,
      "train.checkpoint_every": 1, "mesh.num_devices": 1, "optim.learning_rate": 1e30,
      "optim.warmup_steps": 4, "optim.clip_norm": 0.0})
  # Step 1 runs at LR 0 (warmup), so a finite checkpoint exists before the blow-up.
  with pytest.raises(train.NonFiniteLossError,
                     match=r"at step (\d+); the last good checkpoint is step (\d+)") as err:
    train.train(cfg, str(tmp_path))
  bad, good = map(int, re.search(r"at step (\d+).*is step (\d+)", str(err.value)).groups())
  assert good == bad - 1
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", str(good)))


def test_padded_vocab_run_loads_with_the_tokenizers_vocab_size(data_dir, tmp_path):
  """A run with `vocab_pad_multiple` records the tokenizer's size, not the padded table's rows."""
  from ptm_jax import interop  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  cfg = _load("experiments/gpt.py:runlocal", **{**SMALL, "train.steps": 2, "train.eval_every": 0,
                                                 "train.checkpoint_every": 2,
                                                 "model.vocab_pad_multiple": 128})
  train.train(cfg, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert json.load(f)["model"]["vocab_size"] == 8000  # 0 in the experiment: resolved
  pre = interop.load_pretrained(str(tmp_path))
  assert pre.config.vocab_size == 8000 and pre.config.padded_vocab_size == 8064
  assert pre.params["token_embed"]["embedding"].shape[0] == 8064
  tokens = jnp.full((1, 8), 5, jnp.int32)
  out = pre.model.apply({"params": pre.params}, tokens, segment_ids=jnp.ones_like(tokens),
                        positions=jnp.arange(8, dtype=jnp.int32)[None])
  assert out["logits"].shape == (1, 8, 8000)  # the padded rows are never scored or sampled


def test_params_restore_is_quiet_and_names_a_corrupt_checkpoint(tmp_path, caplog):
  state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
           "opt": {"m": np.ones(3, np.float32)}}
  manager = ckpt.make_manager(str(tmp_path / "checkpoints"), max_to_keep=1, async_save=False)
  ckpt.save(manager, 3, state, None, {"note": "test"}, force=True)
  manager.close()
  with caplog.at_level(logging.WARNING):
    params = ckpt.restore_params(str(tmp_path))
  np.testing.assert_array_equal(params["w"], state["params"]["w"])
  assert set(params) == {"w"}  # params only: the optimizer state is not read
  # Orbax's Checkpointer warned on every fine-tune that the step metadata is missing from the
  # item directory; reading through the item's handler does not.
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  # A checkpoint whose array data is gone: one line naming the step and what to check.
  data = tmp_path / "checkpoints" / "3" / "state" / "d"
  for f in data.iterdir():
    f.unlink()
  with pytest.raises(ckpt.CheckpointError) as err:
    ckpt.restore_params(str(tmp_path))
  message = str(err.value)
  assert "\n" not in message and "checkpoints/3" in message
  assert "is it a complete ptm_jax checkpoint?" in message
