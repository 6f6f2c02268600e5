"""Model-level properties: sizes, registry, masks through gradients, dtypes, remat, logical axes."""
from __future__ import annotations


import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import models
from ptm_jax.models import decoder, encoder

TINY = dict(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
            max_position_embeddings=16, dropout_rate=0.1)
FAMILIES = {
    'bert': lambda **kw: encoder.Model(encoder.Config(**{**TINY, **kw})),
    'gpt2': lambda **kw: decoder.Model(decoder.Config(**{**TINY, **kw})),
    'llama': lambda **kw: decoder.Model(decoder.Config(
        **{**decoder.VARIANTS['llama_runlocal'], **TINY, 'num_kv_heads': 2, 'dropout_rate': 0.0,
           **kw})),
}
B, L = 2, 8


def _batch(segments=((1,) * 8, (1,) * 5 + (0,) * 3)):
  seg = jnp.array(segments, jnp.int32)
  # Positions restart inside every packed document, as the packer writes them.
  pos = np.zeros(seg.shape, np.int32)
  for b, row in enumerate(np.asarray(seg)):
    for i in range(1, len(row)):
      pos[b, i] = pos[b, i - 1] + 1 if row[i] == row[i - 1] else 0
  tokens = jax.random.randint(jax.random.key(0), seg.shape, 5, 97) * (seg > 0)
  return tokens.astype(jnp.int32), seg, jnp.asarray(pos)


def _init(model, tokens, seg, pos):
  """Random parameters with the model's shapes, without compiling `init` (slow on small CPUs)."""
  shapes = flax.core.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), tokens, segment_ids=seg, positions=pos))['params'])
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    gain = path[-1].key == 'scale'  # norm gains near 1, everything else small and non-zero
    x = (1.0 if gain else 0.0) + 0.1 * rng.standard_normal(leaf.shape)
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _count(model, length=8, skip=()) -> int:
  x = jnp.zeros((1, length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, segment_ids=x + 1, positions=x))
  shapes = {k: v for k, v in shapes['params'].items() if k not in skip}
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(shapes))


def _body(model):
  """The part after the embeddings as a function of float embeddings x `[B, L, D]`."""
  if isinstance(model, encoder.Model):
    return lambda p, x, seg, pos: model.apply({'params': p}, x, segment_ids=seg,
                                              method=encoder.Model.encode)[0]
  return lambda p, x, seg, pos: model.apply({'params': p}, x, segment_ids=seg, positions=pos,
                                            method=decoder.Model.decode)[0]


# ----------------------------------------------------------------------------- sizes, registry
def test_bert_base_parameter_count_matches_hf():
  # HF BertForPreTraining(BertConfig()): BertModel 109,482,240 + MLM transform + bias + NSP.
  model = models.build('encoder', 'base')
  assert _count(model) == 110_106_428
  assert _count(model, skip=('mlm_head', 'nsp_head')) == 109_482_240  # HF BertModel (+ pooler)


def test_gpt2_small_parameter_count_matches_hf():
  # HF GPT2LMHeadModel(GPT2Config()) with the LM head tied to wte.
  assert _count(models.build('decoder', 'small')) == 124_439_808


def test_registry_and_variants():
  assert models.get_family('encoder') is encoder
  m = models.build('encoder', 'runlocal', vocab_size=300)
  assert m.config.vocab_size == 300 and m.config.num_layers == 2
  for name in ('tiny', 'mini', 'small', 'medium', 'base', 'large'):
    cfg = encoder.Config(**encoder.VARIANTS[name])
    assert cfg.num_heads * 64 == cfg.embed_dim and cfg.mlp_dim == 4 * cfg.embed_dim
  assert decoder.Config(**decoder.VARIANTS['large']).num_layers == 36
  for bad in (lambda: models.get_family('xlnet'), lambda: models.build('encoder', 'huge'),
              lambda: models.build('decoder', 'small', widht=3)):
    with pytest.raises(ValueError) as e:
      bad()
    assert '\n' not in str(e.value) and 'known' in str(e.value)


@pytest.mark.parametrize('family,variant', [('encoder', 'runlocal'), ('decoder', 'runlocal'),
                                            ('decoder', 'llama_runlocal')])
def test_runlocal_variants_run(family, variant):
  model = models.build(family, variant, vocab_size=97)
  tokens, seg, pos = _batch()
  out = jax.eval_shape(model.init_with_output, jax.random.key(0), tokens, segment_ids=seg,
                       positions=pos)[0]
  assert out['logits'].shape == (B, L, 97) and out['logits'].dtype == jnp.float32
  assert out['hidden'].shape == (B, L, model.config.embed_dim)
  if family == 'encoder':
    assert out['pooled'].shape == (B, model.config.embed_dim) and out['nsp_logits'].shape == (B, 2)


# ---------------------------------------------------------------------- masks through gradients
PACKED = ((1, 1, 1, 2, 2, 2, 2, 0), (1,) * 8)  # row 0: two documents + padding; row 1: one


