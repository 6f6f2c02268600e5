"""The train loop's evaluation bookkeeping: the test split is read at new best dev scores only
(test_at='best'), which is exactly the evaluation finetune.select_best reports; eval batches are
read once per run and reused."""
import os

import ml_collections
import numpy as np
import pytest

from ptm_jax import configs
from ptm_jax import train
from ptm_jax.tasks import finetune


def _tc(test_at='best', metric='eval/accuracy'):
  return ml_collections.ConfigDict(dict(test_at=test_at, early_stop_metric=metric))


def _simulate(dev_scores, metric='eval/accuracy', test_at='best'):
  """The loop's decisions over a sequence of dev scores; the test score is 1000 + step."""
  history = []
  for step, score in enumerate(dev_scores, 1):
    dev = {metric: score}
    if train._reads_test(history, dev, _tc(test_at, metric)):  # pylint: disable=protected-access
      dev['test/' + metric.split('/')[1]] = 1000.0 + step
    history.append({'step': step, **dev})
  return history


def test_test_split_is_read_exactly_at_new_bests():
  history = _simulate([0.60, 0.70, 0.70, 0.65, 0.72, float('nan'), 0.72, 0.71])
  read = [h['step'] for h in history if 'test/accuracy' in h]
  assert read == [1, 2, 5]  # a tie (step 3, 7) or a NaN is not a new best
  best = finetune.select_best(history)  # the reported evaluation always has its test score
  assert best['step'] == 5 and best['test/accuracy'] == 1005.0
  every = _simulate([0.60, 0.70, 0.70], test_at='every')
  assert all('test/accuracy' in h for h in every)


def test_losses_improve_downwards_and_unknown_metrics_read_test():
  history = _simulate([3.0, 2.5, 2.7, 2.4], metric='eval/loss')
  assert [h['step'] for h in history if 'test/loss' in h] == [1, 2, 4]
  # Without the selection metric there is nothing to judge a new best by: read it every time.
  assert train._reads_test([], {'eval/loss': 1.0}, _tc())  # pylint: disable=protected-access


def test_early_stopping_waits_for_patience_and_min_steps():
  """GLM seed 1 on news_headline (the seq2seq cpu comparison): dev loss flat for 700 steps, then
  falling; patience 3 stops it at 500, `early_stop_min_steps=1000` lets it reach the fall."""
  losses = [6.447, 6.431, 6.459, 6.453, 6.45, 6.448, 6.437, 6.42, 6.191, 6.101, 6.035]
  history = [{'step': 100 * (i + 1), 'eval/loss': v} for i, v in enumerate(losses)]

  def stop_at(**fields):
    tc = ml_collections.ConfigDict(dict(dict(early_stop_metric='eval/loss',
                                             early_stop_patience=3), **fields))
    return next((h['step'] for i, h in enumerate(history, 1)
                 if train._should_stop_early(history[:i], tc)), None)  # pylint: disable=protected-access
  assert stop_at() == 500  # 200 was the best; 300, 400, 500 did not improve on it
  assert stop_at(early_stop_min_steps=1000) is None  # the fall after 800 keeps improving
  assert stop_at(early_stop_min_steps=600) == 600  # past the minimum, patience decides again
  assert stop_at(early_stop_patience=0) is None


def test_eval_batches_are_read_once_with_a_cache(monkeypatch):
  calls = []
  batches = [{'x': np.full((2,), i, np.float32)} for i in range(5)]

  def make_iterator(*args, **kwargs):
    calls.append(kwargs['split'])
    return iter(batches)

  monkeypatch.setattr(train.data_loader, 'make_iterator', make_iterator)
  monkeypatch.setattr(train, '_global_batch', lambda local, sharding: local)
  eval_step = lambda params, batch, rng: {'loss': batch['x'][0], 'num_targets': 2.0}  # noqa: E731
  config = ml_collections.ConfigDict(dict(
      seed=0, data=dict(source='rt_sentiment'),
      train=dict(eval_batch_size=0, batch_size=2, eval_batches=3)))
  cache = {}
  first = train.evaluate(eval_step, None, config, None, None, None, 'validation', cache=cache)
  again = train.evaluate(eval_step, None, config, None, None, None, 'validation', cache=cache)
  assert first == again and first['loss'] == pytest.approx(1.0)  # batches 0, 1, 2
  assert calls == ['validation'] and len(cache['validation']) == 3
  train.evaluate(eval_step, None, config, None, None, None, 'validation')  # no cache: reads again
  assert calls == ['validation', 'validation']


def test_unknown_test_at_is_one_line(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configs.load_experiment(os.path.join(repo, 'experiments/quickstart.py:tiny'),
                                   {'train.test_at': 'sometimes', 'mesh.num_devices': 1})
  with pytest.raises(ValueError, match="train.test_at='sometimes': use 'best' or 'every'"):
    train.train(config, str(tmp_path))
