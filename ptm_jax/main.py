"""ptm_jax command line: `python -m ptm_jax.main --config experiments/bert.py:runlocal --workdir DIR`.

Any config field can be overridden with `--config.<a>.<b>=value`; an unknown field or a bad value is
a one-line error naming the nearest valid fields.
"""
from __future__ import annotations

import difflib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ptm_jax import configs

config_flags.DEFINE_config_file("config", None, "Experiment file, e.g. experiments/bert.py:runlocal.",
                                 lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (metrics, checkpoints, report).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
FLAGS = flags.FLAGS


def _flatten(cfg, prefix="") -> list[str]:
  out = []
  for k, v in cfg.items():
    name = f"{prefix}{k}"
    out.append(name)
    if hasattr(v, "items"):
      out.extend(_flatten(v, name + "."))
  return out


def _override_error(argv: list[str], error: Exception) -> str:
  """Finds the override that failed and names the nearest valid fields, in one line."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv:
    spec = argv[argv.index("--config") + 1]
  try:
    valid = _flatten(configs.load_experiment(spec)) if spec else []
  except Exception as e:  # noqa: BLE001 - the experiment file itself is broken: say that.
    return f"error: cannot load experiment {spec!r}: {type(e).__name__}: {e}"
  for arg in argv:
    if arg.startswith("--config."):
      field = arg[len("--config."):].split("=", 1)[0]
      if field not in valid:
        near = difflib.get_close_matches(field, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        return f"error: unknown config field {field!r}{hint}"
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return f"error: {first}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with config errors turned into one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    print(_override_error(argv[1:], e), file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("both --config and --workdir are required")
  if not FLAGS["verbosity"].present:
    # Orbax/grain/tfds log every save and read at INFO; the progress lines and report are the output.
    logging.set_verbosity(logging.WARNING)
  if FLAGS.distributed:
    import jax
    # TPU pods, SLURM and Open MPI are auto-detected; elsewhere the three JAX_* variables say it.
    env = os.environ
    jax.distributed.initialize(
        coordinator_address=env.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
        process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
  from ptm_jax import run  # imported late: flags first, then heavy modules
  from ptm_jax.checkpoint import CheckpointError
  try:
    run.run(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError, CheckpointError) as e:
    if os.environ.get("PTM_JAX_TRACEBACK"):
      raise
    logging.info("failed", exc_info=True)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
