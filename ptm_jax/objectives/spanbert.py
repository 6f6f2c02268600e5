"""SpanBERT (Joshi et al. 2020, "SpanBERT: Improving Pre-training by Representing and Predicting
Spans", TACL), single-sequence training without NSP.

Recipe:
  * span masking: span lengths in words ~ Geometric(p=0.2) truncated to [1, 10] (`geometric_p`,
    `max_span_length`); spans cover complete words (`word_ids`, data.annotations=('words',));
    15 % of the tokens are masked (`mask_rate`);
  * 80/10/10 per span: all its tokens become [MASK] (80 %), or each becomes a random non-reserved
    id (10 %), or the span is kept (10 %);
  * Span Boundary Objective: a masked token x_i of span s..e is predicted from the final hidden
    states of the boundary tokens x_{s-1}, x_{e+1} and a position embedding p_{i-s+1}:
    h = LN(GeLU(W2 LN(GeLU(W1 [x_{s-1}; x_{e+1}; p_{i-s+1}])))), logits = h E^T + b with E the
    word embeddings (tied, as the reference `BertPairTargetPredictionHead`; position embeddings of
    size 200 for offsets < 20, as there);
  * loss = L_MLM + `sbo_weight` (1.0) * L_SBO, each the mean cross-entropy over its targets;
    SBO counts a masked token only when both boundary tokens lie in its document inside the row
    ([CLS]/[SEP] count as boundaries) and its offset is < `max_span_offset`.
How spans are placed (static shapes, on device): an alternating renewal process over the row's
words -- unmasked gaps ~ Geometric(q) >= 1 word and spans ~ the truncated geometric --, started
in its stationary state (inside a span with probability `mask_rate`, with the forward-recurrence
residual P(S >= k) / E[S]; else in a gap), with E[gap] = E[S] (1 - rate) / rate. Every word is
masked with probability exactly `mask_rate`, so 15 % of tokens in expectation; spans never
overlap nor touch, so each masked run is one span and its boundaries are unmasked.
Deviations from the reference code (which draws anchors until exactly ceil(0.15 n) tokens are
masked, merging overlapping spans and cutting the last one mid-word): the masked count is exact
only in expectation, spans are separated by >= 1 unmasked word (no merges), and a span crossing a
document boundary inside a packed row is split there ([SEP]/[CLS] sit between). "Clipped at 10"
in the paper's text is the renormalised truncation of its code (mean 3.8 words, as the paper
reports); `length_sampling='clipped'` puts the tail mass on 10 instead.
The SBO head's parameters live in the model (`build_model` wraps the encoder as `backbone`, so
`train.count_params` and a params-only `init_from` see both): (2D + P) D + D^2 + 6 D + V + 20 P
beyond the encoder (D=768, P=200, V=30522: 1.96 M, +1.8 % of BERT-base), and per SBO target
2 (2D + P) D + 2 D^2 + 2 D V FLOPs (50.7 M at base, ~the MLM head's cost per target);
`sbo_head_cost` returns both. SBO runs only on the [B, K] slab of masked positions.
Tests (tests/test_objectives_spans.py) check: token rate 0.15 +- 0.01 on >= 1e5 tokens; spans are
whole words; the span-length histogram of >= 1e4 spans matches the truncated geometric
(chi-square); 80/10/10 per span; padding/reserved never masked; boundary positions, offsets and
SBO weights against a numpy reference; SBO loss counts only valid masked tokens; runlocal loss falls.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax import models
from ptm_jax.layers import mlp, norms
from ptm_jax.objectives import common, mlm, wwm


@dataclasses.dataclass(frozen=True)
class Options:
  """SpanBERT span masking and SBO hyper-parameters."""

  mask_rate: float = 0.15
  geometric_p: float = 0.2
  max_span_length: int = 10  # words
  length_sampling: str = 'truncated'  # 'truncated' (renormalised, reference) | 'clipped'
  mask_token_rate: float = 0.8
  random_token_rate: float = 0.1
  sbo_weight: float = 1.0
  max_span_offset: int = 20  # SBO position embeddings (reference max_targets)
  sbo_position_dim: int = 200
  sparse_logits: bool = True
  tokens_per_word: float = 1.5  # sizes the sparse slab only

  def __post_init__(self):
    mlm.Options(self.mask_rate, self.mask_token_rate, self.random_token_rate)
    if not 0.0 < self.geometric_p < 1.0 or self.max_span_length < 1:
      raise ValueError('spanbert.Options: need 0 < geometric_p < 1 and max_span_length >= 1')
    if self.length_sampling not in ('truncated', 'clipped'):
      raise ValueError(f"spanbert.Options.length_sampling must be 'truncated' or 'clipped', "
                       f'got {self.length_sampling!r}')
    if not 0.0 < self.mask_rate < 0.5:
      raise ValueError(f'spanbert.Options.mask_rate must be in (0, 0.5), got {self.mask_rate}')


def length_probs(options: Options) -> np.ndarray:
  """P(span = k words), k = 1..max_span_length."""
  k = np.arange(1, options.max_span_length + 1)
  p = options.geometric_p * (1.0 - options.geometric_p) ** (k - 1)
  if options.length_sampling == 'clipped':
    p[-1] = (1.0 - options.geometric_p) ** (options.max_span_length - 1)
  return p / p.sum()


def _process(options: Options, num_words: int) -> dict[str, Any]:
  """Static constants of the renewal process for rows of `num_words` words."""
  probs = length_probs(options)
  k = np.arange(1, len(probs) + 1)
  mean_span = float((k * probs).sum())
  mean_gap = mean_span * (1.0 - options.mask_rate) / options.mask_rate
  q = 1.0 / mean_gap
  cycle_mean = mean_span + mean_gap
  cycle_std = math.sqrt(float((k * k * probs).sum()) - mean_span ** 2 + (1.0 - q) / q ** 2)
  # Enough cycles to cover the row: the sum of m cycles falls short with probability < 1e-9.
  m = 1
  while m * cycle_mean - 6.0 * math.sqrt(m) * cycle_std < num_words:
    m += 1
  survival = probs[::-1].cumsum()[::-1]  # P(S >= k)
  return dict(probs=probs, residual=survival / mean_span, q=q, cycles=m + 1,
              cluster=float((k * k * probs).sum()) / mean_span)


def max_span_predictions(length: int, options: Options) -> int:
  """Static cap on scored positions: mean + 6 sd of the masked count of clustered spans."""
  cluster = _process(options, length)['cluster'] * options.tokens_per_word
  return wwm.max_unit_predictions(length, options.mask_rate, cluster)


def sample_masked_words(rng, num_rows: int, num_words: int, options: Options):
  """(masked `[B, W + 1]` over word ids 0..W (0 never), span index `[B, W + 1]`) of the process."""
  c = _process(options, num_words)
  m = c['cycles']
  r_len, r_gap, r_start, r_res, r_lead = jax.random.split(rng, 5)
  span_BM = jax.random.categorical(r_len, jnp.log(jnp.asarray(c['probs'], jnp.float32)),
                                   shape=(num_rows, m)).astype(jnp.int32) + 1
  gap_BM = jax.random.geometric(r_gap, c['q'], shape=(num_rows, m), dtype=jnp.int32)
  in_span_B = jax.random.uniform(r_start, (num_rows,)) < options.mask_rate
  residual_B = jax.random.categorical(r_res, jnp.log(jnp.asarray(c['residual'], jnp.float32)),
                                      shape=(num_rows,)).astype(jnp.int32) + 1
  lead_B = jnp.where(in_span_B, 0, jax.random.geometric(r_lead, c['q'], shape=(num_rows,),
                                                        dtype=jnp.int32))
  span_BM = span_BM.at[:, 0].set(jnp.where(in_span_B, residual_B, span_BM[:, 0]))
  cycle_BM = span_BM + gap_BM
  start_BM = lead_B[:, None] + jnp.cumsum(cycle_BM, axis=1) - cycle_BM + 1  # 1-based word index
  words_W = jnp.arange(num_words + 1, dtype=jnp.int32)
  span_of_BW = jax.vmap(lambda s: jnp.searchsorted(s, words_W, side='right'))(start_BM) - 1
  safe_BW = jnp.maximum(span_of_BW, 0)
  end_BW = jnp.take_along_axis(start_BM + span_BM - 1, safe_BW, axis=1)
  masked_BW = (span_of_BW >= 0) & (words_W[None, :] <= end_BW) & (words_W[None, :] > 0)
  return masked_BW, safe_BW


def span_boundaries(masked_BL, segment_ids_BL, max_offset: int) -> dict[str, jax.Array]:
  """Per position: span_left/right `[B, L]` (boundary positions), span_offset, sbo_valid."""
  length = masked_BL.shape[1]
  idx_L = jnp.arange(length, dtype=jnp.int32)
  false_B1 = jnp.zeros_like(masked_BL[:, :1])
  same_B = segment_ids_BL[:, 1:] == segment_ids_BL[:, :-1]
  joined_B = masked_BL[:, 1:] & masked_BL[:, :-1] & same_B  # position i+1 continues i's run
  starts_BL = masked_BL & ~jnp.concatenate([false_B1, joined_B], axis=1)
  ends_BL = masked_BL & ~jnp.concatenate([joined_B, false_B1], axis=1)
  start_BL = jax.lax.cummax(jnp.where(starts_BL, idx_L[None, :], 0), axis=1)
  end_BL = jax.lax.cummin(jnp.where(ends_BL, idx_L[None, :], length - 1), axis=1, reverse=True)
  left_BL, right_BL = start_BL - 1, end_BL + 1
  seg_left = jnp.take_along_axis(segment_ids_BL, jnp.clip(left_BL, 0, length - 1), axis=1)
  seg_right = jnp.take_along_axis(segment_ids_BL, jnp.clip(right_BL, 0, length - 1), axis=1)
  offset_BL = idx_L[None, :] - start_BL
  valid_BL = (masked_BL & (left_BL >= 0) & (right_BL < length) & (seg_left == segment_ids_BL)
              & (seg_right == segment_ids_BL) & (offset_BL < max_offset))
  return {'span_left': jnp.clip(left_BL, 0, length - 1), 'span_right': jnp.clip(right_BL, 0, length - 1),
          'span_offset': jnp.clip(offset_BL, 0, max_offset - 1), 'sbo_valid': valid_BL}


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Span-masked `inputs`, `targets`, `weights`, the mlm_* slab and its SBO inputs `[B, K]`."""
  word_BL = wwm.require(batch, 'word_ids', 'spanbert')
  tokens_BL = batch['tokens'].astype(jnp.int32)
  num_rows, length = tokens_BL.shape
  words_rng, action_rng, random_rng = jax.random.split(rng, 3)
  masked_BW, span_BW = sample_masked_words(words_rng, num_rows, length, options)
  eligible_BL = ((batch['segment_ids'] != 0) & ~mlm.reserved_lookup(specials)[tokens_BL]
                 & (word_BL > 0))
  selected_BL = eligible_BL & jnp.take_along_axis(masked_BW, word_BL, axis=1)
  # One action per span (the span index of the token's word).
  action_BM = jax.random.uniform(action_rng, (num_rows, length + 1))
  action_BL = jnp.take_along_axis(action_BM, jnp.take_along_axis(span_BW, word_BL, axis=1), axis=1)
  to_mask_BL = selected_BL & (action_BL < options.mask_token_rate)
  to_random_BL = selected_BL & ~to_mask_BL & (
      action_BL < options.mask_token_rate + options.random_token_rate)
  inputs_BL = jnp.where(to_mask_BL, jnp.int32(specials.mask), tokens_BL)
  inputs_BL = jnp.where(to_random_BL, mlm.random_non_reserved(random_rng, tokens_BL.shape, specials),
                        inputs_BL)
  bounds = span_boundaries(selected_BL, batch['segment_ids'].astype(jnp.int32), options.max_span_offset)
  k = max_span_predictions(length, options) if options.sparse_logits else length
  slab = wwm.gather_selected(selected_BL, tokens_BL, k)
  pos_BK = slab['mlm_positions']
  take = lambda x: jnp.take_along_axis(x, pos_BK, axis=1)  # noqa: E731
  slab.update(span_left=take(bounds['span_left']), span_right=take(bounds['span_right']),
              span_offset=take(bounds['span_offset']),
              sbo_weights=slab['mlm_weights'] * take(bounds['sbo_valid']).astype(jnp.float32))
  return {**batch, 'inputs': inputs_BL, 'targets': tokens_BL,
          'weights': selected_BL.astype(jnp.float32), **slab}


