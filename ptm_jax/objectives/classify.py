"""Sequence classification fine-tuning (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding", section 4.1; Radford et al. 2018 for the
decoder variant).

Recipe: the family model (any `ptm_jax.models` family, built with its pretraining fields) is the
submodule `backbone`, so a params-only restore of a pretraining run lands in `params['backbone']`;
the head is dropout(`dropout_rate`) -> dense(num_classes) over one vector per sequence:
  * pooling='cls': the encoder's `pooled` output (BERT: tanh(dense(h_[CLS]))); for
    backbone='decoder' the last real token's hidden state (the only position that saw the whole text);
  * pooling='mean': the mean of `hidden` over the real tokens (segment_ids != 0), padding ignored.
The loss is the label_weight-weighted mean cross-entropy over examples; padding rows (label_weight
0, used to complete evaluation passes) contribute nothing. Packed rows (`data.pack_examples`,
data/sources/task_packing.py) hold several examples, labels `[B, K]`: each segment is pooled on its
own (its mean, its [CLS] through the pooler, or its last token) and scored against its slot.

Tests (tests/test_classify.py): the loss equals a hand-computed weighted CE and ignores weight-0 rows;
mean pooling is invariant to what sits in padded positions; a params-only init from an encoder
checkpoint fills `params['backbone']`. tests/test_task_packing.py: packed logits equal unpacked ones
for every pooling and backbone, and no example's loss has a gradient from another's tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ptm_jax import models
from ptm_jax.objectives import common

POOLINGS = ('cls', 'mean')
BACKBONES = ('encoder', 'decoder')


@dataclasses.dataclass(frozen=True)
class Options:
  """Classification head hyper-parameters."""

  num_classes: int = 2
  pooling: str = 'cls'  # 'cls' | 'mean'
  dropout_rate: float = 0.1  # head dropout (the backbone keeps its own model.dropout_rate)
  backbone: str = 'encoder'  # 'encoder' | 'decoder': which token 'cls' pooling reads

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f'classify.Options.num_classes must be >= 2, got {self.num_classes}')
    if self.pooling not in POOLINGS:
      raise ValueError(f'classify.Options.pooling must be one of {POOLINGS}, got {self.pooling!r}')
    if self.backbone not in BACKBONES:
      raise ValueError(f'classify.Options.backbone must be one of {BACKBONES}, got {self.backbone!r}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'classify.Options.dropout_rate must be in [0, 1), got {self.dropout_rate}')


def pool(out: dict[str, Any], segment_ids_BL, options: Options, num_slots: int = 0,
         pooler=None):
  """One float32 vector per row `[B, D]` (num_slots=0), or per packed example `[B, K, D]`.

  With `num_slots = K`, slot k pools segment k + 1 of the row (data.pack_examples): the mean over
  its tokens, its first token (encoders: through the backbone's `pooler`, BERT's tanh(dense(.)))
  or its last token (decoders). An unpacked row is one segment, so K = 1 gives the unpacked values.
  """
  hidden_BLD = out['hidden'].astype(jnp.float32)
  if not num_slots:
    if options.pooling == 'cls' and options.backbone == 'encoder' and 'pooled' in out:
      return out['pooled'].astype(jnp.float32)  # the backbone already pooled position 0
    # Every real token is the row's one example, whatever its segment id.
    return pool(out, jnp.minimum(segment_ids_BL, 1), options, 1, pooler)[:, 0]
  slot_ids_K = jnp.arange(1, num_slots + 1, dtype=segment_ids_BL.dtype)
  in_slot_BLK = (segment_ids_BL[:, :, None] == slot_ids_K[None, None, :]).astype(jnp.float32)
  if options.pooling == 'mean':
    summed_BKD = jnp.einsum('bld,blk->bkd', hidden_BLD, in_slot_BLK)
    return summed_BKD / jnp.maximum(in_slot_BLK.sum(axis=1), 1.0)[..., None]
  length = segment_ids_BL.shape[1]
  if options.backbone == 'decoder':  # the last token of each segment saw the whole example
    at_BK = jnp.argmax(in_slot_BLK * jnp.arange(1, length + 1, dtype=jnp.float32)[None, :, None],
                       axis=1)
  else:  # the first token ([CLS]) of each segment; 0 for an empty slot
    at_BK = jnp.argmax(in_slot_BLK, axis=1)
  picked_BKD = jnp.take_along_axis(hidden_BLD, at_BK[..., None], axis=1)
  if options.backbone == 'encoder' and 'pooled' in out and pooler is not None:
    b, k, d = picked_BKD.shape
    return pooler(picked_BKD.reshape(b * k, 1, d)).reshape(b, k, -1).astype(jnp.float32)
  return picked_BKD


class Classifier(nn.Module):
  """backbone (a family Model) + dropout + dense head; returns {'logits': [B, C] float32, ...}.

  `num_slots = K > 0` (packed rows, label `[B, K]`): logits `[B, K, C]`, one per packed example.
  """

  backbone: nn.Module
  options: Options

  @nn.compact
  def __call__(self, tokens, *, segment_ids, positions, token_types=None, deterministic: bool = True,
               num_slots: int = 0, **unused):
    del unused
    out = self.backbone(tokens, segment_ids=segment_ids, positions=positions,
                        token_types=token_types, deterministic=deterministic)
    features = pool(out, segment_ids, self.options, num_slots,
                    getattr(self.backbone, 'pool', None) if num_slots else None)
    features = nn.Dropout(self.options.dropout_rate)(features, deterministic=deterministic)
    logits = nn.Dense(
        self.options.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name='head',
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ('embed', None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(features)
    return {'logits': logits, 'features': features}


def build_model(family: str, variant: str, fields: dict[str, Any], options: Options) -> Classifier:
  """The family model at `variant` with `fields` overrides, wrapped with the classification head."""
  return Classifier(backbone=models.build(family, variant, **fields), options=options)


def corrupt(rng, batch, *, specials=None, options: Options = Options()):
  """Identity: the task is the label; `weights` is the row's label_weight (0 on padding rows)."""
  del rng, specials, options
  weights_B = batch.get('label_weight')
  if weights_B is None:
    weights_B = jnp.ones(batch['label'].shape, jnp.float32)
  return {**batch, 'inputs': batch['tokens'], 'targets': batch['label'],
          'weights': jnp.asarray(weights_B, jnp.float32)}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Weighted mean cross-entropy over examples, and {'loss', 'accuracy', 'num_targets'}.

  Targets `[B]` (one example per row) or `[B, K]` (packed rows: one per slot).
  """
  del specials, options
  targets = batch['targets']
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch.get('token_types'),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    num_slots=targets.shape[1] if targets.ndim == 2 else 0)
  weights = batch['weights']
  # A weight-0 row or slot must not leak NaN/Inf into the weighted sums (0 * inf = nan).
  logits = jnp.where(weights[..., None] > 0, out['logits'], 0.0)
  return common.lm_loss_and_metrics(logits, targets, weights)