@pytest.mark.parametrize('family', ['bert', 'gpt2', 'llama'])
def test_masks_through_gradients(family):
  """d out[b, t] / d x[b', s] is exactly 0 across rows, documents and (decoders) the future."""
  model = FAMILIES[family]()
  tokens, seg, pos = _batch(PACKED)
  params = _init(model, tokens, seg, pos)
  x = jax.random.normal(jax.random.key(1), (B, L, TINY['embed_dim']))
  # A random read-out: summing over D would be blind behind a LayerNorm (its outputs sum to 0).
  w_D = jax.random.normal(jax.random.key(2), (TINY['embed_dim'],))
  f = _body(model)
  jac = jax.jit(jax.jacrev(lambda x: f(params, x, seg, pos) @ w_D))(x)  # [B, L, B, L, D]
  dep = np.asarray(jnp.abs(jac).sum(-1))  # [B, T, B, S]
  causal = family != 'bert'
  for b in range(B):
    s = np.asarray(seg[b])
    same = (s[:, None] == s[None, :]) & (s[:, None] > 0)
    allowed = same & np.tril(np.ones((L, L), bool)) if causal else same
    forbidden = (s > 0)[:, None] & ~allowed  # padding queries attend to nothing: not checked
    assert np.all(dep[b, :, 1 - b] == 0.0)  # rows of a batch never mix
    assert np.all(dep[b, :, b][forbidden] == 0.0)  # other documents, padding keys, the future
    assert np.all(dep[b, :, b][allowed] > 0.0)  # and every allowed pair does interact


def test_extra_attention_mask_is_anded_in():
  model = FAMILIES['bert']()
  tokens, seg, pos = _batch(((1,) * 8, (1,) * 8))
  params = _init(model, tokens, seg, pos)
  x = jax.random.normal(jax.random.key(1), (B, L, TINY['embed_dim']))
  block_key3 = jnp.ones((1, 1, L, L), bool).at[..., 3].set(False)
  f = lambda x: model.apply({'params': params}, x, segment_ids=seg, attention_mask=block_key3,
                            method=encoder.Model.encode)[0]
  others = jnp.array([0, 1, 2, 4, 5, 6, 7])
  w = jax.random.normal(jax.random.key(2), (B, 7, TINY['embed_dim']))
  g = jax.jit(jax.grad(lambda x: jnp.sum(f(x)[:, others] * w)))(x)
  assert np.all(np.asarray(g[:, 3]) == 0.0) and np.all(np.abs(np.asarray(g[:, 2])) > 0.0)


# ------------------------------------------------------------------------- outputs and dtypes
@pytest.mark.parametrize('family', ['bert', 'gpt2', 'llama'])
def test_hidden_states_and_dropout(family):
  model = FAMILIES[family]()
  tokens, seg, pos = _batch()
  params = _init(model, tokens, seg, pos)

  @jax.jit
  def both(p):
    kw = dict(segment_ids=seg, positions=pos)
    return (model.apply({'params': p}, tokens, output_hidden_states=True, **kw),
            model.apply({'params': p}, tokens, deterministic=False,
                        rngs={'dropout': jax.random.key(3)}, **kw))

  out, train = both(params)
  assert len(out['hidden_states']) == model.config.num_layers + 1
  np.testing.assert_array_equal(out['hidden_states'][-1], out['hidden'])
  assert bool(jnp.all(jnp.isfinite(train['logits'])))
  assert (family == 'llama') == np.allclose(train['logits'], out['logits'])  # llama: no dropout


@pytest.mark.parametrize('family', ['bert', 'llama'])
def test_bf16_compute_gives_f32_logits_close_to_f32(family):
  tokens, seg, pos = _batch()
  m32, m16 = FAMILIES[family](), FAMILIES[family](dtype='bfloat16')
  params = _init(m32, tokens, seg, pos)
  run = lambda m: m.apply({'params': params}, tokens, segment_ids=seg, positions=pos)
  out32, out16 = jax.jit(lambda: (run(m32), run(m16)))()
  assert out16['logits'].dtype == jnp.float32 and out16['hidden'].dtype == jnp.bfloat16
  valid = np.asarray(seg) > 0
  diff = np.abs(np.asarray(out16['logits']) - np.asarray(out32['logits']))[valid]
  scale = np.abs(np.asarray(out32['logits'])[valid]).max()
  assert diff.max() < 0.05 * scale, (diff.max(), scale)
  # Parameters stay float32 whatever the compute dtype.
  p16 = jax.eval_shape(lambda: m16.init(jax.random.key(0), tokens, segment_ids=seg, positions=pos))
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(p16))


