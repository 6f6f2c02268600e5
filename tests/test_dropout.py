"""layers.dropout: 'bits' is flax's Dropout exactly; 'hash' keeps 1 - rate of the elements
independently of position, recomputes its mask in the backward pass and does not depend on the
sharding (or the key implementation's sharding behaviour)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ptm_jax import models
from ptm_jax.layers import dropout as dropout_lib

SEED = jnp.array([0x1234, 0xBEEF], jnp.uint32)


class _Two(nn.Module):
  """Two dropouts in one scope, auto-named, as the blocks and MLPs use them."""

  cls: type
  rate: float

  @nn.compact
  def __call__(self, x, deterministic):
    return self.cls(self.rate)(x, deterministic=deterministic) + 2 * self.cls(self.rate)(
        x, deterministic=deterministic)


@pytest.mark.parametrize('rate', [0.0, 0.1, 0.5, 1.0])
def test_bits_impl_is_flax_dropout(rate):
  x = jax.random.normal(jax.random.key(1), (4, 16, 32))
  rngs = {'dropout': jax.random.key(7)}
  ours = _Two(dropout_lib.Dropout, rate).apply({}, x, False, rngs=rngs)
  flax_ = _Two(nn.Dropout, rate).apply({}, x, False, rngs=rngs)
  np.testing.assert_array_equal(ours, flax_)
  np.testing.assert_array_equal(_Two(dropout_lib.Dropout, rate).apply({}, x, True), 3 * x)


def test_hash_mask_keeps_one_minus_rate_independently():
  shape = (8, 256, 384)  # 786k elements
  n = np.prod(shape)
  for rate in (0.1, 0.5):
    keep = np.asarray(dropout_lib.hash_keep_mask(SEED, shape, rate)).astype(np.float64)
    sd = np.sqrt(rate * (1 - rate) / n)
    assert abs(keep.mean() - (1 - rate)) < 5 * sd, (rate, keep.mean())
    # Neighbours along every axis are uncorrelated (|r| < 5 / sqrt(n) each).
    for axis in range(3):
      a = np.moveaxis(keep, axis, 0)
      r = np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]
      assert abs(r) < 5 / np.sqrt(a[1:].size), (rate, axis, r)
    # Rows are not copies of one another: row sums spread as independent Binomial(384, 1 - rate).
    row_sums = keep.sum(-1).ravel()
    np.testing.assert_allclose(row_sums.var(), 384 * rate * (1 - rate), rtol=0.1)
    # Another seed draws an independent mask: agreement p^2 + (1 - p)^2.
    other = np.asarray(dropout_lib.hash_keep_mask(SEED + 1, shape, rate)).astype(np.float64)
    agree = (keep == other).mean()
    assert abs(agree - ((1 - rate) ** 2 + rate ** 2)) < 5 * np.sqrt(0.25 / n), (rate, agree)
  # A bijection of the element index: no two elements of an array share their hash bits.
  bits = np.asarray(dropout_lib.hash_bits(SEED, (4, 1024, 256)))
  assert np.unique(bits).size == bits.size
  assert dropout_lib.hash_bits(SEED, ()).shape == ()
  # Past 2^32 elements the wrapped index repeats; within one block of rows it cannot: the block's
  # indices span (rows - 1) * C + C - 1 < 2^32.
  for cols in (1, 7, 768, 50304, 2**31 - 1, 2**31 + 1):
    rows = dropout_lib.rows_per_block(cols)
    assert rows >= 1 and (rows * cols <= 2**32 - cols or rows == 1)


def test_hash_dropout_gradient_is_the_forward_mask_and_saves_no_mask():
  x = jax.random.normal(jax.random.key(0), (6, 40, 24), jnp.bfloat16)
  key = jax.random.key(3)
  f = lambda x: dropout_lib.dropout(x, key, 0.25, 'hash')  # noqa: E731
  y, vjp = jax.vjp(f, x)
  kept = np.asarray(y) != 0
  assert abs(kept.mean() - 0.75) < 0.02
  np.testing.assert_array_equal(np.asarray(y, np.float32)[kept],
                                np.asarray(x / 0.75, np.float32)[kept])
  g = jnp.ones_like(x)
  (dx,) = vjp(g)
  np.testing.assert_array_equal(np.asarray(dx) != 0, kept)
  np.testing.assert_allclose(np.asarray(dx, np.float32)[kept], 1 / 0.75, rtol=1e-2)
  # The backward pass recomputes the mask: the only residual is the two uint32 seeds.
  assert [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(vjp)] == [((2,), jnp.uint32)]
  # Same key, same mask; another key, another mask.
  np.testing.assert_array_equal(f(x), y)
  assert (np.asarray(dropout_lib.dropout(x, jax.random.key(4), 0.25, 'hash')) != 0).mean() < 1
  assert not np.array_equal(dropout_lib.dropout(x, jax.random.key(4), 0.25, 'hash'), y)
  with pytest.raises(ValueError, match="dropout_impl='philox'; use one of bits, hash"):
    dropout_lib.dropout(x, key, 0.25, 'philox')


@pytest.mark.parametrize('key_impl', ['threefry2x32', 'rbg'])
def test_hash_mask_is_the_same_sharded(key_impl):
  assert jax.device_count() == 8, 'conftest must force 8 host devices'
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), ('data', 'model'))
  key = jax.random.key(11, impl=key_impl)
  x = jax.random.normal(jax.random.key(2), (8, 32, 48))

  def loss(x, key):
    y = dropout_lib.dropout(x, key, 0.1, 'hash')
    return (y * y).sum(), y

  grad = jax.grad(loss, has_aux=True)
  (ref_dx, ref_y) = jax.jit(grad)(x, key)
  spec = NamedSharding(mesh, P('data', None, 'model'))
  sharded = jax.jit(grad, in_shardings=(spec, None), out_shardings=(spec, spec))
  dx, y = sharded(jax.device_put(x, spec), key)
  assert len(y.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(y), np.asarray(ref_y))
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(ref_dx))


@pytest.mark.parametrize('family,variant', [('decoder', 'runlocal'), ('encoder', 'runlocal'),
                                            ('albert', 'runlocal'), ('encdec', 't5_runlocal')])
def test_every_family_trains_with_hash_dropout(family, variant):
  fields = dict(vocab_size=64, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
                dropout_rate=0.2, dropout_impl='hash')
  if family == 'encdec':
    fields.update(num_encoder_layers=1, num_decoder_layers=1)
    del fields['num_layers']
  model = models.build(family, variant, **fields)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 1, 64)
  ones = jnp.ones_like(tokens)
  if family == 'encdec':
    args, kw = (tokens, tokens), dict(encoder_segment_ids=ones, decoder_segment_ids=ones)
  else:
    args, kw = (tokens,), dict(segment_ids=ones, positions=jnp.broadcast_to(jnp.arange(8), (2, 8)))
  params = model.init(jax.random.key(0), *args, **kw)['params']

  def out(params, key, deterministic=False):
    o = model.apply({'params': params}, *args, **kw, deterministic=deterministic,
                    rngs={'dropout': key} if key is not None else {})
    return o['logits'] if 'logits' in o else o['hidden']

  a, b = out(params, jax.random.key(1)), out(params, jax.random.key(2))
  np.testing.assert_array_equal(a, out(params, jax.random.key(1)))  # a key fixes every mask
  assert not np.allclose(a, b) and not np.allclose(a, out(params, None, deterministic=True))
  grads = jax.grad(lambda p: jnp.sum(out(p, jax.random.key(1)) ** 2))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match='use one of bits, hash'):  # before any layer runs
    jax.eval_shape(models.build(family, variant, **{**fields, 'dropout_impl': 'philox'}).init,
                   jax.random.key(0), *args, **kw)
