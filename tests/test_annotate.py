"""Word / phrase / entity annotation (data/annotate.py): parsing, heuristics, lexicon, packing."""
import grain
import numpy as np
import pytest

from ptm_jax.data import annotate

ZH_WORDS = ('１２月/t  ３１日/t  ，/w  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr  '
            '发表/v  新年/t  讲话/n  。/w\n'
            '[香港/ns 特别/a 行政区/n]ns  同胞/n  向/p  邓/nr  小平/nr  同志/n  致敬/v  。/w')
EN_TEXT = ('The Fed said on Monday that the Bank of England, and Donald Trump met in New York.\n'
           'Markets in Hong Kong rose. Investors in Hong Kong cheered. I think so.')


class ToyTokenizer:
  """Sentencepiece-like pieces: '▁' + first letter, then one piece per character.

  CJK words start with a lone '▁' piece, like a sentencepiece model trained on unspaced text.
  """

  name = 'toy'

  def __init__(self):
    self.pieces = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    self.ids = {p: i for i, p in enumerate(self.pieces)}

  def _id(self, piece):
    if piece not in self.ids:
      self.ids[piece] = len(self.pieces)
      self.pieces.append(piece)
    return self.ids[piece]

  def encode_batch(self, words):
    out = []
    for w in words:
      pieces = ['▁'] + list(w) if not w[0].isascii() else ['▁' + w[0]] + list(w[1:])
      out.append([self._id(p) for p in pieces])
    return out

  def encode(self, text):
    return [i for ids in self.encode_batch(text.split()) for i in ids]

  def id_to_piece(self, i):
    return self.pieces[i]


def _groups(ids, pieces):
  out = {}
  for i, p in zip(ids, pieces):
    if i:
      out.setdefault(int(i), []).append(p)
  return [''.join(v).replace('▁', '') for _, v in sorted(out.items())]


def test_parse_tagged_line_compounds_and_entities():
  words = annotate.parse_tagged_line('19980101-01-001-001/m  [香港/ns 特别/a 行政区/n]ns  江/nr  泽民/nr  '
                                     '会见/v  新华社/nt  记者/n')
  assert [w for w, *_ in words] == ['香港', '特别', '行政区', '江', '泽民', '会见', '新华社', '记者']
  assert [c for _, _, c, _ in words] == [1, 1, 1, 0, 0, 0, 0, 0]
  assert words[0][3] == words[2][3] == 'ns' and words[1][1] == 'a'
  # The compound is one place; surname + given name one person; 新华社 an organisation.
  assert annotate.entity_groups_zh(words) == [1, 1, 1, 2, 2, 0, 3, 0]
  # Phrases: the compound, then runs of >= 2 nominal words (江 泽民), never the verb.
  assert annotate.phrase_groups_zh(words) == [1, 1, 1, 2, 2, 0, 3, 3]


def test_english_entity_heuristic():
  sentences, tagged = annotate.sentences_of({'text': EN_TEXT})
  assert not tagged and len(sentences) == 4
  found = [' '.join(w for (w, *_), g in zip(s, annotate.entity_groups_en(s)) if g == k)
           for s in sentences for k in range(1, max(annotate.entity_groups_en(s) + [0]) + 1)]
  # Sentence-initial "The"/"Markets"/"Investors"/"I" are no evidence; connectors join names.
  assert found == ['Fed', 'Monday', 'Bank of England,', 'Donald Trump', 'New York.', 'Hong Kong',
                   'Hong Kong']


def test_pmi_lexicon_finds_an_obvious_collocation():
  rs = np.random.RandomState(0)
  filler = [f'w{i}' for i in range(200)]
  sentences = []
  for _ in range(3000):
    words = list(rs.choice(filler, size=12))
    if rs.rand() < 0.3:
      at = rs.randint(0, 10)
      words[at:at + 2] = ['hong', 'kong']
    if rs.rand() < 0.2:
      words[5:8] = ['new', 'york', 'city']
    if rs.rand() < 0.5:
      words[9:11] = ['of', 'the']  # frequent, but stop words at the ends
    sentences.append(' '.join(words))
  lexicon = annotate.mine_collocations(sentences, min_count=5)
  assert 'hong kong' in lexicon and 'new york city' in lexicon and 'new york' in lexicon
  assert lexicon['hong kong'] > 0.8
  assert not any(k.startswith('w') and k.split()[-1].startswith('w') for k in lexicon)
  assert 'of the' not in lexicon
  s = [(w, '', 0, '') for w in 'we saw new york city and hong kong'.split()]
  assert annotate.phrase_groups_en(s, lexicon) == [0, 0, 1, 1, 1, 0, 2, 2]


