"""Mixture of experts (layers.moe, MoeBlock, the decoder's moe_* fields): expert capacity, a worked
routing example (position order, first choices first, drops, padding), the router losses, MoeMlp
against hand-computed experts, dropped tokens pass through the residual, causal routing and padding
in the decoder, the dropless path (sorted tokens + ragged_dot) against hand-computed experts and the
whole-row capacity, the parameter layout, the aux loss in clm, bind_objective and config errors,
remat, and a short training run."""
from __future__ import annotations

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptm_jax import models, objectives, steps
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.layers import blocks, mlp, moe
from ptm_jax.models import decoder
from ptm_jax.objectives import clm

VOCAB = 97
SPECIALS = SpecialIds(vocab_size=VOCAB)
SMALL = dict(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=2, mlp_dim=64,
             max_position_embeddings=32, dropout_rate=0.0)
TIGHT = dict(moe_experts=4, moe_every=1, moe_capacity_factor=0.5, moe_eval_capacity_factor=0.5)


def _decoder(**kw):
  return models.build('decoder', 'runlocal', **{**SMALL, **kw})


def _batch(rows=2, length=16, seed=0, segment_ids=None):
  seg = np.ones((rows, length), np.int32) if segment_ids is None else np.asarray(segment_ids)
  tokens = np.random.default_rng(seed).integers(5, VOCAB, seg.shape) * (seg > 0)
  pos = np.maximum(np.cumsum(seg > 0, axis=1) - 1, 0)  # one document per row
  return {'tokens': jnp.asarray(tokens, jnp.int32), 'segment_ids': jnp.asarray(seg, jnp.int32),
          'positions': jnp.asarray(pos, jnp.int32)}


def _params(model, batch, std=0.1, seed=0):
  """Random parameters of the model's shapes (norm gains near 1), without compiling `init`."""
  shapes = flax.core.meta.unbox(jax.eval_shape(lambda: model.init(
      jax.random.key(0), batch['tokens'], segment_ids=batch['segment_ids'],
      positions=batch['positions']))['params'])
  rng = np.random.default_rng(seed)
  draw = lambda path, leaf: jnp.asarray(  # noqa: E731
      (path[-1].key == 'scale') + std * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, batch):
  return model.apply({'params': params}, batch['tokens'], segment_ids=batch['segment_ids'],
                     positions=batch['positions'])


# ---------------------------------------------------------------------------- capacity, routing
def test_expert_capacity():
  assert moe.expert_capacity(16, 4, 1, 1.25) == 5  # ceil(16 * 1.25 / 4)
  assert moe.expert_capacity(16, 4, 2, 1.0) == 8  # ceil(2 * 16 / 4)
  assert moe.expert_capacity(10, 3, 1, 1.0) == 4  # ceil(10 / 3)
  assert moe.expert_capacity(8, 64, 1, 1.0) == 1  # ceil(0.125), at least 1
  assert moe.expert_capacity(8, 2, 2, 10.0) == 8  # ceil(80), at most L (k distinct experts)
  assert moe.expert_capacity(8, 4, 1, 4.0) == 8  # factor E: every token fits
  assert moe.expert_capacity(8, 4, 2, 2.0) == 8  # factor E / k: dropless (Mixtral's import)
  assert moe.expert_capacity(100, 8, 1, 1.25, fixed=64) == 64  # HF SwitchTransformers
  assert moe.expert_capacity(16, 8, 1, 1.25, fixed=64) == 16


def test_route_top1_worked_example():
  # Row 0: experts 0, 0, 0, 1, 2, 1 (the third token finds expert 0 full). Row 1: two padding
  # tokens choosing expert 0 first, then two valid tokens that still get both of its slots.
  choice = np.array([[0, 0, 0, 1, 2, 1], [0, 0, 0, 0, 1, 1]])
  gate = np.array([[.5, .6, .7, .8, .9, .4], [.9, .8, .5, .6, .7, .45]], np.float32)
  probs = np.zeros((2, 6, 3), np.float32)
  for b, t in np.ndindex(2, 6):
    probs[b, t] = (1 - gate[b, t]) / 2
    probs[b, t, choice[b, t]] = gate[b, t]
  valid = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], bool)
  dispatch, combine, first, kept = moe.route(jnp.asarray(probs), jnp.asarray(valid), 1, 2)
  slots = {(0, 0): (0, 0), (0, 1): (0, 1), (0, 3): (1, 0), (0, 4): (2, 0), (0, 5): (1, 1),
           (1, 2): (0, 0), (1, 3): (0, 1), (1, 4): (1, 0), (1, 5): (1, 1)}
  want = np.zeros((2, 6, 3, 2), np.float32)
  for (b, t), (e, c) in slots.items():
    want[b, t, e, c] = gate[b, t]
  np.testing.assert_array_equal(np.asarray(dispatch), want > 0)
  np.testing.assert_array_equal(np.asarray(combine), want)
  np.testing.assert_array_equal(np.asarray(first), np.eye(3)[choice] * valid[..., None])
  np.testing.assert_array_equal(np.asarray(kept), [5, 4])


