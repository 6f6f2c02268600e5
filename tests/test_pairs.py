"""Sentence pairs (NSP/SOP) and RoBERTa's cross-document rows: labels balanced and correct, token
types, truncation, determinism and checkpointing through the loader, FULL-SENTENCES packing."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from ptm_jax import metrics as metrics_lib
from ptm_jax import train
from ptm_jax.data import loader, pairs, sources
from ptm_jax.data.tokenizers import Tokenizer
from ptm_jax.data.vocab import SpecialIds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = 100_000  # token = BASE + 1000 * doc + offset: every token names its document and position
SPECIALS = SpecialIds(10**6)
CLS, SEP, PAD = SPECIALS.cls, SPECIALS.sep, SPECIALS.pad


def synthetic_documents(num_docs: int, seed: int = 0) -> list[list[np.ndarray]]:
  """Documents of 1..12 sentences of 1..30 tokens each, ids naming (doc, offset)."""
  rng = np.random.default_rng(seed)
  docs = []
  for d in range(num_docs):
    lengths = rng.integers(1, 31, size=int(rng.integers(1, 13)))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    docs.append([BASE + 1000 * d + s + np.arange(n, dtype=np.int32) for s, n in zip(starts, lengths)])
  return docs


def split_example(ex):
  """(A ids, B ids) of one row, checking the [CLS] A [SEP] B [SEP] layout and its side arrays."""
  tokens, types = ex['tokens'], ex['token_types']
  n = int(ex['segment_ids'].sum())
  assert (ex['segment_ids'][:n] == 1).all() and (ex['segment_ids'][n:] == 0).all()
  assert (tokens[n:] == PAD).all() and (ex['positions'][:n] == np.arange(n)).all()
  assert tokens[0] == CLS and tokens[n - 1] == SEP
  first_sep = int(np.argmax(tokens == SEP))
  a, b = tokens[1:first_sep], tokens[first_sep + 1:n - 1]
  assert len(a) >= 1 and len(b) >= 1 and not np.isin(np.concatenate([a, b]), [CLS, SEP]).any()
  # token_types: 0 on [CLS] A [SEP], 1 on B [SEP], 0 on padding.
  expected = np.zeros_like(types)
  expected[first_sep + 1:n] = 1
  np.testing.assert_array_equal(types, expected)
  return a, b


def doc_of(ids):
  return set(((ids - BASE) // 1000).tolist())


def offsets(ids):
  return (ids - BASE) % 1000


def contiguous(ids) -> bool:
  return (np.diff(offsets(ids)) == 1).all() and len(doc_of(ids)) == 1


def run_documents(kind: str, seq_len: int, num_docs: int = 1500):
  docs = synthetic_documents(num_docs)
  out = []
  for d, sentences in enumerate(docs):
    pick = np.random.default_rng([7, d])

    def other(j, d=d, pick=pick):
      k = int(pick.integers(len(docs) - 1))
      return docs[k + (k >= d)]

    out.extend(pairs.document_pairs(np.random.default_rng([0, d]), sentences, kind=kind,
                                    seq_len=seq_len, specials=SPECIALS, other_document=other))
  return out


@pytest.mark.parametrize('seq_len', [24, 64])
def test_nsp_labels_balanced_and_correct(seq_len):
  examples = run_documents('nsp', seq_len)
  labels = np.asarray([int(e['pair_label']) for e in examples])
  assert len(labels) >= 2000
  print(f'NSP seq_len={seq_len}: {len(labels)} examples, NotNext rate {labels.mean():.4f}')
  assert abs(labels.mean() - 0.5) <= 0.02
  exact = 0
  for ex, label in zip(examples, labels):
    assert ex['tokens'].shape == (seq_len,) and ex['pair_label'].shape == ()
    a, b = split_example(ex)
    assert len(a) + len(b) + 3 <= seq_len  # truncation keeps within seq_len
    assert contiguous(a) and contiguous(b)  # segments are runs of real text
    if label == 0:  # IsNext: B follows A in the same document
      assert doc_of(a) == doc_of(b) and offsets(a)[-1] < offsets(b)[0]
      if len(a) + len(b) + 3 < seq_len:  # nothing was truncated: B starts right after A
        assert offsets(b)[0] == offsets(a)[-1] + 1
        exact += 1
    else:  # NotNext: B comes from another document
      assert doc_of(a) != doc_of(b)
  assert exact > 100


def test_sop_labels_balanced_and_order_verified():
  examples = run_documents('sop', 40)
  labels = np.asarray([int(e['pair_label']) for e in examples])
  assert len(labels) >= 2000
  print(f'SOP: {len(labels)} examples, swapped rate {labels.mean():.4f}')
  assert abs(labels.mean() - 0.5) <= 0.02
  for ex, label in zip(examples, labels):
    a, b = split_example(ex)
    assert doc_of(a) == doc_of(b) and contiguous(a) and contiguous(b)
    first, second = (a, b) if label == 0 else (b, a)  # label 1: the later segment comes first
    assert offsets(first)[-1] < offsets(second)[0]
    if len(a) + len(b) + 3 < 40:
      assert offsets(second)[0] == offsets(first)[-1] + 1


def test_truncation_and_determinism():
  rng = np.random.default_rng(0)
  a, b = np.arange(50), np.arange(100, 110)
  ta, tb = pairs.truncate_pair(rng, a, b, 20)
  assert len(ta) + len(tb) == 20 and len(tb) == 10  # only the longer side was trimmed
  ta, tb = pairs.truncate_pair(rng, np.arange(30), np.arange(100, 130), 20)
  assert len(ta) == len(tb) == 10
  assert (np.diff(ta) == 1).all() and (np.diff(tb) == 1).all()  # trimmed at the ends only
  one = run_documents('nsp', 32, num_docs=50)
  two = run_documents('nsp', 32, num_docs=50)
  assert len(one) == len(two)
  for x, y in zip(one, two):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  with pytest.raises(ValueError, match='seq_len'):
    pairs.document_pairs(rng, [[5, 6]], kind='sop', seq_len=4, specials=SPECIALS)


# ----------------------------------------------------------------------------- through the loader
def int_tokenizer() -> Tokenizer:
  """Whitespace-separated integers (a trailing '.' ends a sentence for the sentence splitter)."""
  return Tokenizer('ints', SPECIALS,
                   lambda texts: [[int(t.rstrip('.')) for t in s.split()] for s in texts],
                   lambda ids: ' '.join(map(str, ids)), str)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('pairs_corpus')
  docs = synthetic_documents(120, seed=1)
  text = '\n\n'.join(' '.join(' '.join(map(str, s)) + '.' for s in doc) for doc in docs)
  (root / 'docs.txt').write_text(text + '\n')
  cfg = loader.default_data_config()
  cfg.update(source=f'text:{root}/*.txt', data_dir=str(tmp_path_factory.mktemp('data')),
             seq_len=32, num_threads=2)
  return cfg


def test_loader_nsp_batches_deterministic_and_checkpointable(corpus):
  cfg = corpus.copy_and_resolve_references()
  cfg.pairs = 'nsp'
  tok = int_tokenizer()
  make = lambda: loader.make_iterator(cfg, tok, split='train', global_batch_size=8, seed=3)
  it = make()
  batches = [next(it) for _ in range(3)]
  b = batches[0]
  assert b['tokens'].shape == b['token_types'].shape == (8, 32) and b['pair_label'].shape == (8,)
  assert all(v.dtype == np.int32 for v in b.values())
  labels = []
  for batch in batches:
    for r in range(8):
      row = {k: v[r] for k, v in batch.items()}
      a, bb = split_example(row)
      assert (doc_of(a) == doc_of(bb)) == (row['pair_label'] == 0)
      labels.append(int(row['pair_label']))
  assert 0 < np.mean(labels) < 1
  state = it.get_state()
  following = next(it)
  again = make()
  for expected in batches:
    got = next(again)
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k])
  resumed = make()
  resumed.set_state(state)
  for k, v in next(resumed).items():
    np.testing.assert_array_equal(v, following[k])


def test_loader_eval_pass_pads_rows_and_rejects_bad_kinds(corpus):
  cfg = corpus.copy_and_resolve_references()
  cfg.pairs = 'sop'
  batches = list(loader.make_iterator(cfg, int_tokenizer(), split='validation',
                                      global_batch_size=8, seed=0, repeat=False))
  last = batches[-1]
  pad_rows = last['segment_ids'].sum(axis=1) == 0
  assert (last['pair_label'][pad_rows] == 0).all() and last['pair_label'].shape == (8,)
  cfg.pairs = 'nps'
  with pytest.raises(ValueError, match='data.pairs'):
    next(loader.make_iterator(cfg, int_tokenizer(), split='train', global_batch_size=8, seed=0))


def test_cross_document_rows_one_segment_with_separators(corpus):
  cfg = corpus.copy_and_resolve_references()
  cfg.update(cross_document=True, shuffle=False, seq_len=40)
  tok = int_tokenizer()
  batches = list(loader.make_iterator(cfg, tok, split='train', global_batch_size=4, seed=0,
                                      repeat=False))
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  rows = {k: v[rows['segment_ids'].sum(axis=1) > 0] for k, v in rows.items()}
  source = sources.get_source(cfg.source, cfg.data_dir)
  docs = [[np.asarray([int(t.rstrip('.')) for t in s.split()], np.int32)
           for s in ex['text'].split('\n')] for ex in source.parts('train')[0]]
  starts = {int(s[0]) for d in docs for s in d}
  multi_doc_rows = 0
  stream = []
  for tokens, seg, pos in zip(rows['tokens'], rows['segment_ids'], rows['positions']):
    n = int(seg.sum())
    assert set(np.unique(seg)) <= {0, 1} and (seg[:n] == 1).all()  # one segment, then padding
    assert (pos[:n] == np.arange(n)).all() and tokens[0] == CLS and (tokens[n:] == PAD).all()
    body = tokens[1:n]
    assert int(body[0]) in starts  # rows start on a sentence boundary (FULL-SENTENCES)
    words = body[body != SEP]
    multi_doc_rows += len(doc_of(words)) > 1
    # Wherever the document changes inside a row, a separator sits between the two documents.
    for i in range(1, len(body)):
      if body[i] != SEP and body[i - 1] != SEP:
        assert doc_of(body[i:i + 1]) == doc_of(body[i - 1:i])
    stream.extend(body.tolist())
  assert multi_doc_rows > 0
  # Nothing lost, nothing reordered: the rows are the documents in order, each closed by [SEP].
  expected = [t for d in docs for t in np.concatenate(d).tolist() + [SEP]]
  assert stream == expected


def test_roberta_runlocal_loss_falls(data_dir, tmp_path):
  sys.path.insert(0, REPO)
  from ptm_jax.configs import load_experiment as _load_experiment
  cfg = _load_experiment(os.path.join(REPO, 'experiments/roberta.py:runlocal'))
  assert cfg.data.cross_document and cfg.model.type_vocab_size == 0
  assert cfg.model.position_offset == 2 and cfg.objective.name == 'mlm'
  cfg.mesh.num_devices = 1
  cfg.data.seq_len = 64
  cfg.optim.warmup_steps = 5
  cfg.train.update(steps=30, batch_size=8, log_every=5, eval_every=0, checkpoint_every=1000)
  train.train(cfg, str(tmp_path))
  losses = [r['loss'] for r in metrics_lib.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
            if 'loss' in r]
  assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
