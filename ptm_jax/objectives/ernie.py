"""ERNIE knowledge masking (Sun et al. 2019, "ERNIE: Enhanced Representation through Knowledge
Integration", Baidu; section 3.2).

Recipe: BERT's MLM where the masking unit depends on the level:
  * basic: a token (Chinese: ERNIE masks characters; `basic_unit='token'`) or a word
    (English, `basic_unit='word'`, from `word_ids`);
  * phrase: every phrase (`phrase_ids`) is one unit; tokens outside phrases stay basic units;
  * entity: every named entity (`entity_ids`) is one unit; tokens outside entities stay basic.
  Units are selected i.i.d. with probability `mask_rate` (0.15: 15 % of tokens in expectation),
  80/10/10 decided per unit (all [MASK] / each piece random / kept); the loss is the
  cross-entropy at the selected tokens (mlm.loss).
Where phrases and entities come from (data/annotate.py, data.annotations=('words', 'phrases',
'entities')): Chinese (people_daily_zh `words`): entities are `nr`/`ns`/`nt` words and compounds
(surname + given name joined), phrases are annotated compounds and runs of 2-4 nominal/modifier
words of the segmentation; English: entities are runs of Capitalised words not at a sentence
start, phrases are PMI collocations mined from the train split.

Schedule -- design choice: `corrupt` stays a pure function of (rng, batch), so the level is not
read from the step. Each row draws its level from `level_probs` = (basic, phrase, entity). The
paper's three learning stages are three runs of the same workdir, each resuming the last:
`experiments/ernie.py:base:stage1` (level_probs=(1, 0, 0), stop_at=s1), `:stage2` ((0, 1, 0),
stop_at=s2) and `:stage3` ((0, 0, 1), to the end); the runlocal/default config mixes the three
levels per row in one run. A resumed run restores params, optimizer and data position; only the
objective options change.
Deviations: the paper does not give its stage lengths nor the phrase/entity annotator (Baidu's
lexical analysis); the heuristics above stand in for them. Selection is i.i.d. per unit (an
expected rate), as mlm.py and wwm.py.
Tests (tests/test_objectives_spans.py) check: entity level selects whole entities (nr/ns/nt groups
on a Chinese snippet, Capitalised spans on English) and phrase level whole phrases; the token
rate is 0.15 +- 0.01 at every level; the per-row mixture follows level_probs; the runlocal
experiment's loss falls.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ptm_jax.objectives import mlm, wwm

LEVELS = ('basic', 'phrase', 'entity')


@dataclasses.dataclass(frozen=True)
class Options:
  """Rates as BERT; `level_probs` is the per-row mixture of (basic, phrase, entity) masking."""

  mask_rate: float = 0.15
  mask_token_rate: float = 0.8
  random_token_rate: float = 0.1
  level_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
  basic_unit: str = 'word'  # 'word' (English) | 'token' (Chinese characters)
  sparse_logits: bool = True
  max_unit_tokens: float = 6.0  # sizes the sparse slab (entities/phrases are longer than words)

  def __post_init__(self):
    mlm.Options(self.mask_rate, self.mask_token_rate, self.random_token_rate)
    probs = tuple(self.level_probs)
    if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
      raise ValueError(f'ernie.Options.level_probs must be 3 probabilities (basic, phrase, entity) '
                       f'summing to 1, got {self.level_probs}')
    if self.basic_unit not in ('word', 'token'):
      raise ValueError(f"ernie.Options.basic_unit must be 'word' or 'token', got {self.basic_unit!r}")


def units(level_B, batch, basic_unit: str) -> jax.Array:
  """Unit id `[B, L]` in [0, 3L + 1): basic ids in [1, L], phrases L + id, entities 2L + id."""
  tokens_BL = batch['tokens']
  length = tokens_BL.shape[1]
  if basic_unit == 'token':
    basic_BL = jnp.broadcast_to(jnp.arange(1, length + 1, dtype=jnp.int32), tokens_BL.shape)
  else:
    basic_BL = wwm.require(batch, 'word_ids', 'ernie')
  level_BL = jnp.broadcast_to(level_B[:, None], tokens_BL.shape)
  unit_BL = basic_BL
  knowledge = {1: 'phrase_ids', 2: 'entity_ids'}
  for level, key in knowledge.items():
    if key in batch:
      ids_BL = batch[key].astype(jnp.int32)
      unit_BL = jnp.where((level_BL == level) & (ids_BL > 0), level * length + ids_BL, unit_BL)
  return unit_BL


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Knowledge-masked `inputs`, `targets`, `weights` (+ `mask_level` `[B]`, sparse mlm_* slabs)."""
  probs = jnp.asarray(options.level_probs, jnp.float32)
  for level, key in ((1, 'phrase_ids'), (2, 'entity_ids')):
    if options.level_probs[level] > 0:
      wwm.require(batch, key, 'ernie')
  level_rng, mask_rng = jax.random.split(rng)
  num_rows, length = batch['tokens'].shape
  level_B = jax.random.categorical(level_rng, jnp.log(probs), shape=(num_rows,)).astype(jnp.int32)
  unit_BL = units(level_B, batch, options.basic_unit)
  k = (wwm.max_unit_predictions(length, options.mask_rate, options.max_unit_tokens)
       if options.sparse_logits else None)
  out = wwm.mask_units(mask_rng, batch, unit_BL, 3 * length + 1, specials=specials,
                       options=options, sparse_k=k)
  out['mask_level'] = level_B
  return out


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean cross-entropy over the selected tokens (mlm.loss)."""
  del options
  return mlm.loss(params, batch, rng, model=model, specials=specials)
