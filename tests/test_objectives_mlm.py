"""Property tests of the BERT MLM corruption and the masked-position loss."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import objectives
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import mlm

jax.config.update('jax_numpy_rank_promotion', 'raise')

SPECIALS = SpecialIds(vocab_size=1000, extra=(7, 500))


def make_batch(seed, batch=384, length=512, vocab=1000):
  """Random tokens (including reserved ids) with a padded tail of random length per row."""
  rs = np.random.RandomState(seed)
  tokens = rs.randint(0, vocab, size=(batch, length)).astype(np.int32)
  lengths = rs.randint(length // 2, length + 1, size=(batch, 1))
  segment_ids = (np.arange(length)[None, :] < lengths).astype(np.int32)
  segment_ids[:, length // 3:] *= 2  # Two packed documents per row, ids 1 and 2.
  tokens = np.where(segment_ids == 0, SPECIALS.pad, tokens).astype(np.int32)
  positions = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
  return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions}


@pytest.fixture(scope='module')
def corrupted():
  batch = make_batch(0)
  fn = jax.jit(functools.partial(mlm.corrupt, specials=SPECIALS, options=mlm.Options()))
  out = jax.device_get(fn(jax.random.PRNGKey(0), batch))
  return batch, out


def test_shapes_and_targets(corrupted):
  batch, out = corrupted
  for key in ('inputs', 'targets', 'weights'):
    assert out[key].shape == batch['tokens'].shape
  assert out['inputs'].dtype == np.int32 and out['weights'].dtype == np.float32
  np.testing.assert_array_equal(out['targets'], batch['tokens'])
  np.testing.assert_array_equal(out['segment_ids'], batch['segment_ids'])
  assert set(np.unique(out['weights'])) <= {0.0, 1.0}
  # Unselected positions are untouched.
  sel = out['weights'] > 0
  np.testing.assert_array_equal(out['inputs'][~sel], batch['tokens'][~sel])


def test_selection_rate_and_eligibility(corrupted):
  batch, out = corrupted
  sel = out['weights'] > 0
  reserved = np.isin(batch['tokens'], SPECIALS.reserved)
  padding = batch['segment_ids'] == 0
  assert padding.any() and (reserved & ~padding).any()
  assert not (sel & padding).any()
  assert not (sel & reserved).any()
  eligible = ~padding & ~reserved
  assert eligible.sum() >= 1e5
  rate = sel.sum() / eligible.sum()
  assert abs(rate - 0.15) < 0.005, rate


def test_80_10_10_split(corrupted):
  batch, out = corrupted
  sel = out['weights'] > 0
  tokens, inputs = batch['tokens'][sel], out['inputs'][sel]
  n = sel.sum()
  masked = (inputs == SPECIALS.mask).mean()
  # A random draw equal to the original is indistinguishable from keep (1 / 995 of randoms).
  randomised = ((inputs != SPECIALS.mask) & (inputs != tokens)).mean()
  kept = (inputs == tokens).mean()
  assert n > 1e4
  assert abs(masked - 0.8) < 0.015, masked
  assert abs(randomised - 0.1) < 0.015, randomised
  assert abs(kept - 0.1) < 0.015, kept
  replaced = inputs[(inputs != SPECIALS.mask) & (inputs != tokens)]
  assert not np.isin(replaced, SPECIALS.reserved).any()
  assert ((0 <= replaced) & (replaced < SPECIALS.vocab_size)).all()


def test_random_replacements_uniform_over_non_reserved():
  specials = SpecialIds(vocab_size=24, extra=(9, 23))  # Reserved ids not contiguous, one at the end.
  batch = make_batch(1, batch=128, length=512, vocab=24)
  opts = mlm.Options(mask_rate=1.0, mask_token_rate=0.0, random_token_rate=1.0)
  out = jax.jit(functools.partial(mlm.corrupt, specials=specials, options=opts))(
      jax.random.PRNGKey(3), batch)
  sel = np.asarray(out['weights']) > 0
  drawn = np.asarray(out['inputs'])[sel]
  allowed = np.setdiff1d(np.arange(24), specials.reserved)
  assert set(np.unique(drawn)) == set(allowed)
  counts = np.bincount(drawn, minlength=24)[allowed]
  expected = drawn.size / allowed.size
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 45, chi2  # dof = 16: p(chi2 > 45) ~ 1e-4.


def test_rng_determinism():
  batch = make_batch(2, batch=8, length=128)
  fn = jax.jit(functools.partial(mlm.corrupt, specials=SPECIALS, options=mlm.Options()))
  a = fn(jax.random.PRNGKey(1), batch)
  b = fn(jax.random.PRNGKey(1), batch)
  c = fn(jax.random.PRNGKey(2), batch)
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  np.testing.assert_array_equal(a['weights'], b['weights'])
  assert not np.array_equal(a['weights'], c['weights'])
  eager = mlm.corrupt(jax.random.PRNGKey(1), batch, specials=SPECIALS, options=mlm.Options())
  np.testing.assert_array_equal(a['inputs'], eager['inputs'])


def test_options_validation_and_registry():
  assert objectives.get('mlm') is mlm
  with pytest.raises(ValueError, match='known: .*clm.*mlm'):
    objectives.get('mlmm')
  opts = objectives.build_options(mlm, {'name': 'mlm', 'mask_rate': 0.2})
  assert opts == mlm.Options(mask_rate=0.2)
  with pytest.raises(ValueError, match="unknown option 'mask_rat'.*mask_rate"):
    objectives.build_options(mlm, {'mask_rat': 0.2})
  with pytest.raises(ValueError):
    mlm.Options(mask_token_rate=0.95, random_token_rate=0.1)


class TinyLM(nn.Module):
  """Stand-in model: logits straight from an embedding table."""

  vocab_size: int

  @nn.compact
  def __call__(self, tokens, *, segment_ids=None, positions=None, token_types=None,
               deterministic=True):
    logits = nn.Embed(self.vocab_size, self.vocab_size)(tokens)
    logits = nn.Dropout(0.5)(logits, deterministic=deterministic)
    return {'logits': logits.astype(jnp.float32)}


def reference_ce(logits, targets, weights):
  logits = np.asarray(logits, np.float64)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return (nll * weights).sum() / max(weights.sum(), 1.0)


def test_loss_matches_hand_computed():
  specials = SpecialIds(vocab_size=32)
  batch = make_batch(4, batch=4, length=64, vocab=32)
  batch = mlm.corrupt(jax.random.PRNGKey(0), batch, specials=specials, options=mlm.Options(sparse_logits=False))
  model = TinyLM(32)
  params = model.init(jax.random.PRNGKey(1), batch['inputs'])['params']
  loss_fn = jax.jit(functools.partial(mlm.loss, model=model, specials=specials,
                                      options=mlm.Options()))
  value, metrics = loss_fn(params, batch, None)
  logits = model.apply({'params': params}, batch['inputs'])['logits']
  weights = np.asarray(batch['weights'])
  expected = reference_ce(logits, np.asarray(batch['targets']), weights)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5)
  assert 0.0 <= metrics['accuracy'] <= 1.0
  acc = ((np.asarray(logits).argmax(-1) == np.asarray(batch['targets'])) * weights).sum()
  np.testing.assert_allclose(metrics['accuracy'], acc / weights.sum(), rtol=1e-6)
  assert metrics['num_targets'] == weights.sum() > 0
  # With an rng, dropout is live and the gradient still flows.
  grads = jax.grad(lambda p: loss_fn(p, batch, jax.random.PRNGKey(2))[0])(params)
  assert np.isfinite(np.asarray(jax.tree_util.tree_leaves(grads)[0])).all()


def test_loss_without_targets_is_zero_not_nan():
  batch = make_batch(5, batch=2, length=16, vocab=32)
  batch = {**batch, 'inputs': batch['tokens'], 'targets': batch['tokens'],
           'weights': np.zeros((2, 16), np.float32)}
  model = TinyLM(32)
  params = model.init(jax.random.PRNGKey(1), batch['inputs'])['params']
  value, metrics = mlm.loss(params, batch, None, model=model, specials=None)
  assert value == 0.0 and metrics['num_targets'] == 0.0


def test_sparse_logits_gather_every_selected_position_and_match_dense_loss():
  """The [B, K] slab holds exactly the selected positions; its loss equals the dense loss."""
  from ptm_jax import models
  specials = SpecialIds(vocab_size=211)
  rng = np.random.default_rng(3)
  tokens = rng.integers(5, 211, size=(4, 64)).astype(np.int32)
  segs = np.ones_like(tokens)
  segs[1, 40:] = 0
  batch = {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segs),
           'positions': jnp.asarray(np.tile(np.arange(64), (4, 1)).astype(np.int32))}
  out = mlm.corrupt(jax.random.key(0), batch, specials=specials, options=mlm.Options())
  k = mlm.max_predictions(64, 0.15)
  assert out['mlm_positions'].shape == (4, k)
  for row in range(4):
    selected = np.flatnonzero(np.asarray(out['weights'][row]))
    n = len(selected)
    np.testing.assert_array_equal(np.asarray(out['mlm_positions'][row, :n]), selected)
    assert float(out['mlm_weights'][row].sum()) == n
    np.testing.assert_array_equal(np.asarray(out['mlm_targets'][row, :n]), tokens[row, selected])
  model = models.build('encoder', 'runlocal', vocab_size=211, num_layers=1, embed_dim=32,
                       num_heads=2, mlp_dim=64, dropout_rate=0.0)
  params = model.init(jax.random.key(1), batch['tokens'], segment_ids=batch['segment_ids'],
                      positions=batch['positions'])['params']
  sparse_loss, sparse_m = mlm.loss(params, out, None, model=model)
  dense = {k_: v for k_, v in out.items() if not k_.startswith('mlm_')}
  dense_loss, dense_m = mlm.loss(params, dense, None, model=model)
  np.testing.assert_allclose(float(sparse_loss), float(dense_loss), rtol=1e-5)
  assert float(sparse_m['num_targets']) == float(dense_m['num_targets'])


@pytest.mark.parametrize('family', ['encoder', 'albert'])
def test_shared_slab_holds_every_selected_position_and_matches_per_row(family):
  """slab_rows=4: one `[B/4, K_4]` slab per 4 rows (K_4 < 4 K_1) holds exactly the selected
  positions (row r, position p at slot (r % 4) * L + p); loss, metrics and every parameter
  gradient equal the per-row slab's; a slab_rows that does not divide the batch is one error."""
  from ptm_jax import models
  specials = SpecialIds(vocab_size=211)
  rng = np.random.default_rng(4)
  tokens = rng.integers(5, 211, size=(8, 64)).astype(np.int32)
  segs = np.ones_like(tokens)
  segs[1, 40:] = 0
  segs[6, 10:] = 0
  batch = {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segs),
           'positions': jnp.asarray(np.tile(np.arange(64), (8, 1)).astype(np.int32))}
  per_row = mlm.corrupt(jax.random.key(0), batch, specials=specials, options=mlm.Options())
  shared = mlm.corrupt(jax.random.key(0), batch, specials=specials,
                       options=mlm.Options(slab_rows=4))
  for key in ('inputs', 'weights'):  # the same corruption; only the slab's layout differs
    np.testing.assert_array_equal(np.asarray(per_row[key]), np.asarray(shared[key]))
  k4 = mlm.max_predictions(4 * 64, 0.15)
  assert shared['mlm_positions'].shape == (2, k4) and k4 < 4 * mlm.max_predictions(64, 0.15)
  selected = np.asarray(shared['weights']).reshape(2, 4 * 64)
  for slab in range(2):
    want = np.flatnonzero(selected[slab])
    n = len(want)
    np.testing.assert_array_equal(np.asarray(shared['mlm_positions'][slab, :n]), want)
    assert float(shared['mlm_weights'][slab].sum()) == n
    np.testing.assert_array_equal(np.asarray(shared['mlm_targets'][slab, :n]),
                                  tokens.reshape(2, -1)[slab, want])
  model = models.build(family, 'runlocal', vocab_size=211, num_layers=1, embed_dim=32,
                       num_heads=2, mlp_dim=64, dropout_rate=0.0)
  params = model.init(jax.random.key(1), batch['tokens'], segment_ids=batch['segment_ids'],
                      positions=batch['positions'])['params']
  grad_fn = jax.jit(jax.value_and_grad(lambda p, b: mlm.loss(p, b, None, model=model),
                                       has_aux=True))
  (loss_1, m_1), g_1 = grad_fn(params, per_row)
  (loss_4, m_4), g_4 = grad_fn(params, shared)
  np.testing.assert_allclose(float(loss_4), float(loss_1), rtol=1e-6)
  for key in ('accuracy', 'num_targets'):
    np.testing.assert_allclose(float(m_4[key]), float(m_1[key]), rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g_4), jax.tree_util.tree_leaves(g_1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='slab_rows=3 must divide the batch of 8 rows'):
    mlm.corrupt(jax.random.key(0), batch, specials=specials, options=mlm.Options(slab_rows=3))
  with pytest.raises(ValueError, match='slab_rows must be >= 1'):
    mlm.Options(slab_rows=0)


