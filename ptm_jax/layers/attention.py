"""Multi-head / grouped-query self-attention over `jax.nn.dot_product_attention`."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptm_jax.layers import positions as positions_lib


def einsum_attention_with_dropout(q_BTNH: jnp.ndarray, k_BSKH: jnp.ndarray,
                                  v_BSKH: jnp.ndarray, mask: jnp.ndarray | None, *,
                                  dropout_rate: float, dropout_rng: jax.Array) -> jnp.ndarray:
  """Explicit einsum attention with dropout on the probabilities (what BERT/GPT-2 train with).

  `jax.nn.dot_product_attention` has no probability dropout, so this path only runs when
  `attention_dropout_rate > 0` and the call is not deterministic.
  """
  n, k = q_BTNH.shape[2], k_BSKH.shape[2]
  # Query head n reads kv head n // (N / K): the HF repeat_kv layout, same as the fused op.
  k_BSNH = jnp.repeat(k_BSKH, n // k, axis=2)
  v_BSNH = jnp.repeat(v_BSKH, n // k, axis=2)
  scale = q_BTNH.shape[-1] ** -0.5
  logits_BNTS = jnp.einsum('btnh,bsnh->bnts', q_BTNH, k_BSNH,
                           preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits_BNTS = jnp.where(mask, logits_BNTS, jnp.finfo(jnp.float32).min)
  probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BNTS.shape)
  probs_BNTS = jnp.where(keep, probs_BNTS / (1.0 - dropout_rate), 0.0)
  return jnp.einsum('bnts,bsnh->btnh', probs_BNTS.astype(v_BSNH.dtype), v_BSNH)


class Attention(nn.Module):
  """Self-attention with q/k/v/out `DenseGeneral` projections and optional RoPE and GQA."""

  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None  # None = num_heads (MHA); 1 = MQA; otherwise GQA
  use_bias: bool = True
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02
  out_init_stddev: float | None = None  # None = init_stddev; GPT-2 shrinks residual outputs
  implementation: str | None = None  # passed to jax.nn.dot_product_attention ('xla', 'cudnn')

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, mask: jnp.ndarray | None = None, *,
               rotary: tuple[jnp.ndarray, jnp.ndarray] | None = None,
               deterministic: bool = True) -> jnp.ndarray:
    """x `[B, L, D]`, bool mask broadcastable to `[B, N, L, L]`, rotary (cos, sin) `[B, L, H]`."""
    num_kv = self.num_kv_heads or self.num_heads
    if self.num_heads % num_kv:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads={num_kv}')

    def proj(heads: int, name: str) -> nn.DenseGeneral:
      return nn.DenseGeneral(
          (heads, self.head_dim), use_bias=self.use_bias, dtype=self.dtype,
          param_dtype=self.param_dtype, name=name,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(self.init_stddev), ('embed', 'heads', 'kv')),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('heads', 'kv')))

    axes = ('batch', 'length', 'heads', 'kv')
    q_BLNH = nn.with_logical_constraint(proj(self.num_heads, 'query')(x_BLD), axes)
    k_BLKH = nn.with_logical_constraint(proj(num_kv, 'key')(x_BLD), axes)
    v_BLKH = nn.with_logical_constraint(proj(num_kv, 'value')(x_BLD), axes)
    if rotary is not None:
      q_BLNH = positions_lib.apply_rotary(q_BLNH, *rotary)
      k_BLKH = positions_lib.apply_rotary(k_BLKH, *rotary)

    if self.attention_dropout_rate > 0.0 and not deterministic:
      out_BLNH = einsum_attention_with_dropout(
          q_BLNH, k_BLKH, v_BLKH, mask, dropout_rate=self.attention_dropout_rate,
          dropout_rng=self.make_rng('dropout'))
    else:
      out_BLNH = jax.nn.dot_product_attention(q_BLNH, k_BLKH, v_BLKH, mask=mask,
                                              implementation=self.implementation)
    if mask is not None:
      # A query with no visible key (a padding row) gets zeros instead of whatever the kernel
      # makes of an all-masked softmax (uniform in XLA, possibly NaN elsewhere).
      has_key_BNL = jnp.any(mask, axis=-1)
      has_key_BLN1 = jnp.transpose(has_key_BNL, (0, 2, 1))[..., None]
      out_BLNH = jnp.where(has_key_BLN1, out_BLNH, jnp.zeros_like(out_BLNH))
    out_BLNH = nn.with_logical_constraint(out_BLNH, axes)

    out_BLD = nn.DenseGeneral(
        x_BLD.shape[-1], axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name='out',
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(self.out_init_stddev or self.init_stddev),
            ('heads', 'kv', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(out_BLNH)
    return nn.with_logical_constraint(out_BLD, ('batch', 'length', 'embed'))
