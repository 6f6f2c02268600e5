"""Feature-based transfer: linear probes, the ELMo scalar mix, frozen feature extraction, the stage."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import models
from ptm_jax.tasks import probe


def _layered_data(n, informative_layer, num_layers=3, dim=8, seed=0):
  """Features [n, J, D] where only `informative_layer` carries the label (in one direction)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, size=n).astype(np.int32)
  x = rng.normal(size=(n, num_layers, dim)).astype(np.float32)
  x[:, informative_layer, 0] += 3.0 * (2 * y - 1)
  return x, y


def test_linear_probe_learns_a_separable_layer_and_not_noise():
  splits = {s: _layered_data(400, 1, seed=i) for i, s in enumerate(probe.SPLITS)}
  y = {s: v[1] for s, v in splits.items()}
  good = probe.train_probe({s: v[0][:, 1] for s, v in splits.items()}, y, 2, mix=False, steps=200)
  noise = probe.train_probe({s: v[0][:, 0] for s, v in splits.items()}, y, 2, mix=False, steps=200)
  assert good['test_accuracy'] > 0.95
  assert noise['test_accuracy'] < 0.65
  assert good['step'] % probe.EVAL_EVERY == 0 and good['mix_weights'] is None


def test_scalar_mix_puts_its_weight_on_the_informative_layer():
  splits = {s: _layered_data(400, 2, seed=10 + i) for i, s in enumerate(probe.SPLITS)}
  out = probe.train_probe({s: v[0] for s, v in splits.items()}, {s: v[1] for s, v in splits.items()},
                          2, mix=True, steps=300)
  weights = np.asarray(out['mix_weights'])
  assert out['test_accuracy'] > 0.95
  assert weights.shape == (3,) and int(np.argmax(weights)) == 2


def test_standardise_uses_train_statistics_only():
  x = {'train': np.asarray([[1.0], [3.0]]), 'validation': np.asarray([[5.0]]), 'test': np.asarray([[2.0]])}
  z = probe._standardise(x)
  np.testing.assert_allclose(z['train'][:, 0], [-1.0, 1.0], atol=1e-5)
  np.testing.assert_allclose(z['validation'][0, 0], 3.0, atol=1e-5)


def test_mean_pooled_features_ignore_padding(monkeypatch):
  """extract_features pools every layer over real tokens only; padded content changes nothing."""
  model = models.build('encoder', 'runlocal', vocab_size=40, num_layers=2, dropout_rate=0.0)
  params = probe.init_params(model, 8, seed=0)
  seg = np.asarray([[1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
  batch = {'tokens': np.asarray([[2, 7, 8, 3, 0, 0, 0, 0]], np.int32), 'segment_ids': seg,
           'positions': np.asarray([[0, 1, 2, 3, 0, 0, 0, 0]], np.int32),
           'label': np.asarray([1], np.int32), 'label_weight': np.asarray([1.0], np.float32)}
  other = dict(batch, tokens=np.asarray([[2, 7, 8, 3, 9, 9, 9, 9]], np.int32))
  padding_row = {k: np.zeros_like(v) for k, v in batch.items()}  # label_weight 0: dropped
  feeds = [[batch, padding_row], [other]]
  monkeypatch.setattr(probe.downstream, 'make_task_iterator',
                      lambda *a, **k: iter([{k2: np.concatenate([b[k2] for b in feeds[0]])
                                             for k2 in batch}]))
  feats, labels = probe.extract_features(model, params, None, None, 'train')
  monkeypatch.setattr(probe.downstream, 'make_task_iterator', lambda *a, **k: iter(feeds[1]))
  feats2, _ = probe.extract_features(model, params, None, None, 'train')
  assert feats.shape == (1, 3, 128) and labels.tolist() == [1]
  np.testing.assert_allclose(feats, feats2, atol=1e-5)
  out = model.apply({'params': params}, jnp.asarray(batch['tokens']), segment_ids=jnp.asarray(seg),
                    positions=jnp.asarray(batch['positions']), output_hidden_states=True)
  np.testing.assert_allclose(feats[0, 2], np.asarray(out['hidden'][0, :4].mean(axis=0)), atol=1e-5)


def test_max_examples_keeps_the_first_examples_and_stops_reading(monkeypatch):
  """train_examples=N probes the split's first N examples and never extracts past them."""
  model = models.build('encoder', 'runlocal', vocab_size=40, num_layers=1, dropout_rate=0.0)
  params = probe.init_params(model, 4, seed=0)
  rng = np.random.default_rng(0)

  def batch(b):
    return {'tokens': rng.integers(5, 40, size=(3, 4)).astype(np.int32),
            'segment_ids': np.ones((3, 4), np.int32),
            'positions': np.tile(np.arange(4, dtype=np.int32), (3, 1)),
            'label': np.asarray([3 * b, 3 * b + 1, 3 * b + 2], np.int32) % 2,
            'label_weight': np.asarray([1.0, 1.0, 1.0 if b != 1 else 0.0], np.float32)}

  batches, pulled = [batch(b) for b in range(4)], []

  def feed(*args, **kwargs):
    for b in batches:
      pulled.append(1)
      yield b

  monkeypatch.setattr(probe.downstream, 'make_task_iterator', feed)
  every, every_y = probe.extract_features(model, params, None, None, 'train')
  assert every.shape[0] == 11 and len(pulled) == 4  # batch 1's third row is padding
  pulled.clear()
  compiled = probe._pooled_features._cache_size()
  first, first_y = probe.extract_features(model, params, None, None, 'train', max_examples=4)
  assert probe._pooled_features._cache_size() == compiled  # the same model: no new compilation
  assert len(pulled) == 2 and first.shape[0] == 4  # the third and fourth batches never read
  np.testing.assert_allclose(first, every[:4], atol=1e-6)
  np.testing.assert_array_equal(first_y, every_y[:4])


@pytest.mark.usefixtures('data_dir')
def test_probe_stage_runs_after_pretraining(tmp_path):
  """quickstart:tiny with probes only: per-layer + mix rows for both inits, probe.json/png written."""
  from ptm_jax import run
  from ptm_jax.configs import load_experiment
  config = load_experiment('experiments/quickstart.py:tiny')
  config.train.update(steps=20, eval_every=20, checkpoint_every=20, log_every=10)
  config.downstream.update(probe=True, finetune=False, probe_steps=50, train_examples=512)
  summary = run.run(config, str(tmp_path))
  rows = json.loads((tmp_path / 'probe.json').read_text())
  layers = config.model.num_layers + 1
  for init in ('pretrained', 'random'):
    mine = [r for r in rows if r['init'] == init]
    assert [r['layer'] for r in mine] == [str(i) for i in range(layers)] + ['mix']
    assert all(0.3 <= r['test_accuracy'] <= 1.0 for r in mine)
    assert len(mine[-1]['mix_weights']) == layers
  assert (tmp_path / 'probe.png').stat().st_size > 0
  assert 'Feature-based transfer' in (tmp_path / 'report.md').read_text()
  assert summary['downstream']['rows'] == []
