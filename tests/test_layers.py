"""Unit tests of ptm_jax.layers: mask algebra, attention, positions, norms, MLPs, blocks."""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax.layers import attention, blocks, masks, mlp, norms, positions


# ---------------------------------------------------------------------------------------- masks
def test_padding_mask_hides_padding_keys():
  seg = jnp.array([[1, 1, 0], [1, 2, 2]])
  m = masks.padding_mask(seg)
  assert m.shape == (2, 1, 1, 3) and m.dtype == jnp.bool_
  np.testing.assert_array_equal(m[:, 0, 0], [[True, True, False], [True, True, True]])


def test_causal_mask_lower_triangular():
  m = masks.causal_mask(4)
  assert m.shape == (1, 1, 4, 4)
  np.testing.assert_array_equal(m[0, 0], np.tril(np.ones((4, 4), bool)))


def test_causal_from_positions_matches_index_causal_within_segments():
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  pos = jnp.array([[0, 1, 2, 0, 1, 0]])
  by_pos = masks.combine(masks.causal_mask_from_positions(pos, pos), masks.segment_mask(seg, seg),
                         masks.padding_mask(seg))
  by_idx = masks.combine(masks.causal_mask(6), masks.segment_mask(seg, seg),
                         masks.padding_mask(seg))
  np.testing.assert_array_equal(by_pos, by_idx)


def test_segment_mask_blocks_other_documents():
  seg = jnp.array([[1, 1, 2, 2]])
  m = masks.segment_mask(seg, seg)[0, 0]
  want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(m, want)


def test_prefix_mask_bidirectional_prefix_causal_rest():
  m = masks.prefix_mask(jnp.array([[1, 1, 0, 0]]))[0, 0]
  want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(m, want)


def test_combine_broadcasts_and_ignores_none():
  seg = jnp.array([[1, 1, 0], [1, 1, 1]])
  m = masks.combine(masks.causal_mask(3), None, masks.padding_mask(seg))
  assert m.shape == (2, 1, 3, 3)
  assert not bool(m[0, 0, 2, 2]) and bool(m[1, 0, 2, 2]) and not bool(m[1, 0, 0, 1])
  assert masks.combine(None) is None
  with pytest.raises(ValueError):
    masks.combine(jnp.ones((3, 3), bool))
  assert masks.from_2d(np.eye(3, dtype=bool)).shape == (1, 1, 3, 3)


# ------------------------------------------------------------------------------------ attention
def _attn_inputs(b=2, l=6, d=32):
  x = jax.random.normal(jax.random.key(0), (b, l, d))
  seg = jnp.array([[1] * l, [1] * (l - 2) + [0] * 2])
  mask = masks.combine(masks.padding_mask(seg), masks.segment_mask(seg, seg))
  return x, seg, mask


def test_attention_padding_rows_finite_and_zero_before_out_projection():
  x, seg, mask = _attn_inputs()
  layer = attention.Attention(num_heads=4, head_dim=8, use_bias=False)
  params = layer.init(jax.random.key(1), x, mask)
  y = jax.jit(layer.apply)(params, x, mask)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  np.testing.assert_allclose(y[1, -2:], 0.0, atol=0)  # no bias: zero attention -> zero output
  g = jax.jit(jax.grad(lambda x: jnp.sum(layer.apply(params, x, mask) ** 2)))(x)
  assert bool(jnp.all(jnp.isfinite(g)))


def test_gqa_equals_mha_with_repeated_kv_heads():
  x, _, mask = _attn_inputs()
  gqa = attention.Attention(num_heads=4, head_dim=8, num_kv_heads=2)
  mha = attention.Attention(num_heads=4, head_dim=8)
  p_gqa = flax.core.meta.unbox(gqa.init(jax.random.key(2), x, mask)['params'])
  # Query head n reads kv head n // 2, so repeating each kv head twice gives the MHA weights.
  p_mha = dict(p_gqa)
  for name in ('key', 'value'):
    p_mha[name] = {'kernel': jnp.repeat(p_gqa[name]['kernel'], 2, axis=1),
                   'bias': jnp.repeat(p_gqa[name]['bias'], 2, axis=0)}
  np.testing.assert_allclose(gqa.apply({'params': p_gqa}, x, mask),
                             mha.apply({'params': p_mha}, x, mask), atol=1e-5)


def test_einsum_fallback_matches_fused_and_dropout_changes_output():
  kq, kk, kv = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(kq, (2, 5, 4, 8))
  k = jax.random.normal(kk, (2, 5, 2, 8))
  v = jax.random.normal(kv, (2, 5, 2, 8))
  mask = masks.causal_mask(5)
  fused = jax.jit(jax.nn.dot_product_attention)(q, k, v, mask=mask)
  fallback = jax.jit(attention.einsum_attention_with_dropout, static_argnames='dropout_rate')
  keep_all = fallback(q, k, v, mask, dropout_rate=1e-9, dropout_rng=jax.random.key(0))
  np.testing.assert_allclose(fused, keep_all, atol=1e-5)
  dropped = fallback(q, k, v, mask, dropout_rate=0.5, dropout_rng=jax.random.key(0))
  assert bool(jnp.all(jnp.isfinite(dropped))) and not np.allclose(dropped, fused)


