"""Property tests of whole-word masking, ERNIE knowledge masking and SpanBERT (+ SBO), and their
runlocal experiments."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import configs
from ptm_jax import models, objectives
from ptm_jax.data import annotate
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import ernie, spanbert, wwm

jax.config.update('jax_numpy_rank_promotion', 'raise')

SPECIALS = SpecialIds(vocab_size=1000, extra=(7, 500))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batch(seed, batch=384, length=512, max_word=3, docs=2, vocab=1000):
  """Packed rows of [CLS] words [SEP] documents, words of 1..max_word pieces, padded tails.

  Some pieces are [UNK] (reserved, inside words); word ids are 1..n along each row.
  """
  rs = np.random.RandomState(seed)
  tokens = np.zeros((batch, length), np.int32)
  segs = np.zeros((batch, length), np.int32)
  words = np.zeros((batch, length), np.int32)
  for b in range(batch):
    n = rs.randint(length // 2, length + 1)
    bounds = np.sort(rs.choice(np.arange(4, n - 4), size=docs - 1, replace=False)) if docs > 1 else []
    edges = [0, *bounds, n]
    w = 0
    for d in range(len(edges) - 1):
      a, e = edges[d], edges[d + 1]
      segs[b, a:e] = d + 1
      tokens[b, a], tokens[b, e - 1] = SPECIALS.cls, SPECIALS.sep
      i = a + 1
      while i < e - 1:
        size = min(rs.randint(1, max_word + 1), e - 1 - i)
        w += 1
        words[b, i:i + size] = w
        tokens[b, i:i + size] = rs.randint(8, vocab, size=size)
        i += size
  tokens = np.where(rs.rand(batch, length) < 0.02, SPECIALS.unk, tokens)
  tokens = np.where(segs == 0, SPECIALS.pad, tokens).astype(np.int32)
  positions = np.zeros_like(tokens)
  for b in range(batch):
    for s in np.unique(segs[b][segs[b] > 0]):
      positions[b, segs[b] == s] = np.arange((segs[b] == s).sum())
  words = np.where(np.isin(tokens, (SPECIALS.cls, SPECIALS.sep)) | (segs == 0), 0, words)
  return {'tokens': tokens, 'segment_ids': segs, 'positions': positions, 'word_ids': words}


def eligible(batch):
  return (batch['segment_ids'] > 0) & ~np.isin(batch['tokens'], SPECIALS.reserved) & (
      batch['word_ids'] > 0)


def assert_whole_units(selected, units, tokens, reserved=SPECIALS.reserved):
  """Every unit's eligible (non-reserved) tokens are all selected or none."""
  for b in range(units.shape[0]):
    ids, sel = units[b], selected[b]
    real = (ids > 0) & ~np.isin(tokens[b], reserved)
    on = np.bincount(ids[real], weights=sel[real], minlength=units.shape[1] + 1)
    el = np.bincount(ids[real], minlength=units.shape[1] + 1)
    assert ((on == 0) | (on == el)).all(), b


def action_split(batch, out, units, selected):
  """Fractions of selected units that are all-[MASK], changed (random), kept; checks no mixing."""
  kinds = []
  for b in range(units.shape[0]):
    for u in np.unique(units[b][selected[b]]):
      at = (units[b] == u) & selected[b]
      inp, tok = out['inputs'][b][at], batch['tokens'][b][at]
      is_mask = inp == SPECIALS.mask
      assert is_mask.all() or not is_mask.any()  # one action per unit
      kinds.append(0 if is_mask.all() else (2 if (inp == tok).all() else 1))
  kinds = np.asarray(kinds)
  return len(kinds), [(kinds == k).mean() for k in range(3)]


@pytest.fixture(scope='module')
def big_batch():
  return make_batch(0)


# ----------------------------------------------------------------------------- whole-word masking


def test_wwm_rate_whole_words_and_80_10_10(big_batch):
  fn = jax.jit(functools.partial(wwm.corrupt, specials=SPECIALS, options=wwm.Options()))
  out = jax.device_get(fn(jax.random.key(0), big_batch))
  sel = out['weights'] > 0
  el = eligible(big_batch)
  assert el.sum() > 1e5
  assert not (sel & ~el).any()  # never padding, reserved ids or [CLS]/[SEP]
  rate = sel.sum() / el.sum()
  assert abs(rate - 0.15) < 0.01, rate
  assert_whole_units(sel, big_batch['word_ids'], big_batch['tokens'])
  n, (masked, randomised, kept) = action_split(big_batch, out, big_batch['word_ids'], sel)
  assert n > 1e4
  assert abs(masked - 0.8) < 0.015 and abs(randomised - 0.1) < 0.015 and abs(kept - 0.1) < 0.015
  # The sparse slab holds every selected piece (K is large enough here).
  np.testing.assert_array_equal(out['mlm_weights'].sum(1), sel.sum(1))


