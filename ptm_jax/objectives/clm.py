"""Causal language modelling: next-token prediction (Radford et al. 2018, "Improving Language
Understanding by Generative Pre-Training", GPT; the same objective as GPT-2/3).

Recipe, on packed rows:
  * inputs = tokens (the decoder's attention is causal and segment-restricted internally);
  * targets[t] = tokens[t + 1] (the last column, which has no successor, gets `specials.pad`);
  * weights[t] = 1.0 iff position t + 1 exists and lies in the same segment as t and that
    segment is not padding (segment_ids != 0): no prediction across a packing boundary, none
    from or into padding;
  * loss = sum of weighted cross-entropy / max(sum of weights, 1), plus an optional z-loss
    (`z_loss` * log(Z)^2, PaLM) that keeps the softmax normaliser near 1;
  * `loss_chunk_size` > 0 computes the same loss chunk by chunk over the sequence (never the
    full float32 `[B, L, V]` logits; tests/test_loss_fast_paths.py checks equality with gradients);
    with `loss_grad_in_forward` the output layer's gradient is formed in the forward pass
    instead of recomputing each chunk's logits in the backward (one vocabulary matmul less).

Tests (tests/test_objectives_clm.py) check that targets are the shifted tokens, that weights are
zero at the last position of each segment and on padding (a worked example with two packed
segments), that corrupt works under jit, and that the loss equals a hand-computed weighted
cross-entropy with accuracy in [0, 1] and num_targets = sum of weights.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ptm_jax.objectives import common


# The loss adds a mixture-of-experts model's router losses (`common.with_model_aux_loss`).
ADDS_MODEL_AUX_LOSS = True


@dataclasses.dataclass(frozen=True)
class Options:
  """Causal LM hyper-parameters."""

  z_loss: float = 0.0
  # > 0: the loss runs over chunks of this many positions and never holds the full float32
  # [B, L, V] logits (common.chunked_lm_loss_and_metrics; decoder models). 0 = unchunked.
  loss_chunk_size: int = 0
  # With loss_chunk_size > 0: the output layer's gradient is formed in the forward pass, while
  # each chunk's logits are at hand, instead of recomputing them in the backward (one vocabulary
  # matmul per position less; common.chunked_lm_loss_and_metrics).
  loss_grad_in_forward: bool = False

  def __post_init__(self):
    if self.z_loss < 0:
      raise ValueError(f'clm.Options.z_loss must be >= 0, got {self.z_loss}')
    common.check_loss_chunk_size('clm.Options', self.loss_chunk_size,
                                 self.loss_grad_in_forward)


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Adds `inputs` (= tokens), next-token `targets` and same-segment `weights`."""
  del rng, options  # Deterministic: nothing is noised.
  tokens_BL = batch['tokens'].astype(jnp.int32)
  segment_ids_BL = batch['segment_ids'].astype(jnp.int32)
  pad_B1 = jnp.full((tokens_BL.shape[0], 1), specials.pad, jnp.int32)
  next_tokens_BL = jnp.concatenate([tokens_BL[:, 1:], pad_B1], axis=1)
  # A zero segment id after the last column makes "t + 1 exists" part of the same-segment test.
  next_segment_BL = jnp.concatenate([segment_ids_BL[:, 1:], jnp.zeros_like(pad_B1)], axis=1)
  weights_BL = (segment_ids_BL != 0) & (next_segment_BL == segment_ids_BL)
  return {**batch, 'inputs': tokens_BL, 'targets': next_tokens_BL,
          'weights': weights_BL.astype(jnp.float32)}


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean next-token cross-entropy over the weighted positions, and its metrics."""
  del specials
  chunk = options.loss_chunk_size
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch.get('token_types'),
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    **common.logits_kwargs(model, chunk))
  return common.output_loss_and_metrics(model, params, out, batch['targets'], batch['weights'],
                                        chunk_size=chunk, z_loss=options.z_loss,
                                        grad_in_forward=options.loss_grad_in_forward)
