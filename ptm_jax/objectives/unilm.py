"""UniLM (Dong et al. 2019, "Unified Language Model Pre-training for Natural Language
Understanding and Generation", NeurIPS): one shared Transformer (the `encoder` family, BERT-style)
trained on cloze tasks under four self-attention masks.

Recipe (on device, dynamic per step, packed rows of documents):
  * LM type per row, stratified so every batch holds the paper's mix ("within one training batch,
    1/3 of the time bidirectional LM, 1/3 sequence-to-sequence LM, 1/6 left-to-right, 1/6
    right-to-left"): rows are ranked by a random permutation and row r of B takes the type whose
    cumulative share contains (r + 1/2) / B;
  * masks (AND-ed with the encoder's padding and same-document masks): bidirectional = all;
    left-to-right = keys j <= i; right-to-left = keys j >= i; seq2seq = each document is split at
    a point drawn uniformly from 1..n-1 into source (first part) and target (rest): source tokens
    see the source, target tokens see the source and the target up to themselves
    (`masks.prefix_mask` of the source flags);
  * segment (token-type) embeddings also identify the LM, as the reference code's
    `new_segment_ids` (type_vocab_size 6): bidirectional 0, left-to-right 2, right-to-left 3,
    seq2seq source 4 / target 5 (1 = BERT's sentence B is unused: no NSP, see below);
  * cloze masking as the paper: 15 % of the tokens (`mask_rate`), 80 % of the masked units a single
    token and 20 % a bigram or trigram (`ngram_rate`, half each); of the masked tokens 80 % become
    [MASK], 10 % a random non-reserved id, 10 % stay; seq2seq rows are masked in both parts, as
    the paper's pre-training ("randomly choose tokens in both segments");
  * loss = mean cross-entropy over the masked tokens of all rows, with the encoder's tied MLM head
    (the shared network has one softmax for every LM type).
Placement of the masked units (static shapes): a renewal process of units (lengths 1/2/3 with
probabilities 0.8/0.1/0.1) separated by Geometric gaps of >= 1 token, so every token is masked
with probability exactly `mask_rate` before units are clipped at padding, reserved ids and
document boundaries; units never touch (the reference draws positions without that constraint).
Deviations: no NSP for the bidirectional rows (rows are packed single documents, RoBERTa-style),
and per-row (not per-batch) LM types so one batch mixes all four.

Tests (tests/test_objectives_unified.py): the per-batch type mix; masked-token rate 0.15 +- 0.01
and unit lengths 1/2/3 at 0.8/0.1/0.1; 80/10/10; through gradients of the encoder output w.r.t.
its input embeddings, each type's dependency pattern equals its mask exactly; token types per
type; the runlocal run lowers its loss.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax.layers import masks
from ptm_jax.objectives import common, mlm, noising, prefix_lm, wwm

BIDIRECTIONAL, SEQ2SEQ, LEFT_TO_RIGHT, RIGHT_TO_LEFT = 0, 1, 2, 3
MODE_NAMES = ('bidirectional', 'seq2seq', 'left_to_right', 'right_to_left')


@dataclasses.dataclass(frozen=True)
class Options:
  """UniLM cloze masking and LM-type mix."""

  mask_rate: float = 0.15
  mask_token_rate: float = 0.8
  random_token_rate: float = 0.1
  ngram_rate: float = 0.2  # share of masked units that are bigrams or trigrams (half each)
  # Shares of bidirectional, seq2seq, left-to-right, right-to-left rows.
  mode_probs: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 6, 1 / 6)
  type_ids: bool = True  # token types identify the LM type (needs model.type_vocab_size >= 6)
  sparse_logits: bool = True

  def __post_init__(self):
    mlm.Options(self.mask_rate, self.mask_token_rate, self.random_token_rate)
    if len(self.mode_probs) != 4 or min(self.mode_probs) < 0 or abs(sum(self.mode_probs) - 1) > 1e-6:
      raise ValueError(f'unilm.Options.mode_probs must be 4 shares (bidirectional, seq2seq, '
                       f'left_to_right, right_to_left) summing to 1, got {self.mode_probs}')
    if not 0.0 <= self.ngram_rate < 1.0:
      raise ValueError(f'unilm.Options.ngram_rate must be in [0, 1), got {self.ngram_rate}')

  def unit_probs(self) -> np.ndarray:
    """P(masked unit = k tokens), k = 0..3."""
    return np.asarray([0.0, 1.0 - self.ngram_rate, self.ngram_rate / 2, self.ngram_rate / 2])


def sample_modes(rng, num_rows: int, mode_probs) -> jax.Array:
  """Int32 `[B]` LM type per row, stratified: the batch holds each share up to rounding."""
  rank_B = jnp.argsort(jax.random.uniform(rng, (num_rows,)))
  quantile_B = (rank_B.astype(jnp.float32) + 0.5) / num_rows
  edges = jnp.asarray(np.cumsum(mode_probs)[:-1], jnp.float32)
  return jnp.searchsorted(edges, quantile_B, side='right').astype(jnp.int32)


def attention_mask(mode_B, source_BL) -> jax.Array:
  """Boolean `[B, 1, L, L]`: each row's LM mask (documents are separated by the encoder)."""
  length = source_BL.shape[1]
  causal = masks.causal_mask(length)  # [1, 1, L, L]
  anti = jnp.swapaxes(causal, -1, -2)
  seq2seq = masks.prefix_mask(source_BL)
  m = mode_B[:, None, None, None]
  return jnp.where(m == BIDIRECTIONAL, True,
                   jnp.where(m == SEQ2SEQ, seq2seq, jnp.where(m == LEFT_TO_RIGHT, causal, anti)))


