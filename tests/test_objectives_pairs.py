"""MLM+NSP (BERT) and MLM+SOP (ALBERT) objectives: hand-computed losses, padding rows, corruption
keeps the pair fields, clear errors, and BERT's runlocal (MLM+NSP) training."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptm_jax import metrics as metrics_lib
from ptm_jax import objectives, train
from ptm_jax.data import pairs
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.models import albert, encoder
from ptm_jax.objectives import mlm_nsp, mlm_sop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, L = 61, 16
SPECIALS = SpecialIds(V)


def pair_batch(seed=0):
  """Four pair rows and one all-padding row (as an eval pass's last batch has)."""
  rng = np.random.default_rng(seed)
  rows = []
  for label in (0, 1, 1, 0):
    a = rng.integers(5, V, size=int(rng.integers(2, 6)))
    b = rng.integers(5, V, size=int(rng.integers(2, 6)))
    rows.append(pairs.build_example(a, b, label, seq_len=L, specials=SPECIALS))
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  return {k: jnp.asarray(np.concatenate([v, np.zeros_like(v[:1])])) for k, v in batch.items()}


def _params(model, batch):
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), batch['tokens'], segment_ids=batch['segment_ids'],
      positions=batch['positions'], token_types=batch['token_types']))['params']
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda v: jnp.asarray(0.1 * rng.standard_normal(v.shape), v.dtype),
                      jax.tree.map(lambda v: getattr(v, 'value', v), shapes,
                                   is_leaf=lambda v: hasattr(v, 'value')))


MODELS = {
    'mlm_nsp': (mlm_nsp, lambda: encoder.Model(encoder.Config(
        vocab_size=V, embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
        max_position_embeddings=L, dropout_rate=0.0)), 'nsp_logits', 'nsp'),
    'mlm_sop': (mlm_sop, lambda: albert.Model(albert.Config(
        vocab_size=V, embedding_size=8, embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32,
        max_position_embeddings=L)), 'sop_logits', 'sop'),
}


@pytest.mark.parametrize('name', sorted(MODELS))
def test_loss_is_mlm_plus_pair_ce(name):
  objective, make_model, key, prefix = MODELS[name]
  assert objectives.get(name) is objective
  options = objectives.build_options(objective, {'pair_loss_weight': 0.5})
  model = make_model()
  batch = pair_batch()
  corrupted = jax.jit(lambda r, b: objective.corrupt(r, b, specials=SPECIALS, options=options))(
      jax.random.key(3), batch)
  # The pair fields pass through; [CLS]/[SEP]/padding are never selected.
  np.testing.assert_array_equal(corrupted['token_types'], batch['token_types'])
  np.testing.assert_array_equal(corrupted['pair_label'], batch['pair_label'])
  special = np.isin(np.asarray(batch['tokens']), [SPECIALS.cls, SPECIALS.sep, SPECIALS.pad])
  assert not np.asarray(corrupted['weights'])[special].any()
  params = _params(model, batch)
  flipped = dict(corrupted, pair_label=corrupted['pair_label'].at[4].set(1))

  @jax.jit
  def run(p, c, f):
    fn = lambda p, b: objective.loss(p, b, None, model=model, specials=SPECIALS, options=options)
    (loss, metrics), grads = jax.value_and_grad(fn, has_aux=True)(p, c)
    out = model.apply({'params': p}, c['inputs'], segment_ids=c['segment_ids'],
                      positions=c['positions'], token_types=c['token_types'])
    return loss, metrics, grads, fn(p, f)[0], out

  loss, metrics, grads, flipped_loss, out = run(params, corrupted, flipped)
  w = np.asarray(corrupted['weights'])
  ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(out['logits'], batch['tokens']))
  mlm_ce = (ce * w).sum() / w.sum()
  pair_ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(
      out[key], batch['pair_label']))[:4].mean()  # the padding row does not count
  np.testing.assert_allclose(metrics['mlm_loss'], mlm_ce, rtol=1e-5)
  np.testing.assert_allclose(metrics[f'{prefix}_loss'], pair_ce, rtol=1e-5)
  np.testing.assert_allclose(loss, mlm_ce + 0.5 * pair_ce, rtol=1e-5)
  acc = (np.argmax(np.asarray(out[key]), -1) == np.asarray(batch['pair_label']))[:4].mean()
  np.testing.assert_allclose(metrics[f'{prefix}_accuracy'], acc, rtol=1e-6)
  assert float(metrics['num_pairs']) == 4 and float(metrics['num_targets']) == w.sum()
  for k in ('loss', 'accuracy', 'num_targets'):
    assert k in metrics

  # The padding row's label is irrelevant; the pair loss trains the pooler and the pair head.
  np.testing.assert_allclose(flipped_loss, loss, rtol=1e-6)
  head = 'nsp_head' if key == 'nsp_logits' else 'sop_head'
  assert float(jnp.abs(grads[head]['kernel']).sum()) > 0
  assert float(jnp.abs(grads['pooler']['kernel']).sum()) > 0


@pytest.mark.parametrize('name', sorted(MODELS))
def test_missing_pairs_is_a_clear_error(name):
  objective, _, _, prefix = MODELS[name]
  batch = {k: v for k, v in pair_batch().items() if k not in ('pair_label', 'token_types')}
  with pytest.raises(ValueError, match=f'data.pairs={prefix}'):
    objective.corrupt(jax.random.key(0), batch, specials=SPECIALS, options=objective.Options())


def test_bert_runlocal_mlm_nsp_loss_falls(data_dir, tmp_path):
  sys.path.insert(0, REPO)
  from ptm_jax.configs import load_experiment as _load_experiment
  cfg = _load_experiment(os.path.join(REPO, 'experiments/bert.py:runlocal'))
  assert cfg.objective.name == 'mlm_nsp' and cfg.data.pairs == 'nsp'
  plain = _load_experiment(os.path.join(REPO, 'experiments/bert.py:runlocal_mlm'))
  assert plain.objective.name == 'mlm' and plain.data.pairs == ''
  cfg.mesh.num_devices = 1
  cfg.data.seq_len = 64
  cfg.optim.warmup_steps = 5
  cfg.train.update(steps=30, batch_size=8, log_every=5, eval_every=30, eval_batches=1,
                   checkpoint_every=1000)
  train.train(cfg, str(tmp_path))
  records = metrics_lib.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
  assert {'mlm_loss', 'nsp_loss', 'nsp_accuracy'} <= set(records[-2])
  assert any('eval/nsp_accuracy' in r for r in records)
