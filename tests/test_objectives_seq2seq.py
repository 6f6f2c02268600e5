"""Encoder–decoder pre-training objectives: T5 span corruption, BART denoising, MASS; property
tests of each corruption on device and a short real run of each experiment."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ptm_jax import configs
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import bart, mass, noising, seq2seq
from ptm_jax.objectives import span_corruption as t5

jax.config.update('jax_numpy_rank_promotion', 'raise')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = SpecialIds(vocab_size=5000, extra=tuple(range(5, 105)))  # 100 sentinels, as T5


def unique_rows(batch, length, lengths=None, seed=0):
  """Left-aligned rows of distinct non-reserved ids (so every output token names its source)."""
  rs = np.random.RandomState(seed)
  tokens = np.zeros((batch, length), np.int32)
  segs = np.zeros((batch, length), np.int32)
  for b in range(batch):
    n = length if lengths is None else lengths[b]
    tokens[b, :n] = rs.permutation(np.arange(200, SPECIALS.vocab_size))[:n]
    segs[b, :n] = 1
  return {'tokens': tokens, 'segment_ids': segs, 'positions': np.where(segs > 0, np.arange(length), 0)}


def doc_rows(batch, doc_lengths, seed=0, sentences=None):
  """Packed [CLS] text [SEP] documents of the given lengths (text only), distinct text ids."""
  rs = np.random.RandomState(seed)
  length = sum(n + 2 for n in doc_lengths) + 3  # some padding after
  tokens = np.zeros((batch, length), np.int32)
  segs = np.zeros((batch, length), np.int32)
  sent = np.zeros((batch, length), np.int32)
  for b in range(batch):
    ids = rs.permutation(np.arange(200, SPECIALS.vocab_size))
    i, used, s_id = 0, 0, 0
    for d, n in enumerate(doc_lengths):
      tokens[b, i] = SPECIALS.cls
      tokens[b, i + 1:i + 1 + n] = ids[used:used + n]
      tokens[b, i + 1 + n] = SPECIALS.sep
      segs[b, i:i + n + 2] = d + 1
      if sentences:
        cuts = np.sort(rs.choice(np.arange(1, n), size=sentences - 1, replace=False))
        for j, (a, e) in enumerate(zip([0, *cuts], [*cuts, n])):
          sent[b, i + 1 + a:i + 1 + e] = s_id + j + 1
        s_id += sentences
      used += n
      i += n + 2
  pos = np.zeros_like(tokens)
  for b in range(batch):
    for s in range(1, len(doc_lengths) + 1):
      pos[b, segs[b] == s] = np.arange((segs[b] == s).sum())
  out = {'tokens': tokens, 'segment_ids': segs, 'positions': pos}
  if sentences:
    out['sentence_ids'] = sent
  return out


def runs_of(flags_L):
  """(start, length) of the maximal runs of True."""
  padded = np.concatenate([[0], np.asarray(flags_L).astype(np.int8), [0]])
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[::2], edges[1::2] - edges[::2]))


# ----------------------------------------------------------------------------- T5


def test_t5_random_spans_helper_numbers():
  assert t5.tokens_length_for(512) == (568, 114)  # T5's published numbers
  assert t5.static_lengths(568, t5.Options()) == (512, 114, 28)
  tokens_length, targets_length = t5.tokens_length_for(128)
  assert t5.static_lengths(tokens_length, t5.Options())[:2] == (128, targets_length)


def reconstruct(inputs, targets):
  """Re-inserts each sentinel's target span into the inputs (drops the EOS of both)."""
  inputs, targets = list(inputs[:-1]), list(targets[:-1])
  spans, current = {}, None
  for t in targets:
    if t in SPECIALS.extra:
      current = t
      spans[t] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs:
    out.extend(spans[t] if t in SPECIALS.extra else [t])
  return out


