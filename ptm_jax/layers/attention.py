"""Multi-head / grouped-query attention over `jax.nn.dot_product_attention`: self-attention,
cross-attention (keys/values from an encoder output), an additive bias (T5 relative positions) and
a KV cache for step-by-step decoding.

KV cache (flax 'cache' collection, the T5X / flax-examples pattern): with `use_cache=True` the
first call, made with a full-length dummy input when the collection is still empty (see
`ptm_jax.decoding.init_cache`), only creates zeroed `cached_key`/`cached_value` `[B, S, K, H]`
buffers; later calls write their keys/values at `cache_index` (given by the model, which keeps
one index for all layers in `DecodeCache`) and attend over all S cached slots, the model's mask
hiding the slots not yet written. Cross-attention caches the projected encoder keys/values the
first time and never recomputes them. Keys are cached after rotary, so decoding needs no
re-rotation.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptm_jax.layers import dropout as dropout_lib
from ptm_jax.layers import masks
from ptm_jax.layers import positions as positions_lib


def einsum_attention_with_dropout(q_BTNH: jnp.ndarray, k_BSKH: jnp.ndarray,
                                  v_BSKH: jnp.ndarray, mask: jnp.ndarray | None, *,
                                  dropout_rate: float, dropout_rng: jax.Array,
                                  dropout_impl: str = 'bits',
                                  bias: jnp.ndarray | None = None,
                                  scale: float | None = None) -> jnp.ndarray:
  """Explicit einsum attention with dropout on the probabilities (what BERT/GPT-2 train with).

  `jax.nn.dot_product_attention` has no probability dropout, so this path only runs when
  `attention_dropout_rate > 0` and the call is not deterministic.
  """
  n, k = q_BTNH.shape[2], k_BSKH.shape[2]
  # Query head n reads kv head n // (N / K): the HF repeat_kv layout, same as the fused op.
  k_BSNH = jnp.repeat(k_BSKH, n // k, axis=2)
  v_BSNH = jnp.repeat(v_BSKH, n // k, axis=2)
  scale = q_BTNH.shape[-1] ** -0.5 if scale is None else scale
  logits_BNTS = jnp.einsum('btnh,bsnh->bnts', q_BTNH, k_BSNH,
                           preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits_BNTS = logits_BNTS + jnp.broadcast_to(bias, logits_BNTS.shape).astype(jnp.float32)
  if mask is not None:
    logits_BNTS = jnp.where(mask, logits_BNTS, jnp.finfo(jnp.float32).min)
  probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
  probs_BNTS = dropout_lib.dropout(probs_BNTS, dropout_rng, dropout_rate, dropout_impl)
  return jnp.einsum('bnts,bsnh->btnh', probs_BNTS.astype(v_BSNH.dtype), v_BSNH)


def zero_queries_without_keys(out_BLNH: jnp.ndarray,
                              mask: jnp.ndarray | masks.SegmentMask | None) -> jnp.ndarray:
  """Zeros for queries that see no key (padding rows), whatever the kernel made of them.

  An all-masked softmax is uniform in XLA and may be NaN or garbage in fused kernels.
  """
  if mask is None:
    return out_BLNH
  if isinstance(mask, masks.SegmentMask):
    has_key_BL11 = mask.query_valid()[:, :, None, None]
  else:
    has_key_BNL = jnp.any(mask, axis=-1)
    has_key_BL11 = jnp.transpose(has_key_BNL, (0, 2, 1))[..., None]
  return jnp.where(has_key_BL11, out_BLNH, jnp.zeros_like(out_BLNH))


def _cudnn_packed(q_BLNH, k_BSKH, v_BSKH, mask: masks.SegmentMask, bias, scale):
  """cuDNN's packed (THD) layout: one kernel call, documents as separate sequences.

  `jax.nn.dot_product_attention` (0.10) does not expose segment offsets, so this calls the
  function under it; the argument layout follows JAX's own packed-layout test (Hopper+). Its
  gradients were NaN on an H100 (jax 0.11.2), so `dot_product_attention` refuses the packed form
  on cuDNN; only the device check (`benchmarks/throughput_ours.cudnn_check`) calls it, to see
  when a jax/cuDNN release fixes it.
  """
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa
  offsets_BM1, lengths_BM = mask.offsets()
  mask_type = cudnn_fa.MaskType.CAUSAL if mask.causal else cudnn_fa.MaskType.NO_MASK
  if bias is not None:
    bias = bias.astype(q_BLNH.dtype)
  return cudnn_fa.dot_product_attention(
      q_BLNH, k_BSKH, v_BSKH, bias, None, lengths_BM, lengths_BM, offsets_BM1, offsets_BM1,
      scale=q_BLNH.shape[-1] ** -0.5 if scale is None else scale, mask_type=mask_type)


def dot_product_attention(q_BLNH: jnp.ndarray, k_BSKH: jnp.ndarray, v_BSKH: jnp.ndarray,
                          mask: jnp.ndarray | masks.SegmentMask | None, *,
                          bias: jnp.ndarray | None = None, scale: float | None = None,
                          implementation: str | None = None) -> jnp.ndarray:
  """`jax.nn.dot_product_attention` given a dense mask or a `masks.SegmentMask`.

  A `SegmentMask` reaches the kernel in the cheapest form its `form` allows: 'lengths' as
  `is_causal` + sequence lengths, 'packed' as cuDNN segment offsets (on XLA: the dense mask
  rebuilt from those offsets), 'dense' as the dense mask. Queries that see no key give zeros.
  """
  if bias is not None and implementation == 'cudnn':
    bias = bias.astype(q_BLNH.dtype)  # cuDNN wants the bias in the compute dtype
  call = functools.partial(jax.nn.dot_product_attention, q_BLNH, k_BSKH, v_BSKH, bias=bias,
                           scale=scale, implementation=implementation)
  if not isinstance(mask, masks.SegmentMask):
    out_BLNH = call(mask=mask)
  elif q_BLNH.shape[1] != k_BSKH.shape[1]:
    raise ValueError('a SegmentMask describes self-attention (same query and key length); '
                     'pass a dense mask for cross-attention or a KV cache')
  elif mask.form == 'lengths':
    lengths_B = mask.lengths()
    out_BLNH = call(is_causal=mask.causal, query_seq_lengths=lengths_B,
                    key_value_seq_lengths=lengths_B)
  elif mask.form == 'packed' and implementation == 'cudnn':
    # Measured on an H100 (jax 0.11.2, 2026-11-24, docs/benchmarks.md): outputs match XLA but
    # every gradient through cuDNN's packed layout is NaN, so training through it is refused.
    raise ValueError("mask_form='packed' with attention_impl='cudnn' gives NaN gradients "
                     "(cuDNN packed layout, jax 0.11); use mask_form='dense' for packed rows "
                     "or attention_impl='xla'")
  elif mask.form == 'packed':
    offsets_BM1, lengths_BM = mask.offsets()
    out_BLNH = call(mask=masks.dense_from_offsets(offsets_BM1, lengths_BM, q_BLNH.shape[1],
                                                  mask.causal))
  else:
    out_BLNH = call(mask=mask.dense())
  return zero_queries_without_keys(out_BLNH, mask)


class CacheView(NamedTuple):
  """Where the current chunk of L tokens sits in a KV cache of S slots (from `DecodeCache`)."""

  index: jnp.ndarray  # int32 scalar: the chunk's first slot
  segment_ids: jnp.ndarray  # [B, S] segment id of every cached slot (0 = empty or padding)
  positions: jnp.ndarray  # [B, S] position of every cached slot
  causal: jnp.ndarray  # [1, 1, L, S] query slot >= key slot

  def place(self, x_BL: jnp.ndarray) -> jnp.ndarray:
    """The chunk's per-token values at their slots `[B, S]`, zeros elsewhere."""
    out_BS = jnp.zeros(self.segment_ids.shape, x_BL.dtype)
    return jax.lax.dynamic_update_slice(out_BS, x_BL, (0, self.index))


