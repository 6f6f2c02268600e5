"""Whole-word masking (Google BERT release of 2019-05-31, "BERT-wwm"; Cui et al. 2019/2021,
"Pre-Training with Whole Word Masking for Chinese BERT").

Recipe: BERT's MLM (objectives/mlm.py) with the word, not the piece, as the masking unit:
  * words come from the batch's `word_ids` `[B, L]` (data.annotations=('words',)): tokens of one
    word share an id, 0 on padding and [CLS]/[SEP]. English: a sentencepiece word is a '▁'-initial
    piece and its continuations; Chinese (people_daily_zh `words`): the corpus segmentation, each
    word tokenized on its own (see data/annotate.py);
  * every word that holds an eligible token (not padding, not reserved) is selected i.i.d. with
    probability `mask_rate` (0.15), so 15 % of tokens are selected in expectation whatever the
    word lengths; all pieces of a selected word are predicted;
  * 80/10/10 is decided once per word: all its pieces become [MASK] (80 %), or each piece becomes
    a random non-reserved id (10 %), or the word is kept (10 %);
  * loss: cross-entropy at the selected pieces, averaged over them (mlm.loss).
Deviations: selection is i.i.d. per word (an expected, not exact, 15 % -- as mlm.py); the BERT
release fills an exact count of max_predictions_per_seq with a shuffled word list. With
`sparse_logits` only the first K selected pieces of a row are scored, K = L*rate + 6 sd of the
count with words of up to 4 pieces (`max_unit_predictions`); more would be needed with
probability < 1e-6 per row.
Tests (tests/test_objectives_spans.py) check on >= 1e5 tokens: token rate 0.15 +- 0.01; every word
fully selected or not; padding/reserved never selected; 80/10/10 per word (a word's pieces share
the action); dense and sparse losses agree; the runlocal experiment's loss falls.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ptm_jax.objectives import mlm


@dataclasses.dataclass(frozen=True)
class Options:
  """Whole-word masking rates (as mlm.Options; the unit is the word)."""

  mask_rate: float = 0.15
  mask_token_rate: float = 0.8
  random_token_rate: float = 0.1
  sparse_logits: bool = True

  def __post_init__(self):
    mlm.Options(self.mask_rate, self.mask_token_rate, self.random_token_rate)  # same validation


def require(batch, key: str, objective: str) -> jax.Array:
  """batch[key], or a one-line error naming the data.annotations the objective needs."""
  if key not in batch:
    need = {'word_ids': 'words', 'phrase_ids': 'phrases', 'entity_ids': 'entities'}[key]
    raise ValueError(f"objective {objective!r} needs batch[{key!r}]: set "
                     f"data.annotations to include {need!r}")
  return batch[key].astype(jnp.int32)


def max_unit_predictions(length: int, rate: float, max_unit_tokens: float = 4.0) -> int:
  """Static cap on scored positions when whole units of <= max_unit_tokens tokens are selected."""
  # Var(count) = sum_u rate (1 - rate) |u|^2 <= L rate (1 - rate) max|u|.
  mean, std = length * rate, math.sqrt(length * rate * (1.0 - rate) * max_unit_tokens)
  return int(min(length, math.ceil(mean + 6.0 * std + 1)))


# The first k selected positions of each row, padded with weight 0: mlm_* arrays `[B, k]`.
gather_selected = mlm.gather_first


def mask_units(rng, batch, unit_BL, num_units: int, *, specials, options, sparse_k: int | None):
  """Selects whole units i.i.d. and applies 80/10/10 per unit.

  `unit_BL` int32 in [0, num_units): tokens sharing a value form one unit; 0 = never selected.
  """
  tokens_BL = batch['tokens'].astype(jnp.int32)
  eligible_BL = ((batch['segment_ids'] != 0) & ~mlm.reserved_lookup(specials)[tokens_BL]
                 & (unit_BL > 0))
  select_rng, action_rng, random_rng = jax.random.split(rng, 3)
  shape_BU = (tokens_BL.shape[0], num_units)
  # One uniform per unit, read by each of its tokens: a unit is selected (and acted on) whole.
  chosen_BL = jnp.take_along_axis(jax.random.uniform(select_rng, shape_BU), unit_BL, axis=1)
  action_BL = jnp.take_along_axis(jax.random.uniform(action_rng, shape_BU), unit_BL, axis=1)
  selected_BL = eligible_BL & (chosen_BL < options.mask_rate)
  to_mask_BL = selected_BL & (action_BL < options.mask_token_rate)
  to_random_BL = selected_BL & ~to_mask_BL & (
      action_BL < options.mask_token_rate + options.random_token_rate)
  random_BL = mlm.random_non_reserved(random_rng, tokens_BL.shape, specials)
  inputs_BL = jnp.where(to_mask_BL, jnp.int32(specials.mask), tokens_BL)
  inputs_BL = jnp.where(to_random_BL, random_BL, inputs_BL)
  out = {**batch, 'inputs': inputs_BL, 'targets': tokens_BL,
         'weights': selected_BL.astype(jnp.float32)}
  if sparse_k:
    out.update(gather_selected(selected_BL, tokens_BL, sparse_k))
  return out


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Adds whole-word-masked `inputs`, `targets`, `weights` (+ sparse mlm_* slabs)."""
  word_BL = require(batch, 'word_ids', 'wwm')
  length = word_BL.shape[1]
  k = max_unit_predictions(length, options.mask_rate) if options.sparse_logits else None
  return mask_units(rng, batch, word_BL, length + 1, specials=specials, options=options, sparse_k=k)


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean cross-entropy over the selected pieces (mlm.loss)."""
  del options
  return mlm.loss(params, batch, rng, model=model, specials=specials)
