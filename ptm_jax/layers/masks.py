"""Attention-mask algebra: small boolean masks that compose by logical AND.

Every mask is a boolean array of rank 4 broadcastable to `[batch, 1 | heads, q_length, kv_length]`,
True where the query may attend to the key. Masks are kept in their smallest broadcastable shape
(a causal mask is `[1, 1, L, L]`, a padding mask `[B, 1, 1, L]`) and `combine` broadcasts them.
Any other pattern (XLNet permutations, UniLM, ...) is just a boolean array of the same rank.
`SegmentMask` describes the common padding × segment × causal case without materialising it.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import struct


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


# ---- Structured self-attention masks (fused-kernel friendly) -----------------------------------

MASK_FORMS = ('dense', 'lengths', 'packed')


@struct.dataclass
class SegmentMask:
  """padding × same-segment [× causal] self-attention, described instead of materialised.

  A dense `[B, 1, L, L]` mask keeps cuDNN off its fast path; this description lets
  `layers.attention` hand the kernel what it takes natively. `form` says what the caller
  guarantees about the rows (the kernel form is only exact under that guarantee):
    * 'dense': nothing; attention uses `dense()` (any segment layout);
    * 'lengths': one document per row, right-padded (segment ids 1..1 0..0): sequence lengths
      (+ `is_causal`), cuDNN's PADDING[_CAUSAL] mask types;
    * 'packed': at most `max_segments` documents per row, each contiguous, ids 1..n in order,
      padding at the end (what `ptm_jax.data.packing` yields): per-segment offsets and lengths,
      cuDNN's packed (THD) layout.
  `causal` and the form are static (pytree metadata), so they survive nn.remat and jit.
  """

  segment_ids: jnp.ndarray  # [B, L] int, 1..n per document, 0 = padding
  causal: bool = struct.field(pytree_node=False, default=False)
  form: str = struct.field(pytree_node=False, default='dense')
  max_segments: int = struct.field(pytree_node=False, default=1)

  def __post_init__(self):
    if self.form not in MASK_FORMS:
      raise ValueError(f'mask form {self.form!r} is unknown; use one of {", ".join(MASK_FORMS)}')
    if self.form == 'packed' and self.max_segments < 1:
      raise ValueError(f'max_segments={self.max_segments} must be >= 1 for the packed mask form')

  def dense(self) -> jnp.ndarray:
    """The boolean `[B, 1, L, L]` mask the models built before (bit for bit)."""
    seg_BL = self.segment_ids
    causal = causal_mask(seg_BL.shape[1]) if self.causal else None
    return combine(causal, padding_mask(seg_BL), segment_mask(seg_BL, seg_BL))

  def query_valid(self) -> jnp.ndarray:
    """`[B, L]` True where the query sees at least one key (itself): every non-padding token."""
    return self.segment_ids != 0

  def lengths(self) -> jnp.ndarray:
    """`[B]` int32 number of non-padding tokens (the 'lengths' form's sequence lengths)."""
    return jnp.sum(self.segment_ids != 0, axis=1).astype(jnp.int32)

  def offsets(self) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(offsets `[B, M + 1]`, lengths `[B, M]`) int32 of segments 1..M, -1 where absent.

    The layout of cuDNN's packed attention (`q_offsets`/`q_seqlen` of
    `jax._src.cudnn.fused_attention_stablehlo.dot_product_attention`): segment k starts at
    offsets[k - 1] and spans lengths[k - 1] tokens; the extra column is always -1.
    """
    seg_BL = self.segment_ids
    ids_M = jnp.arange(1, self.max_segments + 1, dtype=seg_BL.dtype)
    member_BML = seg_BL[:, None, :] == ids_M[None, :, None]
    count_BM = jnp.sum(member_BML, axis=-1).astype(jnp.int32)
    start_BM = jnp.argmax(member_BML, axis=-1).astype(jnp.int32)  # first member
    present_BM = count_BM > 0
    none_B1 = jnp.full((seg_BL.shape[0], 1), -1, jnp.int32)
    offsets_BM1 = jnp.concatenate([jnp.where(present_BM, start_BM, -1), none_B1], axis=1)
    return offsets_BM1, jnp.where(present_BM, count_BM, -1)


def dense_from_offsets(offsets_BM1: jnp.ndarray, lengths_BM: jnp.ndarray, length: int,
                       causal: bool) -> jnp.ndarray:
  """`[B, 1, L, L]` mask of what packed attention computes from (offsets, lengths).

  Token t belongs to segment k iff offsets[k] <= t < offsets[k] + lengths[k]; a query sees the
  keys of its own segment (and, causal, only those at or before it). The XLA path of the
  'packed' form uses it, so the CPU tests check the offsets themselves, not only segment ids.
  """
  start_BM = offsets_BM1[:, :-1]
  idx_L = jnp.arange(length)
  inside_BML = ((idx_L[None, None, :] >= start_BM[:, :, None])
                & (idx_L[None, None, :] < (start_BM + lengths_BM)[:, :, None])
                & (lengths_BM > 0)[:, :, None])
  same_BLL = jnp.einsum('bmq,bmk->bqk', inside_BML.astype(jnp.int32),
                        inside_BML.astype(jnp.int32)) > 0
  mask = same_BLL[:, None]
  return mask & causal_mask(length) if causal else mask