def test_route_top2_takes_slots_in_position_order():
  # (first, second) choices: t0 (0, 1), t1 (0, 1), t2 (1, 2), t3 (1, 2), t4 (2, 0), t5 padding.
  # Position order, a token's two choices together (what keeps a decoder causal): t0 and t1
  # fill experts 0 and 1; t2 and t3 find expert 1 full and take expert 2, which t4 then finds
  # full, as expert 0. (GShard's first-choices-first order would give t2 and t3 expert 1.)
  probs = np.array([[.5, .3, .2], [.6, .3, .1], [.1, .5, .4], [.15, .45, .4], [.3, .2, .5],
                    [.7, .2, .1]], np.float32)[None]
  valid = np.array([[1, 1, 1, 1, 1, 0]], bool)
  dispatch, combine, first, kept = moe.route(jnp.asarray(probs), jnp.asarray(valid), 2, 2)
  slots = {(0, 0, 0): .5 / .8, (0, 1, 0): .3 / .8, (1, 0, 1): .6 / .9, (1, 1, 1): .3 / .9,
           (2, 2, 0): .4 / .9, (3, 2, 1): .4 / .85}
  want = np.zeros((1, 6, 3, 2), np.float32)
  for (t, e, c), g in slots.items():
    want[0, t, e, c] = g
  np.testing.assert_array_equal(np.asarray(dispatch), want > 0)
  np.testing.assert_allclose(np.asarray(combine), want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(combine).sum((2, 3))[0, :2], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(first)[0].argmax(-1)[:5], [0, 0, 1, 1, 2])
  assert np.asarray(first)[0, 5].sum() == 0
  np.testing.assert_array_equal(np.asarray(kept), [6])


def test_router_losses():
  num_experts, length = 4, 10
  valid = jnp.asarray([[1] * 8 + [0] * 2, [0] * length], bool)  # row 1: no valid token
  eye = np.eye(num_experts, dtype=np.float32)

  def losses(probs, logits, first=None):
    probs = jnp.asarray(probs)
    if first is None:
      first = moe.route(probs, valid, 1, length)[2]  # zero at padding
    return moe.router_losses(jnp.asarray(logits), probs, first, valid)

  # Padding (and the empty row) on expert 0 with large logits: it must count nowhere.
  zeros = np.zeros((2, length, num_experts), np.float32)
  logits = zeros.copy()
  logits[0, 8:], logits[1] = 5.0, 7.0
  all_on_2 = np.broadcast_to(eye[2], zeros.shape).copy()
  all_on_2[0, 8:], all_on_2[1] = eye[0], eye[0]
  got = losses(all_on_2, logits)
  np.testing.assert_allclose(got['balance_loss'], num_experts, rtol=1e-6)  # one expert: E
  np.testing.assert_allclose(got['z_loss'], math.log(num_experts) ** 2, rtol=1e-6)
  balanced = all_on_2.copy()
  balanced[0, :8] = eye[[0, 1, 2, 3, 3, 2, 1, 0]]
  np.testing.assert_allclose(losses(balanced, logits)['balance_loss'], 1.0, rtol=1e-6)
  # Balanced first choices, uniform probabilities (ties: route would pick expert 0 everywhere).
  uniform = np.full(zeros.shape, 1 / num_experts, np.float32)
  uniform[0, 8:], uniform[1] = eye[0], eye[0]
  first = jnp.asarray(balanced * np.asarray(valid)[..., None], jnp.int32)
  got = losses(uniform, logits, first)
  np.testing.assert_allclose(got['balance_loss'], 1.0, rtol=1e-6)
  np.testing.assert_allclose(got['z_loss'], math.log(num_experts) ** 2, rtol=1e-6)
  # Tokens 3, 4 moved to expert 0, one-hot probabilities: P = f = (4, 2, 2, 0) / 8, E sum f^2 = 1.5.
  skewed = balanced.copy()
  skewed[0, 3:5] = eye[0]
  np.testing.assert_allclose(losses(skewed, logits)['balance_loss'], 1.5, rtol=1e-6)


