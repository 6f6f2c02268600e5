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
    masking, per row or, with `slab_rows`, per slab of rows; `wwm.max_unit_predictions` for
    words/ERNIE units, `spanbert.max_span_predictions`),
    i.e. K / T of the tokens; without it at every token. K is sized mean + 6 sd of the masked
    count, so it exceeds mask_rate x T (at T = 64: 28 slots for 9.6 expected tokens, SpanBERT's
    clustered spans ~60); `scored='expected'` counts mask_rate x T instead, the method's own cost
    (the reference implementations' max_predictions_per_seq ~ 0.15 T), not what this code runs.
    The MLM head is dense(D -> W) + the tied decoder (W -> V), W = D (BERT) or E (ALBERT, which
    also pays the E -> H embedding projection);
  * NSP / SOP: pooler (D -> D) + 2-way head, once per row (1 / T per token);
  * SpanBERT's SBO head at every slab position (`spanbert.sbo_head_cost`);
  * ELECTRA: generator and discriminator, forward and backward (`electra.flops_breakdown`, the same
    block formula): the generator's blocks at every token, its vocabulary projection at the slab,
    the discriminator's blocks and its RTD head (D -> D -> 1) at every token.
Embedding lookups, layer norms, softmax and the optimizer update are not counted (they are O(D)
per token, against O(D^2) for the projections).

Seq2seq objectives (`seq2seq_breakdown`; parts encoder, decoder, blocks, lm_head), per raw row
token (a row of T = data.seq_len tokens costs its per-row total / T per token, so that
per_step = per_token x batch x T as for the encoders). One block's forward per query token over K
key slots: 2 D (2 H_q + 2 H_kv) for the Q, K, V, output projections (H_kv < H_q: grouped-query),
+ 2 * 2 K H_q for Q K^T and attention x V over every key slot (static shapes: a mask, causal or
not, skips no work), + 2 * 2 D F for the FFN (2 * 3 D F gated);
  * encoder-decoder (T5 span corruption, BART, MASS) on Le encoder and Ld decoder slots:
    encoder = Le x L_enc blocks over Le keys; decoder = Ld x L_dec (self block over Ld keys + cross
    attention: Q and output projections 2 * 2 D H, scores 2 * 2 Le H) + L_dec x Le x 2 * 2 D H for
    the cross-attention keys/values of the encoder output; lm_head = Ld x 2 D V.
    Lengths: span corruption Le, Ld = its static `inputs_length(T)`, `targets_length(T)` (T = 64:
    58 / 14; the decoder ~4.6x shorter than the row); BART Le = Ld = T; MASS Le = T and Ld = T as
    this code runs it, or with scored='expected' the fragment's k = round(0.5 T) positions, the only
    decoder slots the method needs (the others are [MASK] inputs with no loss);
  * single stack (prefix LM: decoder over T, logits at all T; UniLM: encoder over T; GLM: encoder
    over Part A + Part B, T + 2M static slots, or with scored='expected' T + 0.15 T (1 + 1 /
    E[span length]): the blanked tokens and one [START] per span): blocks = slots x L blocks over
    all slots; lm_head at the slots the objective projects (the static slab with sparse_logits, or
    scored='expected' the targets: UniLM 0.15 T, GLM its Part B), each 2 D D + 2 D V for the
    encoder's MLM head (dense + tied decoder), 2 D V for the decoder's;
  * causal LM (`clm`, GPT): the decoder over T slots, logits at all T.
Mixture-of-experts layers (`moe_experts` > 0, every `moe_every`-th layer of each stack; decoder
and encoder-decoder) replace that layer's FFN term, per token of a group of G tokens (one row of
the stack: the encoder's Le, the decoder's Ld or T): the router 2 D E, then with scored='expected'
the k experts the token uses, k * 2 * 2 D F (the method's cost, as the Switch paper counts: top-1
keeps the dense model's FLOPs), or with 'slab' what this code runs: every expert over its C
capacity slots (C = `layers.moe.expert_capacity` at the training factor), E C / G * 2 * 2 D F
per token, and the one-hot dispatch and combine einsums, 2 * 2 E C D. A dropless layer
(`moe_dropless`: sorted tokens and ragged_dot) runs the method's cost under both counts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from ptm_jax import models, objectives
from ptm_jax.layers import moe
from ptm_jax.objectives import electra, glm, mlm, span_corruption, spanbert, wwm

_TOKEN_MASKING = ('mlm', 'mlm_nsp', 'mlm_sop')
_PAIR_OBJECTIVES = ('mlm_nsp', 'mlm_sop')
SEQ2SEQ = ('span_corruption', 'bart', 'mass', 'prefix_lm', 'unilm', 'glm')
_STACK_ONLY = ('clm',)  # sequence objectives with no seq2seq form: one decoder over the row
SUPPORTED = (*_TOKEN_MASKING, 'wwm', 'ernie', 'spanbert', 'electra', *SEQ2SEQ, *_STACK_ONLY)


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
    rows = int(getattr(options, 'slab_rows', 1))  # a slab shared by `rows` rows, per row
    return mlm.max_predictions(rows * seq_len, options.mask_rate) / rows
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
  ('slab': the static slab this code computes; 'expected': mask_rate x T). Parts: blocks,
  embed_project, mlm_head, pair_head, sbo_head, generator, rtd_head (0 where the objective has
  none).
  """
  name = config.objective.name
  if name not in SUPPORTED:
    raise ValueError(f'no FLOP model for objective {name!r}; supported: {", ".join(SUPPORTED)}')
  if name in SEQ2SEQ or name in _STACK_ONLY:
    return seq2seq_breakdown(config, vocab_size=vocab_size, scored=scored)
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


def ffn_forward(d: int, mlp_dim: int, gated: bool) -> float:
  """Forward matmul FLOPs per token of one feed-forward (or one expert): 2 or 3 D x F matmuls."""
  return 2 * (3 if gated else 2) * d * mlp_dim


def block_forward(d: int, heads_q: int, heads_kv: int, mlp_dim: int, gated: bool,
                  keys: int) -> float:
  """Forward matmul FLOPs per query token of one self-attention block over `keys` key slots."""
  return (2 * d * (2 * heads_q + 2 * heads_kv) + 2 * 2 * keys * heads_q
          + ffn_forward(d, mlp_dim, gated))


def routed_ffn_forward(cfg, group: float, scored: str = 'slab') -> float:
  """Forward FLOPs per token of one mixture-of-experts FFN over groups of `group` tokens (module
  doc): the router, then the k used experts ('expected') or every expert's capacity slots and
  the dispatch/combine einsums ('slab')."""
  d, e, k = cfg.embed_dim, cfg.moe_experts, cfg.moe_top_k
  expert = ffn_forward(d, cfg.mlp_dim, cfg.mlp == 'swiglu')
  if scored == 'expected' or cfg.moe_dropless:  # dropless runs exactly the k experts per token
    return 2 * d * e + k * expert
  group = int(round(group))
  capacity = moe.expert_capacity(group, e, k, cfg.moe_capacity_factor, cfg.moe_capacity)
  return 2 * d * e + e * capacity / group * expert + 2 * (2 * e * capacity * d)


def stack_forward(cfg, layers: int, slots: float, block: float, scored: str = 'slab') -> float:
  """Forward FLOPs of `layers` blocks over a row's `slots` query tokens, each costing `block`
  per token with a dense FFN; the routed layers of an MoE config swap that FFN for experts."""
  routed = (sum(moe.is_moe_layer(cfg, i) for i in range(layers))
            if getattr(cfg, 'moe_experts', 0) else 0)
  if not routed:
    return slots * layers * block
  swap = routed_ffn_forward(cfg, slots, scored) - ffn_forward(cfg.embed_dim, cfg.mlp_dim,
                                                              cfg.mlp == 'swiglu')
  return slots * (layers * block + routed * swap)


def seq2seq_lengths(name: str, options: Any, seq_len: int, scored: str = 'slab') -> dict[str, float]:
  """Slots per row of T raw tokens: encoder / decoder (encdec) or stack, and projected logits."""
  if scored not in SCORED:
    raise ValueError(f'scored must be one of {", ".join(SCORED)}, got {scored!r}')
  t = seq_len
  if name == 'span_corruption':
    enc, dec, _ = span_corruption.static_lengths(t, options)
    return dict(encoder=enc, decoder=dec, logits=dec)
  if name == 'bart':
    return dict(encoder=t, decoder=t, logits=t)
  if name == 'mass':
    dec = max(1, round(options.fragment_rate * t)) if scored == 'expected' else t
    return dict(encoder=t, decoder=dec, logits=dec)
  if name in ('prefix_lm', 'clm'):
    return dict(stack=t, logits=t)
  if name == 'unilm':
    if not options.sparse_logits:
      return dict(stack=t, logits=t)
    slab = wwm.max_unit_predictions(t, options.mask_rate, 3.0)
    return dict(stack=t, logits=options.mask_rate * t if scored == 'expected' else slab)
  if name == 'glm':
    m = glm.max_spans(t, options)
    probs = options.span_probs()
    mean_span = float((np.arange(len(probs)) * probs).sum())
    part_b = options.mask_rate * t * (1 + 1 / mean_span)  # blanked tokens + one [START] each
    if scored == 'expected':  # Part A (t) + the expected Part B, not the static bound 2M
      return dict(stack=t + part_b, logits=part_b)
    if not options.sparse_logits:
      return dict(stack=t + 2 * m, logits=t + 2 * m)
    k_ = np.arange(len(probs))
    cluster = float((k_ * k_ * probs).sum() / (k_ * probs).sum())
    return dict(stack=t + 2 * m,
                logits=min(t + 2 * m, wwm.max_unit_predictions(t, options.mask_rate, cluster) + m))
  raise ValueError(f'no seq2seq FLOP model for objective {name!r}; supported: '
                   f'{", ".join(SEQ2SEQ + _STACK_ONLY)}')


def seq2seq_breakdown(config, *, vocab_size: int | None = None,
                      scored: str = 'slab') -> dict[str, float]:
  """Training FLOPs per raw row token of a seq2seq (or CLM) run config, by part (module doc)."""
  name, family = config.objective.name, config.model.family
  options = objectives.build_options(objectives.get(name), config.objective)
  t = int(config.data.seq_len)
  cfg = model_config(config.model, vocab_size)
  lengths = seq2seq_lengths(name, options, t, scored)
  d, v = cfg.embed_dim, cfg.vocab_size
  head_dim = cfg.resolved_head_dim
  hq = cfg.num_heads * head_dim
  gated = getattr(cfg, 'mlp', 'mlp') == 'swiglu'
  parts = dict(encoder=0.0, decoder=0.0, blocks=0.0, lm_head=0.0)
  if family == 'encdec':
    if 'encoder' not in lengths:
      raise ValueError(f'{name} is a single-stack objective; model.family=encdec needs '
                       'span_corruption, bart or mass')
    le, ld = lengths['encoder'], lengths['decoder']
    parts['encoder'] = stack_forward(cfg, cfg.num_encoder_layers, le,
                                     block_forward(d, hq, hq, cfg.mlp_dim, gated, le), scored)
    cross = 2 * 2 * d * hq + 2 * 2 * le * hq
    parts['decoder'] = (stack_forward(cfg, cfg.num_decoder_layers, ld,
                                      block_forward(d, hq, hq, cfg.mlp_dim, gated, ld) + cross,
                                      scored)
                        + cfg.num_decoder_layers * le * 2 * 2 * d * hq)
    parts['lm_head'] = lengths['logits'] * 2 * d * v
  elif family in ('decoder', 'encoder'):
    if 'stack' not in lengths:
      raise ValueError(f'{name} needs model.family=encdec, got {family!r}')
    if name in _STACK_ONLY and family != 'decoder':
      raise ValueError(f'{name} needs model.family=decoder, got {family!r}')
    slots = lengths['stack']
    hkv = (getattr(cfg, 'num_kv_heads', None) or cfg.num_heads) * head_dim
    parts['blocks'] = stack_forward(cfg, cfg.num_layers, slots,
                                    block_forward(d, hq, hkv, cfg.mlp_dim, gated, slots), scored)
    head = 2 * d * v + (2 * d * d if family == 'encoder' else 0)  # the encoder's MLM dense
    parts['lm_head'] = lengths['logits'] * head
  else:
    raise ValueError(f'no seq2seq FLOP model for model.family={family!r}')
  parts = {k: 3.0 * p / t for k, p in parts.items()}  # forward + backward, per raw row token
  parts['total'] = sum(parts.values())
  return parts
