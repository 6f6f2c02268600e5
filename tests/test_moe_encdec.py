"""Mixture of experts in the encoder–decoder family (the Switch Transformer's own form: T5 with
experts in every other layer of both stacks): parameter layout, router losses from both stacks
in the seq2seq objectives, causal routing in the decoder when capacity binds, padding, which
objectives bind, remat. Cached decoding is tests/test_decoding.py (`switch_t5`), HF parity with
SwitchTransformers tests/test_interop_seq2seq.py."""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import models, objectives, steps
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import seq2seq_finetune, span_corruption

VOCAB = 97
SPECIALS = SpecialIds(vocab_size=VOCAB, extra=tuple(range(VOCAB - 20, VOCAB)))
SMALL = dict(vocab_size=VOCAB, embed_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
             dropout_rate=0.0, attention_dropout_rate=0.0, mlp_dropout_rate=0.0)
# Every feed-forward routed, capacity 2 of 16 tokens per expert: tokens drop.
TIGHT = dict(moe_experts=4, moe_every=1, moe_capacity_factor=0.5, moe_eval_capacity_factor=0.5)


def _switch(layers=2, **kw):
  return models.build('encdec', 'switch_runlocal', num_encoder_layers=layers,
                      num_decoder_layers=layers, **{**SMALL, **kw})


def _rows(rows=2, length=16, seed=0, valid=(16, 11)):
  seg = (np.arange(length)[None, :] < np.asarray(valid)[:, None]).astype(np.int32)
  tokens = np.random.default_rng(seed).integers(5, VOCAB - 20, (rows, length)) * seg
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(seg)


def _params(model, std=0.3, seed=0):
  tokens, seg = _rows()
  shapes = flax.core.meta.unbox(jax.eval_shape(lambda: model.init(
      jax.random.key(0), tokens, segment_ids=seg, positions=None))['params'])
  rng = np.random.default_rng(seed)
  draw = lambda path, leaf: jnp.asarray(  # noqa: E731
      (path[-1].key == 'scale') + std * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, enc, enc_seg, dec, dec_seg):
  return model.apply({'params': params}, enc, dec, encoder_segment_ids=enc_seg,
                     decoder_segment_ids=dec_seg)


def test_layout_and_router_losses_of_both_stacks():
  model = _switch(layers=4, moe_experts=4, moe_every=2)
  params = _params(model)
  for stack in ('encoder', 'decoder'):
    for i in range(4):
      layer = params[f'{stack}_layers_{i}']
      assert ('moe' in layer) == (i % 2 == 1) and ('mlp' in layer) == (i % 2 == 0), (stack, i)
  assert params['decoder_layers_1']['moe']['wi'].shape == (4, 32, 64)
  assert 'cross_attention' in params['decoder_layers_1']
  enc, enc_seg = _rows()
  out = _apply(model, params, enc, enc_seg, enc, enc_seg)
  # 4 routed layers (2 per stack): aux = 0.01 * their summed balance losses = 0.01 * 4 * mean.
  np.testing.assert_allclose(out['aux_loss'], 0.01 * 4 * out['moe']['moe_balance_loss'],
                             rtol=1e-6)
  assert 1.0 <= float(out['moe']['moe_balance_loss']) < 4.0


def test_span_corruption_adds_the_router_losses_and_trains_both_routers():
  model = _switch(**dict(TIGHT, moe_z_weight=1e-3))
  params = _params(model)
  tokens, seg = _rows(length=32, valid=(32, 20))
  batch = {'tokens': tokens, 'segment_ids': seg,
           'positions': jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0)}
  options = span_corruption.Options()
  corrupted = span_corruption.corrupt(jax.random.key(1), batch, specials=SPECIALS, options=options)
  (value, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: span_corruption.loss(p, corrupted, None, model=model, specials=SPECIALS,
                                     options=options), has_aux=True))(params)
  np.testing.assert_allclose(value, metrics['loss'] + metrics['aux_loss'], rtol=1e-6)
  expected = 4 * (0.01 * metrics['moe_balance_loss'] + 1e-3 * metrics['moe_z_loss'])
  np.testing.assert_allclose(metrics['aux_loss'], expected, rtol=1e-5)
  for stack in ('encoder', 'decoder'):
    assert np.abs(np.asarray(grads[f'{stack}_layers_1']['moe']['router'])).max() > 0