def test_t5_full_rows_have_exact_lengths_density_and_ordered_sentinels():
  length = 141  # -> 128 inputs, 29 targets
  batch = unique_rows(256, length)
  out = jax.jit(lambda r, b: t5.corrupt(r, b, specials=SPECIALS))(jax.random.key(0), batch)
  assert out['inputs'].shape == (256, 128) and out['targets'].shape == (256, 29)
  assert (np.asarray(out['input_segment_ids']) == 1).all()  # every full row fills both exactly
  assert (np.asarray(out['target_segment_ids']) == 1).all()
  noise = np.asarray(out['noise_mask'])
  assert (noise.sum(1) == round(length * 0.15)).all()  # 21 noise tokens
  span_lengths = []
  for b in range(256):
    runs = runs_of(noise[b])
    assert len(runs) == round(21 / 3) and runs[0][0] > 0  # 7 spans, kept text first
    span_lengths += [n for _, n in runs]
    inputs, targets = np.asarray(out['inputs'][b]), np.asarray(out['targets'][b])
    sentinels = np.asarray(SPECIALS.extra[:7])
    np.testing.assert_array_equal(inputs[np.isin(inputs, SPECIALS.extra)], sentinels)
    np.testing.assert_array_equal(targets[np.isin(targets, SPECIALS.extra)], sentinels)
    assert targets[0] == sentinels[0] and inputs[-1] == targets[-1] == SPECIALS.eos
    assert reconstruct(inputs, targets) == list(batch['tokens'][b])
  # Noise spans are a uniform composition of 21 into 7 parts: P(part = j) = C(20-j, 5) / C(20, 6).
  hist = np.bincount(span_lengths, minlength=16)[1:16]
  expect = np.asarray([math.comb(20 - j, 5) for j in range(1, 16)], float) / math.comb(20, 6)
  keep = expect * len(span_lengths) >= 5
  chi = stats.chisquare(hist[keep], expect[keep] / expect[keep].sum() * hist[keep].sum())
  assert chi.pvalue > 1e-3, (hist, expect * len(span_lengths))
  assert abs(np.mean(span_lengths) - 3.0) < 1e-9


def test_t5_short_and_empty_rows():
  length = 60
  lengths = [60, 59, 37, 10, 2, 1, 0]
  batch = unique_rows(len(lengths), length, lengths)
  out = jax.jit(lambda r, b: t5.corrupt(r, b, specials=SPECIALS))(jax.random.key(1), batch)
  assert out['inputs'].shape[1] == t5.static_lengths(length, t5.Options())[0]
  for b, n in enumerate(lengths):
    in_n, tgt_n = t5.lengths_for(n, t5.Options())
    assert int(np.asarray(out['input_segment_ids'][b]).sum()) == in_n
    assert int(np.asarray(out['target_segment_ids'][b]).sum()) == tgt_n
    if n:
      assert int(np.asarray(out['noise_mask'][b]).sum()) == t5.span_counts(n, t5.Options())[0] * (n > 1)
      inputs = np.asarray(out['inputs'][b][:in_n])
      targets = np.asarray(out['targets'][b][:tgt_n])
      assert reconstruct(inputs, targets) == list(batch['tokens'][b][:n])
  assert (np.asarray(out['weights'][-1]) == 0).all()


def test_t5_needs_enough_sentinels():
  batch = unique_rows(2, 141)
  with pytest.raises(ValueError, match='extra_ids >= 7'):
    t5.corrupt(jax.random.key(0), batch, specials=SpecialIds(5000, extra=(5, 6)))


# ----------------------------------------------------------------------------- BART


def test_bart_infilling_span_lengths_are_poisson():
  length = 512
  rs = np.random.RandomState(0)
  tokens = rs.randint(200, SPECIALS.vocab_size, size=(256, length)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = SPECIALS.cls, SPECIALS.sep
  batch = {'tokens': tokens, 'segment_ids': np.ones_like(tokens),
           'positions': np.tile(np.arange(length, dtype=np.int32), (256, 1))}
  opts = bart.Options(permute_sentences=0.0)
  out = jax.jit(lambda r, b: bart.corrupt(r, b, specials=SPECIALS, options=opts))(
      jax.random.key(0), batch)
  infilled, inserted = np.asarray(out['infilled']), np.asarray(out['inserted'])
  rate = infilled.sum() / (256 * (length - 2))
  assert abs(rate - 0.3) < 0.01, rate
  lengths = [int(inserted[b].sum()) * [0] for b in range(256)]
  lengths = [x for row in lengths for x in row]
  for b in range(256):
    # Whole spans only: not the one in progress at the row start, nor one cut by the final [SEP].
    lengths += [n for s, n in runs_of(infilled[b]) if s > 1 and s + n < length - 1]
  assert len(lengths) >= 10_000
  hist = np.bincount(lengths, minlength=11)
  observed = np.concatenate([hist[:10], [hist[10:].sum()]])
  pmf = stats.poisson.pmf(np.arange(10), 3.0)
  expected = np.concatenate([pmf, [1 - pmf.sum()]]) * len(lengths)
  assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, expected.round())
  # Each span (and each zero-length span) became exactly one [MASK]; the rest is unchanged.
  inputs = np.asarray(out['inputs'])
  for b in range(8):
    runs = runs_of(infilled[b])
    assert (inputs[b] == SPECIALS.mask).sum() == len(runs) + inserted[b].sum()
    kept = tokens[b][~infilled[b]]
    np.testing.assert_array_equal(inputs[b][inputs[b] != SPECIALS.mask][:len(kept)], kept)
    assert (np.asarray(out['input_segment_ids'][b]) > 0).sum() == (
        length - infilled[b].sum() + len(runs) + inserted[b].sum())
  np.testing.assert_array_equal(out['targets'], tokens)


