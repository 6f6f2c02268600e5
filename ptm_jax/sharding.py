"""Axis-name vocabulary, mesh construction and logical rules -> NamedSharding.

Every preset shares ONE rule table; presets only change the mesh shape. This is the T5X idea: data
parallelism, FSDP and tensor parallelism are mesh shapes, not code paths. When a mesh axis is
already taken by an earlier dimension of the same array (activations: `batch` holds `fsdp`), flax
skips that rule, so `embed` is sharded for parameters and replicated for activations.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# `expert` (MoE expert parallelism) sits next to `tensor`, the innermost (fastest-linked) axis.
MESH_AXES = ("data", "fsdp", "expert", "tensor")
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "expert", "layers")

# Logical name -> mesh axis. ~10 rules, shared by every preset. Flax applies them in this order and
# skips a rule whose mesh axes an array already uses: the experts of an MoE layer's `[E, B, C, D]`
# activations take `expert` first, so their `batch` falls back to data x fsdp (the all-to-all);
# everywhere else `batch` spans all three data-like axes.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("expert", "expert"),
    ("batch", ("data", "fsdp", "expert")),
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)

# Preset -> which axis absorbs the devices (-1) and fixed sizes for the others.
# `expert`: every device holds num_experts / devices experts of each MoE layer and its own rows of
# the batch (dense weights replicated, as `dp`); tokens travel to their experts' devices.
PRESETS = {
    "dp": {"data": -1, "fsdp": 1, "expert": 1, "tensor": 1},
    "fsdp": {"data": 1, "fsdp": -1, "expert": 1, "tensor": 1},
    "fsdp_tp": {"data": 1, "fsdp": -1, "expert": 1, "tensor": 2},
    "expert": {"data": 1, "fsdp": 1, "expert": -1, "tensor": 1},
}


def mesh_shape(preset: str, num_devices: int, tensor_parallel: int = 0) -> dict[str, int]:
  """Resolves a preset name into concrete mesh axis sizes for `num_devices`."""
  if preset not in PRESETS:
    raise ValueError(f"unknown mesh preset {preset!r}; choose one of {sorted(PRESETS)}")
  shape = dict(PRESETS[preset])
  if tensor_parallel:
    shape["tensor"] = tensor_parallel
  fixed = math.prod(v for v in shape.values() if v != -1)
  if num_devices % fixed:
    raise ValueError(
        f"mesh preset {preset!r} needs a device count divisible by {fixed}, got {num_devices}; "
        "set --config.mesh.tensor_parallel or use preset 'dp'")
  for k, v in shape.items():
    if v == -1:
      shape[k] = num_devices // fixed
  # When the device count is smaller than the fixed tensor size (e.g. 1 CPU), fold it away.
  if math.prod(shape.values()) != num_devices:
    raise ValueError(f"mesh {shape} does not use exactly {num_devices} devices")
  return shape


def make_mesh(preset: str = "dp", devices: Sequence[jax.Device] | None = None,
              tensor_parallel: int = 0) -> Mesh:
  """Builds the (data, fsdp, expert, tensor) mesh for a preset over all (global) devices."""
  devices = list(devices if devices is not None else jax.devices())
  tp = tensor_parallel or PRESETS.get(preset, {}).get("tensor", 1)
  if len(devices) < tp or len(devices) % tp:
    tp = 1  # e.g. `fsdp_tp` on a single device: tensor axis of size 1, same code.
  shape = mesh_shape(preset, len(devices), tensor_parallel=tp)
  dims = tuple(shape[a] for a in MESH_AXES)
  try:
    dev_array = jax.experimental.mesh_utils.create_device_mesh(dims, devices=devices)
  except Exception:  # CPU / irregular topologies: plain reshape is fine.
    dev_array = np.asarray(devices).reshape(dims)
  return Mesh(dev_array, MESH_AXES)


def logical_to_sharding(logical_tree: Any, mesh: Mesh, rules=LOGICAL_RULES,
                        shapes: Any = None) -> Any:
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`.

  With `shapes` (a matching pytree of arrays / ShapeDtypeStructs), a dimension that the mesh axes
  do not divide (a 50257-token vocabulary over tensor=2) is replicated instead of failing.
  """
  specs = nn.logical_to_mesh(logical_tree, rules)
  is_spec = lambda x: isinstance(x, P)
  if shapes is None:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=is_spec)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, _divisible(s, x.shape, mesh)), specs, shapes,
                      is_leaf=is_spec)


def _divisible(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if size == 1 or dim % size == 0 else None)
  return P(*out)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a `[batch, length]` input array: rows split over data×fsdp×expert."""
  return NamedSharding(mesh, P(("data", "fsdp", "expert")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch dimension is split."""
  return mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