def token_types(mode_B, source_BL) -> jax.Array:
  """The reference's `new_segment_ids`: 0 bidirectional, 2 / 3 left / right-to-left, 4 / 5 s2s."""
  m = mode_B[:, None]
  s2s = jnp.where(source_BL, 4, 5)
  return jnp.where(m == BIDIRECTIONAL, 0,
                   jnp.where(m == SEQ2SEQ, s2s, jnp.where(m == LEFT_TO_RIGHT, 2, 3))).astype(jnp.int32)


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Cloze-masked `inputs`, `targets`, `weights`, `lm_mode` `[B]`, `source_flags`, token types."""
  tokens_BL = batch['tokens'].astype(jnp.int32)
  segment_ids_BL = batch['segment_ids'].astype(jnp.int32)
  num_rows, length = tokens_BL.shape
  mode_rng, split_rng, span_rng, action_rng, random_rng = jax.random.split(rng, 5)
  mode_B = sample_modes(mode_rng, num_rows, options.mode_probs)
  source_BL = prefix_lm.split_prefix(split_rng, segment_ids_BL, noising.positions_of(segment_ids_BL))
  source_BL = source_BL & (mode_B == SEQ2SEQ)[:, None]
  eligible_BL = (segment_ids_BL != 0) & ~mlm.reserved_lookup(specials)[tokens_BL]
  spans = noising.sample_spans(span_rng, num_rows, length, options.unit_probs(), options.mask_rate)
  selected_BL = noising.clip_spans(spans, eligible_BL, segment_ids_BL)['masked']
  action_BL = jax.random.uniform(action_rng, tokens_BL.shape)
  to_mask_BL = selected_BL & (action_BL < options.mask_token_rate)
  to_random_BL = selected_BL & ~to_mask_BL & (
      action_BL < options.mask_token_rate + options.random_token_rate)
  inputs_BL = jnp.where(to_mask_BL, jnp.int32(specials.mask), tokens_BL)
  inputs_BL = jnp.where(to_random_BL, mlm.random_non_reserved(random_rng, tokens_BL.shape, specials),
                        inputs_BL)
  out = {**batch, 'inputs': inputs_BL, 'targets': tokens_BL,
         'weights': selected_BL.astype(jnp.float32), 'lm_mode': mode_B,
         'source_flags': source_BL.astype(jnp.int32)}
  if options.type_ids:
    out['token_types'] = token_types(mode_B, source_BL)
  if options.sparse_logits:
    k = wwm.max_unit_predictions(length, options.mask_rate, 3.0)
    out.update(wwm.gather_selected(selected_BL, tokens_BL, k))
  return out


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean cross-entropy over the masked tokens under each row's mask; per-type losses too."""
  del specials
  types = getattr(getattr(model, 'config', None), 'type_vocab_size', 6)
  if options.type_ids and types < 6:
    raise ValueError(f'unilm token types need model.type_vocab_size >= 6 (got {types}): set '
                     '--config.model.type_vocab_size=6 or --config.objective.type_ids=False')
  sparse = 'mlm_positions' in batch
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch.get('token_types'),
                    attention_mask=attention_mask(batch['lm_mode'], batch['source_flags']),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    **({'logits_positions': batch['mlm_positions']} if sparse else {}))
  targets = batch['mlm_targets'] if sparse else batch['targets']
  weights = batch['mlm_weights'] if sparse else batch['weights']
  total, metrics = common.lm_loss_and_metrics(out['logits'], targets, weights)
  for mode, name in enumerate(MODE_NAMES):
    w = weights * (batch['lm_mode'] == mode)[:, None].astype(jnp.float32)
    sum_loss, sum_w, _ = common.weighted_cross_entropy(out['logits'], targets, w)
    metrics[f'loss_{name}'] = sum_loss / jnp.maximum(sum_w, 1.0)
  return total, metrics
