"""Token tagging fine-tuning (Devlin et al. 2019, section 4.3: NER as per-token classification).

Recipe: the family model is the submodule `backbone` (so a params-only restore of a pretraining run
lands in `params['backbone']`); the head is dropout(`dropout_rate`) -> dense(num_tags) on every
hidden state. The loss is the mean cross-entropy over the tagged positions (`tag_weights`: 1 on the
text tokens, 0 on [CLS]/[SEP]/padding), tags are BIO (`O`=0, then B-/I- pairs per entity type,
`data/sources/downstream.NER_TAGS` order).

Besides token accuracy, the metrics carry entity-level counts (conlleval semantics: a chunk starts at
a B- tag, or at an I- tag whose left neighbour is not of the same type; a predicted entity is
correct when the gold has an entity with the same start, end and type). They are `num_*` counters,
so evaluation sums them over the split and `derive_metrics` turns the sums into precision, recall
and entity F1 (micro-averaged), the task's selection metric.

Tests (tests/test_tagging.py): chunk extraction and counts on worked BIO examples (including an
I- after O and adjacent same-type entities), F1 from summed counts equals F1 over the whole split,
the loss ignores untagged positions, and a fine-tune on pd_ner_zh runs end to end.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptm_jax import models
from ptm_jax.objectives import common


@dataclasses.dataclass(frozen=True)
class Options:
  """Tagging head hyper-parameters."""

  num_tags: int = 7  # O + B/I for each entity type
  dropout_rate: float = 0.1

  def __post_init__(self):
    if self.num_tags < 3 or self.num_tags % 2 == 0:
      raise ValueError(f'tag.Options.num_tags must be 1 + 2 * (entity types) (BIO), got {self.num_tags}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'tag.Options.dropout_rate must be in [0, 1), got {self.dropout_rate}')


class Tagger(nn.Module):
  """backbone (a family Model) + dropout + per-token dense head -> {'logits': [B, L, T] float32}."""

  backbone: nn.Module
  options: Options

  @nn.compact
  def __call__(self, tokens, *, segment_ids, positions, token_types=None, deterministic: bool = True,
               **unused):
    del unused
    out = self.backbone(tokens, segment_ids=segment_ids, positions=positions,
                        token_types=token_types, deterministic=deterministic)
    hidden_BLD = nn.Dropout(self.options.dropout_rate)(out['hidden'], deterministic=deterministic)
    logits_BLT = nn.Dense(
        self.options.num_tags, dtype=jnp.float32, param_dtype=jnp.float32, name='head',
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ('embed', None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(
            hidden_BLD.astype(jnp.float32))
    return {'logits': logits_BLT}


def build_model(family: str, variant: str, fields: dict[str, Any], options: Options) -> Tagger:
  """The family model at `variant` with `fields` overrides, wrapped with the tagging head."""
  return Tagger(backbone=models.build(family, variant, **fields), options=options)


def chunk_flags(tags_BL: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """BIO ids -> (entity type per position (0 = outside), chunk starts, chunk ends), each `[B, L]`."""
  tags_BL = tags_BL.astype(jnp.int32)
  type_BL = (tags_BL + 1) // 2  # O -> 0, B-k/I-k -> k
  is_begin_BL = (tags_BL % 2 == 1)
  zeros_B1 = jnp.zeros_like(type_BL[:, :1])
  prev_type_BL = jnp.concatenate([zeros_B1, type_BL[:, :-1]], axis=1)
  inside_BL = type_BL > 0
  start_BL = inside_BL & (is_begin_BL | (prev_type_BL != type_BL))
  next_start_BL = jnp.concatenate([start_BL[:, 1:], jnp.zeros_like(start_BL[:, :1])], axis=1)
  next_type_BL = jnp.concatenate([type_BL[:, 1:], zeros_B1], axis=1)
  end_BL = inside_BL & ((next_type_BL != type_BL) | next_start_BL)
  return type_BL, start_BL, end_BL


def entity_counts(pred_BL: jnp.ndarray, gold_BL: jnp.ndarray, weights_BL: jnp.ndarray
                  ) -> dict[str, jnp.ndarray]:
  """Entity-level counts: predicted, gold, and exactly matched chunks (float32 scalars).

  Untagged positions (weight 0) count as `O` on both sides. A predicted chunk is correct iff every
  position it covers agrees with the gold on (type, starts-here, ends-here): then the gold has the
  same chunk, and no gold chunk starts or ends inside it.
  """
  on_BL = weights_BL > 0
  pred_BL = jnp.where(on_BL, pred_BL, 0)
  gold_BL = jnp.where(on_BL, gold_BL, 0)
  p_type, p_start, p_end = chunk_flags(pred_BL)
  g_type, g_start, g_end = chunk_flags(gold_BL)
  agree_BL = (p_type == g_type) & (p_start == g_start) & (p_end == g_end)
  length = pred_BL.shape[1]
  # Chunk ids 1..n per row (0 = outside any predicted chunk); count disagreements per chunk.
  chunk_id_BL = jnp.where(p_type > 0, jnp.cumsum(p_start, axis=1), 0)

  def per_row(ids_L, disagree_L):
    return jax.ops.segment_sum(disagree_L, ids_L, num_segments=length + 1)

  disagree_BC = jax.vmap(per_row)(chunk_id_BL, (~agree_BL).astype(jnp.int32))
  chunk_exists_BC = jnp.arange(length + 1)[None, :] <= jnp.sum(p_start, axis=1)[:, None]
  correct_BC = chunk_exists_BC & (disagree_BC == 0) & (jnp.arange(length + 1)[None, :] > 0)
  return {'num_pred_entities': jnp.sum(p_start).astype(jnp.float32),
          'num_gold_entities': jnp.sum(g_start).astype(jnp.float32),
          'num_correct_entities': jnp.sum(correct_BC).astype(jnp.float32)}


def derive_metrics(totals: dict[str, float]) -> dict[str, float]:
  """Micro precision / recall / entity F1 from counts summed over a whole split."""
  pred = totals.get('num_pred_entities', 0.0)
  gold = totals.get('num_gold_entities', 0.0)
  correct = totals.get('num_correct_entities', 0.0)
  precision = correct / pred if pred else 0.0
  recall = correct / gold if gold else 0.0
  f1 = 2 * correct / (pred + gold) if pred + gold else 0.0
  return {'precision': precision, 'recall': recall, 'f1': f1}


def corrupt(rng, batch, *, specials=None, options: Options = Options()):
  """Identity: the targets are the per-token tags, weighted by `tag_weights`."""
  del rng, specials, options
  return {**batch, 'inputs': batch['tokens'], 'targets': batch['tag_labels'],
          'weights': jnp.asarray(batch['tag_weights'], jnp.float32)}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean per-token cross-entropy over tagged positions, token accuracy and entity counts."""
  del specials, options
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch.get('token_types'),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng})
  value, metrics = common.lm_loss_and_metrics(out['logits'], batch['targets'], batch['weights'])
  pred_BL = jnp.argmax(out['logits'], axis=-1)
  metrics.update(entity_counts(pred_BL, batch['targets'], batch['weights']))
  return value, metrics