def test_wwm_needs_word_ids():
  batch = make_batch(1, batch=2, length=32)
  del batch['word_ids']
  with pytest.raises(ValueError, match="data.annotations to include 'words'"):
    wwm.corrupt(jax.random.key(0), batch, specials=SPECIALS)
  assert objectives.get('wwm') is wwm and objectives.get('ernie') is ernie
  assert objectives.get('spanbert') is spanbert


def test_wwm_sparse_and_dense_loss_agree():
  specials = SpecialIds(vocab_size=211)
  batch = make_batch(2, batch=4, length=64, vocab=211)
  model = models.build('encoder', 'runlocal', vocab_size=211, num_layers=1, embed_dim=32,
                       num_heads=2, mlp_dim=64, dropout_rate=0.0)
  params = model.init(jax.random.key(1), batch['tokens'], segment_ids=batch['segment_ids'],
                      positions=batch['positions'])['params']
  out = jax.jit(functools.partial(wwm.corrupt, specials=specials))(jax.random.key(0), batch)
  loss = jax.jit(functools.partial(wwm.loss, rng=None, model=model))
  sparse, ms = loss(params, out)
  dense = {k: v for k, v in out.items() if not k.startswith('mlm_')}
  dense_loss, md = loss(params, dense)
  np.testing.assert_allclose(float(sparse), float(dense_loss), rtol=1e-5)
  assert float(ms['num_targets']) == float(md['num_targets']) > 0


# ----------------------------------------------------------------------------- SpanBERT


def test_spanbert_rate_whole_words_and_80_10_10(big_batch):
  fn = jax.jit(functools.partial(spanbert.corrupt, specials=SPECIALS, options=spanbert.Options()))
  out = jax.device_get(fn(jax.random.key(1), big_batch))
  sel = out['weights'] > 0
  el = eligible(big_batch)
  assert not (sel & ~el).any()
  rate = sel.sum() / el.sum()
  assert abs(rate - 0.15) < 0.01, rate
  assert_whole_units(sel, big_batch['word_ids'], big_batch['tokens'])
  # Spans: runs of masked words; one action per span.
  # A new span starts where a masked word does not follow the previous masked word.
  rows, cols = np.nonzero(sel)
  words = big_batch['word_ids'][rows, cols]
  new = np.ones_like(words, bool)
  new[1:] = (rows[1:] != rows[:-1]) | (words[1:] - words[:-1] > 1)
  spans = np.zeros_like(big_batch['word_ids'])
  spans[rows, cols] = np.cumsum(new)
  n, (masked, randomised, kept) = action_split(big_batch, out, spans, sel)
  assert n > 2500
  assert abs(masked - 0.8) < 0.02 and abs(randomised - 0.1) < 0.02 and abs(kept - 0.1) < 0.02


@pytest.mark.parametrize('sampling', ['truncated', 'clipped'])
def test_span_length_histogram_matches_geometric(sampling):
  """Rows of one-piece words: each maximal masked run is one span; chi-square over >= 1e4 spans."""
  options = spanbert.Options(length_sampling=sampling)
  length, rows = 512, 768
  masked, _ = jax.jit(functools.partial(spanbert.sample_masked_words, num_rows=rows,
                                        num_words=length, options=options))(jax.random.key(3))
  masked = np.asarray(masked)[:, 1:]  # word ids 1..W
  assert abs(masked.mean() - 0.15) < 0.005
  lengths = []
  for row in masked:
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    for s, e in zip(starts, ends):
      if s > 0 and e < length:  # runs cut by the row's ends are censored
        lengths.append(e - s)
  lengths = np.asarray(lengths)
  assert len(lengths) >= 1e4
  assert lengths.min() >= 1 and lengths.max() <= 10
  observed = np.bincount(lengths, minlength=11)[1:]
  expected = spanbert.length_probs(options) * len(lengths)
  chi2 = ((observed - expected) ** 2 / expected).sum()
  assert chi2 < 27.9, (chi2, observed, expected.round())  # dof 9, p = 1e-3
  if sampling == 'truncated':
    assert abs(lengths.mean() - 3.8) < 0.1  # the paper's mean span length


def numpy_boundaries(selected, segs, max_offset):
  """Reference SBO inputs: per masked token, (left, right, offset, valid)."""
  out = {}
  for b in range(selected.shape[0]):
    i, length = 0, selected.shape[1]
    while i < length:
      if not selected[b, i]:
        i += 1
        continue
      s = i
      while i + 1 < length and selected[b, i + 1] and segs[b, i + 1] == segs[b, s]:
        i += 1
      e = i
      for t in range(s, e + 1):
        valid = (s - 1 >= 0 and e + 1 < length and segs[b, s - 1] == segs[b, t] == segs[b, e + 1]
                 and t - s < max_offset)
        out[(b, t)] = (s - 1, e + 1, t - s, valid)
      i += 1
  return out


