"""Packing keeps documents apart and loses nothing; the loader shards, batches and restores state."""
import json

from etils import epath
import grain
import numpy as np
import pytest

from ptm_jax.data import loader
from ptm_jax.data import packing
from ptm_jax.data import sources
from ptm_jax.data.tokenizers import Tokenizer
from ptm_jax.data.vocab import SpecialIds

BASE = 100_000  # token = BASE + 1000 * doc + offset: every token names its document and position
SEQ_LEN = 16


def int_tokenizer() -> Tokenizer:
  """Reads whitespace-separated integers, so tests know exactly which tokens each document holds."""
  return Tokenizer('ints', SpecialIds(10**6), lambda texts: [[int(t) for t in s.split()] for s in texts],
                   lambda ids: ' '.join(map(str, ids)), str)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 60, size=120)
  for f in range(3):
    docs = [' '.join(str(BASE + 1000 * d + i) for i in range(lengths[d])) for d in range(f, 120, 3)]
    (root / f'part{f}.txt').write_text('\n\n'.join(docs) + '\n')
  data_dir = str(tmp_path_factory.mktemp('data'))
  cfg = loader.default_data_config()
  cfg.update(source=f'text:{root}/*.txt', data_dir=data_dir, seq_len=SEQ_LEN, num_threads=2)
  return cfg


def check_rows(rows, bos=2, eos=3):
  """Asserts the packing invariants; returns {doc: sorted offsets seen}."""
  seen = {}
  for tokens, segs, pos in zip(rows['tokens'], rows['segment_ids'], rows['positions']):
    n = int(segs.max())
    used = int((segs > 0).sum())
    # Contiguous segments 1..n, then padding only.
    assert (segs[:used] == np.repeat(np.arange(1, n + 1), np.bincount(segs[:used])[1:])).all()
    assert (segs[used:] == 0).all() and (tokens[used:] == 0).all()
    for s in range(1, n + 1):
      chunk, p = tokens[segs == s], pos[segs == s]
      assert (p == np.arange(len(chunk))).all()  # positions restart per segment
      assert chunk[0] == bos and chunk[-1] == eos and len(chunk) <= SEQ_LEN
      body = chunk[1:-1] - BASE
      docs = body // 1000
      assert len(set(docs)) == 1  # never two documents in one segment
      assert (np.diff(body % 1000) == 1).all()  # a contiguous slice of that document
      seen.setdefault(int(docs[0]), []).extend((body % 1000).tolist())
  return {d: sorted(v) for d, v in seen.items()}