def test_attention_dropout_path_used_only_when_training():
  x, _, mask = _attn_inputs()
  layer = attention.Attention(num_heads=4, head_dim=8, attention_dropout_rate=0.3)
  params = layer.init(jax.random.key(1), x, mask)
  det = layer.apply(params, x, mask)
  det_plain = attention.Attention(num_heads=4, head_dim=8).apply(params, x, mask)
  np.testing.assert_allclose(det, det_plain, atol=1e-6)
  train = layer.apply(params, x, mask, deterministic=False, rngs={'dropout': jax.random.key(5)})
  assert not np.allclose(train, det)


# ------------------------------------------------------------------------------------ positions
def test_rotary_scores_depend_only_on_relative_offset():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))

  def score(m, n):
    cq, sq = positions.rotary_cos_sin(jnp.array([[m]]), 16)
    ck, sk = positions.rotary_cos_sin(jnp.array([[n]]), 16)
    return jnp.sum(positions.apply_rotary(q, cq, sq) * positions.apply_rotary(k, ck, sk))

  np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(positions.apply_rotary(q, *positions.rotary_cos_sin(
      jnp.array([[7]]), 16))), jnp.linalg.norm(q), rtol=1e-6)


def test_sinusoidal_and_learned_positions():
  pos = jnp.array([[0, 1, 2], [0, 0, 1]])
  s = positions.sinusoidal(pos, 8)
  assert s.shape == (2, 3, 8) and s.dtype == jnp.float32
  np.testing.assert_allclose(s[0, 0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
  lp = positions.LearnedPositions(max_positions=8, features=4, offset=2)
  params = lp.init(jax.random.key(0), pos)
  table = params['params']['embedding'].value
  np.testing.assert_allclose(lp.apply(params, pos)[1, 2], table[3])


# ---------------------------------------------------------------------------------------- norms
def test_layernorm_matches_reference_and_keeps_f32_stats_in_bf16():
  x = 3.0 + 5.0 * jax.random.normal(jax.random.key(0), (2, 3, 16))
  ln = norms.LayerNorm(epsilon=1e-6)
  params = ln.init(jax.random.key(1), x)
  want = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(ln.apply(params, x), want, atol=1e-5)
  y16 = norms.LayerNorm(epsilon=1e-6, dtype=jnp.bfloat16).apply(params, x.astype(jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(y16.astype(jnp.float32), want, atol=0.05)


def test_rmsnorm_matches_reference():
  x = jax.random.normal(jax.random.key(0), (2, 3, 16))
  rms = norms.RMSNorm(epsilon=1e-6)
  params = rms.init(jax.random.key(1), x)
  want = x / jnp.sqrt(jnp.mean(x ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(rms.apply(params, x), want, atol=1e-5)
  with pytest.raises(ValueError):
    norms.make_norm('batchnorm', epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32)


def _autodiff_norm(x, scale, bias, eps, dtype, centre):
  """The norms' forward written plainly: what autodiff differentiates (the reference)."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, -1, keepdims=True) if centre else 0.0
  var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
  y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + eps)) * scale.reshape(1, 1, -1)
  return (y if bias is None else y + bias.reshape(1, 1, -1)).astype(dtype)


@pytest.mark.parametrize('kind,use_bias', [('layernorm', True), ('layernorm', False),
                                           ('rmsnorm', False)])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_norm_backward_keeps_the_input_and_row_stats_and_equals_autodiff(kind, use_bias, dtype):
  """The hand-written backward: the forward is autodiff's bit for bit, the input / scale / bias
  gradients equal autodiff's (float32 to 1e-5 of scale; bf16 within a bf16 ulp), and the saved
  residuals are the input in its dtype and [..., 1] float32 row statistics, not [..., D] float32
  tensors."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(2.0 + 3.0 * rng.standard_normal((3, 5, 32)), dtype)
  scale = jnp.asarray(1.0 + 0.1 * rng.standard_normal(32), jnp.float32)
  bias = jnp.asarray(0.1 * rng.standard_normal(32), jnp.float32) if use_bias else None
  cot = jnp.asarray(rng.standard_normal((3, 5, 32)), dtype)
  centre = kind == 'layernorm'
  ours = lambda x, s, b: norms.layer_norm(x, s, b, 1e-5, dtype, centre=centre)
  ref = lambda x, s, b: _autodiff_norm(x, s, b, 1e-5, dtype, centre)
  y, vjp = jax.vjp(ours, x, scale, bias)
  y_ref, vjp_ref = jax.vjp(ref, x, scale, bias)
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  tol = 1e-5 if dtype == jnp.float32 else 2.0 ** -7
  for g, r in zip(vjp(cot), vjp_ref(cot)):
    if r is None:
      assert g is None
      continue
    assert g.dtype == r.dtype
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    np.testing.assert_allclose(g, r, atol=tol * np.abs(r).max(), rtol=0)
  # The module is this function: same parameters, same output.
  module = norms.make_norm(kind, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)
  if not use_bias and centre:
    module = norms.LayerNorm(epsilon=1e-5, use_bias=False, dtype=dtype)
  params = module.init(jax.random.key(0), x)
  assert set(params['params']) == ({'scale', 'bias'} if use_bias else {'scale'})
  saved = [(r.shape, r.dtype) for r in jax.tree.leaves(
      jax.vjp(lambda x: module.apply(params, x), x)[1])]
  assert (x.shape, x.dtype) in saved
  assert all(shape[-1] == 1 or shape == x.shape and dt == dtype or len(shape) == 1
             for shape, dt in saved), saved


# ------------------------------------------------------------------------------- mlp and blocks
def test_mlp_and_swiglu_shapes_and_axes():
  x = jnp.ones((2, 3, 8))
  p = mlp.MLP(32).init(jax.random.key(0), x)['params']
  assert p['wi']['kernel'].names == ('embed', 'mlp') and p['wo']['kernel'].names == ('mlp', 'embed')
  p = mlp.SwiGLU(32, out_init_stddev=1e-3).init(jax.random.key(0), x)['params']
  assert set(p) == {'wi_gate', 'wi_up', 'wo'} and 'bias' not in p['wo']
  assert float(jnp.std(p['wo']['kernel'].value)) < 2e-3 < float(jnp.std(p['wi_up']['kernel'].value))
  with pytest.raises(ValueError):
    mlp.activation('swish2')


@pytest.mark.parametrize('pre_norm', [False, True])
def test_block_remat_matches_plain(pre_norm):
  x, _, mask = _attn_inputs()
  kw = dict(num_heads=4, head_dim=8, mlp_dim=64, pre_norm=pre_norm)
  plain, remat = blocks.block_class(False)(**kw), blocks.block_class(True)(**kw)
  params = plain.init(jax.random.key(0), x, mask)
  w = jax.random.normal(jax.random.key(1), x.shape)  # a generic cotangent, not a degenerate one
  f = lambda mod: lambda p: jnp.sum(mod.apply(p, x, mask, None, True) * w)
  (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(f(m)))(params) for m in (plain, remat))
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g1, g2)


# --------------------------------------------------------------------------- vocabulary logits
@pytest.mark.parametrize('layout', ['vd', 'dv'])
def test_vocab_logits_float32_is_autodiff_and_padding_gets_no_gradient(layout):
  from ptm_jax.layers.embeddings import vocab_logits
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, table = jax.random.normal(kx, (2, 5, 8)), jax.random.normal(kw, (13, 8))
  g = jax.random.normal(kg, (2, 5, 11))  # keep 11 of 13 entries (2 padding rows)
  w = table if layout == 'vd' else table.T
  ours = jax.grad(lambda x, w: jnp.sum(vocab_logits(x, w, layout, 11) * g), (0, 1))(x, w)
  plain = jax.grad(lambda x, t: jnp.sum(jnp.einsum('...d,vd->...v', x, t)[..., :11] * g),
                   (0, 1))(x, table)
  np.testing.assert_allclose(vocab_logits(x, w, layout, 11),
                             jnp.einsum('...d,vd->...v', x, table)[..., :11], atol=1e-5)
  np.testing.assert_allclose(ours[0], plain[0], atol=1e-5)
  dw = ours[1] if layout == 'vd' else ours[1].T
  np.testing.assert_allclose(dw, plain[1], atol=1e-5)
  assert float(jnp.abs(dw[11:]).max()) == 0.0


def test_vocab_logits_backward_matmuls_run_in_the_compute_dtype():
  """Autodiff would multiply the float32 cotangent with bf16 operands (float32/TF32 matmuls);
  every dot of the bf16 gradient must take bf16 operands, and stay close to the float32 one."""
  from ptm_jax.layers.embeddings import vocab_logits
  kx, kw, kg = jax.random.split(jax.random.key(1), 3)
  x, w = jax.random.normal(kx, (4, 16, 32)), jax.random.normal(kw, (64, 32)) * 0.2
  g = jax.random.normal(kg, (4, 16, 60))
  loss = lambda x, w: jnp.sum(vocab_logits(x, w, 'vd', 60) * g)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(xb, wb)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  assert len(dots) == 3  # forward, input gradient, weight gradient
  for e in dots:
    assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2, e
    assert e.outvars[0].aval.dtype == jnp.float32  # float32 accumulation
  low = jax.grad(loss, (0, 1))(xb, wb)
  ref = jax.grad(loss, (0, 1))(xb.astype(jnp.float32), wb.astype(jnp.float32))
  for a, b in zip(low, ref):
    rel = float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b))
    assert rel < 1e-2, rel  # bf16 rounding of the cotangent and outputs, nothing worse