# ---------------------------------------------------------------------------------- MoeMlp
def _moe_params(layer, x, valid, seed=1):
  shapes = flax.core.meta.unbox(jax.eval_shape(lambda: layer.init(jax.random.key(0), x, valid)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)


def _hand_moe(p, x, top_k, swiglu=False):
  """sum over the token's top-k experts of gate * expert(x); every expert runs on every token."""
  act = lambda h: jax.nn.gelu(h, approximate=False)  # noqa: E731
  probs = np.asarray(jax.nn.softmax(jnp.einsum('bld,de->ble', x, p['router']), axis=-1))
  order = np.argsort(-probs, axis=-1)[..., :top_k]
  gates = np.take_along_axis(probs, order, -1)
  gates = gates / gates.sum(-1, keepdims=True) if top_k > 1 else gates
  weights = (np.eye(probs.shape[-1])[order] * gates[..., None]).sum(-2)  # [B, L, E]
  h = jnp.einsum('bld,edf->blef', x, p['wi'])
  if swiglu:
    h = act(h) * jnp.einsum('bld,edf->blef', x, p['wi_up'])
    y = jnp.einsum('blef,efd->bled', h, p['wo'])
  else:
    h = act(h + p['wi_bias'][None, None])
    y = jnp.einsum('blef,efd->bled', h, p['wo']) + p['wo_bias'][None, None]
  return jnp.einsum('ble,bled->bld', jnp.asarray(weights, jnp.float32), y)


@pytest.mark.parametrize('top_k,kind', [(1, 'mlp'), (2, 'mlp'), (2, 'swiglu')])
def test_moe_mlp_matches_hand_computed_experts(top_k, kind):
  num_experts = 3
  layer = moe.MoeMlp(num_experts, 16, top_k=top_k, capacity_factor=num_experts,
                     eval_capacity_factor=num_experts, mlp=kind, use_bias=kind == 'mlp')
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  valid = jnp.ones((2, 6), bool)
  p = _moe_params(layer, x, valid)
  assert set(p['params']) == ({'router', 'wi', 'wi_up', 'wo'} if kind == 'swiglu' else
                              {'router', 'wi', 'wi_bias', 'wo', 'wo_bias'})
  y, aux = layer.apply(p, x, valid)
  np.testing.assert_allclose(y, _hand_moe(p['params'], x, top_k, kind == 'swiglu'), rtol=1e-5,
                             atol=1e-5)
  assert float(aux['dropped_fraction']) == 0.0


def test_one_expert_equals_mlp():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  layer = moe.MoeMlp(1, 16, top_k=1)
  p = _moe_params(layer, x, jnp.ones((2, 6), bool))['params']
  dense = {'wi': {'kernel': p['wi'][0], 'bias': p['wi_bias'][0]},
           'wo': {'kernel': p['wo'][0], 'bias': p['wo_bias'][0]}}
  y, aux = layer.apply({'params': p}, x, jnp.ones((2, 6), bool))
  np.testing.assert_allclose(y, mlp.MLP(16).apply({'params': dense}, x), rtol=1e-6, atol=1e-6)
  assert float(aux['dropped_fraction']) == 0.0


@pytest.mark.parametrize('top_k,kind', [(1, 'mlp'), (2, 'mlp'), (2, 'swiglu')])
def test_dropless_equals_hand_experts_and_the_whole_row_capacity(top_k, kind):
  # Sorted tokens + ragged_dot: every valid token gets its k experts (hand-computed), padding
  # outputs 0, and output and gradients equal the one-hot path with capacity = the whole row.
  num_experts = 4
  kw = dict(top_k=top_k, mlp=kind, use_bias=kind == 'mlp')
  layer = moe.MoeMlp(num_experts, 16, dropless=True, **kw)
  full = moe.MoeMlp(num_experts, 16, capacity_factor=num_experts, eval_capacity_factor=num_experts,
                    **kw)
  x = jax.random.normal(jax.random.key(0), (3, 7, 8))
  valid = jnp.asarray(np.arange(7)[None] < np.array([[7], [4], [0]]))  # an empty row too
  p = _moe_params(layer, x, valid)
  y, aux = jax.jit(layer.apply)(p, x, valid)
  hand = np.asarray(_hand_moe(p['params'], x, top_k, kind == 'swiglu'))
  np.testing.assert_allclose(np.asarray(y)[np.asarray(valid)], hand[np.asarray(valid)],
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(y)[~np.asarray(valid)] == 0.0)
  y_full, aux_full = jax.jit(full.apply)(p, x, valid)
  np.testing.assert_allclose(y, y_full, rtol=1e-5, atol=1e-5)
  assert float(aux['dropped_fraction']) == 0.0
  for key in ('balance_loss', 'z_loss'):
    np.testing.assert_allclose(aux[key], aux_full[key], rtol=1e-6)
  w = jax.random.normal(jax.random.key(1), x.shape)
  loss = lambda m: lambda p, x: jnp.sum(m.apply(p, x, valid)[0] * w)  # noqa: E731
  grads = jax.jit(jax.grad(loss(layer), argnums=(0, 1)))(p, x)
  grads_full = jax.jit(jax.grad(loss(full), argnums=(0, 1)))(p, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads,
               grads_full)
  assert np.all(np.asarray(grads[1])[~np.asarray(valid)] == 0.0)  # padding: no gradient


def test_dropless_decoder_routes_every_token_and_stays_causal():
  # Where the capacity path drops tokens (TIGHT: 2 slots of 16), the dropless one drops none,
  # and the same parameters give the whole-row-capacity logits.
  model = _decoder(**dict(TIGHT, moe_top_k=2, moe_dropless=True))
  whole = _decoder(**dict(TIGHT, moe_top_k=2, moe_capacity_factor=2.0,
                          moe_eval_capacity_factor=2.0))
  batch = _batch()
  params = _params(model, batch)
  out = _logits(model, params, batch)
  assert float(out['moe']['moe_dropped_fraction']) == 0.0
  assert float(_logits(_decoder(**dict(TIGHT, moe_top_k=2)), params, batch)['moe'][
      'moe_dropped_fraction']) > 0.1
  np.testing.assert_allclose(out['logits'], _logits(whole, params, batch)['logits'], rtol=1e-5,
                             atol=1e-5)
  tokens = batch['tokens'].at[:, 9:].set((batch['tokens'][:, 9:] + 7) % VOCAB)
  other = _logits(model, params, dict(batch, tokens=tokens))['logits']
  np.testing.assert_array_equal(np.asarray(other)[:, :9], np.asarray(out['logits'])[:, :9])


def _dropped(x, router):
  """Top-1 routing with one slot per expert: a token is dropped unless first on its expert."""
  choice = np.asarray(jnp.argmax(jnp.einsum('bld,de->ble', x, router), -1))
  return np.array([[e in row[:t] for t, e in enumerate(row)] for row in choice])


def test_dropped_tokens_output_zero_get_no_gradient_and_keep_their_residual():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8))
  valid = jnp.ones((2, 8), bool)
  layer = moe.MoeMlp(2, 16, capacity_factor=0.25, eval_capacity_factor=0.25)  # 1 slot each
  p = _moe_params(layer, x, valid)
  dropped = _dropped(x, p['params']['router'])
  assert 0 < dropped.sum() < dropped.size
  y, aux = jax.jit(layer.apply)(p, x, valid)
  assert np.all(np.asarray(y)[dropped] == 0.0) and np.all(np.asarray(y)[~dropped] != 0.0)
  np.testing.assert_allclose(aux['dropped_fraction'], dropped.mean(), rtol=1e-6)
  w = jax.random.normal(jax.random.key(1), x.shape)
  grad = jax.jit(jax.grad(lambda p, mask_BL: jnp.sum(layer.apply(p, x, valid)[0] * w
                                                     * mask_BL[..., None])))
  g_dropped = grad(p, jnp.asarray(dropped, jnp.float32))['params']
  assert all(np.all(np.asarray(g) == 0.0) for g in jax.tree.leaves(g_dropped))
  assert np.abs(np.asarray(grad(p, jnp.asarray(~dropped, jnp.float32))['params']['wi'])).max() > 0
  # In a pre-LN MoeBlock a dropped token leaves the feed-forward as its post-attention residual.
  block = blocks.MoeBlock(num_heads=2, head_dim=4, mlp_dim=16, pre_norm=True, dropout_rate=0.0,
                          moe_fields=moe.Fields(moe_experts=2, moe_capacity_factor=0.25,
                                                moe_eval_capacity_factor=0.25))
  bp = _moe_params(block, x, None)
  (out, _), state = jax.jit(functools.partial(
      block.apply, capture_intermediates=True, mutable=['intermediates']))(bp, x, None)
  inter = state['intermediates']
  residual = x + inter['attention']['__call__'][0]
  dropped = _dropped(inter['mlp_norm']['__call__'][0], bp['params']['moe']['router'])
  assert 0 < dropped.sum() < dropped.size
  np.testing.assert_allclose(np.asarray(out)[dropped], np.asarray(residual)[dropped], atol=1e-6)
  assert np.all(np.abs(np.asarray(out - residual))[~dropped].max(-1) > 1e-3)


