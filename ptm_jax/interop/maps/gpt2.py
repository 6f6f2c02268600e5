"""GPT-2 (`GPT2LMHeadModel`, `GPT2Model`) <-> our `decoder` family with learned positions.

GPT-2 uses `Conv1D` layers whose weights are stored `[in, out]` (the transpose of `nn.Linear`),
so kernels are copied without a transpose; `c_attn` packs q, k, v along its output axis.
The LM head is tied to `wte`; a stored `lm_head.weight` copy is ignored. A config with
`vocab_pad_multiple` gets `wte` padded with zero rows on import and sliced back on export.
"""
from __future__ import annotations

import jax.numpy as jnp

from ptm_jax.interop.maps import ArchMap, Getter, activation_from_hf, ln, ln_out, require
from ptm_jax.models.decoder import pad_vocab_rows


def _config_from_hf(c: dict) -> dict:
  for flag in ('scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn', 'add_cross_attention'):
    require(not c.get(flag, False), f'GPT-2 with {flag}=True is not supported')
  require(c.get('scale_attn_weights', True), 'GPT-2 with scale_attn_weights=False is not supported')
  require(c.get('tie_word_embeddings', True), 'GPT-2 with untied embeddings is not supported')
  width = c['n_embd']
  return dict(
      vocab_size=c['vocab_size'], embed_dim=width, num_layers=c['n_layer'], num_heads=c['n_head'],
      num_kv_heads=None, head_dim=None, mlp_dim=c.get('n_inner') or 4 * width,
      max_position_embeddings=c['n_positions'], positions='learned', norm='layernorm',
      layer_norm_eps=c.get('layer_norm_epsilon', 1e-5), mlp='mlp',
      activation=activation_from_hf(c.get('activation_function', 'gelu_new')), use_bias=True,
      tie_embeddings=True, dropout_rate=c.get('resid_pdrop', 0.1),
      attention_dropout_rate=c.get('attn_pdrop', 0.1),
      initializer_range=c.get('initializer_range', 0.02), scaled_residual_init=True)


def _matches(cfg) -> bool:
  return (cfg.positions == 'learned' and cfg.norm == 'layernorm' and cfg.mlp == 'mlp'
          and cfg.use_bias and cfg.tie_embeddings and not getattr(cfg, 'moe_experts', 0))


def _config_to_hf(cfg) -> dict:
  require(_matches(cfg), 'only learned-position, LayerNorm, MLP, biased, tied decoders are GPT-2')
  require(cfg.num_kv_heads in (None, cfg.num_heads), 'GPT-2 has no grouped-query attention')
  require(cfg.head_dim in (None, cfg.embed_dim // cfg.num_heads),
          f'head_dim={cfg.head_dim} != embed_dim / num_heads has no GPT-2 equivalent')
  return dict(
      model_type='gpt2', vocab_size=cfg.vocab_size, n_embd=cfg.embed_dim, n_layer=cfg.num_layers,
      n_head=cfg.num_heads, n_inner=cfg.mlp_dim, n_positions=cfg.max_position_embeddings,
      layer_norm_epsilon=cfg.layer_norm_eps, activation_function=cfg.activation,
      resid_pdrop=cfg.dropout_rate, embd_pdrop=cfg.dropout_rate,
      attn_pdrop=cfg.attention_dropout_rate, initializer_range=cfg.initializer_range,
      scale_attn_weights=True, tie_word_embeddings=True)


def _params_from_hf(get: Getter, cfg) -> dict:
  n, h, d = cfg.num_heads, cfg.resolved_head_dim, cfg.embed_dim
  conv = lambda name: {'kernel': get(name + '.weight'), 'bias': get(name + '.bias')}
  p = {'token_embed': {'embedding': pad_vocab_rows(get('transformer.wte.weight'), cfg)},
       'position_embed': {'embedding': get('transformer.wpe.weight')},
       'final_norm': ln(get, 'transformer.ln_f')}
  for i in range(cfg.num_layers):
    pre = f'transformer.h.{i}.'
    w_qkv, b_qkv = get(pre + 'attn.c_attn.weight'), get(pre + 'attn.c_attn.bias')  # [D, 3D]
    attn = {name: {'kernel': w_qkv[:, j * n * h:(j + 1) * n * h].reshape(d, n, h),
                   'bias': b_qkv[j * n * h:(j + 1) * n * h].reshape(n, h)}
            for j, name in enumerate(('query', 'key', 'value'))}
    attn['out'] = {'kernel': get(pre + 'attn.c_proj.weight').reshape(n, h, d),
                   'bias': get(pre + 'attn.c_proj.bias')}
    p[f'layers_{i}'] = {
        'attention': attn, 'attention_norm': ln(get, pre + 'ln_1'),
        'mlp_norm': ln(get, pre + 'ln_2'),
        'mlp': {'wi': conv(pre + 'mlp.c_fc'), 'wo': conv(pre + 'mlp.c_proj')},
    }
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  out = {'transformer.wte.weight': p['token_embed']['embedding'][:cfg.vocab_size],
         'transformer.wpe.weight': p['position_embed']['embedding']}
  out.update(ln_out(p['final_norm'], 'transformer.ln_f'))
  for i in range(cfg.num_layers):
    pre, layer = f'transformer.h.{i}.', p[f'layers_{i}']
    a = layer['attention']
    d = a['query']['kernel'].shape[0]
    out[pre + 'attn.c_attn.weight'] = jnp.concatenate(
        [a[k]['kernel'].reshape(d, -1) for k in ('query', 'key', 'value')], axis=1)
    out[pre + 'attn.c_attn.bias'] = jnp.concatenate(
        [a[k]['bias'].reshape(-1) for k in ('query', 'key', 'value')], axis=0)
    out[pre + 'attn.c_proj.weight'] = a['out']['kernel'].reshape(-1, d)
    out[pre + 'attn.c_proj.bias'] = a['out']['bias']
    out.update(ln_out(layer['attention_norm'], pre + 'ln_1'))
    out.update(ln_out(layer['mlp_norm'], pre + 'ln_2'))
    for ours, theirs in (('wi', 'c_fc'), ('wo', 'c_proj')):
      out[f'{pre}mlp.{theirs}.weight'] = layer['mlp'][ours]['kernel']
      out[f'{pre}mlp.{theirs}.bias'] = layer['mlp'][ours]['bias']
  return out


MAPS = [ArchMap(
    model_type='gpt2', family='decoder', base_prefix='transformer.',
    architectures={'GPT2LMHeadModel': (), 'GPT2Model': ()}, heads={},
    config_from_hf=_config_from_hf, config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf, params_to_hf=_params_to_hf, matches=_matches,
    default_architecture='GPT2LMHeadModel',
    ignore_suffixes=('.attn.bias', '.attn.masked_bias', 'lm_head.weight'),
)]