@pytest.mark.parametrize('family', ['bert', 'llama'])  # gpt2 shares llama's code path
def test_remat_same_outputs_and_grads_finite_on_padding(family):
  tokens, seg, pos = _batch(((1,) * 5 + (0,) * 3, (0,) * 8))  # second row is all padding
  plain, remat = FAMILIES[family](), FAMILIES[family](remat=True)
  params = _init(plain, tokens, seg, pos)
  w = jax.random.normal(jax.random.key(2), (B, L, 97))

  def loss(model):
    return lambda p: jnp.sum(model.apply({'params': p}, tokens, segment_ids=seg, positions=pos,
                                         deterministic=False, rngs={'dropout': jax.random.key(4)}
                                         )['logits'] * w)

  (l1, g1), (l2, g2) = jax.jit(lambda p: [jax.value_and_grad(loss(m))(p)
                                          for m in (plain, remat)])(params)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves((l1, g1)))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  # Recomputation reorders float32 sums, so each gradient is compared at its own scale: an element
  # near 0.9 of a tensor reaching 12.8 once differed by 1.9e-5 (1.5e-6 of the scale) on one CPU.
  def close_at_scale(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())))

  jax.tree_util.tree_map(close_at_scale, g1, g2)


def _saved_bytes(model, params, tokens, seg, pos):
  """Bytes the backward pass keeps from the forward (the VJP's residuals)."""
  f = lambda p: model.apply({'params': p}, tokens, segment_ids=seg, positions=pos)['logits']
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(jax.vjp(f, params)[1]))


def _remat_families():
  """name -> (build(**config fields), apply(model, params, tokens, seg, pos) -> logits)."""
  from ptm_jax.models import albert
  stack = lambda m, p, t, s, q: m.apply({'params': p}, t, segment_ids=s, positions=q)['logits']
  encdec = lambda m, p, t, s, q: m.apply({'params': p}, t, t, encoder_segment_ids=s,
                                         decoder_segment_ids=s)['logits']
  t5 = dict(vocab_size=97, embed_dim=32, num_heads=4, mlp_dim=64, num_encoder_layers=2,
            num_decoder_layers=2)
  return {
      'gpt2': (FAMILIES['gpt2'], stack), 'bert': (FAMILIES['bert'], stack),
      'albert': (lambda **kw: albert.Model(albert.Config(**{**TINY, 'embedding_size': 16, **kw})),
                 stack),
      't5': (lambda **kw: models.build('encdec', 't5_runlocal', **t5, **kw), encdec)}


def test_remat_policies_keep_what_they_say_and_change_no_number():
  """`remat_policy`: 'full' keeps the least, 'dots' the projections' outputs too, 'dots_all' the
  attention scores as well, no remat everything; losses and gradients equal the plain model's
  (every policy on GPT-2; 'dots' on BERT, ALBERT, T5); a bad name is a one-line error."""
  tokens, seg, pos = _batch()
  plain = FAMILIES['gpt2'](dropout_rate=0.0)
  params = _init(plain, tokens, seg, pos)
  saved = {policy: _saved_bytes(FAMILIES['gpt2'](dropout_rate=0.0, remat=True,
                                                 remat_policy=policy), params, tokens, seg, pos)
           for policy in ('full', 'dots', 'dots_all')}
  assert saved['full'] < saved['dots'] < saved['dots_all'] < _saved_bytes(
      plain, params, tokens, seg, pos), saved
  for name, (build, apply) in _remat_families().items():
    base = build(dropout_rate=0.0)
    params = flax.core.meta.unbox(jax.eval_shape(
        lambda: base.init(jax.random.key(0), tokens, tokens, encoder_segment_ids=seg,
                          decoder_segment_ids=seg) if name == 't5'
        else base.init(jax.random.key(0), tokens, segment_ids=seg, positions=pos))['params'])
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(
        lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), params)
    w = jax.random.normal(jax.random.key(3), apply(base, params, tokens, seg, pos).shape)
    grad = lambda m: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda p: jnp.sum(apply(m, p, tokens, seg, pos) * w)))(params)
    ref, ref_g = grad(base)
    # Every policy on GPT-2; the others share its code path, and 'full' has its own test.
    for policy in ('full', 'dots', 'dots_all') if name == 'gpt2' else ('dots',):
      val, g = grad(build(dropout_rate=0.0, remat=True, remat_policy=policy))
      np.testing.assert_allclose(val, ref, rtol=1e-5, err_msg=f'{name} {policy}')
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
          a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max()))), g, ref_g)
    with pytest.raises(ValueError, match="remat_policy='dots_only'; use one of full, dots, "
                                         "dots_all"):
      apply(build(remat_policy='dots_only'), params, tokens, seg, pos)


def test_roberta_options():
  model = FAMILIES['bert'](type_vocab_size=0, position_offset=2, max_position_embeddings=18)
  tokens, seg, pos = _batch()
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, segment_ids=seg,
                                             positions=pos))['params']
  assert 'type_embed' not in params
  assert params['position_embed']['embedding'].value.shape == (18, 32)


# ------------------------------------------------------------------------------- logical axes
@pytest.mark.parametrize('family', ['bert', 'gpt2', 'llama'])
def test_every_param_has_logical_axes(family):
  model = FAMILIES[family]()
  tokens, seg, pos = _batch()
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, segment_ids=seg,
                                            positions=pos))['params']
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  vocabulary = {'vocab', 'embed', 'mlp', 'heads', 'kv', 'layers', None}
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), leaf
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= vocabulary, leaf.names