def test_bart_deletion_really_shortens():
  batch = doc_rows(64, [30, 17])
  opts = bart.Options(mask_rate=0.0, permute_sentences=0.0, delete_rate=0.25)
  out = jax.jit(lambda r, b: bart.corrupt(r, b, specials=SPECIALS, options=opts))(jax.random.key(2), batch)
  deleted = np.asarray(out['deleted'])
  assert abs(deleted.sum() / (64 * 47) - 0.25) < 0.03
  inputs, in_seg = np.asarray(out['inputs']), np.asarray(out['input_segment_ids'])
  for b in range(64):
    for s in (1, 2):
      orig = batch['tokens'][b][batch['segment_ids'][b] == s]
      kept = orig[~deleted[b][batch['segment_ids'][b] == s]]
      np.testing.assert_array_equal(inputs[b][in_seg[b] == s], kept)  # order kept, shorter
      assert len(kept) == len(orig) - deleted[b][batch['segment_ids'][b] == s].sum()
    assert kept[0] != SPECIALS.mask
  assert (in_seg > 0).sum() < (batch['segment_ids'] > 0).sum()


def test_bart_sentence_permutation_is_a_permutation_of_sentences():
  batch = doc_rows(200, [40, 25], sentences=4)
  opts = bart.Options(mask_rate=0.0)
  out = jax.jit(lambda r, b: bart.corrupt(r, b, specials=SPECIALS, options=opts))(
      jax.random.key(3), batch)
  permuted = np.asarray(out['permuted'])
  np.testing.assert_array_equal(out['inputs'], permuted)  # nothing else is on
  changed = 0
  for b in range(200):
    where = {t: i for i, t in enumerate(batch['tokens'][b])}
    for s in (1, 2):
      sel = batch['segment_ids'][b] == s
      src = np.asarray([where[t] for t in permuted[b][sel]])  # source position of each token
      assert batch['tokens'][b][src[0]] == SPECIALS.cls and batch['tokens'][b][src[-1]] == SPECIALS.sep
      sentence_of = batch['sentence_ids'][b][src[1:-1]]
      # Each sentence arrives whole and in its own order; the multiset of sentences is the same.
      order = [k for i, k in enumerate(sentence_of) if i == 0 or k != sentence_of[i - 1]]
      assert sorted(order) == sorted(set(batch['sentence_ids'][b][sel]) - {0})
      for k in order:
        np.testing.assert_array_equal(np.diff(src[1:-1][sentence_of == k]), 1)
      changed += order != sorted(order)
  # 4 sentences stay in order 1/24 of the time.
  assert changed > 0.8 * 400, changed


def test_bart_rotation_is_a_rotation():
  batch = doc_rows(100, [20, 11])
  opts = bart.Options(mask_rate=0.0, permute_sentences=0.0, rotate=1.0)
  out = jax.jit(lambda r, b: bart.corrupt(r, b, specials=SPECIALS, options=opts))(jax.random.key(4), batch)
  inputs = np.asarray(out['inputs'])
  offsets = []
  for b in range(100):
    for s in (1, 2):
      sel = batch['segment_ids'][b] == s
      orig, new = batch['tokens'][b][sel], inputs[b][sel]
      assert new[0] == SPECIALS.cls and new[-1] == SPECIALS.sep
      text = list(orig[1:-1])
      r = text.index(new[1])
      assert list(new[1:-1]) == text[r:] + text[:r]
      offsets.append(r if s == 1 else None)
  hist = np.bincount([o for o in offsets if o is not None], minlength=20)
  assert (hist > 0).sum() > 15  # the start token is uniform over the 20 text tokens


def test_bart_requires_sentence_ids_for_permutation():
  batch = doc_rows(2, [10])
  with pytest.raises(ValueError, match="annotations=\\('sentences',\\)"):
    bart.corrupt(jax.random.key(0), batch, specials=SPECIALS)


# ----------------------------------------------------------------------------- MASS


