"""Static-shape noising primitives shared by the seq2seq and unified objectives (on device).

Rows are packed: `segment_ids` `[B, L]` (1.. per document, 0 = padding), documents contiguous.
Everything here is jittable with shapes fixed by (B, L) and Python constants:
  * per-segment quantities (`segment_lengths`, `within_segment_cumsum`, `per_segment`);
  * `sample_spans`: a stationary alternating renewal process of noise spans (lengths from any
    pmf over 0..K, zero allowed) and kept gaps (Geometric, >= 1 token), so every position is
    covered with probability exactly `rate` and spans never touch; `clip_spans` cuts a span at
    the first token it may not cover (padding, reserved ids, a document boundary);
  * `compact`: scatter of per-position emissions (0, 1 or 2 tokens each) to the front of a row,
    which is how deletion, infilling and sentinel replacement shorten a row;
  * `reorder`: a permutation of the movable tokens of each segment among that segment's movable
    slots (sentence permutation, document rotation), fixed tokens ([CLS]/[SEP]) staying put.
Tested through their users: tests/test_objectives_seq2seq.py (T5, BART, MASS) and
tests/test_objectives_unified.py (prefix LM, UniLM, GLM).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def segment_starts(segment_ids_BL) -> jax.Array:
  """True where a new segment (or padding run) begins: `[B, L]`."""
  first_B1 = jnp.ones_like(segment_ids_BL[:, :1], dtype=bool)
  return jnp.concatenate([first_B1, segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]], axis=1)


def within_segment_cumsum(x_BL, segment_ids_BL, *, exclusive: bool = False) -> jax.Array:
  """Cumulative sum of int `x` restarting at every segment start (inclusive by default)."""
  x_BL = x_BL.astype(jnp.int32)
  cum_BL = jnp.cumsum(x_BL, axis=1)
  before_BL = cum_BL - x_BL
  # `before` is non-decreasing, so a running max carries each segment's starting offset.
  offset_BL = jax.lax.cummax(jnp.where(segment_starts(segment_ids_BL), before_BL, 0), axis=1)
  return (before_BL if exclusive else cum_BL) - offset_BL


def segment_sum(x_BL, segment_ids_BL) -> jax.Array:
  """Per row, the sum of `x` over each segment id: `[B, L + 1]` (index = segment id)."""
  length = x_BL.shape[1]
  return jax.vmap(lambda x, s: jnp.zeros((length + 1,), x.dtype).at[s].add(x))(x_BL, segment_ids_BL)


def per_segment(values_BS, segment_ids_BL) -> jax.Array:
  """Broadcasts a per-segment-id value `[B, S]` to the positions of each segment `[B, L]`."""
  return jnp.take_along_axis(values_BS, segment_ids_BL, axis=1)


def segment_lengths(segment_ids_BL) -> jax.Array:
  """Length of the segment each position belongs to: `[B, L]` (padding gets the pad count)."""
  return per_segment(segment_sum(jnp.ones_like(segment_ids_BL), segment_ids_BL), segment_ids_BL)


# ----------------------------------------------------------------------------- span sampling


def renewal_constants(probs_K: np.ndarray, rate: float, length: int) -> dict:
  """Static constants of the span/gap renewal process for rows of `length` tokens.

  `probs_K[k]` = P(span = k tokens), k = 0..K. Gaps ~ Geometric(q) >= 1 with mean
  E[S] (1 - rate) / rate, so a random position is covered with probability `rate`.
  """
  probs = np.asarray(probs_K, np.float64)
  probs = probs / probs.sum()
  k = np.arange(len(probs))
  mean_span = float((k * probs).sum())
  if not 0.0 < rate < 1.0 or mean_span <= 0:
    raise ValueError(f'span noise needs 0 < rate < 1 and a positive mean span, got {rate}, {mean_span}')
  mean_gap = mean_span * (1.0 - rate) / rate
  if mean_gap < 1.0:
    raise ValueError(f'noise rate {rate} is too high for mean span {mean_span:.2f}: gaps of >= 1 '
                     'kept token separate the spans; lower the rate')
  q = 1.0 / mean_gap
  var_span = float((k * k * probs).sum()) - mean_span ** 2
  cycle_mean = mean_span + mean_gap
  cycle_std = math.sqrt(var_span + (1.0 - q) / q ** 2)
  # Enough cycles to cover the row: m cycles fall short with probability < 1e-9.
  m = 1
  while m * cycle_mean - 6.0 * math.sqrt(m) * cycle_std < length:
    m += 1
  survival = probs[::-1].cumsum()[::-1]  # P(S >= k), k = 0..K
  residual = np.concatenate([[0.0], survival[1:]]) / mean_span  # P(residual = k), k >= 1
  return dict(probs=probs, residual=residual, q=q, cycles=m + 1, mean_span=mean_span)


def poisson_probs(lam: float, *, min_length: int = 0, tail: float = 1e-9) -> np.ndarray:
  """Poisson(lam) pmf over 0..K (K where the tail mass drops below `tail`), zero below min_length."""
  probs, k = [], 0
  p = math.exp(-lam)
  while True:
    probs.append(p if k >= min_length else 0.0)
    k += 1
    p *= lam / k
    if k > lam and p < tail:
      break
  out = np.asarray(probs)
  return out / out.sum()


def sample_spans(rng, num_rows: int, length: int, probs_K: np.ndarray, rate: float) -> dict:
  """Renewal spans over `[num_rows, length]` positions.

  Returns `span_index` `[B, L]` (the last span starting at or before each position, -1 before
  the first), `start_M`/`length_M` `[B, M]` of every span (M = static cycle count; starts may lie
  beyond the row), and `covered` `[B, L]` (inside a span, before any clipping).
  """
  c = renewal_constants(probs_K, rate, length)
  m = c['cycles']
  r_len, r_gap, r_start, r_res, r_lead = jax.random.split(rng, 5)
  span_BM = jax.random.categorical(r_len, jnp.log(jnp.asarray(c['probs'], jnp.float32)),
                                   shape=(num_rows, m)).astype(jnp.int32)
  gap_BM = jax.random.geometric(r_gap, c['q'], shape=(num_rows, m), dtype=jnp.int32)
  # Stationary start: position 0 lies in a span with probability `rate` (residual length
  # P(S >= k) / E[S]), else in a gap whose residual is again Geometric(q) (memoryless).
  in_span_B = jax.random.uniform(r_start, (num_rows,)) < rate
  residual_B = jax.random.categorical(r_res, jnp.log(jnp.asarray(c['residual'], jnp.float32)),
                                      shape=(num_rows,)).astype(jnp.int32)
  lead_B = jnp.where(in_span_B, 0, jax.random.geometric(r_lead, c['q'], shape=(num_rows,),
                                                        dtype=jnp.int32))
  span_BM = span_BM.at[:, 0].set(jnp.where(in_span_B, residual_B, span_BM[:, 0]))
  cycle_BM = span_BM + gap_BM
  start_BM = lead_B[:, None] + jnp.cumsum(cycle_BM, axis=1) - cycle_BM
  idx_L = jnp.arange(length, dtype=jnp.int32)
  span_BL = jax.vmap(lambda s: jnp.searchsorted(s, idx_L, side='right'))(start_BM) - 1
  safe_BL = jnp.maximum(span_BL, 0)
  end_BL = jnp.take_along_axis(start_BM + span_BM, safe_BL, axis=1)  # exclusive
  covered_BL = (span_BL >= 0) & (idx_L[None, :] < end_BL)
  return dict(span_index=span_BL, start_M=start_BM, length_M=span_BM, covered=covered_BL,
              first_is_residual=in_span_B)


def clip_spans(spans: dict, eligible_BL, segment_ids_BL) -> dict:
  """Cuts each span at the first position it may not cover; adds `masked`, `run_start`, `insert`.

  A span covers position i only if every position from its start to i is eligible and in one
  segment, so each span leaves at most one run of masked tokens, starting at the span's start.
  `insert` marks the start of a zero-length span on an eligible position (a mask goes before it).
  """
  length = eligible_BL.shape[1]
  idx_L = jnp.arange(length, dtype=jnp.int32)
  prev_eligible_BL = jnp.concatenate([jnp.zeros_like(eligible_BL[:, :1]), eligible_BL[:, :-1]], axis=1)
  barrier_BL = ~eligible_BL | ~prev_eligible_BL | segment_starts(segment_ids_BL)
  last_barrier_BL = jax.lax.cummax(jnp.where(barrier_BL, idx_L[None, :], -1), axis=1)
  span_BL = spans['span_index']
  start_BL = jnp.take_along_axis(spans['start_M'], jnp.maximum(span_BL, 0), axis=1)
  length_BL = jnp.take_along_axis(spans['length_M'], jnp.maximum(span_BL, 0), axis=1)
  masked_BL = spans['covered'] & eligible_BL & (last_barrier_BL <= start_BL)
  at_start_BL = (span_BL >= 0) & (start_BL == idx_L[None, :])
  return dict(spans, masked=masked_BL, run_start=masked_BL & at_start_BL,
              insert=at_start_BL & (length_BL == 0) & eligible_BL, span_start=start_BL)


# ----------------------------------------------------------------------------- row surgery


def compact(first_BL, second_BL, emit_first_BL, emit_second_BL, out_length: int,
            fill=0) -> jax.Array:
  """Each position emits `first` then `second` where flagged; emissions land at the row front.

  Emissions past `out_length` are dropped; unused slots hold `fill`. Returns `[B, out_length]`.
  """
  n1_BL = emit_first_BL.astype(jnp.int32)
  n2_BL = emit_second_BL.astype(jnp.int32)
  slot_BL = jnp.cumsum(n1_BL + n2_BL, axis=1) - n1_BL - n2_BL
  drop = out_length  # an out-of-range index: mode='drop' discards it
  first_slot = jnp.where(emit_first_BL, slot_BL, drop)
  second_slot = jnp.where(emit_second_BL, slot_BL + n1_BL, drop)

  def row(f, s, fs, ss):
    out = jnp.full((out_length,), fill, first_BL.dtype)
    return out.at[fs].set(f, mode='drop').at[ss].set(s, mode='drop')

  return jax.vmap(row)(first_BL, second_BL.astype(first_BL.dtype), first_slot, second_slot)


def positions_of(segment_ids_BL) -> jax.Array:
  """0, 1, ... inside each segment, 0 on padding."""
  ones = jnp.ones_like(segment_ids_BL)
  return jnp.where(segment_ids_BL != 0, within_segment_cumsum(ones, segment_ids_BL, exclusive=True), 0)


def reorder(values: dict, movable_BL, group_BL, rank_BL) -> dict:
  """Permutes the movable tokens of each row among the movable slots, group by group.

  The movable tokens of a group (a segment) are laid out on that group's movable slots in order
  of (rank, index); fixed tokens never move. Sentence permutation ranks tokens by a random key of
  their sentence, rotation by (index - offset) mod count.
  """
  length = movable_BL.shape[1]
  idx_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), movable_BL.shape)
  big = jnp.int32(length + 1)
  group_key = jnp.where(movable_BL, group_BL, big)
  source_BL = jax.vmap(lambda g, r, i: jnp.lexsort((i, r, g)))(group_key, rank_BL, idx_BL)
  slot_BL = jnp.argsort(jnp.where(movable_BL, idx_BL, idx_BL + length), axis=1)
  num_B = jnp.sum(movable_BL, axis=1)
  # The k-th movable slot receives the k-th movable token in sorted order; the rest stay.
  slot_BL = jnp.where(idx_BL < num_B[:, None], slot_BL, length)
  src_BL = jax.vmap(lambda s, src, i: i.at[s].set(src, mode='drop'))(slot_BL, source_BL, idx_BL)
  return {k: jnp.take_along_axis(v, src_BL, axis=1) for k, v in values.items()}
