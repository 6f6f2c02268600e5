"""BART (`BartForConditionalGeneration`, `BartModel`) <-> our `encdec` family in BART style.

Learned positions with BART's 2-row offset (the tables hold `max_position_embeddings + 2` rows),
`layernorm_embedding` in each stack, post-LN layers with biases, an LM head tied to `shared`
plus `final_logits_bias` (our `logits_bias`). Tied copies (`*.embed_tokens`, `lm_head`) are
ignored on import and left out on export, as transformers does. HF's LayerNorm epsilon is fixed
at 1e-5; `encoder_layerdrop`/`decoder_layerdrop` (training-time layer dropping) are not supported.
"""
from __future__ import annotations

import jax.numpy as jnp

from ptm_jax.interop.maps import (ArchMap, Getter, activation_from_hf, dense, dense_out, ln,
                                  ln_out, require)

_EPS = 1e-5  # torch.nn.LayerNorm's default, which BART does not configure


def _config_from_hf(c: dict) -> dict:
  heads, ffn = c.get('encoder_attention_heads', 16), c.get('encoder_ffn_dim', 4096)
  require(c.get('decoder_attention_heads', heads) == heads,
          'BART with different encoder/decoder head counts is not supported')
  require(c.get('decoder_ffn_dim', ffn) == ffn,
          'BART with different encoder/decoder FFN sizes is not supported')
  require(c.get('tie_word_embeddings', True), 'BART with an untied LM head is not supported')
  for flag in ('normalize_before', 'add_final_layer_norm'):  # mBART-style options
    require(not c.get(flag, False), f'BART with {flag}=True is not supported')
  return dict(
      vocab_size=c['vocab_size'], embed_dim=c['d_model'],
      num_encoder_layers=c.get('encoder_layers', 12),
      num_decoder_layers=c.get('decoder_layers', 12), num_heads=heads, head_dim=None,
      mlp_dim=ffn, positions='learned', max_position_embeddings=c['max_position_embeddings'],
      position_offset=2, pre_norm=False, norm='layernorm', layer_norm_eps=_EPS, embed_norm=True,
      final_norm=False, mlp='mlp', activation=activation_from_hf(c.get('activation_function',
                                                                         'gelu')),
      use_bias=True, scale_attention=True, scale_embedding=bool(c.get('scale_embedding', False)),
      tie_embeddings=True, scale_decoder_output=False, logits_bias=True,
      dropout_rate=float(c.get('dropout', 0.1)),
      attention_dropout_rate=float(c.get('attention_dropout', 0.0)),
      mlp_dropout_rate=float(c.get('activation_dropout', 0.0)), init='normal',
      initializer_range=float(c.get('init_std', 0.02)),
      decoder_start_id=int(c.get('decoder_start_token_id', 2)))


def _matches(cfg) -> bool:
  return (cfg.positions == 'learned' and cfg.norm == 'layernorm' and not cfg.pre_norm
          and cfg.embed_norm and not cfg.final_norm and cfg.mlp == 'mlp' and cfg.use_bias
          and cfg.scale_attention and cfg.tie_embeddings and not cfg.scale_decoder_output
          and cfg.logits_bias and not getattr(cfg, 'moe_experts', 0))