# ----------------------------------------------------------------------------- model


class SBOHead(nn.Module):
  """Span boundary head: [x_left; x_right; p_offset] -> 2 x (dense, GeLU, LN) -> tied logits."""

  vocab_size: int
  embed_dim: int
  max_offset: int = 20
  position_dim: int = 200
  layer_norm_eps: float = 1e-12
  activation: str = 'gelu'
  init_stddev: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, left_BKD, right_BKD, offset_BK, decode) -> jax.Array:
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    table_PE = self.param('position_embed', nn.with_logical_partitioning(
        nn.initializers.normal(self.init_stddev), (None, None)),
        (self.max_offset, self.position_dim), self.param_dtype)
    pos_BKP = jnp.take(table_PE, offset_BK, axis=0, mode='clip').astype(self.dtype)
    h = jnp.concatenate([left_BKD.astype(self.dtype), right_BKD.astype(self.dtype), pos_BKP], axis=-1)
    act = mlp.activation(self.activation)
    for i in (1, 2):
      h = mlp.dense(self.embed_dim, (None, 'embed'), use_bias=True, stddev=self.init_stddev,
                    name=f'dense{i}', **dt)(h)
      h = norms.LayerNorm(self.layer_norm_eps, name=f'norm{i}', **dt)(act(h))
    bias_V = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                        (self.vocab_size,), self.param_dtype)
    logits = decode(h) + bias_V.astype(jnp.float32)[None, None, :]
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


