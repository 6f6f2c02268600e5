"""The quickstart job end to end (tokenizer -> MLM pretraining -> rt_sentiment fine-tunes -> report)
at the suite's size: the report has the table and plots, and pretraining beats random init."""
import importlib.util
import os

import numpy as np
import pytest

from ptm_jax import run
from ptm_jax.tasks import finetune

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart():
  spec = importlib.util.spec_from_file_location('quickstart', os.path.join(REPO, 'experiments',
                                                                          'quickstart.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_configs_resolve():
  qs = _quickstart()
  for arg in ('', 'runlocal', 'gpu', 'tiny'):
    config = qs.get_config(arg)
    assert config.downstream.tasks == ['rt_sentiment'] and config.train.batch_size % 8 == 0
    ft = finetune.finetune_config(config, 'rt_sentiment', 'pretrained', 0, '/pretrain',
                                  tokenizer_cfg=config.data.tokenizer)
    assert ft.objective.name == 'classify' and ft.objective.num_classes == 2
    assert ft.data.source == 'rt_sentiment' and ft.init_from == '/pretrain'
    assert ft.train.eval_split == 'validation' and ft.train.test_split == 'test'
    assert ft.train.eval_batches == 0 and ft.train.steps == config.downstream.steps
    random = finetune.finetune_config(config, 'rt_sentiment', 'random', 0, '/pretrain',
                                      tokenizer_cfg=config.data.tokenizer)
    assert random.init_from == '' and random.optim.learning_rate == ft.optim.learning_rate
  with pytest.raises(ValueError, match='quickstart takes'):
    qs.get_config('huge')
  with pytest.raises(ValueError, match='known tasks'):
    finetune.finetune_config(qs.get_config('tiny'), 'imdb', 'random', 0, '')


@pytest.mark.slow
def test_quickstart_end_to_end(data_dir, tmp_path):
  config = _quickstart().get_config('tiny')
  workdir = str(tmp_path / 'quickstart')
  summary = run.run(config, workdir)
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '| task | init | seeds | dev acc | test acc |' in report
  assert '| rt_sentiment | pretrained |' in report and '| rt_sentiment | random |' in report
  for png in ('curves.png', 'finetune.png'):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000
  rows = summary['downstream']['rows']
  assert len(rows) == 2 * len(config.downstream.seeds)
  acc = {init: np.mean([r['test_accuracy'] for r in rows if r['init'] == init])
         for init in finetune.INITS}
  dev = {init: np.mean([r['dev_accuracy'] for r in rows if r['init'] == init])
         for init in finetune.INITS}
  assert all(np.isfinite(list(acc.values()))) and all(0.0 < a <= 1.0 for a in acc.values())
  assert acc['pretrained'] > acc['random'] and dev['pretrained'] > dev['random'], (acc, dev)
  # The fine-tunes started from the pretraining run (params-only), the random ones did not.
  pretrained_run = next(r for r in rows if r['init'] == 'pretrained')
  assert os.path.exists(os.path.join(pretrained_run['workdir'], 'metrics.jsonl'))
