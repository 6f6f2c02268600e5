"""Shared objective maths: weighted cross-entropy (with z-loss, label smoothing), accuracy, metrics;
the same loss chunked over the sequence for large vocabularies (`chunked_lm_loss_and_metrics`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def weighted_cross_entropy(logits_BLV, targets_BL, weights_BL, *, z_loss: float = 0.0,
                           label_smoothing: float = 0.0):
  """Returns (sum_loss, sum_weights, sum_z): float32 weighted sums; sum_loss includes the z-loss."""
  logits_BLV = logits_BLV.astype(jnp.float32)  # bf16 log-softmax loses the small probabilities.
  weights_BL = weights_BL.astype(jnp.float32)
  if label_smoothing:
    onehot_BLV = jax.nn.one_hot(targets_BL, logits_BLV.shape[-1], dtype=jnp.float32)
    ce_BL = optax.softmax_cross_entropy(logits_BLV, optax.smooth_labels(onehot_BLV, label_smoothing))
  else:
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
  if z_loss:
    # PaLM/T5X z-loss keeps log Z near 0 so that bf16 logits stay in range.
    z_BL = z_loss * jnp.square(jax.nn.logsumexp(logits_BLV, axis=-1))
  else:
    z_BL = jnp.zeros_like(ce_BL)
  return jnp.sum((ce_BL + z_BL) * weights_BL), jnp.sum(weights_BL), jnp.sum(z_BL * weights_BL)


def weighted_accuracy(logits_BLV, targets_BL, weights_BL):
  """Returns (sum_correct, sum_weights): float32 weighted count of argmax hits."""
  weights_BL = weights_BL.astype(jnp.float32)
  correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
  return jnp.sum(correct_BL * weights_BL), jnp.sum(weights_BL)


def lm_loss_and_metrics(logits_BLV, targets_BL, weights_BL, *, z_loss: float = 0.0,
                        label_smoothing: float = 0.0):
  """Mean weighted CE over the counted positions and the standard {'loss', 'accuracy', 'num_targets'}."""
  sum_loss, sum_w, sum_z = weighted_cross_entropy(
      logits_BLV, targets_BL, weights_BL, z_loss=z_loss, label_smoothing=label_smoothing)
  sum_correct, _ = weighted_accuracy(logits_BLV, targets_BL, weights_BL)
  # max(., 1) keeps a batch with no targets (all padding) at loss 0 instead of NaN.
  denom = jnp.maximum(sum_w, 1.0)
  loss = sum_loss / denom
  metrics = {'loss': loss, 'accuracy': sum_correct / denom, 'num_targets': sum_w}
  if z_loss:
    metrics['z_loss'] = sum_z / denom
  return loss, metrics


def chunked_lm_loss_and_metrics(hidden_BLD, project, targets_BL, weights_BL, *, chunk_size: int,
                                z_loss: float = 0.0, label_smoothing: float = 0.0):
  """`lm_loss_and_metrics(project(hidden_BLD), ...)` without ever holding `[B, L, V]` logits.

  `project` maps hidden `[B, C, D]` to float32 logits `[B, C, V]` (the model's output layer).
  The sequence is cut into chunks of `chunk_size` positions (the last one padded with weight
  0); a `lax.scan` sums loss, weight, z-loss and hits per chunk, and `jax.checkpoint` makes the
  backward pass recompute each chunk's logits instead of saving them, so peak memory holds one
  chunk's logits (B x C x V floats) instead of all of them. Same values as the unchunked path.
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size={chunk_size} must be >= 1 (0 = unchunked lm_loss_and_metrics)')
  b, length, d = hidden_BLD.shape
  chunk_size = min(chunk_size, length)
  num = -(-length // chunk_size)
  pad = num * chunk_size - length
  weights_BL = weights_BL.astype(jnp.float32)
  if pad:
    hidden_BLD = jnp.pad(hidden_BLD, ((0, 0), (0, pad), (0, 0)))
    targets_BL = jnp.pad(targets_BL, ((0, 0), (0, pad)))
    weights_BL = jnp.pad(weights_BL, ((0, 0), (0, pad)))
  to_chunks = lambda x: jnp.swapaxes(x.reshape((b, num, chunk_size) + x.shape[2:]), 0, 1)

  @jax.checkpoint
  def chunk_sums(h_BCD, t_BC, w_BC):
    logits_BCV = project(h_BCD)
    sum_loss, sum_w, sum_z = weighted_cross_entropy(
        logits_BCV, t_BC, w_BC, z_loss=z_loss, label_smoothing=label_smoothing)
    sum_correct, _ = weighted_accuracy(logits_BCV, t_BC, w_BC)
    return jnp.stack([sum_loss, sum_w, sum_z, sum_correct])

  sums, _ = jax.lax.scan(lambda acc, xs: (acc + chunk_sums(*xs), None), jnp.zeros(4, jnp.float32),
                         (to_chunks(hidden_BLD), to_chunks(targets_BL), to_chunks(weights_BL)))
  sum_loss, sum_w, sum_z, sum_correct = sums[0], sums[1], sums[2], sums[3]
  denom = jnp.maximum(sum_w, 1.0)
  loss = sum_loss / denom
  metrics = {'loss': loss, 'accuracy': sum_correct / denom, 'num_targets': sum_w}
  if z_loss:
    metrics['z_loss'] = sum_z / denom
  return loss, metrics


def check_loss_chunk_size(owner: str, chunk_size: int) -> None:
  """The `loss_chunk_size` field every LM objective's Options has: >= 0 (0 = unchunked)."""
  if chunk_size < 0:
    raise ValueError(f'{owner}.loss_chunk_size must be >= 0 (0 = off), got {chunk_size}')


def logits_kwargs(model, chunk_size: int) -> dict:
  """`compute_logits=False` when the loss is chunked: the model then skips `[B, L, V]`."""
  if not chunk_size:
    return {}
  if not hasattr(model, 'lm_logits'):
    raise ValueError(f'loss_chunk_size needs a model with an lm_logits method (the decoder and '
                     f'encdec families); {type(model).__name__} has none: set loss_chunk_size=0')
  return {'compute_logits': False}


def output_loss_and_metrics(model, params, out, targets_BL, weights_BL, *, chunk_size: int,
                            z_loss: float = 0.0, label_smoothing: float = 0.0):
  """LM loss from a model output: its `logits`, or (chunk_size > 0) chunked from its `hidden`."""
  if not chunk_size:
    return lm_loss_and_metrics(out['logits'], targets_BL, weights_BL, z_loss=z_loss,
                               label_smoothing=label_smoothing)
  project = lambda h_BCD: model.apply({'params': params}, h_BCD, method='lm_logits')  # noqa: E731
  return chunked_lm_loss_and_metrics(out['hidden'], project, targets_BL, weights_BL,
                                     chunk_size=chunk_size, z_loss=z_loss,
                                     label_smoothing=label_smoothing)
