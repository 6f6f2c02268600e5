"""ALBERT: parameter counts (paper Table 1/4, HF), one copy of shared weights whose gradient sums
over the layers, factorised embedding, HF `AlbertForPreTraining` logit parity, runlocal training."""
from __future__ import annotations

import os
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import metrics as metrics_lib
from ptm_jax import models, train
from ptm_jax.models import albert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=97, embedding_size=8, embed_dim=32, num_layers=3, num_heads=4, mlp_dim=40,
            max_position_embeddings=16)
B, L = 3, 12
ATOL = 1e-4


def _batch(seed=0, lengths=(12, 9, 5)):
  rng = np.random.default_rng(seed)
  valid = np.arange(L)[None, :] < np.asarray(lengths)[:, None]
  tokens = np.where(valid, rng.integers(5, TINY['vocab_size'], (B, L)), 0).astype(np.int32)
  types = np.where(valid & (np.arange(L)[None, :] >= 4), 1, 0).astype(np.int32)
  positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()
  return tokens, valid.astype(np.int32), positions, types, valid


def _shapes(model, boxed=False):
  x = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, segment_ids=x + 1,
                                             positions=x))['params']
  return shapes if boxed else flax.core.meta.unbox(shapes)


def _count(model) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(_shapes(model)))


def _random_params(model, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.asarray((1.0 if p[-1].key == 'scale' else 0.0)
                               + 0.1 * rng.standard_normal(v.shape), v.dtype), _shapes(model))


# ------------------------------------------------------------------------------- sizes
# Exact counts of HF AlbertForPreTraining(AlbertConfig(vocab 30000, E 128, ...)) (tied decoder).
COUNTS = {'base': 11_813_810, 'large': 17_847_474}


@pytest.mark.parametrize('variant', ['base', 'large'])
def test_parameter_counts_match_paper_and_hf(variant):
  model = models.build('albert', variant)
  assert _count(model) == COUNTS[variant]  # paper Table 1: 12M / 18M
  transformers = pytest.importorskip('transformers')
  cfg = model.config
  hf = transformers.AlbertForPreTraining(transformers.AlbertConfig(
      vocab_size=cfg.vocab_size, embedding_size=cfg.embedding_size, hidden_size=cfg.embed_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_position_embeddings))
  assert sum(p.numel() for p in hf.parameters()) == COUNTS[variant]


def test_sharing_ablation_counts():
  # Paper Table 4 (ALBERT-base, E=128): shared-attention 64M, shared-FFN 38M, not-shared 89M.
  counts = {s: _count(models.build('albert', 'base', share=s)) for s in ('attention', 'ffn', 'none')}
  assert counts == {'attention': 63_777_458, 'ffn': 37_816_754, 'none': 89_780_402}
  with pytest.raises(ValueError, match='share'):
    albert.Config(share='layers')


@pytest.mark.parametrize('share,expected', [
    ('all', {'shared_attention', 'shared_ffn'}),
    ('attention', {'shared_attention', 'ffn_0', 'ffn_1', 'ffn_2'}),
    ('ffn', {'attention_0', 'attention_1', 'attention_2', 'shared_ffn'}),
    ('none', {'attention_0', 'attention_1', 'attention_2', 'ffn_0', 'ffn_1', 'ffn_2'}),
])
def test_shared_layers_are_one_set_of_weights(share, expected):
  params = _shapes(albert.Model(albert.Config(**TINY, share=share)))
  layer_keys = {k for k in params if k.startswith(('shared_', 'attention_', 'ffn_'))}
  assert layer_keys == expected
  # Factorised embedding: E-wide tables, an E -> H projection, an H -> E MLM transform.
  assert params['token_embed']['embedding'].shape == (97, 8)
  assert params['embed_project']['kernel'].shape == (8, 32)
  assert params['mlm_head']['dense']['kernel'].shape == (32, 8)


