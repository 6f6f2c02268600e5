"""BART denoising (Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training for
Natural Language Generation, Translation, and Comprehension", ACL, section 2.2 and Table 1), for
the `encdec` family: corrupt a document, reconstruct the original with the decoder.

Noising functions, any mix by Options, applied per packed document (segment) on device in
fairseq's order (`DenoisingDataset`: permute, mask, insert, rotate):
  * sentence permutation (`permute_sentences`, probability per document): the document's
    sentences are shuffled; sentences come from `data.annotations=('sentences',)`
    (`sentence_ids`, sentence splits of `data.annotate.sentences_of`); [CLS]/[SEP] stay put;
  * text infilling (`mask_rate` of the tokens): spans with lengths ~ Poisson(`poisson_lambda`)
    are each replaced by ONE [MASK]; a zero-length span inserts a [MASK];
  * token masking (`token_mask_rate`): single tokens replaced by [MASK], i.i.d.;
  * token deletion (`delete_rate`): single tokens removed, i.i.d. (the model must find where);
  * masks may be replaced by a random non-reserved id instead (`random_token_rate`, fairseq's
    `mask_random`);
  * document rotation (`rotate`, probability per document): the document's tokens (between its
    [CLS] and [SEP]) are rotated to start at a uniformly chosen token.
Default = the paper's best (Table 1, "Text Infilling + Sentence Shuffling", the BART-large
recipe): 30 % infilling, lambda = 3, every document permuted.
The encoder reads the compacted noisy row (`[B, L]`: shorter documents, padding after; a row
whose insertions would overflow is cut, which needs more inserted than removed tokens); the
decoder reconstructs the ORIGINAL packed row (targets = tokens, decoder inputs = tokens shifted
right from the model's `decoder_start_id`); loss = mean cross-entropy over every target token.
Span placement (static shapes): a renewal process of Poisson spans and Geometric gaps (>= 1 kept
token) covers each token with probability exactly `mask_rate`; spans stop at reserved ids and
document boundaries (fairseq samples span starts among word starts and may overlap spans).

Tests (tests/test_objectives_seq2seq.py): the span-length histogram of >= 1e4 spans matches
Poisson(3) (chi-square), zero-length spans insert a [MASK]; infilled token rate 0.30 +- 0.01;
deletion really shortens each document by the deleted count; sentence permutation is a
permutation of the sentences (the multiset of sentences is preserved, the order changes);
rotation is a rotation; the decoder target is the original row; runlocal loss falls.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ptm_jax.objectives import common, mlm, noising, seq2seq


# The loss adds a mixture-of-experts model's router losses (`seq2seq.loss`).
ADDS_MODEL_AUX_LOSS = True


@dataclasses.dataclass(frozen=True)
class Options:
  """BART noising mix; the defaults are the paper's best (infilling + sentence permutation)."""

  mask_rate: float = 0.3  # text infilling: share of tokens inside replaced spans
  poisson_lambda: float = 3.0
  permute_sentences: float = 1.0  # probability that a document's sentences are shuffled
  rotate: float = 0.0  # probability that a document is rotated
  token_mask_rate: float = 0.0  # BERT-style single-token masking (no 80/10/10)
  delete_rate: float = 0.0
  random_token_rate: float = 0.0  # share of masks that are random ids instead (fairseq mask_random)
  label_smoothing: float = 0.0
  # > 0: the target loss chunk by chunk without [B, L, V] logits (seq2seq.loss). 0 = unchunked.
  loss_chunk_size: int = 0
  loss_grad_in_forward: bool = False  # the chunked loss's gradient in the forward (clm.Options)

  def __post_init__(self):
    common.check_loss_chunk_size('bart.Options', self.loss_chunk_size,
                                 self.loss_grad_in_forward)
    for name in ('mask_rate', 'permute_sentences', 'rotate', 'token_mask_rate', 'delete_rate',
                 'random_token_rate', 'label_smoothing'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'bart.Options.{name} must be in [0, 1], got {getattr(self, name)}')
    if self.poisson_lambda <= 0:
      raise ValueError(f'bart.Options.poisson_lambda must be > 0, got {self.poisson_lambda}')
    if self.token_mask_rate + self.delete_rate >= 1.0:
      raise ValueError('bart.Options: token_mask_rate + delete_rate must be < 1')


def permute_sentences(rng, tokens_BL, segment_ids_BL, sentence_ids_BL, prob: float):
  """Each document's sentences shuffled (with probability `prob`); other tokens stay put."""
  num_rows, length = tokens_BL.shape
  doc_rng, key_rng = jax.random.split(rng)
  permute_BL = noising.per_segment(jax.random.uniform(doc_rng, (num_rows, length + 1)) < prob,
                                   segment_ids_BL)
  movable_BL = (sentence_ids_BL > 0) & (segment_ids_BL != 0)
  key_BL = noising.per_segment(jax.random.uniform(key_rng, (num_rows, length + 1)),
                               jnp.clip(sentence_ids_BL, 0, length))
  rank_BL = jnp.where(permute_BL, key_BL, 0.0)
  return noising.reorder({'tokens': tokens_BL}, movable_BL, segment_ids_BL, rank_BL)['tokens']


