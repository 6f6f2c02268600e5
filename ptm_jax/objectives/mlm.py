"""BERT masked language modelling (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", section 3.1 and appendix A.1).

Recipe (dynamic masking, re-drawn from the step rng on device, as RoBERTa does):
  * every position that is not padding (segment_ids == 0) and whose token is not in
    `specials.reserved` ([PAD], [UNK], [CLS], [SEP], [MASK], extras) is selected i.i.d. with
    probability `mask_rate` (0.15);
  * of the selected positions, `mask_token_rate` (80 %) become [MASK], `random_token_rate` (10 %)
    become a token drawn uniformly from the non-reserved ids of [0, vocab_size) (which may equal
    the original, as in the reference implementation), the rest (10 %) keep their token;
  * the loss is the cross-entropy at the selected positions only, averaged over them
    (sum / max(num_selected, 1)).
Selection is i.i.d. rather than an exact count (the expected rate is the same, shapes stay static).
With `sparse_logits` (default) the vocabulary projection runs only at the selected positions,
gathered into a static `[B, K]` slab with K = L*rate + 6 standard deviations of the binomial
count (`mlm_positions`); a row would need more than that many selections for one to be left
unscored (probability < 1e-8), so this is BERT's max_predictions_per_seq without its bias.
With `slab_rows` R > 1 the slab is shared by R consecutive rows (`[B/R, K_R]`, K_R from R*L
positions): the 6-standard-deviation margin grows as sqrt(R) instead of R, so fewer slots are
projected onto the vocabulary for the same loss (at 32 rows of 64 tokens, 406 slots for the batch
instead of 32 x 28 = 896). Choose R as a divisor of the rows each data shard holds, so a slab
never spans devices.

Tests (tests/test_objectives_mlm.py) check on >= 1e5 positions: the selection rate among
eligible positions is 0.15 +- 0.005; padding and reserved ids are never selected; the 80/10/10
split is within +-1.5 % absolute; random replacements are never reserved and roughly uniform;
the same rng gives the same mask and different rngs different ones; corrupt works under jit;
targets equal the original tokens; the loss equals a hand-computed weighted cross-entropy; a
slab holds exactly the selected positions, per row or shared (loss and gradients equal, also
over 8 devices).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ptm_jax.objectives import common


@dataclasses.dataclass(frozen=True)
class Options:
  """BERT masking rates; the keep rate is 1 - mask_token_rate - random_token_rate."""

  mask_rate: float = 0.15
  mask_token_rate: float = 0.8
  random_token_rate: float = 0.1
  sparse_logits: bool = True  # score only the selected positions (same loss, ~5x less vocab work)
  slab_rows: int = 1  # consecutive rows sharing one scored slab (must divide the batch)

  def __post_init__(self):
    if int(self.slab_rows) < 1:
      raise ValueError(f'mlm.Options.slab_rows must be >= 1 (rows per scored slab), '
                       f'got {self.slab_rows}')
    for name in ('mask_rate', 'mask_token_rate', 'random_token_rate'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'mlm.Options.{name} must be in [0, 1], got {getattr(self, name)}')
    if self.mask_token_rate + self.random_token_rate > 1.0 + 1e-9:
      raise ValueError('mlm.Options: mask_token_rate + random_token_rate must be <= 1, got '
                       f'{self.mask_token_rate} + {self.random_token_rate}')


def reserved_lookup(specials) -> jax.Array:
  """Boolean [vocab] table, True at the reserved ids (a gather is cheaper than comparing to each)."""
  reserved = [i for i in specials.reserved if 0 <= i < specials.vocab_size]
  return jnp.zeros((specials.vocab_size,), jnp.bool_).at[jnp.asarray(reserved, jnp.int32)].set(True)


def random_non_reserved(rng, shape, specials) -> jax.Array:
  """Int32 ids drawn uniformly from the non-reserved ids of [0, vocab_size)."""
  reserved = sorted(i for i in set(specials.reserved) if 0 <= i < specials.vocab_size)
  num_allowed = specials.vocab_size - len(reserved)
  if num_allowed <= 0:
    raise ValueError('every id of the vocabulary is reserved: nothing to sample')
  ids = jax.random.randint(rng, shape, 0, num_allowed, dtype=jnp.int32)
  # Maps the k-th draw to the k-th allowed id: step over each reserved id, in ascending order.
  for r in reserved:
    ids = ids + (ids >= r).astype(jnp.int32)
  return ids


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Adds BERT-masked `inputs`, `targets` (the original tokens) and `weights` (1.0 where selected)."""
  tokens_BL = batch['tokens'].astype(jnp.int32)
  eligible_BL = (batch['segment_ids'] != 0) & ~reserved_lookup(specials)[tokens_BL]
  select_rng, action_rng, random_rng = jax.random.split(rng, 3)
  selected_BL = eligible_BL & (jax.random.uniform(select_rng, tokens_BL.shape) < options.mask_rate)
  # One uniform per position decides mask / random / keep, so the three cases are exclusive.
  action_BL = jax.random.uniform(action_rng, tokens_BL.shape)
  to_mask_BL = selected_BL & (action_BL < options.mask_token_rate)
  to_random_BL = selected_BL & ~to_mask_BL & (
      action_BL < options.mask_token_rate + options.random_token_rate)
  random_BL = random_non_reserved(random_rng, tokens_BL.shape, specials)
  inputs_BL = jnp.where(to_mask_BL, jnp.int32(specials.mask), tokens_BL)
  inputs_BL = jnp.where(to_random_BL, random_BL, inputs_BL)
  out = {**batch, 'inputs': inputs_BL, 'targets': tokens_BL,
         'weights': selected_BL.astype(jnp.float32)}
  if options.sparse_logits:
    out.update(gather_selected(selected_BL, tokens_BL, options.mask_rate, options.slab_rows))
  return out


