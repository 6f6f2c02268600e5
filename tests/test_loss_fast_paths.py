"""The loss-side GPU fast paths (issue 7) are numerically the paths they replace, checked on CPU.

- Chunked cross-entropy (`common.chunked_lm_loss_and_metrics`, `loss_chunk_size` of clm,
  prefix_lm, span_corruption, bart, mass): loss, accuracy, z-loss, num_targets and gradients
  equal the unchunked path (chunks that do and do not divide the length, label smoothing, a
  padded vocabulary), with the output layer's gradient recomputed in the backward or formed in
  the forward (`grad_in_forward`, one vocabulary matmul fewer); the backward redoes no
  vocabulary reduction.
- One-pass vocabulary reductions (`common.lse_and_first_max`): log Z, the first argmax and the
  softmax gradient equal the two-pass forms.
- Logits in the compute dtype (`Config.logits_dtype='compute'`): bf16 logits within half an ulp
  of the float32 ones, losses and gradients of the decoder, MLM heads and encoder-decoders
  within bf16 rounding.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import models
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import bart, clm, common, mass, prefix_lm, span_corruption
from row_layouts import L, PACKED, PADDED

jax.config.update('jax_numpy_rank_promotion', 'raise')

@pytest.mark.parametrize('grad_in_forward', [False, True])
@pytest.mark.parametrize('chunk', [5, 16])
def test_chunked_cross_entropy_equals_unchunked(chunk, grad_in_forward):
  kh, kw, kt, kx = jax.random.split(jax.random.key(1), 4)
  hidden = jax.random.normal(kh, (3, L, 8))
  w_DV = jax.random.normal(kw, (8, 37))
  targets = jax.random.randint(kt, (3, L), 0, 37)
  weights = (jax.random.uniform(kx, (3, L)) < 0.7).astype(jnp.float32)
  project = lambda h, w: jnp.einsum('bcd,dv->bcv', h, w)
  kw = dict(z_loss=1e-2, label_smoothing=0.1)

  def full(h, w):
    return common.lm_loss_and_metrics(project(h, w), targets, weights, **kw)

  def chunked(h, w):
    return common.chunked_lm_loss_and_metrics(h, lambda x: project(x, w), targets, weights,
                                              chunk_size=chunk, grad_in_forward=grad_in_forward,
                                              **kw)

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
  (ref, ref_m), ref_g = grad(full)(hidden, w_DV)
  (val, m), g = grad(chunked)(hidden, w_DV)
  np.testing.assert_allclose(val, ref, rtol=1e-5)
  assert set(m) == set(ref_m) == {'loss', 'accuracy', 'num_targets', 'z_loss'}
  for k in m:
    np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, err_msg=k)
  for a, b in zip(g, ref_g):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  # The weights' cotangent (data, but exact): the same as autodiff of the unchunked loss.
  g_w = jax.grad(lambda w: common.chunked_lm_loss_and_metrics(
      hidden, lambda x: project(x, w_DV), targets, w, chunk_size=chunk,
      grad_in_forward=grad_in_forward, **kw)[0])(weights)
  ref_w = jax.grad(lambda w: common.lm_loss_and_metrics(project(hidden, w_DV), targets, w,
                                                        **kw)[0])(weights)
  np.testing.assert_allclose(g_w, ref_w, atol=1e-6)


def _count(jaxpr, name: str) -> int:
  # Sub-programs: a scan's or custom VJP's jaxpr, and each branch of a cond (platform_dependent).
  sub = lambda v: [v.jaxpr] if isinstance(v, jax.extend.core.ClosedJaxpr) else (
      [v] if isinstance(v, jax.extend.core.Jaxpr) else
      [j for x in v for j in sub(x)] if isinstance(v, (tuple, list)) else [])
  return sum((e.primitive.name == name) + sum(_count(j, name) for p in e.params.values()
                                               for j in sub(p))
             for e in jaxpr.eqns)


def test_chunked_loss_backward_does_not_redo_the_vocabulary_reductions():
  """The backward pass recomputes each chunk's logits but not its max / sum-exp reductions:
  the gradient's program has as many vocabulary-wide max reductions as the forward alone."""
  hidden, w_DV = jnp.ones((2, 8, 4)), jnp.ones((4, 11))
  targets, weights = jnp.zeros((2, 8), jnp.int32), jnp.ones((2, 8))
  loss = lambda h: common.chunked_lm_loss_and_metrics(
      h, lambda x: jnp.einsum('bcd,dv->bcv', x, w_DV), targets, weights, chunk_size=4)[0]
  # reduce_max: the two-pass form (CPU); reduce: the one-pass variadic form (other backends).
  for name in ('reduce_max', 'reduce'):
    forward = _count(jax.make_jaxpr(loss)(hidden).jaxpr, name)
    backward = _count(jax.make_jaxpr(jax.grad(loss))(hidden).jaxpr, name)
    assert forward >= 1 and backward == forward, (name, forward, backward)


