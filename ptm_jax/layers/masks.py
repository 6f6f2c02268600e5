"""Attention-mask algebra: small boolean masks that compose by logical AND.

Every mask is a boolean array of rank 4 broadcastable to `[batch, 1 | heads, q_length, kv_length]`,
True where the query may attend to the key. Masks are kept in their smallest broadcastable shape
(a causal mask is `[1, 1, L, L]`, a padding mask `[B, 1, 1, L]`) and `combine` broadcasts them.
Any other pattern (XLNet permutations, UniLM, ...) is just a boolean array of the same rank.
"""
from __future__ import annotations

import jax.numpy as jnp


def padding_mask(segment_ids_BL: jnp.ndarray) -> jnp.ndarray:
  """Keys with segment id 0 (padding) are invalid; returns `[B, 1, 1, Lk]`."""
  return (segment_ids_BL != 0)[:, None, None, :]


def causal_mask(length: int) -> jnp.ndarray:
  """Query i sees keys j <= i (by index); returns `[1, 1, L, L]`."""
  idx = jnp.arange(length)
  return (idx[:, None] >= idx[None, :])[None, None]


def causal_mask_from_positions(q_positions_BL: jnp.ndarray,
                               kv_positions_BL: jnp.ndarray) -> jnp.ndarray:
  """Query sees keys whose position is <= its own; returns `[B, 1, Lq, Lk]`.

  Positions restart in every packed document, so combine this with `segment_mask`.
  """
  return (q_positions_BL[:, :, None] >= kv_positions_BL[:, None, :])[:, None]


def segment_mask(q_segment_ids_BL: jnp.ndarray,
                 kv_segment_ids_BL: jnp.ndarray) -> jnp.ndarray:
  """Packed documents never see each other; returns `[B, 1, Lq, Lk]`.

  Padding (segment 0) matches padding here; `padding_mask` is what removes it.
  """
  return (q_segment_ids_BL[:, :, None] == kv_segment_ids_BL[:, None, :])[:, None]


def prefix_mask(prefix_flags_BL: jnp.ndarray) -> jnp.ndarray:
  """Bidirectional among prefix tokens, causal elsewhere (prefix-LM, UniLM); `[B, 1, L, L]`."""
  prefix_BL = prefix_flags_BL.astype(bool)
  both_prefix_BLL = prefix_BL[:, :, None] & prefix_BL[:, None, :]
  return causal_mask(prefix_BL.shape[1]) | both_prefix_BLL[:, None]


def from_2d(mask_BLL: jnp.ndarray) -> jnp.ndarray:
  """Lifts an arbitrary `[B, Lq, Lk]` (or `[Lq, Lk]`) boolean mask to rank 4."""
  mask = jnp.asarray(mask_BLL, dtype=bool)
  return mask[None, None] if mask.ndim == 2 else mask[:, None]


def combine(*masks: jnp.ndarray | None) -> jnp.ndarray | None:
  """Logical AND of rank-4 masks (broadcasting); `None` entries are ignored."""
  present = [jnp.asarray(m, dtype=bool) for m in masks if m is not None]
  if not present:
    return None
  for m in present:
    if m.ndim != 4:
      raise ValueError(f'masks must have rank 4 [B, 1|H, Lq, Lk], got shape {m.shape}')
  out = present[0]
  for m in present[1:]:
    out = jnp.logical_and(out, m)
  return out
