"""ALBERT masked LM + sentence-order prediction (Lan et al. 2020, "ALBERT: A Lite BERT for
Self-supervised Learning of Language Representations", sections 3.1 (inter-sentence coherence
loss) and 4.1).

Recipe:
  * data (`data.pairs='sop'`, ptm_jax/data/pairs.py): every row is `[CLS] A [SEP] B [SEP]` where
    A and B are two consecutive segments of ONE document; with probability 1/2 they are swapped
    (`pair_label` 1 = swapped, 0 = in order, HF's `sentence_order_label`), so topic cues cannot
    solve the task -- the point of SOP over NSP;
  * masking: BERT's 15 % selection with 80/10/10 [MASK]/random/keep, dynamic, on device
    (`mlm.corrupt`). ALBERT masks n-grams (n <= 3, p(n) ~ 1/n); that variant is SpanBERT-style
    span masking and lives in its own objective, so this file keeps single-token masking;
  * loss = mean masked-LM cross-entropy + `pair_loss_weight` (1.0) x mean SOP cross-entropy of
    the 2-way classifier on the pooled [CLS] output (`sop_logits`, or `nsp_logits` for a BERT
    encoder, whose pair head is the same 2-way classifier), over non-padding rows.
Metrics: `loss`, `accuracy` / `mlm_loss` (masked LM), `sop_loss`, `sop_accuracy`, `num_targets`,
`num_pairs`.

Tests (tests/test_objectives_pairs.py): the loss equals a hand-computed MLM CE + SOP CE on an
ALBERT model, padding rows do not count, a batch without pairs is a one-line error;
tests/test_albert.py runs `experiments/albert.py:runlocal` (ALBERT on SOP pairs) and checks that
its loss decreases within 30 steps.
"""
from __future__ import annotations

from ptm_jax.objectives import mlm, mlm_nsp

Options = mlm_nsp.Options


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """BERT's MLM corruption; `token_types` and `pair_label` pass through unchanged."""
  mlm_nsp.require_pairs(batch, 'mlm_sop', 'sop')
  return mlm.corrupt(rng, batch, specials=specials, options=options)


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """MLM + SOP loss of an already corrupted pair batch, and its metrics."""
  del specials
  return mlm_nsp.pair_loss(params, batch, rng, model=model, options=options, prefix='sop',
                           logits_keys=('sop_logits', 'nsp_logits'))