def test_shared_gradient_is_the_sum_over_layers():
  """'all' equals 'none' with every layer holding the same weights; its gradient is their sum."""
  tokens, seg, pos, types, valid = _batch()
  shared = albert.Model(albert.Config(**TINY, share='all'))
  unshared = albert.Model(albert.Config(**TINY, share='none'))
  p_shared = _random_params(shared)
  p_unshared = {k: v for k, v in p_shared.items() if not k.startswith('shared_')}
  for i in range(TINY['num_layers']):
    p_unshared[f'attention_{i}'] = p_shared['shared_attention']
    p_unshared[f'ffn_{i}'] = p_shared['shared_ffn']
  w = jax.random.normal(jax.random.key(1), (B, L, TINY['vocab_size']))

  def loss(model):
    def fn(p):
      out = model.apply({'params': p}, jnp.asarray(tokens), segment_ids=jnp.asarray(seg),
                        positions=jnp.asarray(pos), token_types=jnp.asarray(types))
      return jnp.sum(out['logits'] * w) + jnp.sum(out['sop_logits'])
    return fn

  (l1, g1), (l2, g2) = jax.jit(lambda a, b: (jax.value_and_grad(loss(shared))(a),
                                              jax.value_and_grad(loss(unshared))(b)))(
                                                  p_shared, p_unshared)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for part, per_layer in (('shared_attention', 'attention'), ('shared_ffn', 'ffn')):
    summed = jax.tree.map(lambda *g: sum(g), *[g2[f'{per_layer}_{i}']
                                               for i in range(TINY['num_layers'])])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 g1[part], summed)
    # Every layer contributes: no single layer's gradient is the whole sum.
    first = g2[f'{per_layer}_0']['norm']['scale']
    assert not np.allclose(first, g1[part]['norm']['scale'], atol=1e-6)


def test_outputs_axes_remat_and_sparse_logits():
  model = models.build('albert', 'runlocal', vocab_size=97)
  tokens, seg, pos, types, _ = _batch()
  out = jax.eval_shape(model.init_with_output, jax.random.key(0), tokens, segment_ids=seg,
                       positions=pos)[0]
  h = model.config.embed_dim
  assert out['logits'].shape == (B, L, 97) and out['logits'].dtype == jnp.float32
  assert out['hidden'].shape == (B, L, h) and out['pooled'].shape == (B, h)
  assert out['sop_logits'].shape == (B, 2)
  boxed = _shapes(model, boxed=True)
  for leaf in jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim, leaf
  tiny = albert.Model(albert.Config(**TINY))
  params = _random_params(tiny)
  kw = dict(segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos),
            token_types=jnp.asarray(types))
  where = jnp.asarray([[0, 3, 7]] * B, jnp.int32)
  remat_model = albert.Model(albert.Config(**TINY, remat=True))
  full, remat, sparse = jax.jit(lambda p, t: (
      tiny.apply({'params': p}, t, **kw), remat_model.apply({'params': p}, t, **kw),
      tiny.apply({'params': p}, t, logits_positions=where, **kw)))(params, jnp.asarray(tokens))
  np.testing.assert_allclose(full['logits'], remat['logits'], atol=1e-5)
  np.testing.assert_allclose(sparse['logits'], jnp.take_along_axis(
      full['logits'], where[..., None], axis=1), atol=1e-5)


# ------------------------------------------------------------------------------- HF parity
def albert_params_from_hf(sd: dict, cfg: albert.Config) -> dict:
  """HF `AlbertForPreTraining` state dict -> our albert params (share 'all' or 'none')."""
  n, h = cfg.num_heads, cfg.resolved_head_dim
  g = lambda k: sd[k].detach().cpu().numpy().astype(np.float32)
  ln = lambda k: {'scale': g(k + '.weight'), 'bias': g(k + '.bias')}
  lin = lambda k: {'kernel': g(k + '.weight').T, 'bias': g(k + '.bias')}
  p = {
      'token_embed': {'embedding': g('albert.embeddings.word_embeddings.weight')},
      'position_embed': {'embedding': g('albert.embeddings.position_embeddings.weight')},
      'type_embed': {'embedding': g('albert.embeddings.token_type_embeddings.weight')},
      'embed_norm': ln('albert.embeddings.LayerNorm'),
      'embed_project': lin('albert.encoder.embedding_hidden_mapping_in'),
      'pooler': lin('albert.pooler'),
      'mlm_head': {'dense': lin('predictions.dense'), 'norm': ln('predictions.LayerNorm'),
                   'bias': g('predictions.bias')},
      'sop_head': lin('sop_classifier.classifier'),
  }

  def group(i):
    pre = f'albert.encoder.albert_layer_groups.{i}.albert_layers.0.'
    qkv = lambda name: {'kernel': g(pre + f'attention.{name}.weight').T.reshape(-1, n, h),
                        'bias': g(pre + f'attention.{name}.bias').reshape(n, h)}
    attn = {'attention': {'query': qkv('query'), 'key': qkv('key'), 'value': qkv('value'),
                          'out': {'kernel': g(pre + 'attention.dense.weight').T.reshape(n, h, -1),
                                  'bias': g(pre + 'attention.dense.bias')}},
            'norm': ln(pre + 'attention.LayerNorm')}
    ffn = {'mlp': {'wi': lin(pre + 'ffn'), 'wo': lin(pre + 'ffn_output')},
           'norm': ln(pre + 'full_layer_layer_norm')}
    return attn, ffn

  if cfg.share == 'all':
    p['shared_attention'], p['shared_ffn'] = group(0)
  else:
    for i in range(cfg.num_layers):
      p[f'attention_{i}'], p[f'ffn_{i}'] = group(i)
  return p


