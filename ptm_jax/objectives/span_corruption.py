"""T5 span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", JMLR, section 3.7 "Corrupting spans", Table 4/5), for the
`encdec` family.

Recipe -- T5's `random_spans_noise_mask` / `noise_span_to_unique_sentinel` arithmetic, on device:
  * a row's n non-padding tokens are one example (T5 corrupts before packing; the experiment
    reads `data.cross_document` rows, so a row is one contiguous stream of n = seq_len tokens);
  * num_noise = round(n * `noise_density`) clipped to [1, n - 1], num_spans =
    max(round(num_noise / `mean_noise_span_length`), 1) (round half to even, as tf.round);
    a row of one token is treated as two, as T5;
  * the noise tokens are cut into num_spans non-empty spans uniformly at random (a random subset
    of num_spans - 1 cut points, T5's `_random_segmentation`), the kept tokens likewise, and they
    interleave starting with kept text: kept_0 noise_0 kept_1 noise_1 ...;
  * inputs  = kept_0 <X0> kept_1 <X1> ... kept_{S-1} <X_{S-1}> EOS
    targets = <X0> noise_0 <X1> noise_1 ... <X_{S-1}> noise_{S-1} EOS
    with <Xi> = `specials.extra[i]` (the tokenizer's `<extra_id_i>`, reserved ids;
    `data.tokenizer.extra_ids` must cover the most spans a row can have);
  * loss = mean cross-entropy over every target token (sentinels and EOS included), teacher
    forced with decoder inputs = targets shifted right from the model's `decoder_start_id`
    (T5: pad), plus T5X's z-loss 1e-4.
Static shapes: for rows of L tokens the encoder reads `inputs_length(L)` and the decoder
`targets_length(L)` slots -- the largest lengths any n <= L produces, which for a full row are
exactly T5's `random_spans_helper` numbers (568 raw tokens -> 512 inputs, 114 targets: a decoder
~5x shorter than the row, the saving Table 4/5 credits span corruption with).
`tokens_length_for(inputs_length)` is that helper (which raw row length fills a given input).

Tests (tests/test_objectives_seq2seq.py): the helper's numbers (512 -> 568 / 114) and the exact
lengths of every corrupted full row; noise count round(0.15 n) and span count per row; sentinels
appear in order <X0>, <X1>, ... in both inputs and targets; inputs and targets interleave back to
the original row; span-length mean 3; runlocal loss falls.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax.objectives import common, noising, seq2seq


# The loss adds a mixture-of-experts model's router losses (`seq2seq.loss`).
ADDS_MODEL_AUX_LOSS = True


@dataclasses.dataclass(frozen=True)
class Options:
  """T5 span-corruption hyper-parameters (the paper's defaults)."""

  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  z_loss: float = 1e-4  # T5X default
  label_smoothing: float = 0.0
  # > 0: the target loss chunk by chunk without [B, L, V] logits (seq2seq.loss). 0 = unchunked.
  loss_chunk_size: int = 0
  loss_grad_in_forward: bool = False  # the chunked loss's gradient in the forward (clm.Options)

  def __post_init__(self):
    common.check_loss_chunk_size('span_corruption.Options', self.loss_chunk_size,
                                 self.loss_grad_in_forward)
    if not 0.0 < self.noise_density < 1.0:
      raise ValueError(f'span_corruption.Options.noise_density must be in (0, 1), got {self.noise_density}')
    if self.mean_noise_span_length < 1.0:
      raise ValueError('span_corruption.Options.mean_noise_span_length must be >= 1, got '
                       f'{self.mean_noise_span_length}')


def _round(x: float) -> int:
  return int(np.round(x))  # half to even, like tf.round and Python's round


def span_counts(n: int, options: Options) -> tuple[int, int]:
  """(num_noise, num_spans) of a row of n >= 1 tokens (treated as >= 2, as T5)."""
  length = max(n, 2)
  noise = min(max(_round(length * options.noise_density), 1), length - 1)
  return noise, max(_round(noise / options.mean_noise_span_length), 1)


def lengths_for(n: int, options: Options) -> tuple[int, int]:
  """(inputs, targets) lengths of a corrupted row of n tokens, EOS included."""
  if n == 0:
    return 0, 0
  noise, spans = span_counts(n, options)
  if n == 1:  # T5 noises 2 positions and keeps the first: `tok EOS` -> `<X0> EOS`
    return 2, 2
  return n - noise + spans + 1, noise + spans + 1


@functools.lru_cache(maxsize=64)
def static_lengths(length: int, options: Options) -> tuple[int, int, int]:
  """(inputs_length, targets_length, max_spans) over every n <= length: the static shapes."""
  table = [lengths_for(n, options) + (span_counts(n, options)[1],) for n in range(1, length + 1)]
  return tuple(int(max(t[i] for t in table)) for i in range(3))


def tokens_length_for(inputs_length: int, options: Options = Options()) -> tuple[int, int]:
  """T5's `random_spans_helper`: (raw tokens per row, targets length) for `inputs_length`."""
  def lengths(tokens_length):
    noise = _round(tokens_length * options.noise_density)
    spans = _round(noise / options.mean_noise_span_length)
    return tokens_length - noise + spans + 1, noise + spans + 1

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  targets_length = lengths(tokens_length)[1]
  if options.noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _random_segmentation(rng, num_items_B, num_segments_B, length: int):
  """First-item flags `[B, L]`: items 0..n-1 cut into k non-empty runs, cut points uniform."""
  idx_L = jnp.arange(length, dtype=jnp.int32)
  slot_BL = (idx_L[None, :] >= 1) & (idx_L[None, :] < num_items_B[:, None])
  keys_BL = jnp.where(slot_BL, jax.random.uniform(rng, slot_BL.shape), 2.0)
  rank_BL = jnp.argsort(jnp.argsort(keys_BL, axis=1), axis=1)
  return (idx_L[None, :] == 0) | (slot_BL & (rank_BL < num_segments_B[:, None] - 1))


def noise_mask(rng, n_B, length: int, options: Options) -> jax.Array:
  """T5's `random_spans_noise_mask` for rows of n_B tokens (n_B <= length): bool `[B, L]`."""
  n2_B = jnp.maximum(n_B, 2)
  noise_B = jnp.clip(jnp.round(n2_B * options.noise_density).astype(jnp.int32), 1, n2_B - 1)
  spans_B = jnp.maximum(jnp.round(noise_B / options.mean_noise_span_length).astype(jnp.int32), 1)
  width = max(length, 2)
  noise_rng, keep_rng = jax.random.split(rng)
  noise_first_BW = _random_segmentation(noise_rng, noise_B, spans_B, width)
  keep_first_BW = _random_segmentation(keep_rng, n2_B - noise_B, spans_B, width)
  span_of = lambda first: jnp.cumsum(first.astype(jnp.int32), axis=1) - 1  # noqa: E731
  # Span lengths `[B, W]` (span index -> length) of the noise runs and the kept runs.
  seg_len = lambda first, count: jax.vmap(  # noqa: E731
      lambda s, c: jnp.zeros((width,), jnp.int32).at[s].add(c))(
          span_of(first), (jnp.arange(width)[None, :] < count[:, None]).astype(jnp.int32))
  noise_len_BW = seg_len(noise_first_BW, noise_B)
  keep_len_BW = seg_len(keep_first_BW, n2_B - noise_B)
  interleaved_B2W = jnp.stack([keep_len_BW, noise_len_BW], axis=2).reshape(n_B.shape[0], 2 * width)
  starts_B2W = jnp.cumsum(interleaved_B2W, axis=1)[:, :-1]
  idx_L = jnp.arange(length, dtype=jnp.int32)
  span_num_BL = jax.vmap(lambda s: jnp.searchsorted(s, idx_L, side='right'))(starts_B2W)
  return (span_num_BL % 2 == 1) & (idx_L[None, :] < n_B[:, None])


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """T5 inputs `[B, inputs_length(L)]`, targets/weights `[B, targets_length(L)]` + segment ids."""
  tokens_BL = batch['tokens'].astype(jnp.int32)
  num_rows, length = tokens_BL.shape
  in_len, tgt_len, max_spans = static_lengths(length, options)
  if max_spans > len(specials.extra):
    raise ValueError(f'span_corruption needs {max_spans} sentinel ids for rows of {length} tokens '
                     f'but the tokenizer reserves {len(specials.extra)}: set '
                     f'data.tokenizer.extra_ids >= {max_spans}')
  sentinels = jnp.asarray(specials.extra[:max_spans], jnp.int32)
  n_B = jnp.sum(batch['segment_ids'] != 0, axis=1).astype(jnp.int32)
  noise_BL = noise_mask(rng, n_B, length, options)
  idx_L = jnp.arange(length, dtype=jnp.int32)
  real_BL = idx_L[None, :] < n_B[:, None]
  prev_noise_BL = jnp.concatenate([jnp.zeros_like(noise_BL[:, :1]), noise_BL[:, :-1]], axis=1)
  first_noise_BL = noise_BL & ~prev_noise_BL
  first_keep_BL = real_BL & ~noise_BL & (prev_noise_BL | (idx_L[None, :] == 0))
  span_BL = jnp.cumsum(first_noise_BL.astype(jnp.int32), axis=1) - 1  # sentinel index
  sentinel_BL = sentinels[jnp.clip(span_BL, 0, max_spans - 1)]
  # A kept run opens the targets with the sentinel of the noise span that follows it.
  next_sentinel_BL = sentinels[jnp.clip(span_BL + 1, 0, max_spans - 1)]
  eos_B1 = jnp.full((num_rows, 1), specials.eos, jnp.int32)
  ends = lambda x: jnp.concatenate([x, eos_B1], axis=1)  # noqa: E731
  no_B1 = jnp.zeros((num_rows, 1), bool)
  emit_eos_B1 = (n_B > 0)[:, None]
  # Inputs: kept tokens, one sentinel per noise span; targets: one sentinel per kept run, noise.
  inputs = noising.compact(ends(jnp.where(noise_BL, sentinel_BL, tokens_BL)), ends(tokens_BL),
                           jnp.concatenate([(real_BL & ~noise_BL) | first_noise_BL, emit_eos_B1], 1),
                           jnp.concatenate([jnp.zeros_like(noise_BL), no_B1], 1), in_len,
                           specials.pad)
  targets = noising.compact(
      ends(jnp.where(first_keep_BL, next_sentinel_BL, tokens_BL)), ends(tokens_BL),
      jnp.concatenate([first_keep_BL | noise_BL, emit_eos_B1], 1),
      jnp.concatenate([jnp.zeros_like(noise_BL), no_B1], 1), tgt_len, specials.pad)
  spans_B = jnp.sum(first_noise_BL, axis=1).astype(jnp.int32)
  noise_B = jnp.sum(noise_BL, axis=1).astype(jnp.int32)
  in_n_B = jnp.where(n_B > 0, n_B - noise_B + spans_B + 1, 0)
  tgt_n_B = jnp.where(n_B > 0, noise_B + jnp.sum(first_keep_BL, axis=1) + 1, 0)
  in_seg = (jnp.arange(in_len)[None, :] < in_n_B[:, None]).astype(jnp.int32)
  tgt_seg = (jnp.arange(tgt_len)[None, :] < tgt_n_B[:, None]).astype(jnp.int32)
  return {**batch, 'inputs': inputs, 'input_segment_ids': in_seg,
          'input_positions': noising.positions_of(in_seg), 'targets': targets,
          'target_segment_ids': tgt_seg, 'target_positions': noising.positions_of(tgt_seg),
          'weights': tgt_seg.astype(jnp.float32), 'noise_mask': noise_BL}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean target cross-entropy (+ z-loss) of the encoder–decoder, and its metrics."""
  return seq2seq.loss(params, batch, rng, model=model, specials=specials, z_loss=options.z_loss,
                      label_smoothing=options.label_smoothing,
                      loss_chunk_size=options.loss_chunk_size,
                      loss_grad_in_forward=options.loss_grad_in_forward)
