"""classify objective: hand-computed weighted CE, padding rows inert, mean pooling ignores padding,
params-only init lands the pretrained encoder under `backbone`."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptm_jax import models, objectives, train
from ptm_jax.configs import base
from ptm_jax.objectives import classify

FIELDS = dict(vocab_size=64, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
              max_position_embeddings=16, dropout_rate=0.0)
B, L = 8, 12


def _batch(rng=0):
  r = np.random.default_rng(rng)
  lengths = r.integers(3, L + 1, size=B)
  segment_ids = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  tokens = np.where(segment_ids > 0, r.integers(5, 64, size=(B, L)), 0).astype(np.int32)
  positions = (np.arange(L)[None] * segment_ids).astype(np.int32)
  label = r.integers(0, 3, size=B).astype(np.int32)
  weight = np.ones(B, np.float32)
  weight[-2:] = 0.0
  return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions, 'label': label,
          'label_weight': weight}


def _model(pooling='cls', num_classes=3):
  options = classify.Options(num_classes=num_classes, pooling=pooling, dropout_rate=0.0)
  model = classify.build_model('encoder', 'runlocal', dict(FIELDS), options)
  b = _batch()
  params = model.init(jax.random.key(0), b['tokens'], segment_ids=b['segment_ids'],
                      positions=b['positions'])['params']
  return model, options, params


def test_registered_and_options_validated():
  assert objectives.get('classify') is classify
  cfg = base.objective_config('classify', num_classes=9, pooling='mean')
  assert cfg.num_classes == 9 and cfg.pooling == 'mean'
  with pytest.raises(ValueError, match='pooling'):
    classify.Options(pooling='max')
  with pytest.raises(ValueError, match='num_classes'):
    classify.Options(num_classes=1)


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_loss_is_hand_weighted_ce_and_padding_rows_inert(pooling):
  model, options, params = _model(pooling)
  b = _batch()
  batch = classify.corrupt(jax.random.key(1), {k: jnp.asarray(v) for k, v in b.items()},
                           options=options)
  assert (batch['weights'] == b['label_weight']).all() and (batch['targets'] == b['label']).all()
  loss, metrics = classify.loss(params, batch, None, model=model, options=options)
  logits = np.asarray(model.apply({'params': params}, b['tokens'], segment_ids=b['segment_ids'],
                                  positions=b['positions'])['logits'], np.float64)
  assert logits.shape == (B, 3)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -logp[np.arange(B), b['label']]
  w = b['label_weight']
  np.testing.assert_allclose(float(loss), (ce * w).sum() / w.sum(), rtol=1e-5)
  acc = ((logits.argmax(-1) == b['label']) * w).sum() / w.sum()
  np.testing.assert_allclose(float(metrics['accuracy']), acc, rtol=1e-6)
  assert float(metrics['num_targets']) == w.sum()
  # Rows with label_weight 0 contribute nothing: neither their labels, their text, nor their gradient.
  other = dict(batch, targets=batch['targets'].at[-2:].set(2 - batch['targets'][-2:]),
               inputs=batch['inputs'].at[-2:].set(7))
  loss2, _ = classify.loss(params, other, None, model=model, options=options)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  grad_fn = jax.grad(lambda p, bt: classify.loss(p, bt, None, model=model, options=options)[0])
  g1, g2 = grad_fn(params, batch), grad_fn(params, other)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), g1, g2)
  # An all-padding row (the eval iterator's filler) keeps everything finite.
  empty = dict(batch, inputs=batch['inputs'].at[-1].set(0), segment_ids=batch['segment_ids'].at[-1].set(0))
  loss3, m3 = classify.loss(params, empty, None, model=model, options=options)
  assert np.isfinite(float(loss3)) and np.isfinite(float(m3['accuracy']))


def test_mean_pooling_ignores_padding():
  model, _, params = _model('mean')
  b = _batch()
  apply = lambda tokens: model.apply({'params': params}, tokens, segment_ids=b['segment_ids'],  # noqa: E731
                                     positions=b['positions'])['logits']
  changed = np.where(b['segment_ids'] > 0, b['tokens'], 9 + np.arange(L)[None] % 40).astype(np.int32)
  assert (changed != b['tokens']).any()
  np.testing.assert_allclose(apply(changed), apply(b['tokens']), atol=1e-6)
  # ... while a real token does change the logits.
  real = b['tokens'].copy()
  real[:, 1] = (real[:, 1] + 1 - 5) % 59 + 5
  assert not np.allclose(apply(real), apply(b['tokens']), atol=1e-6)


def test_init_skip_reinitialises_the_named_modules_and_names_a_wrong_prefix():
  """`train.init_skip`: leaves under the named modules start from the fresh init, every other
  pretrained leaf is loaded; a pattern that matches nothing is a one-line error."""
  encoder = models.build('encoder', 'runlocal', **FIELDS)
  b = _batch()
  init = lambda seed: jax.tree.map(np.asarray, nn.unbox(encoder.init(  # noqa: E731
      jax.random.key(seed), b['tokens'], segment_ids=b['segment_ids'],
      positions=b['positions'])['params']))
  pretrained, fresh = init(5), init(0)
  layer = sorted(k for k in pretrained if k.startswith('layers'))[-1]  # the top layer
  kept = train.skip_pretrained(pretrained, (layer,))
  assert layer not in kept and set(kept) == set(pretrained) - {layer}
  merged = train.merge_pretrained(fresh, kept)
  for path, leaf in jax.tree_util.tree_leaves_with_path(merged):
    top = path[0].key
    source = fresh if top == layer else pretrained
    want = source
    for k in path:
      want = want[k.key]
    np.testing.assert_array_equal(leaf, want)
  # A module path covers that module only: 'layers_1' is not layers_10, 'attention' is not
  # attention_norm; an fnmatch pattern names several.
  sub = train.skip_pretrained(pretrained, f'{layer}/attention')
  assert set(pretrained[layer]) - set(sub[layer]) == {'attention'}
  assert 'attention_norm' in sub[layer]
  names = train.skip_pretrained({'layers_1': {'w': 1}, 'layers_10': {'w': 2}}, 'layers_1')
  assert names == {'layers_10': {'w': 2}}
  assert set(train.skip_pretrained(pretrained, 'layers_*')) == set(pretrained) - {
      k for k in pretrained if k.startswith('layers_')}
  with pytest.raises(ValueError, match=r"train.init_skip: \['decoder\*'\] match no pretrained"):
    train.skip_pretrained(pretrained, ('decoder*',))


def test_params_only_init_puts_encoder_under_backbone():
  encoder = models.build('encoder', 'runlocal', **FIELDS)
  b = _batch()
  pretrained = nn.unbox(encoder.init(jax.random.key(5), b['tokens'], segment_ids=b['segment_ids'],
                                     positions=b['positions'])['params'])
  pretrained = jax.tree.map(np.asarray, pretrained)
  config = ml_collections.ConfigDict(dict(model=dict(family='encoder', variant='runlocal', **FIELDS)))
  model = train.build_model(config, FIELDS['vocab_size'], classify, classify.Options(num_classes=2))
  fresh = model.init(jax.random.key(0), b['tokens'], segment_ids=b['segment_ids'],
                     positions=b['positions'])['params']
  fresh = jax.tree.map(np.asarray, nn.unbox(fresh))
  assert set(fresh) == {'backbone', 'head'}
  merged = train.merge_pretrained(fresh, pretrained)
  flat_p = jax.tree_util.tree_leaves_with_path(pretrained)
  for path, leaf in flat_p:
    got = merged['backbone']
    for k in path:
      got = got[k.key]
    np.testing.assert_array_equal(got, leaf)
  np.testing.assert_array_equal(merged['head']['kernel'], fresh['head']['kernel'])
  out = model.apply({'params': merged}, b['tokens'], segment_ids=b['segment_ids'],
                    positions=b['positions'])
  assert out['logits'].shape == (B, 2) and out['logits'].dtype == jnp.float32
