"""Quickstart configs: every size resolves and derives consistent fine-tune configs."""
import importlib.util
import os

import pytest

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
    assert tuple(config.downstream.tasks) == ('rt_sentiment',) and config.train.batch_size % 8 == 0
    ft = finetune.finetune_config(config, 'rt_sentiment', 'pretrained', 0, '/pretrain',
                                  tokenizer_cfg=config.data.tokenizer)
    assert ft.objective.name == 'classify' and ft.objective.num_classes == 2
    assert ft.data.source == 'rt_sentiment' and ft.init_from == '/pretrain'
    assert ft.train.eval_split == 'validation' and ft.train.test_split == 'test'
    assert ft.train.eval_batches == 0 and ft.train.steps == config.downstream.steps
    if arg != 'gpu':  # snippets packed up to 8 per row, 16 rows (~30 snippets) per step
      assert ft.data.pack_examples == 8 and ft.train.batch_size == 16
    # Tagging rows are never packed (their targets are per token), whatever the config says.
    assert finetune.finetune_config(config, 'pd_ner_zh', 'random', 0, '',
                                    tokenizer_cfg=config.data.tokenizer).data.pack_examples == 0
    random = finetune.finetune_config(config, 'rt_sentiment', 'random', 0, '/pretrain',
                                      tokenizer_cfg=config.data.tokenizer)
    assert random.init_from == '' and random.optim.learning_rate == ft.optim.learning_rate
    with config.unlocked():
      config.train.embedding_init = 'ppmi_svd'
      config.downstream.init_skip = ('layers_1',)
    # Re-initialised modules (train.init_skip) concern the pretrained init only.
    assert [finetune.finetune_config(config, 'rt_sentiment', init, 0, '/pretrain',
                                     tokenizer_cfg=config.data.tokenizer).train.init_skip
            for init in ('pretrained', 'random')] == [('layers_1',), ()]
    for init in ('pretrained', 'random'):  # a pretraining-stage option, never a fine-tune's
      assert finetune.finetune_config(config, 'rt_sentiment', init, 0, '/pretrain',
                                      tokenizer_cfg=config.data.tokenizer).train.embedding_init == ''
  with pytest.raises(ValueError, match='quickstart takes'):
    qs.get_config('huge')
  with pytest.raises(ValueError, match='known tasks'):
    finetune.finetune_config(qs.get_config('tiny'), 'imdb', 'random', 0, '')

# The end-to-end run of the job (and its pretrained > random claim) is tests/test_notebook.py,
# which executes colab/quickstart.ipynb: the suite pays for the ~minutes-long job once.
