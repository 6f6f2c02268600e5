"""GLM autoregressive blank infilling (Du et al. 2022, "GLM: General Language Model Pretraining
with Autoregressive Blank Infilling", ACL, section 2.1-2.2 and Figure 2), on the `encoder`
family with `block_position_embeddings=True` (GLM's second position table).

Recipe (on device, per packed document, dynamic per step):
  * spans with lengths ~ Poisson(`poisson_lambda` = 3) (conditioned on >= 1 token: a blank is
    never empty) cover `mask_rate` = 15 % of the text tokens ([CLS]/[SEP]/padding never);
  * Part A = the document with each span replaced by ONE [MASK]; Part B = the spans in a random
    order (shuffled per row, "to fully capture the interdependencies between different spans"),
    each opened by [START] = `specials.extra[0]` (the tokenizer's `<extra_id_0>`, a reserved id:
    set data.tokenizer.extra_ids >= 1) and predicted autoregressively: the input of a span of k
    tokens is [START] s_1 .. s_k, its target s_1 .. s_k [END] with [END] = `specials.eos`;
  * 2-D positions: position-1 = index in the document's Part A (a Part B token takes the index of
    its span's [MASK]), position-2 = 0 in Part A and 1..k+1 inside a span (the model adds a second
    learned table for it);
  * self-attention: Part A attends to Part A (bidirectional), Part B to Part A and causally to
    Part B (earlier spans included), never across documents;
  * loss = mean cross-entropy over every Part B target (span tokens and [END]).
Layout (static shapes): a row of L tokens becomes Part A (all documents, compacted) followed by
Part B (every span of every document, shuffled), length L + 2 M with M the static bound on the
spans of a row (the renewal process's cycle count); the rest is padding. Spans are placed by a
renewal process (Poisson spans, Geometric gaps of >= 1 token) so each text token is masked with
probability exactly 15 % before spans are cut at reserved ids and document ends (the reference
samples until >= 15 % of the document is covered).

Tests (tests/test_objectives_unified.py): the paper's Figure 2 example (Part A, Part B, targets,
both position rows) exactly; the span-length histogram of >= 2,500 spans matches Poisson(3) | >= 1
(chi-square) and 15 % +- 1 % of text tokens are blanked; Part A + Part B hold every original token
once; through gradients of the encoder output w.r.t. its input embeddings, A depends on exactly A
and B on A plus earlier B; the runlocal run lowers its loss.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax.objectives import common, mlm, noising, wwm


@dataclasses.dataclass(frozen=True)
class Options:
  """GLM blank-infilling hyper-parameters."""

  mask_rate: float = 0.15
  poisson_lambda: float = 3.0
  sparse_logits: bool = True

  def __post_init__(self):
    if not 0.0 < self.mask_rate < 0.5:
      raise ValueError(f'glm.Options.mask_rate must be in (0, 0.5), got {self.mask_rate}')
    if self.poisson_lambda <= 0:
      raise ValueError(f'glm.Options.poisson_lambda must be > 0, got {self.poisson_lambda}')

  def span_probs(self) -> np.ndarray:
    return noising.poisson_probs(self.poisson_lambda, min_length=1)


def max_spans(length: int, options: Options) -> int:
  """Static bound M on the spans of a row of `length` tokens."""
  return noising.renewal_constants(options.span_probs(), options.mask_rate, length)['cycles']


def arrange(tokens_BL, segment_ids_BL, masked_BL, span_BL, span_start_BM, order_BM, *,
            start_id: int, end_id: int, mask_id: int, pad_id: int) -> dict:
  """Part A + Part B rows `[B, L + 2M]` from masked runs (`span_BL`: the run's index in [0, M)).

  `order_BM` ranks the spans (lower first in Part B); every masked run must start at its span's
  `span_start_BM` entry. Returns inputs, targets, weights, segment_ids, positions,
  block_positions and part_b.
  """
  num_rows, length = tokens_BL.shape
  m = span_start_BM.shape[1]
  out_len = length + 2 * m
  idx_L = jnp.arange(length, dtype=jnp.int32)
  safe_span_BL = jnp.clip(span_BL, 0, m - 1)
  start_BL = jnp.take_along_axis(span_start_BM, safe_span_BL, axis=1)
  run_start_BL = masked_BL & (start_BL == idx_L[None, :])
  keep_a_BL = (segment_ids_BL != 0) & (~masked_BL | run_start_BL)
  a_slot_BL = jnp.cumsum(keep_a_BL.astype(jnp.int32), axis=1) - 1
  a_len_B = jnp.sum(keep_a_BL, axis=1).astype(jnp.int32)
  pos1_a_BL = noising.within_segment_cumsum(keep_a_BL, segment_ids_BL, exclusive=True)
  # Per span: length, segment and the Part A position of its [MASK].
  scatter = lambda v_BL, w_BL: jax.vmap(  # noqa: E731
      lambda s, v, w: jnp.zeros((m,), jnp.int32).at[s].add(v * w))(safe_span_BL, v_BL, w_BL)
  masked_i = masked_BL.astype(jnp.int32)
  run_i = run_start_BL.astype(jnp.int32)
  k_BM = scatter(jnp.ones_like(span_BL), masked_i)
  seg_BM = scatter(segment_ids_BL, run_i)
  pos1_BM = scatter(pos1_a_BL, run_i)
  valid_BM = k_BM > 0
  # Part B offsets: spans in order, each taking k + 1 slots after Part A.
  rank_BM = jnp.argsort(jnp.argsort(jnp.where(valid_BM, order_BM, jnp.inf), axis=1), axis=1)
  width_BM = jnp.where(valid_BM, k_BM + 1, 0)
  sorted_width_BM = jnp.zeros_like(width_BM).at[jnp.arange(num_rows)[:, None], rank_BM].set(width_BM)
  before_BM = jnp.cumsum(sorted_width_BM, axis=1) - sorted_width_BM
  offset_BM = a_len_B[:, None] + jnp.take_along_axis(before_BM, rank_BM, axis=1)
  b_len_B = jnp.sum(width_BM, axis=1)

  t_BL = idx_L[None, :] - start_BL  # offset inside the span
  offset_BL = jnp.take_along_axis(offset_BM, safe_span_BL, axis=1)
  drop = out_len
  a_slot = jnp.where(keep_a_BL, a_slot_BL, drop)
  b_in_slot = jnp.where(masked_BL, offset_BL + 1 + t_BL, drop)
  b_tgt_slot = jnp.where(masked_BL, offset_BL + t_BL, drop)
  start_slot_BM = jnp.where(valid_BM, offset_BM, drop)
  end_slot_BM = jnp.where(valid_BM, offset_BM + k_BM, drop)
  a_token_BL = jnp.where(run_start_BL, jnp.int32(mask_id), tokens_BL)
  full = lambda v: jnp.full((num_rows, out_len), v, jnp.int32)  # noqa: E731

  def put(out_BO, slot_BX, value_BX):
    return jax.vmap(lambda o, s, v: o.at[s].set(v, mode='drop'))(out_BO, slot_BX,
                                                                 value_BX.astype(jnp.int32))

  const_BM = lambda v: jnp.full((num_rows, m), v, jnp.int32)  # noqa: E731
  inputs = put(put(put(full(pad_id), a_slot, a_token_BL), b_in_slot, tokens_BL),
               start_slot_BM, const_BM(start_id))
  targets = put(put(full(pad_id), b_tgt_slot, tokens_BL), end_slot_BM, const_BM(end_id))
  seg_of_BL = jnp.take_along_axis(seg_BM, safe_span_BL, axis=1)
  segments = put(put(put(full(0), a_slot, segment_ids_BL), b_in_slot, seg_of_BL), start_slot_BM,
                 seg_BM)
  pos1_of_BL = jnp.take_along_axis(pos1_BM, safe_span_BL, axis=1)
  pos1 = put(put(put(full(0), a_slot, pos1_a_BL), b_in_slot, pos1_of_BL), start_slot_BM, pos1_BM)
  pos2 = put(put(full(0), b_in_slot, t_BL + 2), start_slot_BM, const_BM(1))
  slot_O = jnp.arange(out_len, dtype=jnp.int32)[None, :]
  part_b = (slot_O >= a_len_B[:, None]) & (slot_O < (a_len_B + b_len_B)[:, None])
  return {'inputs': inputs, 'targets': targets, 'weights': part_b.astype(jnp.float32),
          'segment_ids': segments, 'positions': pos1, 'block_positions': pos2,
          'part_b': part_b.astype(jnp.int32)}


def attention_mask(part_b_BO) -> jax.Array:
  """`[B, 1, L, L]`: every query sees Part A; Part B queries also see Part B keys up to their own."""
  b_BO = part_b_BO.astype(bool)
  length = b_BO.shape[1]
  idx = jnp.arange(length)
  causal_LL = idx[None, :] <= idx[:, None]
  sees_BLL = (~b_BO)[:, None, :] | (b_BO[:, :, None] & b_BO[:, None, :] & causal_LL[None])
  return sees_BLL[:, None]


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """GLM rows `[B, L + 2M]`: inputs, targets, weights, segment_ids, 2-D positions, part_b."""
  if not specials.extra:
    raise ValueError('glm needs a reserved [START] id: set data.tokenizer.extra_ids >= 1')
  tokens_BL = batch['tokens'].astype(jnp.int32)
  segment_ids_BL = batch['segment_ids'].astype(jnp.int32)
  num_rows, length = tokens_BL.shape
  span_rng, order_rng = jax.random.split(rng)
  eligible_BL = (segment_ids_BL != 0) & ~mlm.reserved_lookup(specials)[tokens_BL]
  spans = noising.clip_spans(noising.sample_spans(span_rng, num_rows, length, options.span_probs(),
                                                  options.mask_rate), eligible_BL, segment_ids_BL)
  m = spans['start_M'].shape[1]
  order_BM = jax.random.uniform(order_rng, (num_rows, m))
  out = arrange(tokens_BL, segment_ids_BL, spans['masked'], spans['span_index'], spans['start_M'],
                order_BM, start_id=specials.extra[0], end_id=specials.eos, mask_id=specials.mask,
                pad_id=specials.pad)
  glm_batch = {f'glm_{k}': v for k, v in out.items() if k not in ('inputs', 'targets', 'weights')}
  result = {**batch, 'inputs': out['inputs'], 'targets': out['targets'], 'weights': out['weights'],
            'masked': spans['masked'], **glm_batch}
  if options.sparse_logits:
    probs = options.span_probs()
    k_ = np.arange(len(probs))
    cluster = float((k_ * k_ * probs).sum() / (k_ * probs).sum())
    k = min(out['inputs'].shape[1], wwm.max_unit_predictions(length, options.mask_rate, cluster) + m)
    result.update(wwm.gather_selected(out['weights'] > 0, out['targets'], k))
  return result


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean cross-entropy over the Part B targets, and its metrics."""
  del specials
  config = getattr(model, 'config', None)
  if not getattr(config, 'block_position_embeddings', False):
    raise ValueError('glm needs the encoder family with 2-D positions: set '
                     '--config.model.block_position_embeddings=True')
  sparse = 'mlm_positions' in batch
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['glm_segment_ids'],
                    positions=batch['glm_positions'], block_positions=batch['glm_block_positions'],
                    attention_mask=attention_mask(batch['glm_part_b']),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    **({'logits_positions': batch['mlm_positions']} if sparse else {}))
  if sparse:
    return common.lm_loss_and_metrics(out['logits'], batch['mlm_targets'], batch['mlm_weights'])
  return common.lm_loss_and_metrics(out['logits'], batch['targets'], batch['weights'])