def max_predictions(length: int, rate: float) -> int:
  """Static cap on scored positions per row: mean + 6 std of Binomial(length, rate)."""
  mean, std = length * rate, math.sqrt(length * rate * (1.0 - rate))
  return int(min(length, math.ceil(mean + 6.0 * std + 1)))


def gather_selected(selected_BL, tokens_BL, rate: float, slab_rows: int = 1
                    ) -> dict[str, jax.Array]:
  """The selected positions of each slab of `slab_rows` consecutive rows (laid end to end: slot
  p of slab g is row g * slab_rows + p // L, position p % L), first K of them, padded with weight
  0: `[B / slab_rows, K]` each (`layers.embeddings.gather_slab` reads hidden states there)."""
  num_rows, length = selected_BL.shape
  if num_rows % slab_rows:
    raise ValueError(f'mlm slab_rows={slab_rows} must divide the batch of {num_rows} rows; set '
                     '--config.objective.slab_rows to a divisor of the rows per data shard')
  width = slab_rows * length
  selected_GW = selected_BL.reshape(num_rows // slab_rows, width)
  tokens_GW = tokens_BL.reshape(num_rows // slab_rows, width)
  return gather_first(selected_GW, tokens_GW, max_predictions(width, rate))


def gather_first(selected_BW, tokens_BW, k: int) -> dict[str, jax.Array]:
  """The first k selected positions of each row of `[B, W]`, padded with weight 0: mlm_* `[B, k]`
  (the slab of every sparse-logits objective: MLM, whole words, ERNIE, SpanBERT, UniLM, GLM)."""
  width = selected_BW.shape[1]
  order = jnp.arange(width, dtype=jnp.int32)
  # Selected positions sort first (keys < width), in order; unselected ones after them.
  positions_BK = jnp.argsort(jnp.where(selected_BW, order, order + width), axis=1)[:, :k]
  return {'mlm_positions': positions_BK.astype(jnp.int32),
          'mlm_weights': jnp.take_along_axis(selected_BW, positions_BK, axis=1).astype(jnp.float32),
          'mlm_targets': jnp.take_along_axis(tokens_BW, positions_BK, axis=1)}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean cross-entropy over the masked positions of an already corrupted batch, and its metrics."""
  del specials, options  # The recipe lives in corrupt; the loss is the plain masked-position CE.
  sparse = 'mlm_positions' in batch
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch.get('token_types'),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    **({'logits_positions': batch['mlm_positions']} if sparse else {}))
  if sparse:
    return common.lm_loss_and_metrics(out['logits'], batch['mlm_targets'], batch['mlm_weights'])
  return common.lm_loss_and_metrics(out['logits'], batch['targets'], batch['weights'])
