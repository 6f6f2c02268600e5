"""Shared objective maths: weighted cross-entropy (with z-loss, label smoothing), accuracy, metrics;
the same loss chunked over the sequence for large vocabularies (`chunked_lm_loss_and_metrics`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits_BLV, targets_BL, *, z_loss: float = 0.0,
                        label_smoothing: float = 0.0):
  """Per position, float32: (cross-entropy, z-loss, log Z).

  Label smoothing: q = (1 - a) onehot + a / V, so CE = log Z - (1 - a) l_t - a mean(l). Written
  from log Z rather than with optax's cross-entropies, which do not return it: the z-loss and the
  chunked loss's backward need it, and one logsumexp pass then serves all three.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)  # bf16 log-softmax loses the small probabilities.
  lse_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  if label_smoothing:
    ce_BL = (lse_BL - (1.0 - label_smoothing) * target_BL
             - label_smoothing * jnp.mean(logits_BLV, axis=-1))
  else:
    ce_BL = lse_BL - target_BL
  # PaLM/T5X z-loss keeps log Z near 0 so that bf16 logits stay in range.
  z_BL = z_loss * jnp.square(lse_BL) if z_loss else jnp.zeros_like(ce_BL)
  return ce_BL, z_BL, lse_BL


def weighted_cross_entropy(logits_BLV, targets_BL, weights_BL, *, z_loss: float = 0.0,
                           label_smoothing: float = 0.0):
  """Returns (sum_loss, sum_weights, sum_z): float32 weighted sums; sum_loss includes the z-loss."""
  ce_BL, z_BL, _ = token_cross_entropy(logits_BLV, targets_BL, z_loss=z_loss,
                                       label_smoothing=label_smoothing)
  weights_BL = weights_BL.astype(jnp.float32)
  return jnp.sum((ce_BL + z_BL) * weights_BL), jnp.sum(weights_BL), jnp.sum(z_BL * weights_BL)


def argmax_hits(logits_BLV, targets_BL):
  """float32 `argmax(logits) == targets`, with argmax's tie rule (the lowest index of the max).

  Written as max, then the lowest index holding it: two plain reductions instead of XLA's
  variadic (value, index) reduce, which the CPU backend does not vectorise (a one-off timing over
  the quickstart's 3.6 M-logit MLM slab on 2 cores: 2.7 ms instead of 9; docs/benchmarks.md).
  """
  max_BL1 = jnp.max(logits_BLV, axis=-1, keepdims=True)
  vocab = logits_BLV.shape[-1]
  index_V = jnp.arange(vocab, dtype=jnp.int32)
  first_BL = jnp.min(jnp.where(logits_BLV == max_BL1, index_V, vocab), axis=-1)
  return (first_BL == targets_BL).astype(jnp.float32)


def weighted_accuracy(logits_BLV, targets_BL, weights_BL):
  """Returns (sum_correct, sum_weights): float32 weighted count of argmax hits."""
  weights_BL = weights_BL.astype(jnp.float32)
  correct_BL = argmax_hits(logits_BLV, targets_BL)
  return jnp.sum(correct_BL * weights_BL), jnp.sum(weights_BL)


def binary_auc(scores, labels, weights):
  """float32 ROC AUC of `scores` for the 0/1 `labels` over the positions where `weights` > 0.

  The Mann-Whitney form: the share of (positive, negative) pairs the scores order correctly, ties
  counted as half. It does not depend on the base rate, so it shows a detector learning while its
  accuracy still equals the share of the majority class (ELECTRA's early discriminator; the
  released code logs `disc_auc` for this). One sort and two searchsorted passes over the flattened
  positions, so it stays cheap inside a jitted step. 0.5 when either class is absent.
  """
  scores = jnp.ravel(scores).astype(jnp.float32)
  counted = jnp.ravel(weights) > 0
  positive = counted & (jnp.ravel(labels) > 0.5)
  negative = counted & ~positive
  # Uncounted and positive positions sit at +inf among the negatives: never below a finite score.
  negatives_sorted = jnp.sort(jnp.where(negative, scores, jnp.inf))
  below = jnp.searchsorted(negatives_sorted, scores, side='left')
  at_or_below = jnp.searchsorted(negatives_sorted, scores, side='right')
  pairs_won = jnp.sum(jnp.where(positive, below + 0.5 * (at_or_below - below), 0.0))
  num_pos = jnp.sum(positive.astype(jnp.float32))
  num_neg = jnp.sum(negative.astype(jnp.float32))
  both = (num_pos > 0) & (num_neg > 0)
  return jnp.where(both, pairs_won / jnp.maximum(num_pos * num_neg, 1.0), 0.5)


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