def test_sbo_boundaries_offsets_and_weights():
  batch = make_batch(4, batch=16, length=128)
  # Rows 0-3 without [CLS]/[SEP]: spans can start at a document's first token (no left boundary).
  for b in range(4):
    specials_at = np.isin(batch['tokens'][b], (SPECIALS.cls, SPECIALS.sep))
    batch['tokens'][b][specials_at] = 9
    batch['word_ids'][b] = np.where(batch['segment_ids'][b] > 0,
                                    np.cumsum(batch['segment_ids'][b] > 0), 0)
  options = spanbert.Options(max_span_offset=3)
  out = jax.device_get(jax.jit(functools.partial(spanbert.corrupt, specials=SPECIALS,
                                                options=options))(jax.random.key(5), batch))
  sel = out['weights'] > 0
  ref = numpy_boundaries(sel, batch['segment_ids'], options.max_span_offset)
  n_valid = n_invalid = 0
  for b in range(sel.shape[0]):
    for k, pos in enumerate(out['mlm_positions'][b]):
      if out['mlm_weights'][b, k] == 0:
        assert out['sbo_weights'][b, k] == 0
        continue
      left, right, offset, valid = ref[(b, int(pos))]
      assert out['sbo_weights'][b, k] == float(valid)
      n_valid += valid
      n_invalid += not valid
      if valid:
        assert (out['span_left'][b, k], out['span_right'][b, k]) == (left, right)
        assert out['span_offset'][b, k] == offset
        assert not sel[b, left] and not sel[b, right]  # boundaries are never masked
  assert n_valid > 100 and n_invalid > 10


def test_sbo_model_params_and_loss_counts_only_valid_targets():
  specials = SpecialIds(vocab_size=211)
  batch = make_batch(6, batch=4, length=64, vocab=211)
  options = spanbert.Options(max_span_offset=2)
  fields = dict(vocab_size=211, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, dropout_rate=0.0)
  model = spanbert.build_model('encoder', 'runlocal', fields, options)
  params = model.init(jax.random.key(1), batch['tokens'], segment_ids=batch['segment_ids'],
                      positions=batch['positions'])['params']
  assert set(params) == {'backbone', 'sbo_head'}
  n_head = sum(x.size for x in jax.tree.leaves(params['sbo_head']))
  assert n_head == spanbert.sbo_head_cost(32, 211, options.sbo_position_dim, 2)[0]
  out = jax.jit(functools.partial(spanbert.corrupt, specials=specials, options=options))(
      jax.random.key(0), batch)
  loss = jax.jit(functools.partial(spanbert.loss, model=model, options=options))
  assert 0 < float(out['sbo_weights'].sum()) < float(out['mlm_weights'].sum())
  total, metrics = loss(params, out, None)
  np.testing.assert_allclose(float(total), float(metrics['mlm_loss'] + metrics['sbo_loss']), rtol=1e-6)
  assert float(metrics['num_sbo_targets']) == float(out['sbo_weights'].sum())
  # Hand-computed SBO loss from the model's logits, over the weighted slots only.
  res = jax.jit(model.apply)({'params': params}, out['inputs'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], logits_positions=out['mlm_positions'],
                    span_left=out['span_left'], span_right=out['span_right'],
                    span_offset=out['span_offset'])
  logits = np.asarray(res['sbo_logits'], np.float64)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse - np.take_along_axis(logits, np.asarray(out['mlm_targets'])[..., None], -1)[..., 0]
  w = np.asarray(out['sbo_weights'])
  np.testing.assert_allclose(float(metrics['sbo_loss']), (nll * w).sum() / w.sum(), rtol=1e-5)
  # Changing a masked token's target where its SBO weight is 0 leaves the SBO loss unchanged.
  free = (np.asarray(out['mlm_weights']) > 0) & (w == 0)
  assert free.any()
  moved = dict(out, mlm_targets=jnp.where(free, (out['mlm_targets'] + 1) % 211, out['mlm_targets']))
  _, m2 = loss(params, moved, None)
  np.testing.assert_allclose(float(m2['sbo_loss']), float(metrics['sbo_loss']), rtol=1e-6)
  # Every SBO head parameter gets a gradient.
  grads = jax.jit(jax.grad(lambda p: loss(p, out, jax.random.key(2))[0]))(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads['sbo_head']))


# ----------------------------------------------------------------------------- ERNIE


