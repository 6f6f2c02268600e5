"""The encoder–decoder family (`ptm_jax.models.encdec`), T5 and BART styles.

- Parameter counts of t5_small/base/large and bart_base/large equal transformers' (BART + its
  `final_logits_bias`, a buffer in torch).
- T5 relative-position buckets equal HF's `_relative_position_bucket` (both directions).
- Packing: two (encoder, decoder) pairs packed in one row give the same logits as each pair
  alone, so cross-attention reads only its own encoder segment and positions restart.
- Decoder causality and encoder padding: later decoder tokens and padded encoder tokens do not
  change earlier / valid outputs.
- Dropout is active only when not deterministic; the uniform single-sequence call initialises.
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import models
from ptm_jax.layers import positions

V = 64


def _model(style: str, **kw):
  return models.build('encdec', f'{style}_runlocal', vocab_size=V, num_encoder_layers=2,
                      num_decoder_layers=2, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                      **kw)


def _init(model, seed=0):
  tokens = jnp.ones((1, 4), jnp.int32)
  # Random weights drawn on the host from the shapes alone (compiling flax's init costs more
  # than the test): norm gains near 1, everything else N(0, 0.1), so misuse of any tensor shows.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, segment_ids=tokens,
                                             positions=None)['params'])
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    return jnp.asarray(noise + 1.0 if path[-1].key == 'scale' else noise)
  return jax.tree_util.tree_map_with_path(draw, flax.core.meta.unbox(shapes))


@functools.partial(jax.jit, static_argnames=('model',))
def _forward(model, params, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos, rng):
  return model.apply({'params': params}, enc, dec, encoder_segment_ids=enc_seg,
                     decoder_segment_ids=dec_seg, encoder_positions=enc_pos,
                     decoder_positions=dec_pos, deterministic=rng is None,
                     rngs=None if rng is None else {'dropout': rng})


def _apply(model, params, enc, dec, enc_seg, dec_seg, enc_pos=None, dec_pos=None,
           dropout_rng=None):
  """Jitted forward (one compile per shape beats op-by-op dispatch of a whole model on CPU)."""
  arrays = [None if x is None else jnp.asarray(x) for x in (enc, dec, enc_seg, dec_seg, enc_pos,
                                                             dec_pos)]
  return _forward(model, params, *arrays, dropout_rng)


@pytest.mark.parametrize('variant,count', [
    ('t5_small', 60_506_624), ('t5_base', 222_903_552), ('t5_large', 737_668_096),
    ('bart_base', 139_420_416 + 50_265), ('bart_large', 406_291_456 + 50_265)])
def test_parameter_counts_match_transformers(variant, count):
  model = models.build('encdec', variant)
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, segment_ids=tokens,
                                             positions=None))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(flax.core.meta.unbox(shapes)))
  assert n == count


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('buckets,max_distance', [(32, 128), (8, 10)])
def test_relative_buckets_match_hf(bidirectional, buckets, max_distance):
  torch = pytest.importorskip('torch')
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-300, 301)
  ours = positions.relative_position_bucket(jnp.asarray(rel, jnp.int32),
                                            bidirectional=bidirectional, num_buckets=buckets,
                                            max_distance=max_distance)
  theirs = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=bidirectional,
                                                 num_buckets=buckets, max_distance=max_distance)
  np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())


@pytest.mark.parametrize('style', ['t5', 'bart'])
def test_packed_pairs_equal_separate_pairs(style):
  model = _model(style)
  params = _init(model)
  rng = np.random.default_rng(0)
  enc_a, enc_b = rng.integers(5, V, 5), rng.integers(5, V, 4)
  dec_a, dec_b = rng.integers(5, V, 3), rng.integers(5, V, 4)
  # Packed: encoder [a a a a a b b b b 0], decoder [a a a b b b b 0].
  enc = np.concatenate([enc_a, enc_b, [0]])[None]
  enc_seg = np.array([[1] * 5 + [2] * 4 + [0]])
  enc_pos = np.array([list(range(5)) + list(range(4)) + [0]])
  dec = np.concatenate([dec_a, dec_b, [0]])[None]
  dec_seg = np.array([[1] * 3 + [2] * 4 + [0]])
  dec_pos = np.array([list(range(3)) + list(range(4)) + [0]])
  packed = _apply(model, params, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)['logits'][0]
  for e, d, rows in ((enc_a, dec_a, slice(0, 3)), (enc_b, dec_b, slice(3, 7))):
    # Alone, right-padded to one shape (encoder 5, decoder 4): padding is invisible too.
    e_seg, d_seg = np.arange(5) < len(e), np.arange(4) < len(d)
    e, d = np.pad(e, (0, 5 - len(e))), np.pad(d, (0, 4 - len(d)))
    alone = _apply(model, params, e[None], d[None], e_seg[None].astype(np.int32),
                   d_seg[None].astype(np.int32))['logits'][0]
    np.testing.assert_allclose(packed[rows], alone[:rows.stop - rows.start], atol=2e-5)


@pytest.mark.parametrize('style', ['t5', 'bart'])
def test_decoder_is_causal_and_encoder_padding_is_invisible(style):
  model = _model(style)
  params = _init(model, seed=2)
  rng = np.random.default_rng(1)
  enc, dec = rng.integers(5, V, (2, 7)), rng.integers(5, V, (2, 6))
  enc_seg = np.array([[1] * 7, [1] * 4 + [0] * 3])
  dec_seg = np.ones((2, 6), np.int32)
  base = _apply(model, params, enc, dec, enc_seg, dec_seg)
  dec2 = dec.copy()
  dec2[:, 3:] = rng.integers(5, V, (2, 3))
  enc2 = enc.copy()
  enc2[1, 4:] = rng.integers(5, V, 3)  # only padded encoder positions change
  other = _apply(model, params, enc2, dec2, enc_seg, dec_seg)
  np.testing.assert_allclose(other['logits'][:, :3], base['logits'][:, :3], atol=1e-5)
  np.testing.assert_allclose(other['encoder_hidden'][1, :4], base['encoder_hidden'][1, :4],
                             atol=1e-5)
  assert not np.allclose(other['logits'][:, 3:], base['logits'][:, 3:], atol=1e-3)
  assert base['logits'].dtype == jnp.float32 and base['logits'].shape == (2, 6, V)
  assert base['hidden'].shape == (2, 6, 32) and base['encoder_hidden'].shape == (2, 7, 32)


def test_dropout_only_when_not_deterministic():
  model = _model('t5')
  params = _init(model)
  args = (np.ones((1, 5), np.int32) * 7, np.ones((1, 4), np.int32) * 9, np.ones((1, 5), np.int32),
          np.ones((1, 4), np.int32))
  det = _apply(model, params, *args)['logits']
  np.testing.assert_array_equal(det, _apply(model, params, *args)['logits'])
  a = _apply(model, params, *args, dropout_rng=jax.random.key(0))
  b = _apply(model, params, *args, dropout_rng=jax.random.key(1))
  assert not np.allclose(a['logits'], det) and not np.allclose(a['logits'], b['logits'])


def test_missing_segment_ids_is_an_error():
  model = _model('bart')
  params = _init(model)
  with pytest.raises(ValueError, match='needs encoder_segment_ids and decoder_segment_ids'):
    model.apply({'params': params}, jnp.ones((1, 3), jnp.int32), jnp.ones((1, 2), jnp.int32))
