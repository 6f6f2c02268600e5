"""Rotary positions in the encoder families (RoFormer, Su et al. 2021): `positions='rotary'`.

Defining property: no position table, and every attention score depends on positions only through
their difference, so shifting all positions of a row by a constant leaves the outputs unchanged
(a learned table does not). Plus: documents stay isolated (gradients), ALBERT's remat path, ELECTRA
passes positions to both networks, bad values and unexportable configs are one-line errors.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import interop
from ptm_jax.models import albert, encoder
from ptm_jax.objectives import electra

TINY = dict(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
            max_position_embeddings=64, dropout_rate=0.0)


def _random_params(model, *args, **kwargs):
  """Parameters with the model's shapes, drawn large enough that attention is far from uniform."""
  shapes = flax.core.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), *args, **kwargs))['params'])
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    gain = path[-1].key == 'scale'
    return jnp.asarray((1.0 if gain else 0.0) + 0.3 * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _row(length=12, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (2, length), 5, 97).astype(jnp.int32)
  seg = jnp.ones_like(tokens)
  pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
  return tokens, seg, pos


MODELS = {
    'encoder': lambda **kw: encoder.Model(encoder.Config(**{**TINY, **kw})),
    'albert': lambda **kw: albert.Model(albert.Config(**{**TINY, 'embedding_size': 16, **kw})),
}


@pytest.mark.parametrize('family', sorted(MODELS))
def test_rotary_outputs_depend_only_on_relative_positions(family):
  tokens, seg, pos = _row()
  outs = {}
  for kind in ('rotary', 'learned'):
    model = MODELS[family](positions=kind)
    params = _random_params(model, tokens, segment_ids=seg, positions=pos)
    assert ('position_embed' in params) == (kind == 'learned')
    run = jax.jit(lambda p, q: model.apply({'params': p}, tokens, segment_ids=seg, positions=q))
    base, shifted = run(params, pos)['hidden'], run(params, pos + 17)['hidden']
    outs[kind] = float(jnp.max(jnp.abs(base - shifted)))
    # Word order still matters: reversing the tokens changes the outputs.
    rev = model.apply({'params': params}, tokens[:, ::-1], segment_ids=seg, positions=pos)
    assert float(jnp.max(jnp.abs(rev['hidden'][:, ::-1] - base))) > 1e-2
  assert outs['rotary'] < 1e-4, outs
  assert outs['learned'] > 1e-2, outs  # the control: an absolute table sees the shift


def test_rotary_keeps_packed_documents_apart_through_gradients():
  """d hidden[doc 2] / d tokens-embeddings[doc 1] is exactly 0 with rotary positions."""
  model = MODELS['encoder'](positions='rotary')
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]], jnp.int32)
  pos = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]], jnp.int32)
  tokens = jnp.array([[5, 6, 7, 8, 9, 10, 11, 0]], jnp.int32)
  params = _random_params(model, tokens, segment_ids=seg, positions=pos)
  x = jax.random.normal(jax.random.key(1), (1, 8, TINY['embed_dim']))
  w = jax.random.normal(jax.random.key(2), (TINY['embed_dim'],))
  f = lambda x: model.apply({'params': params}, x, segment_ids=seg, positions=pos,  # noqa: E731
                            method=encoder.Model.encode)[0] @ w
  dep = np.asarray(jnp.abs(jax.jacrev(f)(x)).sum(-1))[0, :, 0, :]  # [T, S]
  assert np.all(dep[4:7, :4] == 0) and np.all(dep[:4, 4:] == 0)
  assert np.all(dep[4:7, 4:7] > 0) and np.all(dep[:4, :4] > 0)
  with pytest.raises(ValueError, match='positions'):
    model.apply({'params': params}, x, segment_ids=seg, method=encoder.Model.encode)


def test_albert_rotary_remat_matches_plain():
  tokens, seg, pos = _row()
  plain, remat = MODELS['albert'](positions='rotary'), MODELS['albert'](positions='rotary',
                                                                        remat=True)
  params = _random_params(plain, tokens, segment_ids=seg, positions=pos)
  loss = lambda m: lambda p: jnp.sum(m.apply(  # noqa: E731
      {'params': p}, tokens, segment_ids=seg, positions=pos)['logits'] ** 2)
  (a, ga), (b, gb) = (jax.value_and_grad(loss(m))(params) for m in (plain, remat))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_electra_rotary_both_networks_are_shift_invariant():
  disc = encoder.Config(**{**TINY, 'positions': 'rotary'})
  model = electra.Model(disc, electra.generator_config(disc, electra.Options()))
  tokens, seg, pos = _row()
  params = _random_params(model, tokens, segment_ids=seg, positions=pos)
  assert 'position_embed' not in params['discriminator']
  run = jax.jit(lambda q: model.apply({'params': params}, tokens, segment_ids=seg, positions=q))
  a, b = run(pos), run(pos + 9)
  for key in ('logits', 'rtd_logits'):
    np.testing.assert_allclose(a[key], b[key], atol=1e-4)


def test_bad_positions_and_hf_export_are_one_line_errors(tmp_path):
  tokens, seg, pos = _row()
  with pytest.raises(ValueError, match='known: learned, rotary'):
    MODELS['encoder'](positions='sinusoidal').init(jax.random.key(0), tokens, segment_ids=seg,
                                                    positions=pos)
  with pytest.raises(ValueError, match='known: learned, rotary'):
    albert.Config(positions='alibi')
  for family in sorted(MODELS):
    # A rotary encoder with rope_theta 10000 exports as RoFormer (tests/test_interop_roformer.py);
    # HF RoFormer hard-codes that base, so another one is refused.
    extra = {'rope_theta': 500.0} if family == 'encoder' else {}
    model = MODELS[family](positions='rotary', **extra)
    params = _random_params(model, tokens, segment_ids=seg, positions=pos)
    with pytest.raises(ValueError, match="positions='rotary'") as e:
      interop.save_pretrained(model, params, str(tmp_path / family))
    assert '\n' not in str(e.value) and not (tmp_path / family).exists()  # nothing written