@pytest.mark.parametrize('share', ['all', 'none'])
def test_hf_albert_parity(share):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  cfg = albert.Config(**TINY, share=share)
  hf = transformers.AlbertForPreTraining(transformers.AlbertConfig(
      vocab_size=cfg.vocab_size, embedding_size=cfg.embedding_size, hidden_size=cfg.embed_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_position_embeddings,
      num_hidden_groups=1 if share == 'all' else cfg.num_layers, hidden_act='gelu_new',
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
      layer_norm_eps=cfg.layer_norm_eps, attn_implementation='eager'))
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():  # every weight redrawn (norm gains near 1) so a wrong mapping shows
    for name, p in hf.named_parameters():
      gain = name.endswith('weight') and 'norm' in name.lower()
      p.copy_((1.0 if gain else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
  hf.eval()
  tokens, seg, pos, types, valid = _batch(1)
  with torch.no_grad():
    ref = hf(input_ids=torch.as_tensor(tokens, dtype=torch.long),
             attention_mask=torch.as_tensor(seg, dtype=torch.long),
             token_type_ids=torch.as_tensor(types, dtype=torch.long))
  params = albert_params_from_hf(hf.state_dict(), cfg)
  model = albert.Model(cfg)
  template = _shapes(model)
  flat_t, flat_o = (flax.traverse_util.flatten_dict(t) for t in (template, params))
  assert set(flat_o) == set(flat_t), set(flat_o) ^ set(flat_t)
  assert all(flat_o[k].shape == v.shape for k, v in flat_t.items())
  out = model.apply({'params': params}, jnp.asarray(tokens), segment_ids=jnp.asarray(seg),
                    positions=jnp.asarray(pos), token_types=jnp.asarray(types))
  mlm_err = np.abs(np.asarray(out['logits']) - ref.prediction_logits.numpy())[valid].max()
  sop_err = np.abs(np.asarray(out['sop_logits']) - ref.sop_logits.numpy()).max()
  print(f'albert share={share}: max |MLM diff| {mlm_err:.2e}, max |SOP diff| {sop_err:.2e}')
  assert mlm_err < ATOL and sop_err < ATOL


# ------------------------------------------------------------------------------- training
def test_albert_runlocal_loss_falls(data_dir, tmp_path):
  sys.path.insert(0, REPO)
  from ptm_jax.configs import load_experiment as _load_experiment
  cfg = _load_experiment(os.path.join(REPO, 'experiments/albert.py:runlocal'))
  assert cfg.model.family == 'albert' and cfg.objective.name == 'mlm_sop'
  assert cfg.data.pairs == 'sop' and cfg.optim.name == 'lamb'
  cfg.mesh.num_devices = 1
  cfg.data.seq_len = 64
  cfg.optim.warmup_steps = 5
  cfg.train.update(steps=30, batch_size=8, log_every=5, eval_every=0, checkpoint_every=1000)
  train.train(cfg, str(tmp_path))
  records = metrics_lib.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 6 and all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.3, losses
  assert {'mlm_loss', 'sop_loss', 'sop_accuracy'} <= set(records[-1])
