"""BERT masked LM + next-sentence prediction (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding", sections 3.1 and A.1-A.2).

Recipe:
  * data (`data.pairs='nsp'`, ptm_jax/data/pairs.py): every row is `[CLS] A [SEP] B [SEP]` with
    `token_types` 0/1 and `pair_label` 0 = IsNext (B is the true continuation, 50 %) or
    1 = NotNext (B taken from another document, 50 %), HF's convention;
  * masking: BERT's 15 % selection with 80/10/10 [MASK]/random/keep, re-drawn every step on device
    (`mlm.corrupt`, sparse logits at the selected positions); [CLS]/[SEP] are never selected;
  * loss = mean masked-LM cross-entropy + `pair_loss_weight` (1.0) x mean NSP cross-entropy of the
    2-way classifier on the pooled [CLS] output (`nsp_logits`), averaged over non-padding rows --
    BERT's `total_loss = masked_lm_loss + next_sentence_loss`.
Metrics: `loss` (the sum), `accuracy` / `mlm_loss` (masked LM), `nsp_loss`, `nsp_accuracy`,
`num_targets` (masked positions) and `num_pairs` (rows).

Tests (tests/test_objectives_pairs.py): the loss equals a hand-computed MLM CE + NSP CE, padding
rows do not count, the NSP gradient reaches the pooler and NSP head, corrupt keeps `token_types`
and `pair_label` and masks no [CLS]/[SEP]; a batch without `pair_label` is a one-line error; and
`experiments/bert.py:runlocal` (this objective on NSP pairs) decreases its loss in 30 steps.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from ptm_jax.objectives import common, mlm


@dataclasses.dataclass(frozen=True)
class Options(mlm.Options):
  """BERT masking rates plus the weight of the sentence-pair loss."""

  pair_loss_weight: float = 1.0


def require_pairs(batch, objective: str, kind: str) -> None:
  """Fails (at trace time) with the config fix when the batch has no sentence-pair labels."""
  if 'pair_label' not in batch or 'token_types' not in batch:
    raise ValueError(f"objective {objective!r} needs sentence-pair batches: set "
                     f"--config.data.pairs={kind}")


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """BERT's MLM corruption; `token_types` and `pair_label` pass through unchanged."""
  require_pairs(batch, 'mlm_nsp', 'nsp')
  return mlm.corrupt(rng, batch, specials=specials, options=options)


def pair_loss(params, batch, rng, *, model, options, prefix: str, logits_keys: tuple[str, ...]):
  """Shared by mlm_nsp / mlm_sop: MLM CE + weighted 2-way CE on the model's pair logits."""
  sparse = 'mlm_positions' in batch
  out = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], token_types=batch['token_types'],
                    deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                    **({'logits_positions': batch['mlm_positions']} if sparse else {}))
  if sparse:
    mlm_loss, metrics = common.lm_loss_and_metrics(out['logits'], batch['mlm_targets'],
                                                   batch['mlm_weights'])
  else:
    mlm_loss, metrics = common.lm_loss_and_metrics(out['logits'], batch['targets'],
                                                   batch['weights'])
  key = next((k for k in logits_keys if k in out), None)
  if key is None:
    raise ValueError(f'the model returns none of {logits_keys}: it has no sentence-pair head')
  logits_B2 = out[key].astype(jnp.float32)
  labels_B = batch['pair_label'].astype(jnp.int32)
  rows_B = jnp.any(batch['segment_ids'] != 0, axis=-1).astype(jnp.float32)  # padding rows: 0
  num_rows = jnp.maximum(jnp.sum(rows_B), 1.0)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_B2, labels_B)
  p_loss = jnp.sum(ce_B * rows_B) / num_rows
  correct_B = (jnp.argmax(logits_B2, axis=-1) == labels_B).astype(jnp.float32)
  total = mlm_loss + options.pair_loss_weight * p_loss
  metrics = dict(metrics, loss=total, mlm_loss=mlm_loss, mlm_accuracy=metrics['accuracy'],
                 num_pairs=jnp.sum(rows_B))
  metrics[f'{prefix}_loss'] = p_loss
  metrics[f'{prefix}_accuracy'] = jnp.sum(correct_B * rows_B) / num_rows
  return total, metrics


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """MLM + NSP loss of an already corrupted pair batch, and its metrics."""
  del specials
  return pair_loss(params, batch, rng, model=model, options=options, prefix='nsp',
                   logits_keys=('nsp_logits', 'sop_logits'))
