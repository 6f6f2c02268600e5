"""The GPU fast paths (issue 7) are numerically the paths they replace, checked on CPU.

- Structured attention masks (`layers.masks.SegmentMask`, `Config.mask_form`): 'lengths'
  (is_causal + sequence lengths) and 'packed' (segment offsets; on XLA the mask is rebuilt from
  the offsets, so the offsets themselves are checked) give the dense-mask outputs and gradients
  for unpadded, right-padded and packed rows, causal and bidirectional, GQA, in the layer and in
  the encoder and decoder (with remat); padding queries stay zero.
- The loss-side paths (chunked cross-entropy, one-pass reductions, bf16 logits):
  tests/test_loss_fast_paths.py.
- Vocabulary padding (decoder `vocab_pad_multiple`): with junk in the padded rows, logits (shape
  and values), the chunked CLM loss and gradients equal the unpadded model's, the padded rows get
  no gradient; GPT-2 and Llama (untied head) HF export writes the unpadded tensors and import
  pads them back (`interop.hf.load(config_overrides=...)`).
- benchmarks/throughput.py `--variants` parses into these options and applies each only where
  the workload has it.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import models
from ptm_jax.interop import hf as interop_hf, maps
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.layers import attention, masks
from ptm_jax.objectives import clm
from row_layouts import L, PACKED, PADDED

jax.config.update('jax_numpy_rank_promotion', 'raise')

LAYOUTS = {'padded': PADDED, 'packed': PACKED}


def _qkv(b, n, k, h=8, seed=0):
  kq, kk, kv, kc = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(kq, (b, L, n, h)), jax.random.normal(kk, (b, L, k, h)),
          jax.random.normal(kv, (b, L, k, h)), jax.random.normal(kc, (b, L, n, h)))


def _forms(layout):
  # 'lengths' promises one document per row: only valid for the unpacked layouts.
  return ('dense', 'packed') if layout == 'packed' else ('dense', 'lengths', 'packed')


@pytest.mark.parametrize('layout', list(LAYOUTS))
@pytest.mark.parametrize('causal', [True, False])
def test_segment_mask_forms_equal_the_dense_mask(layout, causal):
  seg = jnp.asarray(LAYOUTS[layout])
  q, k, v, ct = _qkv(seg.shape[0], n=4, k=2)  # GQA: 4 query heads over 2 kv heads
  dense = masks.SegmentMask(seg, causal=causal).dense()
  # Today's model mask, built by hand from the mask algebra.
  built = masks.combine(masks.causal_mask(L) if causal else None, masks.padding_mask(seg),
                        masks.segment_mask(seg, seg))
  np.testing.assert_array_equal(np.broadcast_to(dense, built.shape), built)

  def run(mask):
    def f(q, k, v):
      return attention.dot_product_attention(q, k, v, mask, implementation='xla')
    return f(q, k, v), jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=(0, 1, 2))(q, k, v)

  ref_out, ref_grads = run(built)
  assert np.all(np.asarray(ref_out)[np.asarray(seg) == 0] == 0)  # padding queries are zero
  for form in _forms(layout):
    out, grads = run(masks.SegmentMask(seg, causal=causal, form=form, max_segments=3))
    np.testing.assert_allclose(out, ref_out, atol=1e-6, rtol=0, err_msg=form)
    for g, r in zip(grads, ref_grads):
      np.testing.assert_allclose(g, r, atol=1e-6, rtol=0, err_msg=form)


def test_packed_offsets_worked_example():
  offsets, lengths = masks.SegmentMask(jnp.asarray(PACKED), form='packed', max_segments=4).offsets()
  np.testing.assert_array_equal(offsets, [[0, 5, 12, -1, -1], [0, 3, 5, -1, -1],
                                          [0, -1, -1, -1, -1]])
  np.testing.assert_array_equal(lengths, [[5, 7, 4, -1], [3, 2, 6, -1], [9, -1, -1, -1]])
  rebuilt = masks.dense_from_offsets(offsets, lengths, L, causal=True)
  dense = masks.SegmentMask(jnp.asarray(PACKED), causal=True).dense()
  np.testing.assert_array_equal(rebuilt, dense)


def test_bad_mask_form_is_a_one_line_error():
  with pytest.raises(ValueError, match="mask_form='flash'; use one of dense, lengths, packed"):
    models.build('decoder', 'runlocal', mask_form='flash').init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32), segment_ids=jnp.ones((1, 4), jnp.int32),
        positions=jnp.arange(4)[None])


def _apply(family, variant, seg, **overrides):
  seg = jnp.asarray(seg)
  tokens = jnp.where(seg > 0, (jnp.arange(L)[None, :] * 7 + 3 * jnp.arange(seg.shape[0])[:, None])
                     % 100 + 5, 0)
  positions = jnp.broadcast_to(jnp.arange(L)[None, :], seg.shape)
  kw = dict(num_layers=1, embed_dim=32, mlp_dim=64, vocab_size=128, dropout_rate=0.0,
            **overrides)
  model = models.build(family, variant, **kw)
  params = model.init(jax.random.key(0), tokens, segment_ids=seg, positions=positions)['params']

  def run(form):
    m = models.build(family, variant, **kw, mask_form=form, mask_max_segments=3)
    f = lambda p: m.apply({'params': p}, tokens, segment_ids=seg, positions=positions)['hidden']
    # Op by op (no jit): on 2 CPU cores compiling each form costs more than running it.
    return f(params), jax.grad(lambda p: jnp.sum(f(p) * (seg > 0)[..., None]))(params)
  return run


@pytest.mark.parametrize('family,variant,layout,form,extra', [
    ('decoder', 'runlocal', 'packed', 'packed', dict(remat=True, num_heads=2)),
    ('decoder', 'llama_runlocal', 'padded', 'lengths', dict(num_heads=4, num_kv_heads=2)),  # GQA
    ('encoder', 'runlocal', 'padded', 'lengths', dict(remat=True, num_heads=2))])
def test_models_mask_forms_equal_dense(family, variant, layout, form, extra):
  # The layer test covers every layout x form; this checks the models' wiring (and nn.remat).
  run = _apply(family, variant, LAYOUTS[layout], **extra)
  (ref_out, ref_grad), (out, grad) = run('dense'), run(form)
  np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=0)
  for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)


def _pad_params(params, cfg, rng):
  """Unpadded decoder params -> padded ones, with random junk in the extra vocabulary rows."""
  def pad(x, axis):
    extra = cfg.padded_vocab_size - x.shape[axis]
    shape = list(x.shape)
    shape[axis] = extra
    return jnp.concatenate([x, 5.0 * jax.random.normal(rng, shape)], axis=axis)
  out = dict(params, token_embed={'embedding': pad(params['token_embed']['embedding'], 0)})
  if 'lm_head' in params:
    out['lm_head'] = {'kernel': pad(params['lm_head']['kernel'], 1)}
  return out


@pytest.mark.parametrize('variant,arch', [('runlocal', 'GPT2LMHeadModel'),
                                          ('llama_runlocal', 'LlamaForCausalLM')])
def test_vocab_padding_changes_nothing_visible(variant, arch, tmp_path):
  kw = dict(num_layers=1, embed_dim=32, num_heads=4, mlp_dim=64, vocab_size=100,
            dropout_rate=0.0)
  plain = models.build('decoder', variant, **kw)
  padded = models.build('decoder', variant, **kw, vocab_pad_multiple=64)
  assert padded.config.padded_vocab_size == 128
  seg = jnp.asarray(PADDED)
  tokens = jnp.where(seg > 0, (jnp.arange(L)[None, :] * 7 + 1) % 95 + 5, 0)
  positions = jnp.broadcast_to(jnp.arange(L)[None, :], seg.shape)
  params = nn.unbox(plain.init(jax.random.key(0), tokens, segment_ids=seg,
                              positions=positions)['params'])
  params_p = _pad_params(params, padded.config, jax.random.key(1))
  run = lambda m, p: m.apply({'params': p}, tokens, segment_ids=seg, positions=positions)['logits']
  ref, out = run(plain, params), run(padded, params_p)
  assert out.shape == ref.shape == (3, L, 100)
  np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)

  batch = clm.corrupt(None, dict(tokens=tokens, segment_ids=seg, positions=positions),
                      specials=SpecialIds(vocab_size=100))
  options = clm.Options(loss_chunk_size=8)
  grad = lambda m, p: jax.jit(jax.value_and_grad(
      lambda p: clm.loss(p, batch, None, model=m, options=options)[0]))(p)
  (ref_loss, ref_g), (loss, g) = grad(plain, params), grad(padded, params_p)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  emb, ref_emb = g['token_embed']['embedding'], ref_g['token_embed']['embedding']
  np.testing.assert_allclose(emb[:100], ref_emb, atol=1e-6)
  assert not np.any(emb[100:])  # the padded rows are no tokens: no gradient reaches them

  # HF export drops the padded rows (the same tensors as the unpadded model's); import pads.
  amap = maps.for_architecture(arch)
  ref_t = interop_hf.tensors_from_params(amap, arch, plain.config, params)
  tensors = interop_hf.tensors_from_params(amap, arch, padded.config, params_p)
  assert set(tensors) == set(ref_t)
  for name in ref_t:
    np.testing.assert_array_equal(tensors[name], ref_t[name], err_msg=name)
  interop_hf.save(padded.config, 'decoder', params_p, str(tmp_path), architecture=arch)
  back = interop_hf.load(str(tmp_path), config_overrides=dict(vocab_pad_multiple=64))
  assert back.config.padded_vocab_size == 128
  assert back.params['token_embed']['embedding'].shape == (128, 32)
  np.testing.assert_allclose(run(back.model, back.params), ref, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match='vocab_pad_multiple=-1 must be >= 0'):
    run(models.build('decoder', variant, **kw, vocab_pad_multiple=-1), params)


def test_benchmark_variants_flag():
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
  import throughput
  args = throughput.parse_args(['--variants', 'default;mask=lengths,loss_chunk=1024,vocab_pad=128'])
  assert args.variant_list == [{}, dict(mask='lengths', loss_chunk=1024, vocab_pad=128)]
  assert throughput.parse_variants('logits=compute') == [dict(logits='compute')]
  assert throughput.parse_variants('dropout=hash,logits=compute') == [
      dict(dropout='hash', logits='compute')]
  gpt, bert = dict(family='decoder', objective='clm'), dict(family='encoder', objective='mlm')
  assert throughput.applied_options(gpt, dict(logits='compute')) == dict(logits='compute')
  asked = dict(logits='compute', vocab_pad=128, dropout='hash')
  assert throughput.applied_options(bert, asked) == dict(logits='compute', dropout='hash')
  with pytest.raises(ValueError, match='logits='):
    throughput.parse_variants('logits=bf16')
  ours = [s for s in throughput.build_plan(args) if s['kind'] == 'ours']
  assert len(ours) == 2 * 3  # 2 variants x 3 workloads
  with pytest.raises(ValueError, match="'flash' in 'flash=1'; keys: mask, loss_chunk, vocab_pad"):
    throughput.parse_variants('flash=1')
  with pytest.raises(ValueError, match="prng='philox'; use one of threefry2x32, rbg, unsafe_rbg"):
    throughput.parse_variants('prng=philox')
  # dropout=hash reaches the model built for the row.
  import throughput_ours
  wl = throughput.workload_spec('gpt2_small', throughput.parse_args(['--tiny']))
  spec = dict(options=dict(dropout='hash'), dropout=0.1, remat=False)
  assert throughput_ours._build(wl, spec, None, 'float32')[0].config.dropout_impl == 'hash'
  # slab=R reaches BERT's MLM options (R rows share a scored slab); GPT-2 has no slab.
  assert throughput.parse_variants('slab=32') == [dict(slab=32)]
  assert throughput.applied_options(gpt, dict(slab=32)) == {}
  bert_wl = throughput.workload_spec('bert_base', throughput.parse_args(['--tiny']))
  assert throughput.applied_options(bert_wl, dict(slab=32)) == dict(slab=32)
  corrupt_fn = throughput_ours._build(bert_wl, dict(options=dict(slab=2), dropout=0.1,
                                                    remat=False), None, 'float32')[2]
  assert corrupt_fn.keywords['options'].slab_rows == 2
  # loss_grad=forward reaches GPT-2's CLM options (with the chunked loss it needs); BERT has none.
  both = dict(loss_chunk=256, loss_grad='forward')
  assert throughput.parse_variants('loss_chunk=256,loss_grad=forward') == [both]
  assert throughput.applied_options(bert_wl, both) == {}
  corrupt_fn = throughput_ours._build(wl, dict(options=both, dropout=0.1, remat=False), None,
                                      'float32')[2]
  assert corrupt_fn.keywords['options'].loss_grad_in_forward
  with pytest.raises(ValueError, match="loss_grad='fused'; use one of recompute, forward"):
    throughput.parse_variants('loss_grad=fused')
  # remat=POLICY rematerialises every block of either family with that policy.
  for workload in (wl, bert_wl):
    model = throughput_ours._build(workload, dict(options=dict(remat='dots'), dropout=0.1,
                                                  remat=False), None, 'float32')[0]
    assert model.config.remat and model.config.remat_policy == 'dots'
  opts = args.variant_list[1]
  bert = throughput.workload_spec('bert_base', args)
  gpt = throughput.workload_spec('gpt2_small', args)
  assert throughput.applied_options(bert, opts) == dict(mask='lengths')
  assert throughput.applied_options(gpt, opts) == opts
  # Option sets that differ only in keys a workload lacks give that workload one row, not two.
  args = throughput.parse_args(['--workloads', 'bert_base,gpt2_small', '--variants',
                                'mask=lengths,prng=rbg;mask=lengths,prng=rbg,vocab_pad=128'])
  ours = [(s['workload']['name'], s['options']) for s in throughput.build_plan(args)
          if s['kind'] == 'ours']
  assert ours == [('bert_base', dict(mask='lengths', prng='rbg')),
                  ('gpt2_small', dict(mask='lengths', prng='rbg')),
                  ('gpt2_small', dict(mask='lengths', prng='rbg', vocab_pad=128))]
  checks = throughput.build_plan(throughput.parse_args(['--checks', 'matmul']))[0]
  assert checks == dict(kind='checks', tiny=False, cudnn=False)


def test_packed_mask_form_on_cudnn_is_refused_in_one_line():
  """cuDNN's packed layout gave NaN gradients on an H100 (docs/benchmarks.md): refused at trace
  time, before any kernel runs, with the fix named (the check happens before dispatch, so CPU
  sees it too)."""
  seg = jnp.array([[1, 1, 2, 2, 0, 0]])
  q = jnp.ones((1, 6, 2, 4), jnp.bfloat16)
  mask = masks.SegmentMask(seg, causal=True, form='packed', max_segments=2)
  with pytest.raises(ValueError, match="mask_form='packed' with attention_impl='cudnn' gives NaN "
                                       "gradients.*use mask_form='dense'"):
    attention.dot_product_attention(q, q, q, mask, implementation='cudnn')