# ------------------------------------------------------------------------------- in the decoder
@pytest.mark.parametrize('top_k', [1, 2])
def test_routing_is_causal_in_the_decoder(top_k):
  model = _decoder(**dict(TIGHT, moe_top_k=top_k))
  batch = _batch()
  params = _params(model, batch)
  out = _logits(model, params, batch)
  assert float(out['moe']['moe_dropped_fraction']) > 0.1  # capacity 2 of 16 tokens per expert
  for t in (2, 7, 12):
    tokens = batch['tokens'].at[:, t + 1:].set((batch['tokens'][:, t + 1:] + 7) % VOCAB)
    other = _logits(model, params, dict(batch, tokens=tokens))['logits']
    np.testing.assert_array_equal(np.asarray(other)[:, :t + 1],
                                  np.asarray(out['logits'])[:, :t + 1])
    assert np.any(np.asarray(other)[:, t + 1:] != np.asarray(out['logits'])[:, t + 1:])
  x = jax.random.normal(jax.random.key(1), (2, 16, SMALL['embed_dim']))
  w_D = jax.random.normal(jax.random.key(2), (SMALL['embed_dim'],))
  body = lambda x: model.apply(  # noqa: E731
      {'params': params}, x, segment_ids=batch['segment_ids'], positions=batch['positions'],
      method=decoder.Model.decode)[0] @ w_D
  dep = np.abs(np.asarray(jax.jit(jax.jacrev(body))(x))).sum(-1)  # [B, T, B, S]
  future = np.triu(np.ones((16, 16), bool), 1)
  for b in range(2):
    assert np.all(dep[b, :, b][future] == 0.0) and np.all(dep[b, :, 1 - b] == 0.0)
    assert np.all(np.diagonal(dep[b, :, b]) > 0.0)


