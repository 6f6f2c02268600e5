"""Shared objective maths: weighted cross-entropy (with z-loss, label smoothing), accuracy, metrics."""
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
