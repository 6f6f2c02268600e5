"""`Pretrained` (what every importer returns) and the helpers shared by the importers."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax import models


@dataclasses.dataclass
class Pretrained:
  """An imported model: `model.apply({'params': params}, ...)` works as for any ptm_jax model.

  `info` holds what the weights alone do not say: `source`, `architecture`, `bos_id`, `eos_ids`,
  `add_bos`, `chat_template`, and `initialised` (our modules the file had no tensors for).
  """

  model: Any
  params: dict
  config: Any
  tokenizer: Any  # ptm_jax.data.tokenizers.Tokenizer (with `.backend`, a `tokenizers.Tokenizer`) or None
  family: str
  info: dict = dataclasses.field(default_factory=dict)


def make_config(family: str, fields: dict) -> Any:
  """Our family's `Config` from a dict of fields (dtype names allowed); unknown fields are an error."""
  module = models.get_family(family)
  known = {f.name for f in dataclasses.fields(module.Config)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'unknown {family} Config field(s) {", ".join(unknown)}')
  return module.Config(**fields)


def config_to_dict(config: Any) -> dict:
  """A Config as JSON-able fields (dtypes by name)."""
  out = {}
  for f in dataclasses.fields(config):
    v = getattr(config, f.name)
    if f.name in ('dtype', 'param_dtype'):
      v = np.dtype(v).name if not isinstance(v, str) else v
    out[f.name] = list(v) if isinstance(v, tuple) else v
  return out


def params_template(model: Any) -> dict:
  """Shapes/dtypes of the model's params (nothing is computed)."""
  def init():
    tokens = jnp.zeros((1, 4), jnp.int32)
    return model.init(jax.random.key(0), tokens, segment_ids=jnp.ones_like(tokens),
                      positions=jnp.broadcast_to(jnp.arange(4, dtype=jnp.int32), (1, 4)))['params']
  return flax.core.meta.unbox(jax.eval_shape(init))


def fresh_init(template: dict, initializer_range: float, seed: int = 0) -> dict:
  """Initialises a params subtree as our modules do: kernels/embeddings ~ N(0, range), scales 1, biases 0."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key if hasattr(path[-1], 'key') else str(path[-1])
    if name in ('kernel', 'embedding'):
      return (initializer_range * rng.standard_normal(x.shape)).astype(x.dtype)
    if name == 'scale':
      return np.ones(x.shape, x.dtype)
    return np.zeros(x.shape, x.dtype)
  return jax.tree_util.tree_map_with_path(leaf, template)


def check_tree(params: dict, template: dict, what: str) -> None:
  """Raises if `params` does not have exactly the template's names and shapes."""
  flat_p = flax.traverse_util.flatten_dict(params, sep='/')
  flat_t = flax.traverse_util.flatten_dict(template, sep='/')
  diff = sorted(set(flat_p) ^ set(flat_t))
  if diff:
    raise ValueError(f'{what}: parameter names differ from the model: {diff[:8]}')
  bad = [f'{k} {tuple(np.shape(flat_p[k]))} != {tuple(flat_t[k].shape)}' for k in flat_t
         if tuple(np.shape(flat_p[k])) != tuple(flat_t[k].shape)]
  if bad:
    raise ValueError(f'{what}: shape mismatch: {", ".join(bad[:8])}')


def short_list(names, limit: int = 8) -> str:
  """`a, b, c (+N more)` for one-line error messages."""
  names = sorted(names)
  more = f' (+{len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more