def test_padding_takes_no_capacity_in_the_decoder():
  # Left padding in row 0 (it would come first in position order), right padding in row 1.
  seg = np.array([[0] * 5 + [1] * 11, [1] * 12 + [0] * 4], np.int32)
  model = _decoder(**TIGHT)
  batch = _batch(segment_ids=seg)
  params = _params(model, batch)
  out = _logits(model, params, batch)
  assert float(out['moe']['moe_dropped_fraction']) > 0.0
  noise = jnp.asarray(np.random.default_rng(3).integers(5, VOCAB, seg.shape), jnp.int32)
  other = _logits(model, params, dict(batch, tokens=jnp.where(seg > 0, batch['tokens'], noise)))
  assert np.all(np.isfinite(np.asarray(out['logits'])[seg > 0]))
  np.testing.assert_array_equal(np.asarray(other['logits'])[seg > 0],
                                np.asarray(out['logits'])[seg > 0])
  np.testing.assert_array_equal(other['aux_loss'], out['aux_loss'])


def test_parameter_layout_and_count():
  x = jnp.zeros((1, 8), jnp.int32)
  shapes = lambda m: jax.eval_shape(lambda: m.init(  # noqa: E731
      jax.random.key(0), x, segment_ids=x + 1, positions=x))['params']
  moe_params = shapes(models.build('decoder', 'runlocal', moe_experts=4, moe_every=2))
  dense_params = shapes(models.build('decoder', 'runlocal'))
  assert 'moe' in moe_params['layers_1'] and 'mlp' not in moe_params['layers_1']
  assert 'moe' not in moe_params['layers_0'] and 'mlp' in moe_params['layers_0']
  wi = moe_params['layers_1']['moe']['wi']
  assert isinstance(wi, nn.LogicallyPartitioned) and wi.names == ('expert', 'embed', 'mlp')
  assert wi.value.shape == (4, 128, 512)
  count = lambda tree: sum(  # noqa: E731
      math.prod(v.shape) for v in jax.tree.leaves(flax.core.meta.unbox(tree)))
  expert = 128 * 512 + 512 + 512 * 128 + 128
  assert count(moe_params) == count(dense_params) + 3 * expert + 128 * 4