def test_round_trip_english_and_chinese():
  tok = ToyTokenizer()
  en = annotate.Annotator(tok, annotate.ANNOTATIONS, {'hong kong': 1.0})({'text': EN_TEXT})
  pieces = [tok.id_to_piece(i) for i in en['tokens']]
  assert ''.join(pieces).replace('▁', ' ').strip() == ' '.join(EN_TEXT.split())
  assert _groups(en['word_ids'], pieces) == EN_TEXT.split()
  assert np.all(np.diff(en['word_ids']) >= 0) and en['word_ids'][0] == 1
  assert _groups(en['entity_ids'], pieces) == ['Fed', 'Monday', 'BankofEngland', 'DonaldTrump',
                                               'NewYork', 'HongKong', 'HongKong']
  assert _groups(en['phrase_ids'], pieces) == ['HongKong', 'HongKong']
  zh = annotate.Annotator(tok, annotate.ANNOTATIONS)({'text': 'unused', 'words': ZH_WORDS})
  pieces = [tok.id_to_piece(i) for i in zh['tokens']]
  lines = ZH_WORDS.split('\n')
  words = [w for line in lines for w, *_ in annotate.parse_tagged_line(line)]
  # The lone '▁' stays only at the two sentence starts: the text reads as the unspaced corpus.
  assert ''.join(pieces) == '▁' + ''.join(words[:14]) + '▁' + ''.join(words[14:])
  assert _groups(zh['word_ids'], pieces) == words
  assert _groups(zh['entity_ids'], pieces) == ['中共中央', '江泽民', '香港特别行政区', '邓小平']
  assert '国家主席江泽民' in _groups(zh['phrase_ids'], pieces)
  for key in ('word_ids', 'phrase_ids', 'entity_ids'):
    assert zh[key].shape == zh['tokens'].shape and zh[key].dtype == np.int32


def test_chunk_and_pack_keep_ids_aligned_and_unique_per_row():
  tok = ToyTokenizer()
  annotator = annotate.Annotator(tok, ('words', 'entities'))
  docs = [annotator({'text': EN_TEXT}), annotator({'text': 'Alice met Bob Smith today.'}),
          annotator({'text': 'short one'})]
  keys = ('word_ids', 'entity_ids')
  chunker = annotate.ChunkAnnotated(16, 2, 3, keys)
  chunks = [c for d in docs for c in chunker.flat_map(d)]
  for c in chunks:
    assert c['tokens'][0] == 2 and c['tokens'][-1] == 3
    assert all(c[k][0] == 0 and c[k][-1] == 0 and len(c[k]) == len(c['tokens']) for k in keys)
  ds = grain.MapDataset.source(chunks).to_iter_dataset()
  rows = list(annotate.pack(ds, 32, 2, 0, keys))
  assert sum((r['segment_ids'] > 0).sum() for r in rows) == sum(len(c['tokens']) for c in chunks)
  for row in rows:
    for key in keys:
      ids, seg = row[key], row['segment_ids']
      assert (ids[seg == 0] == 0).all()
      assert (ids[np.isin(row['tokens'], (2, 3))] == 0).all()
      for i in np.unique(ids[ids > 0]):
        assert len(np.unique(seg[ids == i])) == 1  # never shared across packed documents
      used = np.unique(ids[ids > 0])
      np.testing.assert_array_equal(used, np.arange(1, len(used) + 1))
  # Tokens survive unchanged: the packed tokens are the chunk tokens in order.
  first = rows[0]
  np.testing.assert_array_equal(first['tokens'][first['segment_ids'] == 1], chunks[0]['tokens'])


def test_renumber_row():
  out = annotate.renumber_row(np.array([0, 1, 1, 2, 0, 1, 2, 2, 5, 0]),
                              np.array([1, 1, 1, 1, 1, 2, 2, 2, 0, 0]))
  np.testing.assert_array_equal(out, [0, 1, 1, 2, 0, 3, 4, 4, 0, 0])


def test_unknown_annotation_is_an_error():
  with pytest.raises(ValueError, match='unknown data.annotations'):
    annotate.Annotator(ToyTokenizer(), ('words', 'paragraphs'))


def test_loader_with_annotations_on_real_text(data_dir):
  """news_en through the loader: same tokens as without annotations, ids follow '▁' word starts."""
  from ptm_jax.data import loader, tokenizers
  cfg = loader.default_data_config()
  assert tuple(cfg.annotations) == ()
  cfg.update(source='news_en', seq_len=64, num_threads=1)
  cfg.tokenizer.update(vocab_size=800, max_train_chars=300_000)
  tok = tokenizers.load_or_train(cfg.tokenizer, cfg)
  common = dict(split='train', global_batch_size=8, seed=1)
  plain = next(loader.make_iterator(cfg, tok, **common))
  cfg.annotations = ('words', 'entities')
  batch = next(loader.make_iterator(cfg, tok, **common))
  assert set(batch) == {'tokens', 'segment_ids', 'positions', 'word_ids', 'entity_ids'}
  for key in ('tokens', 'segment_ids', 'positions'):
    np.testing.assert_array_equal(batch[key], plain[key])
  starts = np.vectorize(lambda i: tok.id_to_piece(int(i)).startswith('▁'))(batch['tokens'])
  words, seg = batch['word_ids'], batch['segment_ids']
  special = np.isin(batch['tokens'], tok.specials.reserved) & ~(batch['tokens'] == tok.specials.unk)
  assert (words[special | (seg == 0)] == 0).all()
  real = words > 0
  prev = np.concatenate([np.zeros_like(words[:, :1]), words[:, :-1]], axis=1)
  new_word = real & (words != prev)
  # A word starts exactly at a '▁' piece, or where a chunk cut a word (right after [CLS]).
  after_cls = np.concatenate([np.zeros_like(real[:, :1]), batch['tokens'][:, :-1] == tok.specials.cls],
                             axis=1)
  np.testing.assert_array_equal(new_word & ~after_cls, real & starts & ~after_cls)
  assert (batch['entity_ids'] > 0).any()