def test_chunked_loss_grad_in_forward_spares_the_recomputed_projection():
  """grad_in_forward: the differentiated program has one vocabulary projection fewer (logits,
  then the hidden and table gradients, all in the forward; the backward only scales), no more
  vocabulary reductions than the forward; the plain evaluation is the unfused forward; the
  reported z-loss is not differentiated (the optimised loss, which includes it, is)."""
  hidden, w_DV = jnp.ones((2, 8, 4)), jnp.ones((4, 11)) * 0.1
  targets, weights = jnp.zeros((2, 8), jnp.int32), jnp.ones((2, 8))

  def loss(h, w, fused, key='loss'):
    return common.chunked_lm_loss_and_metrics(
        h, lambda x: jnp.einsum('bcd,dv->bcv', x, w), targets, weights, chunk_size=4, z_loss=0.1,
        grad_in_forward=fused)[1][key]

  grad = lambda fused: jax.make_jaxpr(jax.grad(loss, (0, 1)), static_argnums=2)(hidden, w_DV,
                                                                                 fused).jaxpr
  # Recomputing: forward logits, backward logits + hidden gradient + table gradient.
  assert _count(grad(False), 'dot_general') == 4 and _count(grad(True), 'dot_general') == 3
  forward = _count(jax.make_jaxpr(loss, static_argnums=2)(hidden, w_DV, True).jaxpr, 'reduce_max')
  assert forward >= 1 and _count(grad(True), 'reduce_max') == forward
  assert _count(jax.make_jaxpr(loss, static_argnums=2)(hidden, w_DV, True).jaxpr,
                'dot_general') == 1
  g_z = jax.grad(loss, (0, 1))(hidden, w_DV, True, 'z_loss')
  assert all(not np.any(g) for g in g_z)
  assert np.any(jax.grad(loss, (0, 1))(hidden, w_DV, False, 'z_loss')[1])
  for objective in (clm, prefix_lm, span_corruption, bart, mass):
    with pytest.raises(ValueError, match='loss_grad_in_forward needs the chunked loss: set '
                                         'loss_chunk_size > 0'):
      objective.Options(loss_grad_in_forward=True)


@pytest.fixture
def one_pass():
  common.set_vocab_reduction('one_pass')
  yield
  common.set_vocab_reduction('auto')