def test_mass_fragment_masking_and_decoder_inputs():
  batch = doc_rows(400, [21, 8])
  out = jax.jit(lambda r, b: mass.corrupt(r, b, specials=SPECIALS))(jax.random.key(5), batch)
  w = np.asarray(out['weights']).astype(bool)
  inputs, dec = np.asarray(out['inputs']), np.asarray(out['decoder_inputs'])
  tokens, segs = batch['tokens'], batch['segment_ids']
  starts = []
  for b in range(400):
    for s, m in ((1, 21), (2, 8)):
      sel = np.flatnonzero(segs[b] == s)
      frag = np.flatnonzero(w[b] & (segs[b] == s))
      assert len(frag) == max(1, round(m / 2)) and (np.diff(frag) == 1).all()  # contiguous
      assert frag[0] > sel[0] and frag[-1] < sel[-1]  # inside the text, never [CLS]/[SEP]
      if s == 1:
        starts.append(frag[0] - sel[0] - 1)
  # Outside the fragment the encoder sees the text, the decoder sees [MASK].
  np.testing.assert_array_equal(inputs[~w], tokens[~w])
  assert (dec[~w] == SPECIALS.mask).all()
  prev = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
  np.testing.assert_array_equal(dec[w], prev[w])  # the fragment shifted right
  np.testing.assert_array_equal(out['targets'], tokens)
  # Start uniform over the 21 - 10 + 1 = 12 placements (round half to even: 10.5 -> 10).
  assert stats.chisquare(np.bincount(starts, minlength=12)).pvalue > 1e-3
  frag_in, frag_tok = inputs[w], tokens[w]
  assert abs((frag_in == SPECIALS.mask).mean() - 0.8) < 0.03
  assert abs((frag_in == frag_tok).mean() - 0.1) < 0.03


# ----------------------------------------------------------------------------- shared loss


def test_shift_right_restarts_per_segment():
  targets = jnp.asarray([[7, 8, 9, 4, 5, 0]])
  segs = jnp.asarray([[1, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(seq2seq.shift_right(targets, segs, 2), [[2, 7, 8, 2, 4, 2]])


def test_sentence_annotation_for_permutation():
  from ptm_jax.data import annotate
  from test_annotate import EN_TEXT, ToyTokenizer
  tok = ToyTokenizer()
  out = annotate.Annotator(tok, ('sentences',))({'text': EN_TEXT})
  assert set(out) == {'tokens', 'sentence_ids'} and out['sentence_ids'].dtype == np.int32
  pieces = [tok.id_to_piece(i) for i in out['tokens']]
  sentences = [''.join(p for p, s in zip(pieces, out['sentence_ids']) if s == k).replace('▁', ' ').strip()
               for k in range(1, out['sentence_ids'].max() + 1)]
  assert sentences == ['The Fed said on Monday that the Bank of England, and Donald Trump met in New York.',
                       'Markets in Hong Kong rose.', 'Investors in Hong Kong cheered.', 'I think so.']


@pytest.mark.parametrize('name', ['span_corruption', 'bart', 'mass'])
def test_losses_on_a_tiny_encdec(name):
  from ptm_jax import models, objectives
  module = objectives.get(name)
  variant = 't5_runlocal' if name == 'span_corruption' else 'bart_runlocal'
  model = models.build('encdec', variant, vocab_size=SPECIALS.vocab_size, embed_dim=32,
                       num_encoder_layers=1, num_decoder_layers=1, num_heads=2, head_dim=16,
                       mlp_dim=64)
  batch = doc_rows(4, [20, 9], sentences=2) if name != 'span_corruption' else unique_rows(4, 40)
  out = jax.jit(lambda r, b: module.corrupt(r, b, specials=SPECIALS))(jax.random.key(0), batch)
  params = jax.jit(lambda r: model.init(r, out['inputs'], segment_ids=out['input_segment_ids'],
                                        positions=out['input_positions']))(jax.random.key(1))['params']
  value, metrics = jax.jit(lambda p, b: module.loss(p, b, None, model=model, specials=SPECIALS))(
      params, out)
  assert abs(float(value) - np.log(SPECIALS.vocab_size)) < 1.0, value
  assert metrics['num_targets'] == np.asarray(out['weights']).sum() > 0
  assert metrics['num_encoder_tokens'] == (np.asarray(out['input_segment_ids']) > 0).sum()
  # Teacher forcing starts each target segment from the model's decoder start id.
  assert seq2seq.decoder_start_id(model, SPECIALS) == model.config.decoder_start_id


# ----------------------------------------------------------------------------- runlocal runs


RUNLOCAL = {'mesh.num_devices': 1, 'train.steps': 30, 'train.batch_size': 8, 'train.log_every': 5,
            'train.eval_every': 0, 'train.checkpoint_every': 30, 'data.seq_len': 64,
            'data.num_threads': 1, 'data.tokenizer.vocab_size': 800,
            'data.tokenizer.max_train_chars': 300_000, 'optim.warmup_steps': 5}


@pytest.mark.parametrize('spec', ['experiments/t5.py:runlocal', 'experiments/bart.py:runlocal',
                                  'experiments/mass.py:runlocal'])
def test_runlocal_loss_decreases(spec, data_dir, tmp_path):
  from ptm_jax import metrics as metrics_lib
  from ptm_jax import train
  cfg = configs.load_experiment(os.path.join(REPO, spec), RUNLOCAL)
  train.train(cfg, str(tmp_path))
  records = metrics_lib.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 6
  assert losses[-1] < losses[0] - 0.5, losses
