"""Shared objective maths: weighted cross-entropy (with z-loss, label smoothing), accuracy, metrics;
the same loss chunked over the sequence for large vocabularies (`chunked_lm_loss_and_metrics`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

# How the loss's vocabulary-wide reductions (log Z and the first argmax of each position) run:
# 'two_pass' = max, then sum-exp and the lowest index holding the max (three reductions, each a
# pass over the float32 logits; what the CPU backend vectorises); 'one_pass' = one variadic
# reduction carrying (running max, sum of exp relative to it, index of the first max): one read
# of the logits instead of three, and no materialised index array (on an H100 the three passes
# and the iota took ~4.8 ms of GPT-2 small's 47 ms step, docs/benchmarks.md); 'auto' = two_pass
# on CPU, one_pass elsewhere (chosen when the step is lowered, `lax.platform_dependent`).
VOCAB_REDUCTIONS = ('auto', 'one_pass', 'two_pass')
_vocab_reduction = 'auto'


def set_vocab_reduction(impl: str) -> None:
  """Selects the `VOCAB_REDUCTIONS` implementation for steps traced from now on."""
  global _vocab_reduction
  if impl not in VOCAB_REDUCTIONS:
    raise ValueError(f'vocab reduction {impl!r}; use one of {", ".join(VOCAB_REDUCTIONS)}')
  _vocab_reduction = impl


def _two_pass(logits_NV):
  # XLA merges logsumexp's max with this one (the same reduction of the same operand).
  max_N1 = jnp.max(logits_NV, axis=-1, keepdims=True)
  vocab = logits_NV.shape[-1]
  index_V = jnp.arange(vocab, dtype=jnp.int32)
  first_N = jnp.min(jnp.where(logits_NV == max_N1, index_V, vocab), axis=-1)
  return jax.nn.logsumexp(logits_NV, axis=-1), first_N


def _one_pass_combine(a, b):
  (m1, s1, i1), (m2, s2, i2) = a, b
  m = jnp.maximum(m1, m2)
  # A side whose max is -inf holds no mass (and exp(-inf - -inf) would be NaN).
  s = (jnp.where(m1 == -jnp.inf, 0.0, s1 * jnp.exp(m1 - m))
       + jnp.where(m2 == -jnp.inf, 0.0, s2 * jnp.exp(m2 - m)))
  i = jnp.where(m1 > m2, i1, jnp.where(m2 > m1, i2, jnp.minimum(i1, i2)))
  return m, s, i


def _one_pass(logits_NV):
  axis = logits_NV.ndim - 1
  vocab = logits_NV.shape[-1]
  index_NV = jax.lax.broadcasted_iota(jnp.int32, logits_NV.shape, axis)
  m_N, s_N, first_N = jax.lax.reduce(
      (logits_NV, jnp.ones_like(logits_NV), index_NV),
      (jnp.float32(-jnp.inf), jnp.float32(0.0), jnp.int32(vocab)), _one_pass_combine, (axis,))
  return m_N + jnp.log(s_N), first_N


@jax.custom_vjp
def _lse_and_first_max(logits_NV):
  if _vocab_reduction == 'one_pass':
    return _one_pass(logits_NV)
  if _vocab_reduction == 'two_pass':
    return _two_pass(logits_NV)
  return jax.lax.platform_dependent(logits_NV, cpu=_two_pass, default=_one_pass)


def _lse_fwd(logits_NV):
  lse_N, first_N = _lse_and_first_max(logits_NV)
  return (lse_N, first_N), (logits_NV, lse_N)


def _lse_bwd(residuals, g):
  logits_NV, lse_N = residuals
  return (g[0][..., None] * jnp.exp(logits_NV - lse_N[..., None]),)


_lse_and_first_max.defvjp(_lse_fwd, _lse_bwd)


def lse_and_first_max(logits_BLV, valid_vocab: int | None = None):
  """float32 (log Z, index of the first maximum) over the last axis, in one reduction pass where
  the backend allows it (`set_vocab_reduction`); log Z is differentiable (its gradient is the
  softmax). `valid_vocab` < V leaves out the last columns (vocabulary padding): they count as
  -inf, so they hold no probability mass and are never the argmax."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  return _lse_and_first_max(_mask_padding(logits_BLV, valid_vocab))


