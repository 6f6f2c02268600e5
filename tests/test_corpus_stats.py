"""corpus_stats: train-split token counts per mixture part, their cache, and budgets in epochs."""
import os

import pytest

from ptm_jax.data import corpus_stats
from ptm_jax.data import sources


class _Words:
  """A whitespace tokenizer: counts are easy to state independently."""

  def __init__(self, name='words'):
    self.name, self.vocab_size, self.calls = name, 1000, 0

  def encode_batch(self, texts):
    self.calls += 1
    return [t.split() for t in texts]


def _corpus(directory, docs):
  directory.mkdir()
  lines = [f'{{"text": "{d}"}}' for d in docs]
  (directory / 'x.jsonl').write_text('\n'.join(lines) + '\n')
  return f'jsonl:{directory}/*.jsonl'


def _train_words(source_name, data_dir):
  # Sentences are joined with newlines in a document; the loader reads them as spaces.
  return [sum(len(ex['text'].split()) for ex in part)
          for part in sources.get_source(source_name, data_dir).parts('train')]


def test_counts_per_part_cache_and_epochs(tmp_path, data_dir):
  a = _corpus(tmp_path / 'a', [f'Doc {i} of a. It has {i % 7} more words.' for i in range(300)])
  b = _corpus(tmp_path / 'b', [f'Short {i}.' for i in range(600)])
  mixture = f'{a}:3,{b}:1'
  words = _Words()
  counts = corpus_stats.train_tokens(mixture, words, data_dir)
  assert counts.counts == tuple(_train_words(mixture, data_dir))
  assert counts.weights == (3.0, 1.0) and counts.total == sum(counts.counts)
  # The train split only: fewer than all documents' words (~2 % are validation).
  assert counts.counts[1] < 2 * 600
  # 4,000 row tokens: 3,000 drawn from a, 1,000 from b; the most-repeated part sets the epochs.
  expected = max(3000 / counts.counts[0], 1000 / counts.counts[1])
  assert counts.epochs(4000) == pytest.approx(expected)
  # Cached per (source, tokenizer): read back without encoding; another tokenizer counts anew.
  calls = words.calls
  assert corpus_stats.train_tokens(mixture, words, data_dir) == counts and words.calls == calls
  cached = os.listdir(os.path.join(data_dir, 'corpus_stats'))
  other = _Words('other')
  assert corpus_stats.train_tokens(mixture, other, data_dir) == counts and other.calls > 0
  assert len(os.listdir(os.path.join(data_dir, 'corpus_stats'))) == len(cached) + 1
  # A single source is one part of weight 1: epochs = tokens / its count.
  single = corpus_stats.train_tokens(a, words, data_dir)
  assert single.epochs(2 * single.total) == pytest.approx(2.0)


def test_an_unwritable_cache_still_counts(tmp_path, data_dir, monkeypatch):
  corpus = _corpus(tmp_path / 'c', [f'Doc {i} here.' for i in range(100)])

  def refuse(*args):
    raise PermissionError('read-only file system')

  monkeypatch.setattr(corpus_stats.os, 'replace', refuse)
  counts = corpus_stats.train_tokens(corpus, _Words(), data_dir)
  assert counts.counts == tuple(_train_words(corpus, data_dir))
  assert not [f for f in os.listdir(os.path.join(data_dir, 'corpus_stats')) if '.tmp' in f]