def sbo_head_cost(embed_dim: int, vocab_size: int, position_dim: int = 200, max_offset: int = 20
                  ) -> tuple[int, int]:
  """(parameters, FLOPs per SBO target) of the head; the tied embedding is not counted twice."""
  d, p, v = embed_dim, position_dim, vocab_size
  params = (2 * d + p) * d + d + d * d + d + 4 * d + v + max_offset * p
  flops = 2 * (2 * d + p) * d + 2 * d * d + 2 * d * v
  return params, flops


class SpanBERTModel(nn.Module):
  """The encoder (`backbone`) plus the SBO head; returns the encoder dict + `sbo_logits`."""

  backbone: nn.Module
  max_offset: int = 20
  position_dim: int = 200

  def setup(self):
    cfg = self.backbone.config
    self.sbo_head = SBOHead(cfg.vocab_size, cfg.embed_dim, self.max_offset, self.position_dim,
                            cfg.layer_norm_eps, cfg.activation, cfg.initializer_range,
                            jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype))

  def __call__(self, tokens, *, segment_ids, positions, token_types=None, attention_mask=None,
               deterministic=True, output_hidden_states=False, logits_positions=None,
               span_left=None, span_right=None, span_offset=None):
    """Encoder outputs; with span_left/right/offset `[B, K]` also `sbo_logits` `[B, K, V]`."""
    out = self.backbone(tokens, segment_ids=segment_ids, positions=positions,
                        token_types=token_types, attention_mask=attention_mask,
                        deterministic=deterministic, output_hidden_states=output_hidden_states,
                        logits_positions=logits_positions)
    if span_left is None and self.is_initializing():  # create the head's params at init
      span_left = span_right = span_offset = jnp.zeros_like(tokens[:, :1])
    if span_left is not None:
      hidden_BLD = out['hidden']
      left_BKD = jnp.take_along_axis(hidden_BLD, span_left[..., None], axis=1)
      right_BKD = jnp.take_along_axis(hidden_BLD, span_right[..., None], axis=1)
      out['sbo_logits'] = self.sbo_head(left_BKD, right_BKD, span_offset,
                                        self.backbone.token_embed.attend)
    return out