def _in_vocab(x_BLV, valid_vocab: int):
  """Boolean `[..., V]`: the column is one of the first `valid_vocab` (not padding)."""
  return jax.lax.broadcasted_iota(jnp.int32, x_BLV.shape, x_BLV.ndim - 1) < valid_vocab


def _mask_padding(logits_BLV, valid_vocab: int | None):
  if valid_vocab is None or valid_vocab >= logits_BLV.shape[-1]:
    return logits_BLV
  return jnp.where(_in_vocab(logits_BLV, valid_vocab), logits_BLV, -jnp.inf)


def token_cross_entropy(logits_BLV, targets_BL, *, z_loss: float = 0.0,
                        label_smoothing: float = 0.0, valid_vocab: int | None = None):
  """Per position, float32: (cross-entropy, z-loss, log Z, argmax hit).

  Label smoothing: q = (1 - a) onehot + a / V, so CE = log Z - (1 - a) l_t - a mean(l). Written
  from log Z rather than with optax's cross-entropies, which do not return it: the z-loss and the
  chunked loss's backward need it, and one reduction pass serves log Z and the accuracy's argmax
  (`lse_and_first_max`). The hit is `argmax(logits) == target` with argmax's tie rule (the
  lowest index of the max). `valid_vocab`: only the first columns are the vocabulary.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)  # bf16 log-softmax loses the small probabilities.
  vocab = logits_BLV.shape[-1] if valid_vocab is None else min(valid_vocab, logits_BLV.shape[-1])
  lse_BL, first_BL = lse_and_first_max(logits_BLV, valid_vocab)
  target_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  if label_smoothing:
    kept_BLV = (jnp.where(_in_vocab(logits_BLV, vocab), logits_BLV, 0.0)
                if vocab < logits_BLV.shape[-1] else logits_BLV)
    total_BL = jnp.sum(kept_BLV, axis=-1)
    ce_BL = lse_BL - (1.0 - label_smoothing) * target_BL - label_smoothing * total_BL / vocab
  else:
    ce_BL = lse_BL - target_BL
  # PaLM/T5X z-loss keeps log Z near 0 so that bf16 logits stay in range.
  z_BL = z_loss * jnp.square(lse_BL) if z_loss else jnp.zeros_like(ce_BL)
  hit_BL = (first_BL == targets_BL).astype(jnp.float32)
  return ce_BL, z_BL, lse_BL, hit_BL


def weighted_cross_entropy(logits_BLV, targets_BL, weights_BL, *, z_loss: float = 0.0,
                           label_smoothing: float = 0.0):
  """Returns (sum_loss, sum_weights, sum_z): float32 weighted sums; sum_loss includes the z-loss."""
  ce_BL, z_BL, _, _ = token_cross_entropy(logits_BLV, targets_BL, z_loss=z_loss,
                                          label_smoothing=label_smoothing)
  weights_BL = weights_BL.astype(jnp.float32)
  return jnp.sum((ce_BL + z_BL) * weights_BL), jnp.sum(weights_BL), jnp.sum(z_BL * weights_BL)


def argmax_hits(logits_BLV, targets_BL):
  """float32 `argmax(logits) == targets`, with argmax's tie rule (the lowest index of the max).

  The index comes from `lse_and_first_max`: on CPU the max, then the lowest index holding it
  (XLA's CPU backend does not vectorise a variadic (value, index) reduce: a one-off timing over
  the quickstart's 3.6 M-logit MLM slab on 2 cores, 2.7 ms instead of 9); elsewhere the one
  variadic pass that also gives log Z.
  """
  _, first_BL = lse_and_first_max(logits_BLV)
  return (first_BL == targets_BL).astype(jnp.float32)


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
  sums, _ = _sums_and_terms(logits_BLV, targets_BL, weights_BL.astype(jnp.float32), z_loss,
                            label_smoothing, None)
  return _loss_and_metrics(sums, z_loss)


def _loss_and_metrics(sums_4, z_loss: float):
  sum_loss, sum_w, sum_z, sum_correct = sums_4[0], sums_4[1], sums_4[2], sums_4[3]
  # max(., 1) keeps a batch with no targets (all padding) at loss 0 instead of NaN.
  denom = jnp.maximum(sum_w, 1.0)
  metrics = {'loss': sum_loss / denom, 'accuracy': sum_correct / denom, 'num_targets': sum_w}
  if z_loss:
    metrics['z_loss'] = sum_z / denom
  return metrics['loss'], metrics


def _sums_and_terms(logits_BCV, t_BC, w_BC, z_loss: float, label_smoothing: float,
                    valid_vocab: int | None):
  """The four weighted sums (loss incl. z-loss, weight, z-loss, argmax hits) from one reduction
  pass over the vocabulary, and for a backward pass log Z and the per-position terms."""
  ce_BC, z_BC, lse_BC, correct_BC = token_cross_entropy(
      logits_BCV, t_BC, z_loss=z_loss, label_smoothing=label_smoothing, valid_vocab=valid_vocab)
  sums = jnp.stack([jnp.sum((ce_BC + z_BC) * w_BC), jnp.sum(w_BC), jnp.sum(z_BC * w_BC),
                    jnp.sum(correct_BC * w_BC)])
  return sums, (lse_BC, ce_BC + z_BC, z_BC, correct_BC)


def chunked_lm_loss_and_metrics(hidden_BLD, project, targets_BL, weights_BL, *, chunk_size: int,
                                z_loss: float = 0.0, label_smoothing: float = 0.0,
                                valid_vocab: int | None = None, grad_in_forward: bool = False):
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

  `grad_in_forward=True` (Liger's fused linear cross-entropy, Hsu et al. 2024): when the loss is
  differentiated, the forward pass forms each chunk's logits gradient while its logits are at
  hand and runs the projection's backward there, keeping the hidden states' gradient and summing
  the output layer's; the backward only scales them by the loss's cotangent. That spares the
  recomputed projection (one vocabulary matmul per position: ~9 % of GPT-2 small's training
  FLOPs) and its pass over the logits, for an output-layer-sized float32 accumulator held during
  the forward. The loss's gradient is exact; `metrics['z_loss']` (whose z-loss is inside
  `metrics['loss']`) is then a reported number, not differentiable. Evaluation (no gradient)
  runs the plain forward.

  `valid_vocab` < V: `project` returns a padded vocabulary whose first `valid_vocab` columns are
  the tokens (`vocab_pad_multiple`); the rest count as -inf (no mass, never the argmax, zero
  gradient). Projecting onto the padded table directly spares slicing the logits and padding
  their gradient back (a bf16 pass over every chunk: 1.8 ms of GPT-2 small's step on an H100).
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
  chunks = (to_chunks(hidden_BLD), to_chunks(targets_BL), to_chunks(weights_BL))
  # The parameters `project` closes over become explicit inputs, so the custom VJP can return
  # their gradients (from the projection's own VJP).
  proj, consts = jax.closure_convert(project, chunks[0][0])
  terms = lambda logits_BCV, t_BC, w_BC: _sums_and_terms(logits_BCV, t_BC, w_BC, z_loss,
                                                         label_smoothing, valid_vocab)
  logits_grad = lambda logits_BCV, t_BC, w_BC, lse_BC, g_ce, g_z: _logits_grad(
      logits_BCV, t_BC, w_BC, lse_BC, g_ce, g_z, z_loss, label_smoothing, valid_vocab)
  if grad_in_forward:
    sums = _sums_grad_in_forward(proj, terms, logits_grad)(*chunks, *consts)
    return _loss_and_metrics(sums.at[2].set(jax.lax.stop_gradient(sums[2])), z_loss)

  @jax.custom_vjp
  def chunk_sums(h_BCD, t_BC, w_BC, *params):
    return terms(proj(h_BCD, *params), t_BC, w_BC)[0]

  def chunk_fwd(h_BCD, t_BC, w_BC, *params):
    sums, per_position = terms(proj(h_BCD, *params), t_BC, w_BC)
    return sums, (h_BCD, t_BC, w_BC, params, per_position)

  def chunk_bwd(residuals, g_4):
    h_BCD, t_BC, w_BC, params, (lse_BC, loss_BC, z_BC, correct_BC) = residuals
    logits_BCV, project_vjp = jax.vjp(proj, h_BCD, *params)
    g_logits_BCV = logits_grad(logits_BCV, t_BC, w_BC, lse_BC, g_4[0], g_4[0] + g_4[2])
    g_h_BCD, *g_params = project_vjp(g_logits_BCV.astype(logits_BCV.dtype))
    return (g_h_BCD, None, _weights_grad(g_4, loss_BC, z_BC, correct_BC), *g_params)

  chunk_sums.defvjp(chunk_fwd, chunk_bwd)
  sums, _ = jax.lax.scan(lambda acc, xs: (acc + chunk_sums(*xs, *consts), None),
                         jnp.zeros(4, jnp.float32), chunks)
  return _loss_and_metrics(sums, z_loss)


def _logits_grad(logits_BCV, t_BC, w_BC, lse_BC, g_ce, g_z, z_loss: float,
                 label_smoothing: float, valid_vocab: int | None):
  """d(weighted sums)/d logits for cotangents g_ce (of the loss sum) and g_z (of every z-loss
  term: the loss sum's and the z sum's): w [g_ce (softmax - q) + g_z 2 z_loss log Z softmax]."""
  vocab = logits_BCV.shape[-1]
  valid = vocab if valid_vocab is None else min(valid_vocab, vocab)
  # exp(-inf - lse) = 0: the padded columns get no gradient.
  probs_BCV = jnp.exp(_mask_padding(logits_BCV.astype(jnp.float32), valid) - lse_BC[..., None])
  target_BCV = jax.nn.one_hot(t_BC, vocab, dtype=jnp.float32)
  if label_smoothing:
    target_BCV = (target_BCV * (1.0 - label_smoothing)
                  + jnp.where(_in_vocab(target_BCV, valid), label_smoothing / valid, 0.0))
  g_logits_BCV = (w_BC * g_ce)[..., None] * (probs_BCV - target_BCV)
  if z_loss:
    g_logits_BCV = g_logits_BCV + (w_BC * g_z * 2.0 * z_loss * lse_BC)[..., None] * probs_BCV
  return g_logits_BCV


def _weights_grad(g_4, loss_BC, z_BC, correct_BC):
  # Weights are data, but their cotangent is exact and cheap ([B, C] terms), so give it.
  return g_4[0] * loss_BC + g_4[1] + g_4[2] * z_BC + g_4[3] * correct_BC


def _sums_grad_in_forward(proj, terms, logits_grad):
  """The chunks' summed (loss, weight, z, hits) as a custom VJP over the whole scan whose forward
  also computes the loss sum's gradient (`chunked_lm_loss_and_metrics(grad_in_forward=True)`)."""

  def plain(h_NBCD, t_NBC, w_NBC, *params):
    step = lambda acc, xs: (acc + terms(proj(xs[0], *params), xs[1], xs[2])[0], None)
    return jax.lax.scan(step, jnp.zeros(4, jnp.float32), (h_NBCD, t_NBC, w_NBC))[0]

  def fwd(h_NBCD, t_NBC, w_NBC, *params):
    # The cotangent the mean loss (`_loss_and_metrics`) gives the loss sum, 1 / denominator, is
    # the forward's guess: the backward rescales by (actual / guess), exactly 1 under a plain
    # mean, so a bf16 hidden-state gradient is not rounded a second time.
    denom = jnp.maximum(jnp.sum(w_NBC), 1.0)

    def step(carry, xs):
      acc, g_params = carry
      h_BCD, t_BC, w_BC = xs
      logits_BCV, project_vjp = jax.vjp(proj, h_BCD, *params)
      sums, (lse_BC, loss_BC, z_BC, correct_BC) = terms(logits_BCV, t_BC, w_BC)
      # Of the loss sum, which includes the z-loss; the z sum alone is not differentiated.
      g_logits_BCV = logits_grad(logits_BCV, t_BC, w_BC, lse_BC, 1.0 / denom, 1.0 / denom)
      g_h_BCD, *g_chunk = project_vjp(g_logits_BCV.astype(logits_BCV.dtype))
      g_params = [a + g for a, g in zip(g_params, g_chunk)]
      return (acc + sums, g_params), (g_h_BCD, loss_BC, z_BC, correct_BC)

    zeros = [jnp.zeros_like(p) for p in params]
    (sums, g_params), per_chunk = jax.lax.scan(step, (jnp.zeros(4, jnp.float32), zeros),
                                               (h_NBCD, t_NBC, w_NBC))
    return sums, (per_chunk, g_params, denom)

  def bwd(residuals, g_4):
    (g_h_NBCD, loss_NBC, z_NBC, correct_NBC), g_params, denom = residuals
    scale = lambda g: (g_4[0] * denom * g).astype(g.dtype)
    return (scale(g_h_NBCD), None, _weights_grad(g_4, loss_NBC, z_NBC, correct_NBC),
            *[scale(g) for g in g_params])

  sums = jax.custom_vjp(plain)
  sums.defvjp(fwd, bwd)
  return sums


def check_loss_chunk_size(owner: str, chunk_size: int, grad_in_forward: bool = False) -> None:
  """The `loss_chunk_size` field every LM objective's Options has: >= 0 (0 = unchunked), and
  `loss_grad_in_forward`, which is a mode of the chunked loss."""
  if chunk_size < 0:
    raise ValueError(f'{owner}.loss_chunk_size must be >= 0 (0 = off), got {chunk_size}')
  if grad_in_forward and not chunk_size:
    raise ValueError(f'{owner}.loss_grad_in_forward needs the chunked loss: set '
                     f'loss_chunk_size > 0 (e.g. 256)')


def logits_kwargs(model, chunk_size: int) -> dict:
  """`compute_logits=False` when the loss is chunked: the model then skips `[B, L, V]`."""
  if not chunk_size:
    return {}
  if not hasattr(model, 'lm_logits'):
    raise ValueError(f'loss_chunk_size needs a model with an lm_logits method (the decoder and '
                     f'encdec families); {type(model).__name__} has none: set loss_chunk_size=0')
  return {'compute_logits': False}


def with_model_aux_loss(loss_and_metrics, out):
  """Adds a model's auxiliary loss (the MoE router losses, `aux_loss`) to the optimised scalar.

  `metrics['loss']` stays the objective's own loss, comparable with a dense model's; the router
  terms are reported beside it (`aux_loss`, `moe_balance_loss`, `moe_z_loss`,
  `moe_dropped_fraction`). A model without the output is returned unchanged.
  """
  if 'aux_loss' not in out:
    return loss_and_metrics
  loss, metrics = loss_and_metrics
  return loss + out['aux_loss'], dict(metrics, aux_loss=out['aux_loss'], **out['moe'])


def output_loss_and_metrics(model, params, out, targets_BL, weights_BL, *, chunk_size: int,
                            z_loss: float = 0.0, label_smoothing: float = 0.0,
                            grad_in_forward: bool = False):
  """LM loss from a model output: its `logits`, or (chunk_size > 0) chunked from its `hidden`
  (`grad_in_forward`: see `chunked_lm_loss_and_metrics`); plus the model's auxiliary loss
  (`with_model_aux_loss`)."""
  return with_model_aux_loss(
      _lm_output_loss(model, params, out, targets_BL, weights_BL, chunk_size=chunk_size,
                      z_loss=z_loss, label_smoothing=label_smoothing,
                      grad_in_forward=grad_in_forward), out)


def _lm_output_loss(model, params, out, targets_BL, weights_BL, *, chunk_size: int,
                    z_loss: float, label_smoothing: float, grad_in_forward: bool):
  if not chunk_size:
    return lm_loss_and_metrics(out['logits'], targets_BL, weights_BL, z_loss=z_loss,
                               label_smoothing=label_smoothing)
  config = getattr(model, 'config', None)
  padded = getattr(config, 'vocab_pad_multiple', 0) > 0  # the decoder's padded vocabulary
  kwargs = dict(keep_padding=True) if padded else {}
  project = lambda h_BCD: model.apply({'params': params}, h_BCD, method='lm_logits',  # noqa: E731
                                      **kwargs)
  return chunked_lm_loss_and_metrics(out['hidden'], project, targets_BL, weights_BL,
                                     chunk_size=chunk_size, z_loss=z_loss,
                                     label_smoothing=label_smoothing,
                                     valid_vocab=config.vocab_size if padded else None,
                                     grad_in_forward=grad_in_forward)