def expected_docs(cfg, split):
  source = sources.get_source(cfg.source, cfg.data_dir)
  out = {}
  for ex in source.parts(split)[0]:
    ids = [int(t) - BASE for t in ex['text'].split()]
    out[ids[0] // 1000] = sorted(i % 1000 for i in ids)
  return out


def stack(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_pack_to_rows_semantics():
  docs = [[BASE + 1000 * d + i for i in range(n)] for d, n in enumerate([3, 30, 1, 14, 7, 13, 2])]
  rows = packing.pack_to_rows(docs, SEQ_LEN, bos=2, eos=3, num_bins=3)
  assert all(r['tokens'].dtype == np.int32 and r['tokens'].shape == (SEQ_LEN,) for r in rows)
  seen = check_rows(stack([{k: v[None] for k, v in r.items()} for r in rows]))
  assert seen == {d: list(range(len(doc))) for d, doc in enumerate(docs)}
  assert [len(c) for c in packing.chunk_document(range(30), SEQ_LEN, 2, 3)] == [16, 16, 4]
  assert [len(c) for c in packing.chunk_document(range(30), SEQ_LEN)] == [16, 14]
  with pytest.raises(ValueError, match='no room'):
    packing.chunk_document([1], 2, 2, 3)


def test_single_pass_loses_nothing(corpus):
  it = loader.make_iterator(corpus, int_tokenizer(), split='train', global_batch_size=4, seed=0,
                            process_index=0, process_count=1, repeat=False)
  batches = list(it)
  assert all(b['tokens'].shape == (4, SEQ_LEN) and b['tokens'].dtype == np.int32 for b in batches)
  assert check_rows(stack(batches)) == expected_docs(corpus, 'train')


def test_processes_get_disjoint_documents(corpus):
  seen = []
  for index in range(2):
    it = loader.make_iterator(corpus, int_tokenizer(), split='train', global_batch_size=8, seed=0,
                              process_index=index, process_count=2, repeat=False)
    batches = list(it)
    assert batches[0]['tokens'].shape == (4, SEQ_LEN)
    seen.append(check_rows(stack(batches)))
  assert not set(seen[0]) & set(seen[1])
  assert {**seen[0], **seen[1]} == expected_docs(corpus, 'train')
  with pytest.raises(ValueError, match='divisible'):
    loader.make_iterator(corpus, int_tokenizer(), split='train', global_batch_size=5, seed=0,
                         process_index=0, process_count=2)


def test_train_shuffles_and_repeats(corpus):
  def first(seed, n=100):
    it = loader.make_iterator(corpus, int_tokenizer(), split='train', global_batch_size=4, seed=seed)
    return [next(it)['tokens'] for _ in range(n)]

  a, b, c = first(0), first(0), first(1)
  assert all((x == y).all() for x, y in zip(a, b))
  assert not all((x == y).all() for x, y in zip(a, c))
  total = sum(int((t > 3).sum()) for t in a)
  assert total > sum(len(v) for v in expected_docs(corpus, 'train').values())  # past one epoch


def test_state_restore(corpus, tmp_path):
  tok = int_tokenizer()
  it = loader.make_iterator(corpus, tok, split='train', global_batch_size=4, seed=3)
  for _ in range(7):
    next(it)
  state = it.get_state()
  json.dumps(state)  # grain's orbax handler stores it as JSON
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
  expected = [next(it) for _ in range(5)]
  fresh = loader.make_iterator(corpus, tok, split='train', global_batch_size=4, seed=3)
  fresh.set_state(state)
  restored = handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(
      loader.make_iterator(corpus, tok, split='train', global_batch_size=4, seed=3)))
  for want in expected:
    for got in (next(fresh), next(restored)):
      assert all((got[k] == want[k]).all() for k in want)


def test_mixture_and_eval_padding(corpus, tmp_path):
  extra = tmp_path / 'extra'
  extra.mkdir()
  docs = [' '.join(str(BASE + 1000 * d + i) for i in range(5)) for d in range(200, 240)]
  (extra / 'x.txt').write_text('\n\n'.join(docs))
  cfg = corpus.copy_and_resolve_references()
  cfg.source = f'{corpus.source}:0.5,text:{extra}/*.txt:0.5'
  it = loader.make_iterator(cfg, int_tokenizer(), split='train', global_batch_size=8, seed=0)
  rows = stack([next(it) for _ in range(30)])
  doc_of = (rows['tokens'][rows['tokens'] > BASE] - BASE) // 1000
  assert (doc_of >= 200).any() and (doc_of < 200).any()
  evaluation = list(loader.make_iterator(cfg, int_tokenizer(), split='validation', global_batch_size=8,
                                         seed=0, repeat=False))
  assert all(b['tokens'].shape == (8, SEQ_LEN) for b in evaluation)
  only_extra = cfg.copy_and_resolve_references()
  only_extra.source = f'text:{extra}/*.txt'
  want = {**expected_docs(corpus, 'validation'), **expected_docs(only_extra, 'validation')}
  assert check_rows(stack(evaluation)) == want  # a single pass reads every part's documents once


def test_default_config():
  cfg = loader.default_data_config()
  assert (cfg.source, cfg.seq_len, cfg.tokenizer.vocab_size, cfg.tokenizer.model_type) == (
      'news_en', 128, 8000, 'unigram')
  for field in ('data_dir', 'bos', 'eos', 'shuffle', 'shuffle_seed', 'num_threads'):
    assert field in cfg
  for field in ('kind', 'path', 'max_train_chars', 'extra_ids'):
    assert field in cfg.tokenizer


def test_num_shards_fixes_the_order_across_process_counts(data_dir, tmp_path):
  """One process owning 2 shards yields exactly the rows two processes yield together."""
  from ptm_jax.data import loader, tokenizers
  cfg = loader.default_data_config()
  cfg.update(source='news_en', seq_len=64, num_threads=1, num_shards=2)
  cfg.tokenizer.update(vocab_size=800, max_train_chars=300_000)
  tok = tokenizers.load_or_train(cfg.tokenizer, cfg)
  common = dict(split='train', global_batch_size=8, seed=3)
  one = loader.make_iterator(cfg, tok, process_index=0, process_count=1, **common)
  halves = [loader.make_iterator(cfg, tok, process_index=p, process_count=2, **common) for p in (0, 1)]
  for _ in range(3):
    whole = next(one)
    parts = [next(h) for h in halves]
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))
  # The zipped iterator's state restores like any grain iterator.
  state = one.get_state()
  expected = next(one)
  again = loader.make_iterator(cfg, tok, process_index=0, process_count=1, **common)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)['tokens'], expected['tokens'])