def _chunk_sums_and_residuals(logits_BCV, t_BC, w_BC, z_loss: float, label_smoothing: float):
  """The four weighted sums of one chunk (loss incl. z-loss, weight, z-loss, hits), as
  `weighted_cross_entropy` and `weighted_accuracy` give them, and for the backward pass log Z and
  the per-position terms."""
  ce_BC, z_BC, lse_BC = token_cross_entropy(logits_BCV, t_BC, z_loss=z_loss,
                                            label_smoothing=label_smoothing)
  correct_BC = argmax_hits(logits_BCV, t_BC)
  sums = jnp.stack([jnp.sum((ce_BC + z_BC) * w_BC), jnp.sum(w_BC), jnp.sum(z_BC * w_BC),
                    jnp.sum(correct_BC * w_BC)])
  return sums, (lse_BC, ce_BC + z_BC, z_BC, correct_BC)


def chunked_lm_loss_and_metrics(hidden_BLD, project, targets_BL, weights_BL, *, chunk_size: int,
                                z_loss: float = 0.0, label_smoothing: float = 0.0):
  """`lm_loss_and_metrics(project(hidden_BLD), ...)` without ever holding `[B, L, V]` logits.

  `project` maps hidden `[B, C, D]` to float32 logits `[B, C, V]` (the model's output layer).
  The sequence is cut into chunks of `chunk_size` positions (the last one padded with weight
  0); a `lax.scan` sums loss, weight, z-loss and hits per chunk, so peak memory holds one
  chunk's logits (B x C x V floats) instead of all of them. Same values as the unchunked path.

  Each chunk is a custom VJP: the forward keeps only log Z per position; the backward recomputes
  the chunk's logits (one projection) and forms the logits' gradient
  w [g_loss (softmax - q) + (g_loss + g_z) 2 z_loss log Z softmax] in one elementwise pass from
  the saved log Z. Rematerialising the forward instead (jax.checkpoint) also recomputes its
  max and sum-exp reductions over the vocabulary: two more passes over every chunk's float32
  logits, which the H100 profile of GPT-2 small showed (docs/benchmarks.md).
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
  h_NBCD = to_chunks(hidden_BLD)
  # The parameters `project` closes over become explicit inputs, so the custom VJP can return
  # their gradients (from the projection's own VJP).
  proj, consts = jax.closure_convert(project, h_NBCD[0])

  @jax.custom_vjp
  def chunk_sums(h_BCD, t_BC, w_BC, *params):
    return _chunk_sums_and_residuals(proj(h_BCD, *params), t_BC, w_BC, z_loss,
                                     label_smoothing)[0]

  def chunk_fwd(h_BCD, t_BC, w_BC, *params):
    sums, terms = _chunk_sums_and_residuals(proj(h_BCD, *params), t_BC, w_BC, z_loss,
                                            label_smoothing)
    return sums, (h_BCD, t_BC, w_BC, params, terms)

  def chunk_bwd(residuals, g_4):
    h_BCD, t_BC, w_BC, params, (lse_BC, loss_BC, z_BC, correct_BC) = residuals
    logits_BCV, project_vjp = jax.vjp(proj, h_BCD, *params)
    vocab = logits_BCV.shape[-1]
    probs_BCV = jnp.exp(logits_BCV - lse_BC[..., None])
    target_BCV = jax.nn.one_hot(t_BC, vocab, dtype=jnp.float32)
    if label_smoothing:
      target_BCV = target_BCV * (1.0 - label_smoothing) + label_smoothing / vocab
    g_ce_BC = w_BC * g_4[0]
    g_logits_BCV = g_ce_BC[..., None] * (probs_BCV - target_BCV)
    if z_loss:
      g_z_BC = w_BC * (g_4[0] + g_4[2]) * 2.0 * z_loss * lse_BC
      g_logits_BCV = g_logits_BCV + g_z_BC[..., None] * probs_BCV
    g_h_BCD, *g_params = project_vjp(g_logits_BCV.astype(logits_BCV.dtype))
    # Weights are data, but their cotangent is exact and cheap ([B, C] terms), so give it.
    g_w_BC = g_4[0] * loss_BC + g_4[1] + g_4[2] * z_BC + g_4[3] * correct_BC
    return (g_h_BCD, None, g_w_BC, *g_params)

  chunk_sums.defvjp(chunk_fwd, chunk_bwd)
  sums, _ = jax.lax.scan(lambda acc, xs: (acc + chunk_sums(*xs, *consts), None),
                         jnp.zeros(4, jnp.float32),
                         (h_NBCD, to_chunks(targets_BL), to_chunks(weights_BL)))
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