# --------------------------------------------------------------------------- objective, errors
def _clm_batch(model_batch):
  return clm.corrupt(None, model_batch, specials=SPECIALS)


@functools.partial(jax.jit, static_argnums=0)
def _clm_loss_and_grads(model, params, batch):
  return jax.value_and_grad(clm.loss, has_aux=True)(params, batch, None, model=model)


def test_clm_adds_the_router_losses():
  model = _decoder(moe_experts=4, moe_every=2)
  batch = _batch()
  params = _params(model, batch, std=0.3)
  cbatch = _clm_batch(batch)
  (loss, metrics), grads = _clm_loss_and_grads(model, params, cbatch)
  assert {'aux_loss', 'moe_balance_loss', 'moe_z_loss', 'moe_dropped_fraction'} <= set(metrics)
  np.testing.assert_allclose(loss, metrics['loss'] + metrics['aux_loss'], rtol=1e-6)
  np.testing.assert_allclose(metrics['aux_loss'], 0.01 * metrics['moe_balance_loss'], rtol=1e-6)
  assert np.abs(np.asarray(grads['layers_1']['moe']['router'])).max() > 0
  plain = _decoder(moe_experts=4, moe_every=2, moe_balance_weight=0.0, moe_z_weight=0.0)
  (loss0, metrics0), _ = _clm_loss_and_grads(plain, params, cbatch)
  assert float(metrics0['aux_loss']) == 0.0 and float(loss0) == float(metrics0['loss'])
  np.testing.assert_allclose(metrics0['loss'], metrics['loss'], rtol=1e-6)


def test_bind_objective_and_config_errors():
  objective = objectives.get('mlm')
  with pytest.raises(ValueError, match='router losses'):
    steps.bind_objective(objective, model=_decoder(moe_experts=4), specials=SPECIALS,
                         options=objectives.build_options(objective, {}))
  steps.bind_objective(clm, model=_decoder(moe_experts=4), specials=SPECIALS,
                       options=clm.Options())
  batch = _batch()
  for kw, msg in ((dict(moe_experts=2, moe_top_k=3), 'moe_top_k=3'),
                  (dict(moe_experts=2, moe_every=3), 'moe_every=3')):
    with pytest.raises(ValueError, match=msg):
      _params(_decoder(**kw), batch)


def test_remat_same_loss_and_gradients():
  batch = _clm_batch(_batch(segment_ids=[[1] * 16, [1] * 10 + [0] * 6]))
  kw = dict(TIGHT, moe_top_k=2, moe_jitter=0.01, moe_z_weight=1e-3, dropout_rate=0.1)
  plain, remat = _decoder(**kw), _decoder(remat=True, **kw)
  params = _params(plain, batch)
  rng = jax.random.key(5)
  (l1, g1), (l2, g2) = jax.jit(lambda p: [
      jax.value_and_grad(lambda q: clm.loss(q, batch, rng, model=m)[0])(p)
      for m in (plain, remat)])(params)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves((l1, g1)))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)

  def close_at_scale(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())))

  jax.tree.map(close_at_scale, g1, g2)


def test_training_reduces_the_loss():
  model = _decoder(embed_dim=64, mlp_dim=128, num_heads=2, moe_experts=4, moe_every=1)
  batch = _clm_batch(_batch(length=32, seed=7))
  params = _params(model, batch, std=0.02)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    (_, metrics), grads = jax.value_and_grad(clm.loss, has_aux=True)(
        params, batch, None, model=model)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state, history = tx.init(params), []
  for _ in range(31):  # the 31st step's metrics are those of the parameters after 30 updates
    params, opt_state, metrics = step(params, opt_state)
    history.append({k: float(v) for k, v in metrics.items()})
  assert history[-1]['loss'] < history[0]['loss'] - 1.0, (history[0], history[-1])
  assert all(math.isfinite(h['moe_balance_loss']) for h in history)
