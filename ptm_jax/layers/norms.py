"""LayerNorm and RMSNorm with float32 statistics whatever the compute dtype."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class LayerNorm(nn.Module):
  """LayerNorm over the last axis; mean/variance in float32, output in `dtype`."""

  epsilon: float = 1e-5
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray) -> jnp.ndarray:
    d = x_BLD.shape[-1]
    x32 = x_BLD.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (d,), self.param_dtype)
    y = y * _lift(scale, y.ndim)
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                        (d,), self.param_dtype)
      y = y + _lift(bias, y.ndim)
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm (Llama/T5): x / rms(x) * scale, statistics in float32, no mean subtraction."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray) -> jnp.ndarray:
    d = x_BLD.shape[-1]
    x32 = x_BLD.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (d,), self.param_dtype)
    return (y * _lift(scale, y.ndim)).astype(self.dtype)


def make_norm(kind: str, *, epsilon: float, dtype: Any, param_dtype: Any,
              name: str | None = None) -> nn.Module:
  """Builds 'layernorm' or 'rmsnorm' by name."""
  if kind == 'layernorm':
    return LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == 'rmsnorm':
    return RMSNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"unknown norm {kind!r}; known: 'layernorm', 'rmsnorm'")


def _lift(v_D: jnp.ndarray, ndim: int) -> jnp.ndarray:
  # Explicit reshape: the project runs with jax_numpy_rank_promotion='raise'.
  return v_D.astype(jnp.float32).reshape((1,) * (ndim - 1) + (-1,))
