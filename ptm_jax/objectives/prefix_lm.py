"""Prefix language modelling: a decoder with bidirectional attention over a prefix and next-token
loss on the rest (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", section 3.2.1 / Table 4 "Prefix LM"; the decoder-only form of Liu et
al. 2018 and of UniLM's seq2seq mask).

Recipe (on device, on packed rows, dynamic per step):
  * each document (segment) of n tokens is split at a point k drawn uniformly from 1..n-1
    ("chooses a random point to split it into prefix and target portions", T5); a document of
    one token is all prefix;
  * `prefix_flags` = 1 on the first k tokens of each document: the decoder's causal mask becomes
    `masks.prefix_mask(prefix_flags)` (prefix tokens see each other, later ones are causal, and
    the segment mask still keeps documents apart);
  * targets[t] = tokens[t + 1]; weights[t] = 1 iff t + 1 is in the same document and is a target
    token (index >= k): the loss is the mean next-token cross-entropy over the target portion,
    plus the optional PaLM z-loss.

Tests (tests/test_objectives_unified.py): the split point is uniform over 1..n-1 (chi-square) and
the prefix is a proper non-empty head of each document; weights cover exactly the target portion;
through gradients of the decoder's output w.r.t. its input embeddings, a prefix position depends
on every prefix position of its document and nothing else, a target position on every earlier
position of its document and nothing later; the runlocal run lowers its loss.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ptm_jax.objectives import clm, common, noising


# The loss adds a mixture-of-experts model's router losses (`common.with_model_aux_loss`).
ADDS_MODEL_AUX_LOSS = True


@dataclasses.dataclass(frozen=True)
class Options:
  """Prefix-LM hyper-parameters."""

  z_loss: float = 0.0
  loss_chunk_size: int = 0  # > 0: chunked loss without full [B, L, V] logits (clm.Options)
  loss_grad_in_forward: bool = False  # the chunked loss's gradient in the forward (clm.Options)

  def __post_init__(self):
    if self.z_loss < 0:
      raise ValueError(f'prefix_lm.Options.z_loss must be >= 0, got {self.z_loss}')
    common.check_loss_chunk_size('prefix_lm.Options', self.loss_chunk_size,
                                 self.loss_grad_in_forward)


def split_prefix(rng, segment_ids_BL, positions_BL) -> jax.Array:
  """Boolean `[B, L]`: the first k tokens of each segment, k ~ Uniform{1..n-1} (n >= 2)."""
  length = segment_ids_BL.shape[1]
  n_BL = noising.segment_lengths(segment_ids_BL)
  u_BS = jax.random.uniform(rng, (segment_ids_BL.shape[0], length + 1))
  u_BL = noising.per_segment(u_BS, segment_ids_BL)
  k_BL = 1 + jnp.floor(u_BL * jnp.maximum(n_BL - 1, 1)).astype(jnp.int32)
  return (segment_ids_BL != 0) & (positions_BL < k_BL)


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Adds `inputs`, next-token `targets`, `prefix_flags` and target-portion `weights`."""
  out = clm.corrupt(rng, batch, specials=specials, options=clm.Options(options.z_loss))
  segment_ids_BL = batch['segment_ids'].astype(jnp.int32)
  # Position within the document by index, so loader position offsets never move the split.
  index_BL = noising.positions_of(segment_ids_BL)
  prefix_BL = split_prefix(rng, segment_ids_BL, index_BL)
  next_is_prefix_BL = jnp.concatenate([prefix_BL[:, 1:], jnp.zeros_like(prefix_BL[:, :1])], axis=1)
  weights_BL = out['weights'] * (~next_is_prefix_BL).astype(jnp.float32)
  return {**out, 'prefix_flags': prefix_BL.astype(jnp.int32), 'weights': weights_BL}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean next-token cross-entropy over the target portions, and its metrics."""
  del specials
  chunk = options.loss_chunk_size
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], prefix_flags=batch['prefix_flags'],
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    **common.logits_kwargs(model, chunk))
  return common.output_loss_and_metrics(model, params, out, batch['targets'], batch['weights'],
                                        chunk_size=chunk, z_loss=options.z_loss,
                                        grad_in_forward=options.loss_grad_in_forward)
