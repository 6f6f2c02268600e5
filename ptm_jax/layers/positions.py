"""Position information: learned absolute tables, sinusoids, and rotary embeddings (RoPE)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class LearnedPositions(nn.Module):
  """Learned absolute positions (BERT/GPT-2); `offset` shifts ids (RoBERTa reserves 2 rows)."""

  max_positions: int
  features: int
  offset: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02

  @nn.compact
  def __call__(self, positions_BL: jnp.ndarray) -> jnp.ndarray:
    # Rows are not sharded (axis None): positions are few and every shard reads all of them.
    table_PD = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), (None, 'embed')),
        (self.max_positions, self.features), self.param_dtype)
    return jnp.take(table_PD, positions_BL + self.offset, axis=0, mode='clip').astype(self.dtype)


def sinusoidal(positions_BL: jnp.ndarray, features: int, *,
               max_timescale: float = 10_000.0) -> jnp.ndarray:
  """Fixed sinusoids of Vaswani et al. 2017: `[B, L, D]` float32, sin half then cos half."""
  half = features // 2
  inv_freq_K = 1.0 / (max_timescale ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles_BLK = positions_BL.astype(jnp.float32)[..., None] * inv_freq_K[None, None, :]
  out_BLD = jnp.concatenate([jnp.sin(angles_BLK), jnp.cos(angles_BLK)], axis=-1)
  if features % 2:
    out_BLD = jnp.pad(out_BLD, ((0, 0), (0, 0), (0, 1)))
  return out_BLD


def rotary_cos_sin(positions_BL: jnp.ndarray, head_dim: int, *,
                   theta: float = 10_000.0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """RoPE tables `[B, L, H]` (float32) in the HF/Llama rotate-half layout: cat(freqs, freqs)."""
  inv_freq_K = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs_BLK = positions_BL.astype(jnp.float32)[..., None] * inv_freq_K[None, None, :]
  emb_BLH = jnp.concatenate([freqs_BLK, freqs_BLK], axis=-1)
  return jnp.cos(emb_BLH), jnp.sin(emb_BLH)


def apply_rotary(x_BLNH: jnp.ndarray, cos_BLH: jnp.ndarray, sin_BLH: jnp.ndarray) -> jnp.ndarray:
  """Rotates q or k: x * cos + rotate_half(x) * sin, in float32, returned in x's dtype."""
  x32 = x_BLNH.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos_BLH[:, :, None, :], sin_BLH[:, :, None, :]  # broadcast over heads
  return (x32 * cos + rotated * sin).astype(x_BLNH.dtype)
