"""Training FLOPs per token of an encoder pretraining run, objective by objective.

The model (the one the equal-compute comparison, `ptm_jax/compare.py`, divides its budget by):
  * only matrix multiplications count, 2 FLOPs per multiply-add; a training step costs 3x its
    forward pass (backward = 2x forward), as Kaplan et al. (2020) and the ELECTRA paper count;
  * the blocks run at every one of the T positions of a row, padding included (the shapes are
    static): per layer and token 2 * 4 D H_a (Q, K, V, output projections; H_a = heads x head_dim)
    + 2 * 2 T H_a (Q K^T and attention x V, bidirectional: no causal halving) + 2 * 2 D F (FFN).
    For an encoder whose projections hold N_b parameters this is the familiar 6 N_b + 12 L T H_a
    per trained token (Kaplan's 6 N + 6 L T D counts a causal decoder's halved attention).
    ALBERT's shared layers are applied L times, so they cost what unshared ones cost;
  * the vocabulary projection runs where the objective computes it: with `sparse_logits` at the
    K positions of the static slab each objective gathers (`mlm.max_predictions` for token
    masking, `wwm.max_unit_predictions` for words/ERNIE units, `spanbert.max_span_predictions`),
    i.e. K / T of the tokens; without it at every token. K is sized mean + 6 sd of the masked
    count, so it exceeds mask_rate x T (at T = 64: 28 slots for 9.6 expected tokens, SpanBERT's
    clustered spans ~60); `scored='expected'` counts mask_rate x T instead, the method's own cost
    (the reference implementations' max_predictions_per_seq ~ 0.15 T), not what this code runs. The MLM head is dense(D -> W) + the tied
    decoder (W -> V), W = D (BERT) or E (ALBERT, which also pays the E -> H embedding projection);
  * NSP / SOP: pooler (D -> D) + 2-way head, once per row (1 / T per token);
  * SpanBERT's SBO head at every slab position (`spanbert.sbo_head_cost`);
  * ELECTRA: generator and discriminator, forward and backward (`electra.flops_breakdown`, the same
    block formula): the generator's blocks at every token, its vocabulary projection at the slab,
    the discriminator's blocks and its RTD head (D -> D -> 1) at every token.
Embedding lookups, layer norms, softmax and the optimizer update are not counted (they are O(D)
per token, against O(D^2) for the projections).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ptm_jax import models, objectives
from ptm_jax.objectives import electra, mlm, spanbert, wwm

_TOKEN_MASKING = ('mlm', 'mlm_nsp', 'mlm_sop')
_PAIR_OBJECTIVES = ('mlm_nsp', 'mlm_sop')
SUPPORTED = (*_TOKEN_MASKING, 'wwm', 'ernie', 'spanbert', 'electra')


def model_config(model_fields: Mapping[str, Any], vocab_size: int | None = None):
  """`config.model` (family, variant, fields) -> the family's Config dataclass."""
  fields = dict(model_fields.to_dict() if hasattr(model_fields, 'to_dict') else model_fields)
  family, variant = fields.pop('family'), fields.pop('variant')
  module = models.get_family(family)
  known = {f.name for f in dataclasses.fields(module.Config)}
  fields = {k: v for k, v in fields.items() if k in known and v is not None}
  fields['vocab_size'] = int(vocab_size or fields.get('vocab_size') or 0)
  if not fields['vocab_size']:
    raise ValueError('flops: model.vocab_size is 0 (taken from the tokenizer); pass vocab_size=')
  return module.Config(**{**module.VARIANTS[variant], **fields})


SCORED = ('slab', 'expected')


