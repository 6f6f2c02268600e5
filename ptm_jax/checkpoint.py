"""Orbax CheckpointManager: train state + grain iterator state + config; params-only restore."""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from absl import logging


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be read; the message names the directory and the fix."""


def make_manager(directory: str, *, max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  """Async, keep-N, atomic checkpoints under `directory` (written once, by every process together)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None,
         config: dict | None, *, force: bool = False) -> bool:
  """Saves state (+ data-iterator state + config) at `step`; returns whether it was written."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  if config is not None:
    items["config"] = ocp.args.JsonSave(config)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any | None,
            step: int | None = None) -> tuple[Any, int]:
  """Restores the latest (or given) step into `abstract_state`'s shapes/shardings and `data_iter`."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoint in {manager.directory}")
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None and "data" in _items_at(manager, step):
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax raises many types; the user needs the path and the way out.
    raise CheckpointError(
        f"checkpoint step {step} in {manager.directory} cannot be restored ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200]}); delete that step directory or start a new --workdir") from e
  return restored["state"], step


def _items_at(manager: ocp.CheckpointManager, step: int) -> list[str]:
  path = os.path.join(str(manager.directory), str(step))
  return os.listdir(path) if os.path.isdir(path) else []


def has_checkpoint(workdir: str) -> bool:
  """Whether a run in `workdir` has saved a step (it will resume instead of initialising)."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


def latest_checkpoint_dir(path: str) -> tuple[str, int]:
  """Accepts a workdir, its checkpoints/ dir, or one step dir; returns (manager dir, step)."""
  path = os.path.abspath(path)
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate):
      steps = [int(d) for d in os.listdir(candidate) if d.isdigit()]
      if steps:
        return candidate, max(steps)
  parent, leaf = os.path.split(path)
  if leaf.isdigit() and os.path.isdir(path):
    return parent, int(leaf)
  raise CheckpointError(
      f"no ptm_jax checkpoint under {path}: pass a run's --workdir, its checkpoints/ directory, or "
      "a converted checkpoint (python -m ptm_jax.interop convert)")


def restore_params(path: str) -> Any:
  """Params-only restore (for fine-tuning from a pretraining run): host arrays, any model layout."""
  directory, step = latest_checkpoint_dir(path)
  state_dir = epath.Path(directory) / str(step) / "state"
  # The item's handler, not a Checkpointer: a Checkpointer looks for the step's metadata file in
  # the item directory (the manager keeps it one level up) and warns on every fine-tune.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    meta = handler.metadata(state_dir)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree["params"])
    single = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=single), abstract)
    out = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True))
  except Exception as e:
    raise CheckpointError(
        f"cannot read params from checkpoint {directory}/{step} ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); is it a complete ptm_jax checkpoint?"
    ) from e
  finally:
    handler.close()
  logging.info("restored params from %s step %d", directory, step)
  return out["params"]
