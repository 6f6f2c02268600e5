"""Sequence classification fine-tuning (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding", section 4.1; Radford et al. 2018 for the
decoder variant).

Recipe: the family model (any `ptm_jax.models` family, built with its pretraining fields) is the
submodule `backbone`, so a params-only restore of a pretraining run lands in `params['backbone']`;
the head is dropout(`dropout_rate`) -> dense(num_classes) over one vector per sequence:
  * pooling='cls': the encoder's `pooled` output (BERT: tanh(dense(h_[CLS]))); for
    backbone='decoder' the last real token's hidden state (the only position that saw the whole text);
  * pooling='mean': the mean of `hidden` over the real tokens (segment_ids != 0), padding ignored.
The loss is the label_weight-weighted mean cross-entropy over rows; padding rows (label_weight 0,
used to complete evaluation passes) contribute nothing.

Tests (tests/test_classify.py): the loss equals a hand-computed weighted CE and ignores weight-0 rows;
mean pooling is invariant to what sits in padded positions; a params-only init from an encoder
checkpoint fills `params['backbone']`.
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


def pool(out: dict[str, Any], segment_ids_BL, options: Options):
  """One float32 vector `[B, D]` per row from the backbone's outputs."""
  hidden_BLD = out['hidden'].astype(jnp.float32)
  real_BL = (segment_ids_BL != 0).astype(jnp.float32)
  if options.pooling == 'mean':
    summed_BD = jnp.einsum('bld,bl->bd', hidden_BLD, real_BL)
    return summed_BD / jnp.maximum(real_BL.sum(axis=1, keepdims=True), 1.0)
  if options.backbone == 'decoder':
    last_B = jnp.maximum(real_BL.sum(axis=1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(hidden_BLD, last_B[:, None, None], axis=1)[:, 0]
  if 'pooled' in out:
    return out['pooled'].astype(jnp.float32)
  return hidden_BLD[:, 0]


class Classifier(nn.Module):
  """backbone (a family Model) + dropout + dense head; returns {'logits': [B, C] float32, ...}."""

  backbone: nn.Module
  options: Options

  @nn.compact
  def __call__(self, tokens, *, segment_ids, positions, token_types=None, deterministic: bool = True,
               **unused):
    del unused
    out = self.backbone(tokens, segment_ids=segment_ids, positions=positions,
                        token_types=token_types, deterministic=deterministic)
    features_BD = pool(out, segment_ids, self.options)
    features_BD = nn.Dropout(self.options.dropout_rate)(features_BD, deterministic=deterministic)
    logits_BC = nn.Dense(
        self.options.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name='head',
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ('embed', None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(features_BD)
    return {'logits': logits_BC, 'features': features_BD}


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
  """Weighted mean cross-entropy over rows, and {'loss', 'accuracy', 'num_targets'}."""
  del specials, options
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch.get('token_types'),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng})
  weights_B = batch['weights']
  # A weight-0 row must not leak NaN/Inf into the weighted sums (0 * inf = nan).
  logits_BC = jnp.where(weights_B[:, None] > 0, out['logits'], 0.0)
  return common.lm_loss_and_metrics(logits_BC, batch['targets'], weights_B)
