"""LayerNorm and RMSNorm with float32 statistics whatever the compute dtype.

Both have a hand-written backward pass that keeps only what it needs: the input (in its own
dtype, usually bf16) and each row's float32 statistics (mean and 1/std; 1/rms), recomputing the
normalised row from them. Autodiff of the same forward keeps three float32 `[..., D]` tensors per
norm (the centred input, its square's factor and the normalised row: 12 bytes per element where
the input is 2), which every training step writes in the forward and reads back in the backward:
GPT-2 small has 25 norms over 16 x 1024 x 768 elements, ~3 GB each way per step. PyTorch's fused
layer_norm keeps the same (input, mean, rstd). The forward runs the same operations as before
(equal bit for bit op by op; inside a jitted step XLA may fuse them differently), and gradients
equal autodiff's to float32 rounding (tests/test_layers.py).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
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
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (d,), self.param_dtype)
    bias = (self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                       (d,), self.param_dtype) if self.use_bias else None)
    return layer_norm(x_BLD, scale, bias, self.epsilon, jnp.dtype(self.dtype))


class RMSNorm(nn.Module):
  """RMSNorm (Llama/T5): x / rms(x) * scale, statistics in float32, no mean subtraction."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray) -> jnp.ndarray:
    d = x_BLD.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (d,), self.param_dtype)
    return layer_norm(x_BLD, scale, None, self.epsilon, jnp.dtype(self.dtype), centre=False)


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


def layer_norm(x_BLD, scale_D, bias_D, epsilon: float, dtype, centre: bool = True):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, statistics in float32,
  output in `dtype`; `centre=False` is RMSNorm (no mean, no bias). `bias_D` may be None."""
  return _norm(x_BLD, scale_D, bias_D, float(epsilon), jnp.dtype(dtype), centre)


def _stats(x32, epsilon: float, centre: bool):
  """(mean, or None without centring; 1 / std) per row, `[..., 1]` float32."""
  mean = jnp.mean(x32, axis=-1, keepdims=True) if centre else None
  var = jnp.mean(jnp.square(x32 - mean if centre else x32), axis=-1, keepdims=True)
  return mean, jnp.reciprocal(jnp.sqrt(var + epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _norm(x_BLD, scale_D, bias_D, epsilon, dtype, centre):
  return _norm_fwd(x_BLD, scale_D, bias_D, epsilon, dtype, centre)[0]


def _norm_fwd(x_BLD, scale_D, bias_D, epsilon, dtype, centre):
  x32 = x_BLD.astype(jnp.float32)
  mean, rstd = _stats(x32, epsilon, centre)
  y = ((x32 - mean) if centre else x32) * rstd
  y = y * _lift(scale_D, y.ndim)
  if bias_D is not None:
    y = y + _lift(bias_D, y.ndim)
  return y.astype(dtype), (x_BLD, mean, rstd, scale_D, bias_D)


def _norm_bwd(epsilon, dtype, centre, residuals, g_BLD):
  del epsilon, dtype
  x_BLD, mean, rstd, scale_D, bias_D = residuals
  rows = tuple(range(g_BLD.ndim - 1))
  g32 = g_BLD.astype(jnp.float32)
  x32 = x_BLD.astype(jnp.float32)
  xhat = ((x32 - mean) if centre else x32) * rstd
  g_xhat = g32 * _lift(scale_D, g32.ndim)
  # d xhat / dx projects out the directions the statistics remove: the mean (LayerNorm only)
  # and xhat itself (the scale).
  proj = g_xhat - xhat * jnp.mean(g_xhat * xhat, axis=-1, keepdims=True)
  if centre:
    proj = proj - jnp.mean(g_xhat, axis=-1, keepdims=True)
  g_x = (rstd * proj).astype(x_BLD.dtype)
  g_scale = jnp.sum(g32 * xhat, axis=rows).astype(scale_D.dtype)
  g_bias = None if bias_D is None else jnp.sum(g32, axis=rows).astype(bias_D.dtype)
  return g_x, g_scale, g_bias


_norm.defvjp(_norm_fwd, _norm_bwd)
