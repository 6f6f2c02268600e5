"""Unified-Transformer objectives on one shared network: prefix LM (decoder), UniLM and GLM
(encoder with custom attention masks). Masks are verified through gradients: the output at i has
exactly zero gradient w.r.t. the input embeddings of every position i must not see."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ptm_jax import configs, models, objectives
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import glm, noising, prefix_lm, unilm

jax.config.update('jax_numpy_rank_promotion', 'raise')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = SpecialIds(vocab_size=300, extra=(5, 6))


def packed_batch(seed, batch=64, length=48, docs=3, vocab=300, pad_tail=True):
  """Rows of `docs` packed [CLS] text [SEP] documents (random lengths), then padding."""
  rs = np.random.RandomState(seed)
  tokens = np.zeros((batch, length), np.int32)
  segs = np.zeros((batch, length), np.int32)
  pos = np.zeros((batch, length), np.int32)
  for b in range(batch):
    n = rs.randint(length * 3 // 4, length + 1) if pad_tail else length
    cuts = np.sort(rs.choice(np.arange(3, n - 3), size=docs - 1, replace=False))
    edges = [0, *cuts, n]
    for d in range(docs):
      a, e = edges[d], edges[d + 1]
      segs[b, a:e] = d + 1
      pos[b, a:e] = np.arange(e - a)
      tokens[b, a:e] = rs.randint(10, vocab, size=e - a)
      tokens[b, a], tokens[b, e - 1] = SPECIALS.cls, SPECIALS.sep
  return {'tokens': tokens, 'segment_ids': segs, 'positions': pos}


def dependency(fn, x_LD):
  """`[L, L]` boolean: output row i depends on input row j (fn: `[L, D]` -> `[L, D]`)."""
  jac = jax.jit(jax.jacrev(fn))(x_LD)  # [L, D, L, D]
  return np.asarray(jnp.abs(jac).sum(axis=(1, 3)) > 0)


# ----------------------------------------------------------------------------- prefix LM


def test_prefix_split_is_uniform_and_a_proper_head():
  batch = packed_batch(0, batch=512, length=40, docs=2)
  out = jax.jit(lambda r, b: prefix_lm.corrupt(r, b, specials=SPECIALS))(jax.random.key(1), batch)
  flags, w = np.asarray(out['prefix_flags']), np.asarray(out['weights'])
  segs, pos = batch['segment_ids'], batch['positions']
  counts = {}
  for b in range(len(segs)):
    for s in (1, 2):
      sel = segs[b] == s
      f, n = flags[b][sel], sel.sum()
      k = int(f.sum())
      assert 1 <= k <= n - 1
      np.testing.assert_array_equal(f, pos[b][sel] < k)  # a head of the document
      # Targets: next token t + 1 exists in the document and is not in the prefix.
      expect = (pos[b][sel] >= k - 1) & (pos[b][sel] < n - 1)
      np.testing.assert_array_equal(w[b][sel], expect.astype(np.float32))
      if n == 17:
        counts[k] = counts.get(k, 0) + 1
    assert not flags[b][segs[b] == 0].any() and not w[b][segs[b] == 0].any()
  np.testing.assert_array_equal(out['targets'][:, :-1], batch['tokens'][:, 1:])
  # Uniform split for a fixed length: pool every document of one length over many draws.
  one = {'tokens': np.full((2560, 12), 20, np.int32), 'segment_ids': np.ones((2560, 12), np.int32),
         'positions': np.tile(np.arange(12, dtype=np.int32), (2560, 1))}
  f = prefix_lm.corrupt(jax.random.key(3), one, specials=SPECIALS)['prefix_flags']
  hist = np.bincount(np.asarray(f).sum(axis=1), minlength=12)[1:12]
  assert stats.chisquare(hist).pvalue > 1e-3, hist


def test_prefix_mask_through_gradients():
  model = models.build('decoder', 'runlocal', vocab_size=64, num_layers=2, embed_dim=16,
                       num_heads=2, mlp_dim=32, dropout_rate=0.0)
  length = 12
  seg = np.array([[1] * 7 + [2] * 4 + [0]], np.int32)
  pos = np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0]], np.int32)
  flags = np.array([[1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0]], np.int32)
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1, length), jnp.int32), segment_ids=seg,
                                        positions=pos))(jax.random.key(0))['params']
  x_LD = jax.random.normal(jax.random.key(1), (length, 16))

  def fn(x_LD):
    hidden, _, _ = model.apply({'params': params}, x_LD[None], segment_ids=seg, positions=pos,
                               prefix_flags=flags, method=model.decode)
    return hidden[0]

  dep = dependency(fn, x_LD)
  expect = np.zeros((length, length), bool)
  for i in range(length):
    for j in range(length):
      same = seg[0, i] == seg[0, j] != 0
      expect[i, j] = same and (j <= i or (flags[0, i] and flags[0, j]))
  # Padding queries still produce (ignored) outputs; only real positions are checked.
  real = seg[0] != 0
  np.testing.assert_array_equal(dep[real][:, real], expect[real][:, real])
  # Without prefix flags the decoder is plainly causal.
  causal = dependency(lambda x: model.apply({'params': params}, x[None], segment_ids=seg,
                                            positions=pos, method=model.decode)[0][0], x_LD)
  assert not causal[1, 2] and dep[1, 2]


# ----------------------------------------------------------------------------- UniLM


def long_rows(seed, batch, length, vocab=300):
  """Single-document rows [CLS] text [SEP] with no reserved id inside: the rate tests' input."""
  rs = np.random.RandomState(seed)
  tokens = rs.randint(10, vocab, size=(batch, length)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = SPECIALS.cls, SPECIALS.sep
  return {'tokens': tokens, 'segment_ids': np.ones_like(tokens),
          'positions': np.tile(np.arange(length, dtype=np.int32), (batch, 1))}


def runs_of(flags_L):
  """Lengths of the maximal runs of True."""
  padded = np.concatenate([[0], flags_L.astype(np.int8), [0]])
  edges = np.flatnonzero(np.diff(padded))
  return edges[1::2] - edges[::2]


def test_unilm_mode_mix_per_batch():
  seen = set()
  for seed in range(6):
    modes = np.asarray(unilm.sample_modes(jax.random.key(seed), 12, unilm.Options().mode_probs))
    np.testing.assert_array_equal(np.bincount(modes, minlength=4), [4, 4, 2, 2])
    seen.add(tuple(modes))
  assert len(seen) > 1  # which rows get which type changes with the rng


def test_unilm_cloze_masking_rates():
  batch = long_rows(0, 256, 512)
  opts = unilm.Options()
  out = jax.jit(lambda r, b: unilm.corrupt(r, b, specials=SPECIALS, options=opts))(
      jax.random.key(0), batch)
  w = np.asarray(out['weights']).astype(bool)
  eligible = ~np.isin(batch['tokens'], SPECIALS.reserved)
  assert not (w & ~eligible).any()
  rate = w.sum() / eligible.sum()
  assert abs(rate - 0.15) < 0.005, rate
  lengths = np.concatenate([runs_of(row) for row in w])
  hist = np.bincount(lengths, minlength=4)[1:]
  assert len(np.bincount(lengths)) <= 4  # units never touch: no run longer than a trigram
  assert stats.chisquare(hist, hist.sum() * np.asarray([0.8, 0.1, 0.1])).pvalue > 1e-3, hist
  inputs, tokens = np.asarray(out['inputs'])[w], batch['tokens'][w]
  mask_share = (inputs == SPECIALS.mask).mean()
  keep_share = (inputs == tokens).mean()
  assert abs(mask_share - 0.8) < 0.015 and abs(keep_share - 0.1) < 0.015, (mask_share, keep_share)
  assert not np.isin(inputs[inputs != SPECIALS.mask], SPECIALS.reserved).any()
  np.testing.assert_array_equal(np.asarray(out['inputs'])[~w], batch['tokens'][~w])
  # The sparse slab holds every masked token.
  assert np.asarray(out['mlm_weights']).sum() == w.sum()


def test_unilm_token_types_and_source():
  batch = packed_batch(1, batch=12)
  out = jax.jit(lambda r, b: unilm.corrupt(r, b, specials=SPECIALS))(jax.random.key(2), batch)
  modes, types = np.asarray(out['lm_mode']), np.asarray(out['token_types'])
  source = np.asarray(out['source_flags']).astype(bool)
  for b, m in enumerate(modes):
    real = batch['segment_ids'][b] > 0
    if m == unilm.SEQ2SEQ:
      assert set(types[b][real & source[b]]) == {4} and set(types[b][real & ~source[b]]) == {5}
      for s in np.unique(batch['segment_ids'][b][real]):
        f = source[b][batch['segment_ids'][b] == s]
        assert 1 <= f.sum() < len(f) and (np.diff(f.astype(int)) <= 0).all()  # a proper head
    else:
      assert not source[b].any()
      assert set(types[b][real]) == {{0: 0, 2: 2, 3: 3}[m]}


def encoder_dependencies(masks_N, seg, length=10, **encoder_kw):
  """Dependency matrices of a tiny encoder's `encode` under each extra mask (one compile)."""
  model = models.build('encoder', 'runlocal', vocab_size=64, num_layers=2, embed_dim=16,
                       num_heads=2, mlp_dim=32, dropout_rate=0.0, **encoder_kw)
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1, length), jnp.int32), segment_ids=seg,
                                        positions=jnp.zeros((1, length), jnp.int32)))(
                                            jax.random.key(0))['params']
  x_LD = jax.random.normal(jax.random.key(1), (length, 16))

  @jax.jit
  def dep(mask):
    def fn(x_LD):
      hidden, _ = model.apply({'params': params}, x_LD[None], segment_ids=seg,
                              attention_mask=mask, method=model.encode)
      return hidden[0]
    return jnp.abs(jax.jacrev(fn)(x_LD)).sum(axis=(1, 3)) > 0

  return [np.asarray(dep(m)) for m in masks_N]


