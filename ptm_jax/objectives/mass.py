"""MASS (Song et al. 2019, "MASS: Masked Sequence to Sequence Pre-training for Language
Generation", ICML, section 2.2 and 3.1), for the `encdec` family.

Recipe (on device, per packed document, dynamic per step):
  * the document's text tokens (all but its [CLS]/[SEP]) number m; a fragment of
    k = max(1, round(`fragment_rate` * m)) consecutive text tokens (k = 50 % of m, the paper's
    best, Figure 4) starts at a position drawn uniformly from the m - k + 1 possible ones;
  * encoder input: the fragment's tokens are [MASK] 80 % of the time, a random non-reserved id
    10 %, unchanged 10 % (per token, "the same as BERT", section 3.1); the rest is unchanged;
  * decoder (same length and positions as the encoder, "keeps the positions of the masked
    tokens"): its input at a fragment position t is the original token t - 1 (the fragment
    shifted right; the first one reads the token just before the fragment, which the encoder
    also sees, as the reference code's `x[start - 1 : end - 1]`); every other decoder input is
    [MASK] ("the tokens which are unmasked in the encoder are masked in the decoder");
  * loss = mean cross-entropy over the fragment tokens only.
Deviation: the reference trains on sentences of one language with language embeddings and
shares its encoder/decoder embeddings; here documents of packed rows, no language embedding
(monolingual), whatever the `encdec` variant shares.

Tests (tests/test_objectives_seq2seq.py): the fragment is contiguous, inside one document's
text, of length round(m / 2); its start is uniform; 80/10/10 inside the fragment, untouched
outside; decoder inputs are [MASK] off the fragment and the shifted fragment on it; weights are
exactly the fragment; runlocal loss falls.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ptm_jax.objectives import common, mlm, noising, seq2seq


# The loss adds a mixture-of-experts model's router losses (`seq2seq.loss`).
ADDS_MODEL_AUX_LOSS = True


@dataclasses.dataclass(frozen=True)
class Options:
  """MASS fragment and masking hyper-parameters."""

  fragment_rate: float = 0.5
  mask_token_rate: float = 0.8
  random_token_rate: float = 0.1
  label_smoothing: float = 0.0
  # > 0: the target loss chunk by chunk without [B, L, V] logits (seq2seq.loss). 0 = unchunked.
  loss_chunk_size: int = 0
  loss_grad_in_forward: bool = False  # the chunked loss's gradient in the forward (clm.Options)

  def __post_init__(self):
    common.check_loss_chunk_size('mass.Options', self.loss_chunk_size,
                                 self.loss_grad_in_forward)
    mlm.Options(0.15, self.mask_token_rate, self.random_token_rate)
    if not 0.0 < self.fragment_rate <= 1.0:
      raise ValueError(f'mass.Options.fragment_rate must be in (0, 1], got {self.fragment_rate}')


def fragment(rng, text_BL, segment_ids_BL, rate: float):
  """Boolean `[B, L]`: per segment, k = max(1, round(rate m)) consecutive text tokens."""
  num_rows, length = text_BL.shape
  index_BL = noising.within_segment_cumsum(text_BL, segment_ids_BL, exclusive=True)
  m_BL = noising.per_segment(noising.segment_sum(text_BL.astype(jnp.int32), segment_ids_BL),
                             segment_ids_BL)
  k_BL = jnp.maximum(jnp.round(m_BL * rate).astype(jnp.int32), 1)
  u_BL = noising.per_segment(jax.random.uniform(rng, (num_rows, length + 1)), segment_ids_BL)
  start_BL = jnp.floor(u_BL * (m_BL - k_BL + 1)).astype(jnp.int32)
  return text_BL & (index_BL >= start_BL) & (index_BL < start_BL + k_BL)


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Encoder `inputs` with the fragment masked, `decoder_inputs`, fragment `weights`."""
  tokens_BL = batch['tokens'].astype(jnp.int32)
  segment_ids_BL = batch['segment_ids'].astype(jnp.int32)
  frag_rng, action_rng, random_rng = jax.random.split(rng, 3)
  starts_BL = noising.segment_starts(segment_ids_BL)
  ends_BL = jnp.concatenate([starts_BL[:, 1:], jnp.ones_like(starts_BL[:, :1])], axis=1)
  text_BL = ((segment_ids_BL != 0) & ~(starts_BL & (tokens_BL == specials.bos))
             & ~(ends_BL & (tokens_BL == specials.eos)))
  frag_BL = fragment(frag_rng, text_BL, segment_ids_BL, options.fragment_rate)
  action_BL = jax.random.uniform(action_rng, tokens_BL.shape)
  to_mask_BL = frag_BL & (action_BL < options.mask_token_rate)
  to_random_BL = frag_BL & ~to_mask_BL & (
      action_BL < options.mask_token_rate + options.random_token_rate)
  inputs_BL = jnp.where(to_mask_BL, jnp.int32(specials.mask), tokens_BL)
  inputs_BL = jnp.where(to_random_BL, mlm.random_non_reserved(random_rng, tokens_BL.shape, specials),
                        inputs_BL)
  prev_BL = jnp.concatenate([jnp.full_like(tokens_BL[:, :1], specials.mask), tokens_BL[:, :-1]], 1)
  decoder_inputs_BL = jnp.where(frag_BL, prev_BL, jnp.int32(specials.mask))
  positions_BL = noising.positions_of(segment_ids_BL)
  return {**batch, 'inputs': inputs_BL, 'input_segment_ids': segment_ids_BL,
          'input_positions': positions_BL, 'targets': tokens_BL,
          'target_segment_ids': segment_ids_BL, 'target_positions': positions_BL,
          'decoder_inputs': decoder_inputs_BL, 'weights': frag_BL.astype(jnp.float32)}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean cross-entropy over the fragment tokens, and its metrics."""
  return seq2seq.loss(params, batch, rng, model=model, specials=specials,
                      label_smoothing=options.label_smoothing,
                      loss_chunk_size=options.loss_chunk_size,
                      loss_grad_in_forward=options.loss_grad_in_forward)
