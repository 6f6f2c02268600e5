"""Position information: learned absolute tables, sinusoids, rotary embeddings (RoPE), and T5's
bucketed relative position bias."""
from __future__ import annotations

import math
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


def relative_position_bucket(relative_BQK: jnp.ndarray, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jnp.ndarray:
  """T5's bucket of `key_position - query_position` (Raffel et al. 2020; Mesh TF / HF arithmetic).

  Half the buckets are exact small distances, the rest log-spaced up to `max_distance`; the
  unidirectional (decoder) version maps every future key (relative > 0) to bucket 0.
  """
  buckets = jnp.zeros_like(relative_BQK)
  if bidirectional:
    num_buckets //= 2
    buckets = (relative_BQK > 0).astype(relative_BQK.dtype) * num_buckets
    distance = jnp.abs(relative_BQK)
  else:
    distance = -jnp.minimum(relative_BQK, 0)
  max_exact = num_buckets // 2
  # Same float32 ops as HF so bucket boundaries agree; max(., 1) only keeps log away from 0,
  # where the exact branch is taken anyway.
  scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
            / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(relative_BQK.dtype), num_buckets - 1)
  return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
  """T5's learned per-head scalar bias over bucketed relative positions: `[B|1, N, Q, K]` float32.

  One table per stack, computed once and added to every layer's logits (as HF shares layer 0's).
  """

  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02

  @nn.compact
  def __call__(self, q_positions_BQ: jnp.ndarray, k_positions_BK: jnp.ndarray) -> jnp.ndarray:
    table_RN = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), (None, 'heads')),
        (self.num_buckets, self.num_heads), self.param_dtype)
    relative_BQK = (k_positions_BK[:, None, :].astype(jnp.int32)
                    - q_positions_BQ[:, :, None].astype(jnp.int32))
    bucket_BQK = relative_position_bucket(relative_BQK, bidirectional=self.bidirectional,
                                          num_buckets=self.num_buckets,
                                          max_distance=self.max_distance)
    bias_BQKN = jnp.take(table_RN.astype(jnp.float32), bucket_BQK, axis=0)
    return jnp.transpose(bias_BQKN, (0, 3, 1, 2))