def build_model(family: str, variant: str, fields: dict, options: Options) -> nn.Module:
  """The family's encoder wrapped with the SBO head (params: {'backbone': ..., 'sbo_head': ...})."""
  backbone = models.build(family, variant, **fields)
  if not hasattr(backbone, 'config') or not hasattr(models.get_family(family).Model, 'mlm_logits'):
    raise ValueError(f'spanbert needs an encoder family with tied token embeddings, got {family!r}')
  return SpanBERTModel(backbone, options.max_span_offset, options.sbo_position_dim)


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """L_MLM + sbo_weight * L_SBO over the masked tokens; metrics hold both parts."""
  del specials
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch.get('token_types'),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    logits_positions=batch['mlm_positions'], span_left=batch['span_left'],
                    span_right=batch['span_right'], span_offset=batch['span_offset'])
  mlm_loss, metrics = common.lm_loss_and_metrics(out['logits'], batch['mlm_targets'],
                                                 batch['mlm_weights'])
  sbo_loss, sbo_metrics = common.lm_loss_and_metrics(out['sbo_logits'], batch['mlm_targets'],
                                                     batch['sbo_weights'])
  total = mlm_loss + options.sbo_weight * sbo_loss
  metrics = dict(metrics, loss=total, mlm_loss=mlm_loss, sbo_loss=sbo_loss,
                 sbo_accuracy=sbo_metrics['accuracy'], num_sbo_targets=sbo_metrics['num_targets'])
  return total, metrics
