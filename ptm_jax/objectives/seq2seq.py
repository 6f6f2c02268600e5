"""The teacher-forced encoder–decoder loss shared by T5 span corruption, BART and MASS.

A corrupted seq2seq batch holds, next to the loader's keys:
  inputs, input_segment_ids, input_positions      `[B, Le]`  what the encoder reads
  targets, target_segment_ids, target_positions   `[B, Ld]`  what the decoder predicts
  weights                                         `[B, Ld]`  float32, 1.0 where the loss counts
  decoder_inputs (optional)                       `[B, Ld]`  default: targets shifted right
The default decoder input is the target shifted right inside each target segment, each segment
opening with the model's `decoder_start_id` (T5: pad, BART: its BOS), as the reference models.
"""
from __future__ import annotations

import jax.numpy as jnp

from ptm_jax.objectives import common, noising


def shift_right(targets_BL, segment_ids_BL, start_id: int):
  """Decoder inputs: targets[t - 1] inside a segment, `start_id` at each segment's first slot."""
  prev_BL = jnp.concatenate([jnp.full_like(targets_BL[:, :1], start_id), targets_BL[:, :-1]], axis=1)
  return jnp.where(noising.segment_starts(segment_ids_BL), jnp.int32(start_id), prev_BL)


def decoder_start_id(model, specials) -> int:
  """The model's `decoder_start_id` (encdec Config), else the pad id (T5's choice)."""
  config = getattr(model, 'config', None)
  return int(getattr(config, 'decoder_start_id', specials.pad if specials else 0))


def loss(params, batch, rng, *, model, specials=None, z_loss: float = 0.0,
         label_smoothing: float = 0.0, loss_chunk_size: int = 0,
         loss_grad_in_forward: bool = False):
  """Mean cross-entropy of the decoder over the weighted target slots, and its metrics.

  `loss_chunk_size` > 0: the same loss from the decoder's hidden states, `loss_chunk_size`
  target positions at a time (common.chunked_lm_loss_and_metrics), never `[B, Ld, V]` logits;
  `loss_grad_in_forward`: its output-layer gradient formed in the forward pass.
  """
  decoder_inputs = batch.get('decoder_inputs')
  if decoder_inputs is None:
    decoder_inputs = shift_right(batch['targets'], batch['target_segment_ids'],
                                 decoder_start_id(model, specials))
  out = model.apply({'params': params}, batch['inputs'], decoder_inputs,
                    encoder_segment_ids=batch['input_segment_ids'],
                    decoder_segment_ids=batch['target_segment_ids'],
                    encoder_positions=batch['input_positions'],
                    decoder_positions=batch['target_positions'],
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    **common.logits_kwargs(model, loss_chunk_size))
  value, metrics = common.output_loss_and_metrics(
      model, params, out, batch['targets'], batch['weights'], chunk_size=loss_chunk_size,
      z_loss=z_loss, label_smoothing=label_smoothing, grad_in_forward=loss_grad_in_forward)
  metrics['num_encoder_tokens'] = jnp.sum(batch['input_segment_ids'] != 0).astype(jnp.float32)
  return value, metrics
