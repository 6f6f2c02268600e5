"""Token embeddings whose table is also read by tied output heads (`attend`)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Embed(nn.Module):
  """Lookup table `[num_embeddings, features]`; `attend` gives float32 logits against it."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02
  axes: tuple[str | None, str | None] = ('vocab', 'embed')

  def setup(self):
    self.embedding = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), self.axes),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids_BL: jnp.ndarray) -> jnp.ndarray:
    """Embeds integer ids; returns `[..., features]` in the compute dtype."""
    # 'clip' instead of jnp.take's NaN fill: a NaN in a masked key would still poison probs @ V.
    return jnp.take(self.embedding, ids_BL, axis=0, mode='clip').astype(self.dtype)

  def attend(self, x_BLD: jnp.ndarray) -> jnp.ndarray:
    """Tied output projection: `[..., D] -> [..., V]` logits, accumulated in float32."""
    return jnp.einsum('...d,vd->...v', x_BLD.astype(self.dtype),
                      self.embedding.astype(self.dtype), preferred_element_type=jnp.float32)