def test_unilm_masks_through_gradients():
  length = 10
  seg = np.array([[1] * 6 + [2] * 3 + [0]], np.int32)
  source = np.array([[1, 1, 0, 0, 0, 0, 1, 0, 0, 0]], np.int32)
  idx = np.arange(length)
  same = (seg[0][:, None] == seg[0][None, :]) & (seg[0][:, None] > 0)
  expected = {
      unilm.BIDIRECTIONAL: same,
      unilm.LEFT_TO_RIGHT: same & (idx[None, :] <= idx[:, None]),
      unilm.RIGHT_TO_LEFT: same & (idx[None, :] >= idx[:, None]),
      unilm.SEQ2SEQ: same & ((idx[None, :] <= idx[:, None]) | (source[0][:, None] & source[0][None, :]).astype(bool)),
  }
  real = seg[0] > 0
  mask_N = [jnp.broadcast_to(unilm.attention_mask(jnp.asarray([m]), jnp.asarray(source)),
                             (1, 1, length, length)) for m in expected]
  for (mode, expect), dep in zip(expected.items(), encoder_dependencies(mask_N, seg, length)):
    np.testing.assert_array_equal(dep[real][:, real], expect[real][:, real], err_msg=unilm.MODE_NAMES[mode])
  # A seq2seq source token never sees the target; a target token sees the whole source.
  mask = np.asarray(mask_N[list(expected).index(unilm.SEQ2SEQ)])[0, 0]
  assert not mask[0, 2] and mask[3, 1] and mask[3, 3] and not mask[3, 4]