def test_shared_slab_over_eight_devices_equals_one_device():
  """A data-parallel batch of 16 rows over 8 fake devices with slab_rows=2 (one slab per shard):
  the same loss and gradients as the unsharded step."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from ptm_jax import models, sharding, train
  specials = SpecialIds(vocab_size=211)
  rng = np.random.default_rng(5)
  tokens = rng.integers(5, 211, size=(16, 32)).astype(np.int32)
  batch = {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.ones_like(tokens),
           'positions': jnp.asarray(np.tile(np.arange(32), (16, 1)).astype(np.int32))}
  options = mlm.Options(slab_rows=2)
  model = models.build('encoder', 'runlocal', vocab_size=211, num_layers=1, embed_dim=32,
                       num_heads=2, mlp_dim=64, dropout_rate=0.0)
  params = model.init(jax.random.key(1), batch['tokens'], segment_ids=batch['segment_ids'],
                      positions=batch['positions'])['params']

  def loss_and_grad(p, b):
    corrupted = mlm.corrupt(jax.random.key(2), b, specials=specials, options=options)
    return jax.value_and_grad(lambda q: mlm.loss(q, corrupted, None, model=model)[0])(p)

  one = jax.jit(loss_and_grad)(params, batch)
  mesh = sharding.make_mesh('dp')
  assert mesh.devices.size == 8
  rows = NamedSharding(mesh, P(('data', 'fsdp')))
  with train._mesh_context(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    eight = jax.jit(loss_and_grad)(jax.device_put(params, NamedSharding(mesh, P())),
                                   jax.device_put(batch, rows))
  np.testing.assert_allclose(float(eight[0]), float(one[0]), rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(eight[1]), jax.tree_util.tree_leaves(one[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