def test_decoder_routing_is_causal_and_encoder_padding_changes_nothing():
  model = _switch(**TIGHT)
  params = _params(model)
  enc, enc_seg = _rows(seed=1)
  dec, dec_seg = _rows(seed=2, valid=(16, 16))
  out = _apply(model, params, enc, enc_seg, dec, dec_seg)
  assert float(out['moe']['moe_dropped_fraction']) > 0.1
  for t in (2, 7, 12):
    later = dec.at[:, t + 1:].set((dec[:, t + 1:] + 7) % (VOCAB - 20))
    other = np.asarray(_apply(model, params, enc, enc_seg, later, dec_seg)['logits'])
    np.testing.assert_array_equal(other[:, :t + 1], np.asarray(out['logits'])[:, :t + 1])
    assert np.any(other[:, t + 1:] != np.asarray(out['logits'])[:, t + 1:])
  # Row 1's encoder padding (positions 11..15) holds other ids: no output moves.
  noisy = enc.at[1, 11:].set(9)
  again = _apply(model, params, noisy, enc_seg, dec, dec_seg)
  np.testing.assert_array_equal(np.asarray(again['logits']), np.asarray(out['logits']))
  np.testing.assert_array_equal(np.asarray(again['encoder_hidden'])[1, :11],
                                np.asarray(out['encoder_hidden'])[1, :11])


@pytest.mark.parametrize('name', ['span_corruption', 'bart', 'mass'])
def test_seq2seq_objectives_bind_an_moe_encdec(name):
  objective = objectives.get(name)
  steps.bind_objective(objective, model=_switch(), specials=SPECIALS,
                       options=objectives.build_options(objective, {}))


def test_only_encdec_fine_tuning_binds_and_mlm_is_refused():
  steps.bind_objective(seq2seq_finetune, model=_switch(), specials=SPECIALS,
                       options=seq2seq_finetune.Options(form='encdec'))
  moe_decoder = models.build('decoder', 'runlocal', vocab_size=VOCAB, moe_experts=4)
  with pytest.raises(ValueError, match="'seq2seq_finetune' does not add .*form=encdec"):
    steps.bind_objective(seq2seq_finetune, model=moe_decoder, specials=SPECIALS,
                         options=seq2seq_finetune.Options(form='prefix_lm'))
  mlm = objectives.get('mlm')
  with pytest.raises(ValueError, match='router losses'):
    steps.bind_objective(mlm, model=_switch(), specials=SPECIALS,
                         options=objectives.build_options(mlm, {}))
  with pytest.raises(ValueError, match='moe_every=3 exceeds the 2 layers'):
    _params(_switch(moe_every=3))


def test_remat_same_outputs_and_gradients():
  kw = dict(TIGHT, moe_z_weight=1e-3)
  plain, remat = _switch(**kw), _switch(remat=True, **kw)
  params = _params(plain, std=0.1)  # at std 0.3 a dense T5's remat already differs by 1e-4
  enc, enc_seg = _rows()

  def loss(model, p):
    out = model.apply({'params': p}, enc, enc, encoder_segment_ids=enc_seg,
                      decoder_segment_ids=enc_seg)
    return jnp.sum(out['logits'] * enc_seg[..., None]) * 1e-3 + out['aux_loss']

  (l1, g1), (l2, g2) = jax.jit(lambda p: [jax.value_and_grad(functools.partial(loss, m))(p)
                                          for m in (plain, remat)])(params)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max()))), g1, g2)