def test_one_pass_vocabulary_reduction_equals_two_passes(one_pass):
  """The variadic (max, sum-exp, first index) reduction gives logsumexp and argmax's index, tie
  rule included, -inf columns and all--inf rows too; its log Z gradient is the softmax."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7, 50)).astype(np.float32) * 4
  logits[0, 0, [3, 9, 40]] = 30.0  # a three-way tie: index 3
  logits[1, :, 45:] = -np.inf  # padded columns
  logits[2, 1] = -np.inf
  x = jnp.asarray(logits)
  lse, first = jax.jit(common.lse_and_first_max)(x)
  common.set_vocab_reduction('two_pass')
  lse2, first2 = jax.jit(common.lse_and_first_max)(x)
  common.set_vocab_reduction('one_pass')
  np.testing.assert_allclose(lse, jax.nn.logsumexp(x, axis=-1), rtol=1e-6)
  np.testing.assert_allclose(lse2, lse, rtol=1e-6)
  np.testing.assert_array_equal(first, np.argmax(logits, axis=-1))
  np.testing.assert_array_equal(first2, first)
  assert int(first[0, 0]) == 3 and lse[2, 1] == -np.inf
  finite = jnp.where(jnp.isfinite(x), x, -30.0)
  cot = jnp.asarray(rng.normal(size=(3, 7)).astype(np.float32))
  g = jax.grad(lambda v: jnp.sum(common.lse_and_first_max(v)[0] * cot))(finite)
  g_ref = jax.grad(lambda v: jnp.sum(jax.nn.logsumexp(v, axis=-1) * cot))(finite)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="use one of auto, one_pass, two_pass"):
    common.set_vocab_reduction('fused')


@pytest.mark.parametrize('reduction', ['one_pass', 'two_pass'])
def test_chunked_loss_over_a_padded_vocabulary_equals_the_sliced_one(reduction):
  """`valid_vocab`: projecting onto the padded table (junk logits in the extra columns) gives
  the loss, metrics and gradients of the sliced vocabulary; the extra columns get no gradient."""
  common.set_vocab_reduction(reduction)
  try:
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(2, 9, 6)).astype(np.float32))
    w_DV = jnp.asarray(rng.normal(size=(6, 16)).astype(np.float32))
    w_DV = w_DV.at[:, 13:].set(50.0)  # junk that would dominate if the padding were scored
    targets = jnp.asarray(rng.integers(0, 13, size=(2, 9)))
    weights = jnp.asarray((rng.random((2, 9)) > 0.2).astype(np.float32))
    kw = dict(z_loss=1e-3, label_smoothing=0.1)

    def padded(h, w, fused=False):
      return common.chunked_lm_loss_and_metrics(
          h, lambda x: jnp.einsum('bcd,dv->bcv', x, w), targets, weights, chunk_size=4,
          valid_vocab=13, grad_in_forward=fused, **kw)

    def sliced(h, w):
      return common.lm_loss_and_metrics(jnp.einsum('bcd,dv->bcv', h, w[:, :13]), targets,
                                        weights, **kw)

    (val, m), (g_h, g_w) = jax.value_and_grad(padded, (0, 1), has_aux=True)(hidden, w_DV)
    (ref, ref_m), (r_h, r_w) = jax.value_and_grad(sliced, (0, 1), has_aux=True)(hidden, w_DV)
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    for k in ref_m:
      np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(g_h, r_h, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_w, r_w, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_w[:, 13:]))) == 0.0
    (val, _), (g_h, g_w) = jax.value_and_grad(lambda h, w: padded(h, w, True), (0, 1),
                                              has_aux=True)(hidden, w_DV)
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    np.testing.assert_allclose(g_h, r_h, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_w, r_w, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_w[:, 13:]))) == 0.0
  finally:
    common.set_vocab_reduction('auto')


@pytest.mark.parametrize('objective', [clm, prefix_lm])
def test_chunked_loss_in_the_objectives_equals_unchunked(objective):
  seg = jnp.asarray(PACKED)
  tokens = jnp.where(seg > 0, (jnp.arange(L)[None, :] * 5 + 1) % 90 + 5, 0)
  positions = jnp.asarray(np.concatenate([np.arange(5), np.arange(7), np.arange(4)])[None]
                          .repeat(3, 0))
  model = models.build('decoder', 'runlocal', num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
                       vocab_size=100, dropout_rate=0.0)
  params = model.init(jax.random.key(0), tokens, segment_ids=seg, positions=positions)['params']
  batch = objective.corrupt(jax.random.key(2), dict(tokens=tokens, segment_ids=seg,
                                                    positions=positions),
                            specials=SpecialIds(vocab_size=100))

  def run(chunk, fused=False):
    options = objective.Options(z_loss=1e-3, loss_chunk_size=chunk, loss_grad_in_forward=fused)
    f = lambda p: objective.loss(p, batch, None, model=model, options=options)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (ref, ref_m), ref_g = run(0)
  for fused in (False, True):  # the output layer's gradient recomputed / formed in the forward
    (val, m), g = run(6, fused)
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    for k in ref_m:
      np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  with pytest.raises(ValueError, match='loss_chunk_size must be >= 0'):
    objective.Options(loss_chunk_size=-1)


def _seq2seq_batch(le: int = 12, ld: int = 10):
  """A corrupted-format encoder-decoder batch of 3 rows with right padding on both sides."""
  enc_seg = jnp.asarray((np.arange(le)[None, :] < np.array([[le], [7], [4]])).astype(np.int32))
  dec_seg = jnp.asarray((np.arange(ld)[None, :] < np.array([[ld], [6], [3]])).astype(np.int32))
  pos = lambda seg: jnp.where(seg > 0, jnp.arange(seg.shape[1])[None, :], 0)
  batch = dict(inputs=jnp.where(enc_seg > 0, (jnp.arange(le)[None, :] * 7 + 3) % 90 + 5, 0),
               targets=jnp.where(dec_seg > 0, (jnp.arange(ld)[None, :] * 5 + 1) % 90 + 5, 0),
               input_segment_ids=enc_seg, target_segment_ids=dec_seg,
               input_positions=pos(enc_seg), target_positions=pos(dec_seg),
               weights=dec_seg.astype(jnp.float32))
  return batch, enc_seg, dec_seg


@pytest.mark.parametrize('objective,variant', [(span_corruption, 't5_runlocal'),
                                               (bart, 'bart_runlocal'), (mass, 'bart_runlocal')])
def test_chunked_loss_in_the_seq2seq_objectives_equals_unchunked(objective, variant):
  """T5 / BART / MASS with `loss_chunk_size`: same loss, metrics and gradients, no [B, Ld, V]."""
  batch, enc_seg, dec_seg = _seq2seq_batch()
  model = models.build('encdec', variant, num_encoder_layers=1, num_decoder_layers=1,
                       embed_dim=32, num_heads=2, mlp_dim=64, vocab_size=100, dropout_rate=0.0)
  params = model.init(jax.random.key(0), batch['inputs'], batch['targets'],
                      encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg)['params']
  specials = SpecialIds(vocab_size=100)

  def run(chunk, fused=False):
    options = objective.Options(label_smoothing=0.1, loss_chunk_size=chunk,
                                loss_grad_in_forward=fused)
    f = lambda p: objective.loss(p, batch, None, model=model, specials=specials, options=options)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (ref, ref_m), ref_g = run(0)
  for fused in (False, True):
    (val, m), g = run(4, fused)  # 10 target slots: chunks of 4, 4 and a zero-weight-padded 2
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    assert set(m) == set(ref_m)
    for k in ref_m:
      np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  out = model.apply({'params': params}, batch['inputs'], batch['targets'],
                    encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg, compute_logits=False)
  assert 'logits' not in out and out['hidden'].shape == (3, dec_seg.shape[1], 32)
  with pytest.raises(ValueError, match='loss_chunk_size must be >= 0'):
    objective.Options(loss_chunk_size=-1)

@pytest.mark.parametrize('tie', [True, False])
def test_compute_dtype_logits_round_the_float32_ones_and_train_alike(tie):
  """logits_dtype='compute': bf16 logits (the float32 accumulators rounded, as torch autocast
  writes them); the chunked loss over the padded table matches the float32-logits path to bf16
  precision, its gradients point the same way, and the padded rows still get none."""
  kw = dict(num_layers=1, embed_dim=32, num_heads=4, mlp_dim=64, vocab_size=100,
            vocab_pad_multiple=64, dropout_rate=0.0, dtype='bfloat16', tie_embeddings=tie)
  f32 = models.build('decoder', 'runlocal', **kw)
  bf16 = models.build('decoder', 'runlocal', **kw, logits_dtype='compute')
  seg = jnp.asarray(PADDED)
  tokens = jnp.where(seg > 0, (jnp.arange(L)[None, :] * 7 + 1) % 95 + 5, 0)
  positions = jnp.broadcast_to(jnp.arange(L)[None, :], seg.shape)
  params = nn.unbox(f32.init(jax.random.key(0), tokens, segment_ids=seg,
                            positions=positions)['params'])
  run = lambda m: m.apply({'params': params}, tokens, segment_ids=seg, positions=positions)
  ref, out = run(f32)['logits'], run(bf16)['logits']
  assert ref.dtype == jnp.float32 and out.dtype == jnp.bfloat16 and out.shape == (3, L, 100)
  # One rounding of the same float32 accumulators: within half a bf16 ulp (2^-9 relative).
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2.0 ** -8, atol=1e-6)
  batch = clm.corrupt(None, dict(tokens=tokens, segment_ids=seg, positions=positions),
                      specials=SpecialIds(vocab_size=100))
  options = clm.Options(loss_chunk_size=8)
  grad = lambda m: jax.jit(jax.value_and_grad(
      lambda p: clm.loss(p, batch, None, model=m, options=options)[0]))(params)
  (ref_loss, ref_g), (loss, g) = grad(f32), grad(bf16)
  _close_and_aligned(loss, ref_loss, g, ref_g)
  table = g['token_embed']['embedding'] if tie else g['lm_head']['kernel'].T
  assert not np.any(table[100:])  # the padded rows are no tokens: no gradient reaches them
  # The output layer's gradient formed in the forward, scaled there by the mean's cotangent
  # (the backward's rescale is then 1): the same bf16 roundings as the recomputing path, so the
  # same gradients up to the order of float32 sums.
  options = clm.Options(loss_chunk_size=8, loss_grad_in_forward=True)
  loss_f, g_f = grad(bf16)
  np.testing.assert_allclose(loss_f, loss, rtol=1e-6)
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(t)])
  np.testing.assert_allclose(flat(g_f), flat(g), atol=1e-5 * np.abs(flat(g)).max())
  table = g_f['token_embed']['embedding'] if tie else g_f['lm_head']['kernel'].T
  assert not np.any(table[100:])
  options = clm.Options(loss_chunk_size=8)
  # The loss reads the bf16 logits: the projection's matmul writes bf16.
  jaxpr = str(jax.make_jaxpr(lambda p: clm.loss(p, batch, None, model=bf16, options=options)[0])(
      params))
  assert 'preferred_element_type=bfloat16' in jaxpr
  with pytest.raises(ValueError, match="logits_dtype='bf16'; use one of float32, compute"):
    models.build('decoder', 'runlocal', **{**kw, 'logits_dtype': 'bf16'}).init(
        jax.random.key(0), tokens, segment_ids=seg, positions=positions)


def _close_and_aligned(loss, ref_loss, grads, ref_grads):
  """Within bf16 rounding of the float32-logits path: loss to 1 %, gradients to cosine 0.99."""
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-2)
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(t)])
  a, b = flat(grads), flat(ref_grads)
  assert np.all(np.isfinite(a)) and a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


@pytest.mark.parametrize('family', ['encoder', 'albert'])
def test_compute_dtype_mlm_logits_keep_the_bias_in_float32(family):
  """BERT's and ALBERT's MLM heads with logits_dtype='compute': bf16 logits over the sparse slab,
  the output bias added in float32 before the rounding; the MLM loss and its gradients match the
  float32-logits path to bf16 precision."""
  from ptm_jax.objectives import mlm
  kw = dict(num_layers=1, embed_dim=32, num_heads=4, mlp_dim=64, vocab_size=100, dropout_rate=0.0,
            dtype='bfloat16')
  f32, bf16 = (models.build(family, 'runlocal', **kw, logits_dtype=d)
               for d in ('float32', 'compute'))
  seg = jnp.asarray(PADDED)
  tokens = jnp.where(seg > 0, (jnp.arange(L)[None, :] * 7 + 1) % 95 + 5, 0)
  positions = jnp.broadcast_to(jnp.arange(L)[None, :], seg.shape)
  params = nn.unbox(f32.init(jax.random.key(0), tokens, segment_ids=seg,
                            positions=positions)['params'])
  params['mlm_head']['bias'] = jax.random.normal(jax.random.key(2), (100,))  # a bias that shows
  batch = mlm.corrupt(jax.random.key(3), dict(tokens=tokens, segment_ids=seg, positions=positions),
                      specials=SpecialIds(vocab_size=100))
  run = lambda m: m.apply({'params': params}, batch['inputs'], segment_ids=seg, positions=positions,
                          logits_positions=batch['mlm_positions'])['logits']
  ref, out = run(f32), run(bf16)
  assert ref.dtype == jnp.float32 and out.dtype == jnp.bfloat16
  # Two roundings, the matmul's output and then its sum with the float32 bias: each within
  # half an ulp, i.e. 2^-8 of the value rounded.
  pre_bias = np.abs(np.asarray(ref) - np.asarray(params['mlm_head']['bias']))
  error = np.abs(np.asarray(out, np.float32) - ref)
  assert np.all(error <= 2.0 ** -8 * (pre_bias + np.abs(ref)) + 1e-6), error.max()
  grad = lambda m: jax.jit(jax.value_and_grad(
      lambda p: mlm.loss(p, batch, None, model=m)[0]))(params)
  (ref_loss, ref_g), (loss, g) = grad(f32), grad(bf16)
  _close_and_aligned(loss, ref_loss, g, ref_g)


def test_compute_dtype_logits_in_the_encoder_decoder():
  """T5 (tied) and BART (final_logits_bias) heads with logits_dtype='compute': bf16 logits within
  half an ulp of the float32 ones; span corruption's chunked loss matches to bf16 precision."""
  batch, enc_seg, dec_seg = _seq2seq_batch()
  for variant in ('t5_runlocal', 'bart_runlocal'):
    kw = dict(num_encoder_layers=1, num_decoder_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
              vocab_size=100, dropout_rate=0.0, dtype='bfloat16')
    f32, bf16 = (models.build('encdec', variant, **kw, logits_dtype=d)
                 for d in ('float32', 'compute'))
    params = f32.init(jax.random.key(0), batch['inputs'], batch['targets'],
                      encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg)['params']
    run = lambda m: m.apply({'params': params}, batch['inputs'], batch['targets'],  # noqa: B023
                            encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg)['logits']
    ref, out = run(f32), run(bf16)
    assert out.dtype == jnp.bfloat16, variant
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2.0 ** -8, atol=1e-6)
    options = span_corruption.Options(loss_chunk_size=4)
    grad = lambda m: jax.jit(jax.value_and_grad(lambda p: span_corruption.loss(  # noqa: B023
        p, batch, None, model=m, specials=SpecialIds(vocab_size=100), options=options)[0]))(params)
    (ref_loss, ref_g), (loss, g) = grad(f32), grad(bf16)
    _close_and_aligned(loss, ref_loss, g, ref_g)


@pytest.mark.parametrize('size,fast', [('small', True), ('medium', True), ('large', True),
                                       ('runlocal', False), ('llama_runlocal', False)])
def test_gpt_experiment_sizes_take_the_loss_fast_paths(size, fast):
  """experiments/gpt.py: the accelerator sizes pad the vocabulary and chunk the loss with its
  gradient formed in the forward; the CPU sizes keep the plain paths. Both resolve to a model
  and Options (the padded table's shape checked without allocating it)."""
  import os
  from ptm_jax import configs, objectives, train
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configs.load_experiment(os.path.join(repo, 'experiments', f'gpt.py:{size}'), {})
  objective = objectives.get(config.objective.name)
  options = objectives.build_options(objective, config.objective)
  assert (options.loss_chunk_size, options.loss_grad_in_forward) == ((256, True) if fast
                                                                      else (0, False))
  model = train.build_model(config, 31_999, objective, options)
  assert model.config.vocab_pad_multiple == (128 if fast else 0)
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), tokens, segment_ids=tokens + 1, positions=jnp.arange(8)[None])))
  assert shapes['params']['token_embed']['embedding'].shape[0] == (32_000 if fast else 31_999)