def _config_to_hf(cfg) -> dict:
  require(_matches(cfg), 'only learned-position, post-LN, biased, tied encdec configs are BART')
  require(cfg.position_offset == 2,
          f'BART position tables have offset 2, not {cfg.position_offset}')
  require(cfg.layer_norm_eps == _EPS, f'BART LayerNorm epsilon is fixed at {_EPS}')
  require(cfg.head_dim in (None, cfg.embed_dim // cfg.num_heads),
          f'head_dim={cfg.head_dim} != embed_dim / num_heads has no BART equivalent')
  return dict(
      model_type='bart', vocab_size=cfg.vocab_size, d_model=cfg.embed_dim,
      encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
      encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
      encoder_ffn_dim=cfg.mlp_dim, decoder_ffn_dim=cfg.mlp_dim,
      max_position_embeddings=cfg.max_position_embeddings,
      activation_function=cfg.activation, dropout=cfg.dropout_rate,
      attention_dropout=cfg.attention_dropout_rate, activation_dropout=cfg.mlp_dropout_rate,
      init_std=cfg.initializer_range, scale_embedding=cfg.scale_embedding,
      tie_word_embeddings=True, is_encoder_decoder=True, pad_token_id=1, bos_token_id=0,
      eos_token_id=2, decoder_start_token_id=cfg.decoder_start_id, forced_eos_token_id=2)


def _attention_from_hf(get: Getter, pre: str, n: int) -> dict:
  def heads(name: str) -> dict:
    w, b = get(f'{pre}.{name}.weight'), get(f'{pre}.{name}.bias')  # [N*H, D], [N*H]
    return {'kernel': w.T.reshape(w.shape[1], n, -1), 'bias': b.reshape(n, -1)}
  w = get(f'{pre}.out_proj.weight')  # [D, N*H]
  return {'query': heads('q_proj'), 'key': heads('k_proj'), 'value': heads('v_proj'),
          'out': {'kernel': w.T.reshape(n, -1, w.shape[0]), 'bias': get(f'{pre}.out_proj.bias')}}


def _attention_to_hf(a: dict, pre: str) -> dict:
  out = {}
  for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
    d, n, h = a[ours]['kernel'].shape
    out[f'{pre}.{theirs}.weight'] = a[ours]['kernel'].reshape(d, n * h).T
    out[f'{pre}.{theirs}.bias'] = a[ours]['bias'].reshape(n * h)
  n, h, d = a['out']['kernel'].shape
  out[f'{pre}.out_proj.weight'] = a['out']['kernel'].reshape(n * h, d).T
  out[f'{pre}.out_proj.bias'] = a['out']['bias']
  return out


def _params_from_hf(get: Getter, cfg) -> dict:
  n = cfg.num_heads
  p = {'token_embed': {'embedding': get('model.shared.weight')},
       'logits_bias': {'bias': get('final_logits_bias').reshape(-1)}}
  for stack, num in (('encoder', cfg.num_encoder_layers), ('decoder', cfg.num_decoder_layers)):
    base = f'model.{stack}.'
    p[f'{stack}_position_embed'] = {'embedding': get(base + 'embed_positions.weight')}
    p[f'{stack}_embed_norm'] = ln(get, base + 'layernorm_embedding')
    for i in range(num):
      pre = f'{base}layers.{i}.'
      layer = {'attention': _attention_from_hf(get, pre + 'self_attn', n),
               'attention_norm': ln(get, pre + 'self_attn_layer_norm'),
               'mlp': {'wi': dense(get, pre + 'fc1'), 'wo': dense(get, pre + 'fc2')},
               'mlp_norm': ln(get, pre + 'final_layer_norm')}
      if stack == 'decoder':
        layer['cross_attention'] = _attention_from_hf(get, pre + 'encoder_attn', n)
        layer['cross_attention_norm'] = ln(get, pre + 'encoder_attn_layer_norm')
      p[f'{stack}_layers_{i}'] = layer
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  out = {'model.shared.weight': p['token_embed']['embedding']}
  if 'logits_bias' in p:
    out['final_logits_bias'] = jnp.reshape(p['logits_bias']['bias'], (1, -1))
  for stack, num in (('encoder', cfg.num_encoder_layers), ('decoder', cfg.num_decoder_layers)):
    base = f'model.{stack}.'
    out[base + 'embed_positions.weight'] = p[f'{stack}_position_embed']['embedding']
    out.update(ln_out(p[f'{stack}_embed_norm'], base + 'layernorm_embedding'))
    for i in range(num):
      pre, layer = f'{base}layers.{i}.', p[f'{stack}_layers_{i}']
      out.update(_attention_to_hf(layer['attention'], pre + 'self_attn'))
      out.update(ln_out(layer['attention_norm'], pre + 'self_attn_layer_norm'))
      if stack == 'decoder':
        out.update(_attention_to_hf(layer['cross_attention'], pre + 'encoder_attn'))
        out.update(ln_out(layer['cross_attention_norm'], pre + 'encoder_attn_layer_norm'))
      out.update(dense_out(layer['mlp']['wi'], pre + 'fc1'))
      out.update(dense_out(layer['mlp']['wo'], pre + 'fc2'))
      out.update(ln_out(layer['mlp_norm'], pre + 'final_layer_norm'))
  return out


MAPS = [ArchMap(
    model_type='bart', family='encdec', base_prefix='model.',
    architectures={'BartForConditionalGeneration': ('logits_bias',), 'BartModel': ()},
    heads={'logits_bias': 'final_logits_bias'},
    config_from_hf=_config_from_hf, config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf, params_to_hf=_params_to_hf, matches=_matches,
    default_architecture='BartForConditionalGeneration',
    ignore_suffixes=('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
                     'lm_head.weight', 'encoder.version', 'decoder.version'),
)]