class DecodeCache(nn.Module):
  """Model-level decoding state: the next cache slot and each cached slot's segment id/position.

  The sizing call (empty collection) creates the buffers and describes the chunk as a plain
  causal sequence (the layers then only create their own buffers); later calls write the chunk
  at `[index, index + L)` and advance the index.
  """

  @nn.compact
  def __call__(self, segment_ids_BL: jnp.ndarray, positions_BL: jnp.ndarray) -> CacheView:
    ready = self.has_variable('cache', 'index')
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    seg = self.variable('cache', 'segment_ids', jnp.zeros, segment_ids_BL.shape, jnp.int32)
    pos = self.variable('cache', 'positions', jnp.zeros, positions_BL.shape, jnp.int32)
    length = segment_ids_BL.shape[1]
    if not ready:
      return CacheView(jnp.zeros((), jnp.int32), segment_ids_BL, positions_BL,
                       masks.causal_mask(length))
    start = index.value
    seg.value = jax.lax.dynamic_update_slice(seg.value, segment_ids_BL.astype(jnp.int32),
                                             (0, start))
    pos.value = jax.lax.dynamic_update_slice(pos.value, positions_BL.astype(jnp.int32), (0, start))
    index.value = start + length
    query_slot_L = start + jnp.arange(length)
    causal = query_slot_L[:, None] >= jnp.arange(seg.value.shape[1])[None, :]
    return CacheView(start, seg.value, pos.value, causal[None, None])