def test_unilm_loss_is_finite_and_checks_type_vocab():
  model = models.build('encoder', 'runlocal', vocab_size=SPECIALS.vocab_size, num_layers=1,
                       embed_dim=16, num_heads=2, mlp_dim=32, type_vocab_size=6)
  batch = packed_batch(3, batch=12, length=32)
  out = jax.jit(lambda r, b: unilm.corrupt(r, b, specials=SPECIALS))(jax.random.key(0), batch)
  params = jax.jit(lambda r: model.init(r, out['inputs'], segment_ids=out['segment_ids'],
                                        positions=out['positions']))(jax.random.key(1))['params']
  value, metrics = jax.jit(lambda p, b: unilm.loss(p, b, None, model=model))(params, out)
  assert np.isfinite(value) and abs(float(value) - np.log(SPECIALS.vocab_size)) < 1.0
  for name in unilm.MODE_NAMES:
    assert np.isfinite(metrics[f'loss_{name}'])
  small = models.build('encoder', 'runlocal', vocab_size=SPECIALS.vocab_size, type_vocab_size=2)
  with pytest.raises(ValueError, match='type_vocab_size'):
    unilm.loss(params, out, None, model=small)


# ----------------------------------------------------------------------------- GLM


def test_glm_figure_2_example():
  # x1..x6 = 11..16; spans [x3] and [x5 x6]; Part B holds [x5 x6] first, as in the paper.
  tokens = jnp.asarray([[11, 12, 13, 14, 15, 16]])
  out = glm.arrange(tokens, jnp.ones_like(tokens), jnp.asarray([[0, 0, 1, 0, 1, 1]], bool),
                    jnp.asarray([[0, 0, 0, 0, 1, 1]]), jnp.asarray([[2, 4]]),
                    jnp.asarray([[0.9, 0.1]]), start_id=5, end_id=3, mask_id=4, pad_id=0)
  m, s, e = 4, 5, 3
  np.testing.assert_array_equal(out['inputs'], [[11, 12, m, 14, m, s, 15, 16, s, 13]])
  np.testing.assert_array_equal(out['targets'], [[0, 0, 0, 0, 0, 15, 16, e, 13, e]])
  # The paper's rows are 1-based: position 1 = 1 2 3 4 5 5 5 5 3 3, position 2 = 0 0 0 0 0 1 2 3 1 2.
  np.testing.assert_array_equal(out['positions'], [[0, 1, 2, 3, 4, 4, 4, 4, 2, 2]])
  np.testing.assert_array_equal(out['block_positions'], [[0, 0, 0, 0, 0, 1, 2, 3, 1, 2]])
  np.testing.assert_array_equal(out['part_b'], [[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(out['weights'], out['part_b'])
  np.testing.assert_array_equal(out['segment_ids'], np.ones((1, 10)))


def test_glm_spans_are_poisson_and_cover_15_percent():
  batch = long_rows(0, 128, 512)
  opts = glm.Options(sparse_logits=False)
  out = jax.jit(lambda r, b: glm.corrupt(r, b, specials=SPECIALS, options=opts))(jax.random.key(0), batch)
  masked = np.asarray(out['masked'])
  rate = masked.sum() / (128 * 510)
  assert abs(rate - 0.15) < 0.01, rate
  lengths = []
  for row in masked:
    padded = np.concatenate([[0], row.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    lengths += [n for a, n in zip(edges[::2], edges[1::2] - edges[::2]) if a > 1 and a + n < 511]
  assert len(lengths) >= 2500
  hist = np.bincount(lengths, minlength=10)
  pmf = stats.poisson.pmf(np.arange(1, 9), 3.0) / (1 - np.exp(-3.0))
  observed = np.concatenate([hist[1:9], [hist[9:].sum()]])
  expected = np.concatenate([pmf, [1 - pmf.sum()]]) * len(lengths)
  assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, expected.round())


def test_glm_parts_hold_every_token_once_per_document():
  batch = packed_batch(4, batch=16, length=64)
  out = jax.jit(lambda r, b: glm.corrupt(r, b, specials=SPECIALS))(jax.random.key(1), batch)
  inputs, targets = np.asarray(out['inputs']), np.asarray(out['targets'])
  segs, part_b = np.asarray(out['glm_segment_ids']), np.asarray(out['glm_part_b']).astype(bool)
  pos1, pos2 = np.asarray(out['glm_positions']), np.asarray(out['glm_block_positions'])
  start, m = SPECIALS.extra[0], SPECIALS.mask
  for b in range(16):
    a_len = (~part_b[b] & (segs[b] > 0)).sum()
    assert not part_b[b][:a_len].any() and part_b[b][a_len:a_len + part_b[b].sum()].all()
    for s in np.unique(batch['segment_ids'][b][batch['segment_ids'][b] > 0]):
      orig = batch['tokens'][b][batch['segment_ids'][b] == s]
      a = inputs[b][(segs[b] == s) & ~part_b[b]]
      bi = inputs[b][(segs[b] == s) & part_b[b]]
      bt = targets[b][(segs[b] == s) & part_b[b]]
      assert sorted(list(a[a != m]) + list(bi[bi != start])) == sorted(orig)
      assert (bi == start).sum() == (a == m).sum() == (bt == SPECIALS.eos).sum()
      np.testing.assert_array_equal(pos1[b][(segs[b] == s) & ~part_b[b]], np.arange(len(a)))
      assert (pos2[b][(segs[b] == s) & ~part_b[b]] == 0).all()
      # Inside Part B every span reads [START] s_1 .. s_k at positions 1..k+1 and predicts s_1 .. [END].
      bp2 = pos2[b][(segs[b] == s) & part_b[b]]
      np.testing.assert_array_equal(bp2[bi == start], 1)
      np.testing.assert_array_equal(bt[:-1][bi[1:] != start], bi[1:][bi[1:] != start])
      # A blank's tokens take the Part A position of its [MASK].
      mask_pos = set(pos1[b][(segs[b] == s) & ~part_b[b]][a == m])
      assert set(pos1[b][(segs[b] == s) & part_b[b]]) == mask_pos


def test_glm_mask_through_gradients():
  part_b = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]], np.int32)
  seg = np.array([[1, 1, 1, 2, 2, 1, 1, 2, 1, 1]], np.int32)  # two documents' A and B parts
  (dep,) = encoder_dependencies([glm.attention_mask(part_b)], seg, 10)
  is_b = part_b[0].astype(bool)
  idx = np.arange(10)
  same = seg[0][:, None] == seg[0][None, :]
  expect = same & (~is_b[None, :] | (is_b[:, None] & is_b[None, :] & (idx[None, :] <= idx[:, None])))
  np.testing.assert_array_equal(dep, expect)
  assert not dep[0, 5] and dep[5, 0] and dep[6, 5] and not dep[5, 6]


def test_glm_loss_needs_2d_positions():
  batch = packed_batch(5, batch=8, length=32)
  out = jax.jit(lambda r, b: glm.corrupt(r, b, specials=SPECIALS))(jax.random.key(0), batch)
  kw = dict(vocab_size=SPECIALS.vocab_size, num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32)
  model = models.build('encoder', 'runlocal', block_position_embeddings=True, **kw)
  params = jax.jit(lambda r: model.init(r, out['inputs'], segment_ids=out['glm_segment_ids'],
                                        positions=out['glm_positions']))(jax.random.key(1))['params']
  assert 'block_position_embed' in params
  value, metrics = jax.jit(lambda p, b: glm.loss(p, b, None, model=model))(params, out)
  assert abs(float(value) - np.log(SPECIALS.vocab_size)) < 1.0
  assert metrics['num_targets'] == np.asarray(out['weights']).sum()
  with pytest.raises(ValueError, match='block_position_embeddings'):
    glm.loss(params, out, None, model=models.build('encoder', 'runlocal', **kw))


# ----------------------------------------------------------------------------- runlocal runs


RUNLOCAL = {'mesh.num_devices': 1, 'train.steps': 30, 'train.batch_size': 8, 'train.log_every': 5,
            'train.eval_every': 0, 'train.checkpoint_every': 30, 'data.seq_len': 64,
            'data.num_threads': 1, 'data.tokenizer.vocab_size': 800,
            'data.tokenizer.max_train_chars': 300_000, 'optim.warmup_steps': 5}


@pytest.mark.parametrize('spec', ['experiments/prefix_lm.py:runlocal', 'experiments/unilm.py:runlocal',
                                  'experiments/glm.py:runlocal'])
def test_runlocal_loss_decreases(spec, data_dir, tmp_path):
  from ptm_jax import metrics as metrics_lib
  from ptm_jax import train
  cfg = configs.load_experiment(os.path.join(REPO, spec), RUNLOCAL)
  train.train(cfg, str(tmp_path))
  records = metrics_lib.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 6
  assert losses[-1] < losses[0] - 0.5, losses