def _annotated_rows(example, lexicon=None, rows=1500):
  """One annotated document as one [CLS] doc [SEP] row, repeated `rows` times."""
  from tests.test_annotate import ToyTokenizer
  tok = ToyTokenizer()
  ann = annotate.Annotator(tok, annotate.ANNOTATIONS, lexicon)(example)
  length = len(ann['tokens']) + 2
  row = {'tokens': np.concatenate([[2], ann['tokens'], [3]]).astype(np.int32)}
  for key in ('word_ids', 'phrase_ids', 'entity_ids'):
    row[key] = np.concatenate([[0], ann[key], [0]]).astype(np.int32)
  row['segment_ids'] = np.ones(length, np.int32)
  row['positions'] = np.arange(length, dtype=np.int32)
  batch = {k: np.tile(v, (rows, 1)) for k, v in row.items()}
  return batch, tok, SpecialIds(vocab_size=len(tok.pieces) + 50)


def _selected_fraction_of_units(out, units, specials):
  sel = np.asarray(out['weights']) > 0
  assert_whole_units(sel, units, np.asarray(out['tokens']), specials.reserved)
  hit = [sel[b][units[b] == u][0] for b in range(units.shape[0]) for u in np.unique(units[b][units[b] > 0])]
  return float(np.mean(hit))


@pytest.mark.parametrize('lang', ['zh', 'en'])
def test_ernie_entity_and_phrase_levels_mask_whole_units(lang):
  if lang == 'zh':
    from tests.test_annotate import ZH_WORDS
    batch, _, specials = _annotated_rows({'text': '', 'words': ZH_WORDS})
    basic = 'token'
  else:
    from tests.test_annotate import EN_TEXT
    batch, _, specials = _annotated_rows({'text': EN_TEXT}, {'hong kong': 1.0, 'new york': 1.0})
    basic = 'word'
  assert (batch['entity_ids'] > 0).any() and (batch['phrase_ids'] > 0).any()
  for level, key in ((2, 'entity_ids'), (1, 'phrase_ids')):
    probs = tuple(float(i == level) for i in range(3))
    opts = ernie.Options(level_probs=probs, basic_unit=basic)
    out = jax.device_get(jax.jit(functools.partial(ernie.corrupt, specials=specials, options=opts))(
        jax.random.key(level), batch))
    assert (out['mask_level'] == level).all()
    frac = _selected_fraction_of_units(out, batch[key], specials)
    assert abs(frac - 0.15) < 0.03, (level, frac)
    el = (batch['segment_ids'] > 0) & ~np.isin(batch['tokens'], specials.reserved)
    if basic == 'word':
      el &= batch['word_ids'] > 0
    rate = (out['weights'] > 0).sum() / el.sum()
    assert abs(rate - 0.15) < 0.01, rate


def test_ernie_level_mixture_and_basic_rate(big_batch):
  batch = dict(big_batch, phrase_ids=big_batch['word_ids'] // 2, entity_ids=big_batch['word_ids'] // 3)
  opts = ernie.Options(level_probs=(0.5, 0.3, 0.2))
  out = jax.device_get(jax.jit(functools.partial(ernie.corrupt, specials=SPECIALS, options=opts))(
      jax.random.key(7), batch))
  counts = np.bincount(out['mask_level'], minlength=3) / len(out['mask_level'])
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.08)
  sel = out['weights'] > 0
  rate = sel.sum() / eligible(big_batch).sum()
  assert abs(rate - 0.15) < 0.01, rate
  basic_rows = out['mask_level'] == 0
  assert_whole_units(sel[basic_rows], big_batch['word_ids'][basic_rows], big_batch['tokens'][basic_rows])
  with pytest.raises(ValueError, match='level_probs'):
    ernie.Options(level_probs=(0.5, 0.5, 0.5))


# ----------------------------------------------------------------------------- runlocal runs


def _load(spec, **overrides):
  return configs.load_experiment(os.path.join(REPO, spec), overrides)


RUNLOCAL = {'mesh.num_devices': 1, 'train.steps': 30, 'train.batch_size': 8, 'train.log_every': 5,
            'train.eval_every': 0, 'train.checkpoint_every': 30, 'data.seq_len': 64,
            'data.num_threads': 1, 'data.tokenizer.vocab_size': 800,
            'data.tokenizer.max_train_chars': 300_000, 'optim.warmup_steps': 5}


@pytest.mark.parametrize('spec', ['experiments/bert_wwm.py:runlocal', 'experiments/ernie.py:runlocal',
                                  'experiments/spanbert.py:runlocal'])
def test_runlocal_loss_decreases(spec, data_dir, tmp_path):
  from ptm_jax import metrics as metrics_lib
  from ptm_jax import train
  cfg = _load(spec, **RUNLOCAL)
  result = train.train(cfg, str(tmp_path))
  records = metrics_lib.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 6
  assert losses[-1] < losses[0] - 0.5, losses
  if 'spanbert' in spec:
    sbo = [r['sbo_loss'] for r in records if 'sbo_loss' in r]
    assert sbo[-1] < sbo[0] - 0.3, sbo
    assert result.num_params > spanbert.sbo_head_cost(128, 800)[0]