class Attention(nn.Module):
  """Self-/cross-attention: q/k/v/out `DenseGeneral` projections, RoPE, GQA and a KV cache."""

  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None  # None = num_heads (MHA); 1 = MQA; otherwise GQA
  use_bias: bool = True
  attention_dropout_rate: float = 0.0
  dropout_impl: str = 'bits'  # the probability mask's generator: layers.dropout.IMPLS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02
  out_init_stddev: float | None = None  # None = init_stddev; GPT-2 shrinks residual outputs
  query_init_stddev: float | None = None  # None = init_stddev; T5 folds 1/sqrt(head_dim) in here
  scale: float | None = None  # logit scale; None = 1/sqrt(head_dim), T5 uses 1.0
  implementation: str | None = None  # passed to jax.nn.dot_product_attention ('xla', 'cudnn')

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, mask: jnp.ndarray | None = None, *,
               rotary: tuple[jnp.ndarray, jnp.ndarray] | None = None,
               deterministic: bool = True, bias: jnp.ndarray | None = None,
               kv_BSD: jnp.ndarray | None = None, use_cache: bool = False,
               cache_index: jnp.ndarray | None = None) -> jnp.ndarray:
    """x `[B, L, D]`, bool mask broadcastable to `[B, N, L, S]` (or a `masks.SegmentMask` for
    self-attention without cache), rotary (cos, sin) `[B, L, H]`.

    `bias` (float, broadcastable to `[B, N, L, S]`) is added to the logits; `kv_BSD` makes this
    cross-attention (keys and values from `[B, S, D]`, e.g. the encoder output). With
    `use_cache`, self-attention keys/values go to the cache at `cache_index` (see module doc).
    """
    num_kv = self.num_kv_heads or self.num_heads
    if self.num_heads % num_kv:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads={num_kv}')
    if kv_BSD is not None and rotary is not None:
      raise ValueError('rotary applies to self-attention only; pass rotary=None with kv_BSD')

    def proj(heads: int, name: str, std: float | None = None) -> nn.DenseGeneral:
      return nn.DenseGeneral(
          (heads, self.head_dim), use_bias=self.use_bias, dtype=self.dtype,
          param_dtype=self.param_dtype, name=name,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(std or self.init_stddev), ('embed', 'heads', 'kv')),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('heads', 'kv')))

    axes = ('batch', 'length', 'heads', 'kv')
    q_BLNH = nn.with_logical_constraint(
        proj(self.num_heads, 'query', self.query_init_stddev)(x_BLD), axes)
    key, value = proj(num_kv, 'key'), proj(num_kv, 'value')
    if kv_BSD is not None:
      if use_cache:
        # Encoder keys/values are fixed during decoding: projected once, on the sizing call.
        ck = self.variable('cache', 'cross_key', lambda: key(kv_BSD))
        cv = self.variable('cache', 'cross_value', lambda: value(kv_BSD))
        k_BSKH, v_BSKH = ck.value, cv.value
      else:
        k_BSKH, v_BSKH = key(kv_BSD), value(kv_BSD)
    else:
      k_BSKH, v_BSKH = key(x_BLD), value(x_BLD)
      if rotary is not None:
        q_BLNH = positions_lib.apply_rotary(q_BLNH, *rotary)
        k_BSKH = positions_lib.apply_rotary(k_BSKH, *rotary)
      if use_cache:
        ready = self.has_variable('cache', 'cached_key')
        ck = self.variable('cache', 'cached_key', jnp.zeros, k_BSKH.shape, k_BSKH.dtype)
        cv = self.variable('cache', 'cached_value', jnp.zeros, v_BSKH.shape, v_BSKH.dtype)
        if ready:
          if cache_index is None:
            raise ValueError('use_cache=True needs the cache_index of the model\'s DecodeCache')
          start = (0, cache_index, 0, 0)
          ck.value = jax.lax.dynamic_update_slice(ck.value, k_BSKH.astype(ck.value.dtype), start)
          cv.value = jax.lax.dynamic_update_slice(cv.value, v_BSKH.astype(cv.value.dtype), start)
          k_BSKH, v_BSKH = ck.value, cv.value
    k_BSKH = nn.with_logical_constraint(k_BSKH, axes)
    v_BSKH = nn.with_logical_constraint(v_BSKH, axes)

    if self.attention_dropout_rate > 0.0 and not deterministic:
      dense = mask.dense() if isinstance(mask, masks.SegmentMask) else mask
      out_BLNH = einsum_attention_with_dropout(
          q_BLNH, k_BSKH, v_BSKH, dense, dropout_rate=self.attention_dropout_rate,
          dropout_rng=self.make_rng('dropout'), dropout_impl=self.dropout_impl, bias=bias,
          scale=self.scale)
      out_BLNH = zero_queries_without_keys(out_BLNH, mask)
    else:
      out_BLNH = dot_product_attention(q_BLNH, k_BSKH, v_BSKH, mask, bias=bias, scale=self.scale,
                                       implementation=self.implementation)
    out_BLNH = nn.with_logical_constraint(out_BLNH, axes)

    out_BLD = nn.DenseGeneral(
        x_BLD.shape[-1], axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name='out',
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(self.out_init_stddev or self.init_stddev),
            ('heads', 'kv', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(out_BLNH)
    return nn.with_logical_constraint(out_BLD, ('batch', 'length', 'embed'))