def rotate_documents(rng, tokens_BL, segment_ids_BL, specials, prob: float):
  """Each document (with probability `prob`) rotated to start at a uniform token; [CLS]/[SEP] at
  its ends stay put."""
  num_rows, length = tokens_BL.shape
  starts_BL = noising.segment_starts(segment_ids_BL)
  ends_BL = jnp.concatenate([starts_BL[:, 1:], jnp.ones_like(starts_BL[:, :1])], axis=1)
  movable_BL = ((segment_ids_BL != 0) & ~(starts_BL & (tokens_BL == specials.bos))
                & ~(ends_BL & (tokens_BL == specials.eos)))
  k_BL = noising.within_segment_cumsum(movable_BL, segment_ids_BL, exclusive=True)
  n_BL = noising.per_segment(noising.segment_sum(movable_BL.astype(jnp.int32), segment_ids_BL),
                             segment_ids_BL)
  doc_rng, offset_rng = jax.random.split(rng)
  u_BL = noising.per_segment(jax.random.uniform(offset_rng, (num_rows, length + 1)), segment_ids_BL)
  on_BL = noising.per_segment(jax.random.uniform(doc_rng, (num_rows, length + 1)) < prob,
                              segment_ids_BL)
  offset_BL = jnp.where(on_BL, jnp.floor(u_BL * n_BL).astype(jnp.int32), 0)
  rank_BL = jnp.mod(k_BL - offset_BL, jnp.maximum(n_BL, 1)).astype(jnp.float32)
  return noising.reorder({'tokens': tokens_BL}, movable_BL, segment_ids_BL, rank_BL)['tokens']


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Noisy encoder `inputs` `[B, L]` (+ segment ids, positions); targets = the original row."""
  tokens_BL = batch['tokens'].astype(jnp.int32)
  segment_ids_BL = batch['segment_ids'].astype(jnp.int32)
  num_rows, length = tokens_BL.shape
  perm_rng, span_rng, token_rng, random_rng, rotate_rng = jax.random.split(rng, 5)
  noisy_BL = tokens_BL
  if options.permute_sentences > 0:
    if 'sentence_ids' not in batch:
      raise ValueError("bart sentence permutation needs batch['sentence_ids']: set "
                       "data.annotations=('sentences',) or objective.permute_sentences=0")
    noisy_BL = permute_sentences(perm_rng, noisy_BL, segment_ids_BL,
                                 batch['sentence_ids'].astype(jnp.int32), options.permute_sentences)
  eligible_BL = (segment_ids_BL != 0) & ~mlm.reserved_lookup(specials)[noisy_BL]
  infilled_BL = jnp.zeros_like(eligible_BL)
  run_start_BL = insert_BL = infilled_BL
  if options.mask_rate > 0:
    probs = noising.poisson_probs(options.poisson_lambda)
    spans = noising.clip_spans(noising.sample_spans(span_rng, num_rows, length, probs,
                                                    options.mask_rate), eligible_BL, segment_ids_BL)
    infilled_BL, run_start_BL, insert_BL = spans['masked'], spans['run_start'], spans['insert']
  u_BL = jax.random.uniform(token_rng, tokens_BL.shape)
  free_BL = eligible_BL & ~infilled_BL
  token_mask_BL = free_BL & (u_BL < options.token_mask_rate)
  deleted_BL = free_BL & ~token_mask_BL & (u_BL < options.token_mask_rate + options.delete_rate)
  # Every emitted [MASK] may become a random id instead.
  mask_r_BL, ins_r_BL = jax.random.split(random_rng)
  mask_id = jnp.int32(specials.mask)

  def mask_or_random(r):
    rand_BL = mlm.random_non_reserved(r, tokens_BL.shape, specials)
    use_BL = jax.random.uniform(jax.random.fold_in(r, 1), tokens_BL.shape) < options.random_token_rate
    return jnp.where(use_BL, rand_BL, mask_id)

  second_BL = jnp.where(run_start_BL | token_mask_BL, mask_or_random(mask_r_BL), noisy_BL)
  emit_second_BL = (segment_ids_BL != 0) & ~deleted_BL & (~infilled_BL | run_start_BL)
  first_BL = mask_or_random(ins_r_BL)
  inputs_BL = noising.compact(first_BL, second_BL, insert_BL, emit_second_BL, length, specials.pad)
  input_seg_BL = noising.compact(segment_ids_BL, segment_ids_BL, insert_BL, emit_second_BL, length, 0)
  if options.rotate > 0:
    inputs_BL = rotate_documents(rotate_rng, inputs_BL, input_seg_BL, specials, options.rotate)
  return {**batch, 'inputs': inputs_BL, 'input_segment_ids': input_seg_BL,
          'input_positions': noising.positions_of(input_seg_BL), 'targets': tokens_BL,
          'target_segment_ids': segment_ids_BL,
          'target_positions': noising.positions_of(segment_ids_BL),
          'weights': (segment_ids_BL != 0).astype(jnp.float32),
          'permuted': noisy_BL, 'infilled': infilled_BL, 'deleted': deleted_BL,
          'inserted': insert_BL}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean reconstruction cross-entropy of the original row, and its metrics."""
  value, metrics = seq2seq.loss(params, batch, rng, model=model, specials=specials,
                                label_smoothing=options.label_smoothing,
                                loss_chunk_size=options.loss_chunk_size,
                                loss_grad_in_forward=options.loss_grad_in_forward)
  return value, metrics