def scored_positions(objective: str, options: Any, seq_len: int, scored: str = 'slab') -> float:
  """K: positions per row where the objective computes vocabulary logits (T when dense)."""
  if scored not in SCORED:
    raise ValueError(f'scored must be one of {", ".join(SCORED)}, got {scored!r}')
  if not getattr(options, 'sparse_logits', False):
    return float(seq_len)
  if scored == 'expected':
    return float(options.mask_rate * seq_len)
  if objective in (*_TOKEN_MASKING, 'electra'):
    return mlm.max_predictions(seq_len, options.mask_rate)
  if objective == 'wwm':
    return wwm.max_unit_predictions(seq_len, options.mask_rate)
  if objective == 'ernie':
    return wwm.max_unit_predictions(seq_len, options.mask_rate, options.max_unit_tokens)
  if objective == 'spanbert':
    return spanbert.max_span_predictions(seq_len, options)
  raise ValueError(f'no FLOP model for objective {objective!r}; supported: {", ".join(SUPPORTED)}')


def breakdown(config, *, vocab_size: int | None = None, scored: str = 'slab') -> dict[str, float]:
  """Training FLOPs per token of a run config, by part, and their 'total'.

  `config` is a run ConfigDict (model, objective, data.seq_len); `vocab_size` the tokenizer's
  (needed when model.vocab_size is 0); `scored` how sparse vocabulary projections are counted
  ('slab': the static slab this code computes; 'expected': mask_rate x T). Parts: blocks, embed_project, mlm_head, pair_head,
  sbo_head, generator, rtd_head (0 where the objective has none).
  """
  name = config.objective.name
  if name not in SUPPORTED:
    raise ValueError(f'no FLOP model for objective {name!r}; supported: {", ".join(SUPPORTED)}')
  module = objectives.get(name)
  options = objectives.build_options(module, config.objective)
  seq_len = int(config.data.seq_len)
  cfg = model_config(config.model, vocab_size)
  d, v = cfg.embed_dim, cfg.vocab_size
  parts = dict(blocks=0.0, embed_project=0.0, mlm_head=0.0, pair_head=0.0, sbo_head=0.0,
               generator=0.0, rtd_head=0.0)
  if name == 'electra':
    if config.model.family != 'encoder':
      raise ValueError(f'electra needs model.family=encoder, got {config.model.family!r}')
    both = electra.flops_breakdown(cfg, options, seq_len=seq_len)
    if scored == 'expected' and options.sparse_logits:
      gen = electra.generator_config(cfg, options)
      slab = scored_positions(name, options, seq_len) - scored_positions(name, options, seq_len,
                                                                          'expected')
      both['generator'] -= 3.0 * slab / seq_len * (2 * gen.embed_dim * d + 2 * d * v)
    parts['blocks'] = 3.0 * electra.encoder_forward_flops_per_token(cfg, seq_len)
    parts['rtd_head'] = both['discriminator'] - parts['blocks']
    parts['generator'] = both['generator']
  else:
    fraction = scored_positions(name, options, seq_len, scored) / seq_len
    albert = config.model.family == 'albert'
    width = cfg.embedding_size if albert else d  # ALBERT decodes through its E-wide table
    parts['blocks'] = 3.0 * electra.encoder_forward_flops_per_token(cfg, seq_len)
    if albert:
      parts['embed_project'] = 3.0 * 2 * width * d
    parts['mlm_head'] = 3.0 * fraction * (2 * d * width + 2 * width * v)
    if name in _PAIR_OBJECTIVES:
      parts['pair_head'] = 3.0 * (2 * d * d + 2 * d * 2) / seq_len
    if name == 'spanbert':
      _, per_target = spanbert.sbo_head_cost(d, v, options.sbo_position_dim, options.max_span_offset)
      parts['sbo_head'] = 3.0 * fraction * per_target
  parts['total'] = sum(parts.values())
  return parts


def per_token(config, *, vocab_size: int | None = None, scored: str = 'slab') -> float:
  """Training FLOPs per token (all T positions of a row) of a run config."""
  return breakdown(config, vocab_size=vocab_size, scored=scored)['total']


def per_step(config, *, vocab_size: int | None = None, scored: str = 'slab') -> float:
  """Training FLOPs of one optimizer step: per_token x batch_size x seq_len."""
  tokens = int(config.train.batch_size) * int(config.data.seq_len)
  return per_token(config, vocab_size=vocab_size, scored=scored) * tokens
