"""ALBERT (`AlbertForPreTraining`, `AlbertForMaskedLM`, `AlbertModel`) <-> our `albert` family.

Factorised embedding: HF's E-wide tables + LayerNorm are ours; `encoder.embedding_hidden_mapping_in`
(E -> H) is our `embed_project`. The MLM head (`predictions.dense` H -> E, LayerNorm, tied decoder
+ `predictions.bias`) is our `mlm_head`; `sop_classifier.classifier` is our `sop_head`.

Cross-layer sharing: HF groups layers into `num_hidden_groups` groups of `inner_group_num` layers
each; layer i uses group `i // (num_layers / num_groups)`. Our `share='all'` is one group
(`num_hidden_groups=1`), `share='none'` one group per layer (`num_hidden_groups=num_layers`); an
HF layer's attention sub-layer (`attention.*`, its LayerNorm included) is our `*attention*`, its
`ffn`/`ffn_output`/`full_layer_layer_norm` our `*ffn*`. Other groupings (2 <= groups < layers,
`inner_group_num > 1`) and our `share='attention'|'ffn'` have no counterpart: one-line error.
`AlbertForMaskedLM` has no pooler (HF builds it without); ours is then initialised fresh.
"""
from __future__ import annotations

from ptm_jax.interop.maps import (ArchMap, Getter, activation_from_hf, dense, dense_out, ln, ln_out,
                                  require)

BASE = 'albert.'


def _config_from_hf(c: dict) -> dict:
  require(c.get('position_embedding_type', 'absolute') == 'absolute',
          f"ALBERT position_embedding_type={c.get('position_embedding_type')!r} is not supported "
          "(only 'absolute')")
  require(c.get('inner_group_num', 1) == 1,
          f"ALBERT inner_group_num={c.get('inner_group_num')} is not supported (only 1)")
  layers, groups = c['num_hidden_layers'], c.get('num_hidden_groups', 1)
  require(groups in (1, layers), f'ALBERT num_hidden_groups={groups} is not supported: use 1 '
          f"(share='all') or num_hidden_layers={layers} (share='none')")
  width, heads = c['hidden_size'], c['num_attention_heads']
  return dict(
      vocab_size=c['vocab_size'], embedding_size=c.get('embedding_size', 128), embed_dim=width,
      num_layers=layers, num_heads=heads, head_dim=None, mlp_dim=c['intermediate_size'],
      share='all' if groups == 1 else 'none',
      max_position_embeddings=c.get('max_position_embeddings', 512),
      type_vocab_size=c.get('type_vocab_size', 2), position_offset=0,
      layer_norm_eps=c.get('layer_norm_eps', 1e-12),
      activation=activation_from_hf(c.get('hidden_act', 'gelu_new')),
      dropout_rate=c.get('hidden_dropout_prob', 0.0),
      attention_dropout_rate=c.get('attention_probs_dropout_prob', 0.0),
      initializer_range=c.get('initializer_range', 0.02))


def _check_share(cfg) -> None:
  require(cfg.share in ('all', 'none'), f"albert share={cfg.share!r} has no HF ALBERT equivalent "
          "(HF shares whole layers: use 'all' or 'none')")


def _config_to_hf(cfg) -> dict:
  require(cfg.positions == 'learned',
          f'positions={cfg.positions!r} has no ALBERT equivalent')
  _check_share(cfg)
  require(cfg.head_dim in (None, cfg.embed_dim // cfg.num_heads),
          f'head_dim={cfg.head_dim} != embed_dim / num_heads has no ALBERT equivalent')
  require(cfg.position_offset == 0, 'position_offset > 0 has no ALBERT equivalent')
  require(cfg.type_vocab_size >= 1, 'type_vocab_size=0 has no ALBERT equivalent')
  return dict(
      model_type='albert', vocab_size=cfg.vocab_size, embedding_size=cfg.embedding_size,
      hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
      num_hidden_groups=1 if cfg.share == 'all' else cfg.num_layers, inner_group_num=1,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
      max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
      layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.activation,
      hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      initializer_range=cfg.initializer_range, position_embedding_type='absolute',
      tie_word_embeddings=True, pad_token_id=0)


def _group_prefix(g: int) -> str:
  return f'{BASE}encoder.albert_layer_groups.{g}.albert_layers.0.'


def _sublayers_from_hf(get: Getter, pre: str, n: int, h: int) -> tuple[dict, dict]:
  def heads(name: str) -> dict:
    return {'kernel': get(f'{pre}attention.{name}.weight').T.reshape(-1, n, h),
            'bias': get(f'{pre}attention.{name}.bias').reshape(n, h)}

  attention = {
      'attention': {'query': heads('query'), 'key': heads('key'), 'value': heads('value'),
                    'out': {'kernel': get(pre + 'attention.dense.weight').T.reshape(n, h, -1),
                            'bias': get(pre + 'attention.dense.bias')}},
      'norm': ln(get, pre + 'attention.LayerNorm')}
  ffn = {'mlp': {'wi': dense(get, pre + 'ffn'), 'wo': dense(get, pre + 'ffn_output')},
         'norm': ln(get, pre + 'full_layer_layer_norm')}
  return attention, ffn


def _sublayers_to_hf(attention: dict, ffn: dict, pre: str) -> dict:
  a = attention['attention']
  out = {}
  for name in ('query', 'key', 'value'):
    d, n, h = a[name]['kernel'].shape
    out[f'{pre}attention.{name}.weight'] = a[name]['kernel'].reshape(d, n * h).T
    out[f'{pre}attention.{name}.bias'] = a[name]['bias'].reshape(n * h)
  n, h, d = a['out']['kernel'].shape
  out[pre + 'attention.dense.weight'] = a['out']['kernel'].reshape(n * h, d).T
  out[pre + 'attention.dense.bias'] = a['out']['bias']
  out.update(ln_out(attention['norm'], pre + 'attention.LayerNorm'))
  out.update(dense_out(ffn['mlp']['wi'], pre + 'ffn'))
  out.update(dense_out(ffn['mlp']['wo'], pre + 'ffn_output'))
  out.update(ln_out(ffn['norm'], pre + 'full_layer_layer_norm'))
  return out


def _params_from_hf(get: Getter, cfg) -> dict:
  n, h = cfg.num_heads, cfg.resolved_head_dim
  e = BASE + 'embeddings.'
  p = {
      'token_embed': {'embedding': get(e + 'word_embeddings.weight')},
      'position_embed': {'embedding': get(e + 'position_embeddings.weight')},
      'type_embed': {'embedding': get(e + 'token_type_embeddings.weight')},
      'embed_norm': ln(get, e + 'LayerNorm'),
      'embed_project': dense(get, BASE + 'encoder.embedding_hidden_mapping_in'),
      'pooler': dense(get, BASE + 'pooler'),
      'mlm_head': {'dense': dense(get, 'predictions.dense'),
                   'norm': ln(get, 'predictions.LayerNorm'), 'bias': get('predictions.bias')},
      'sop_head': dense(get, 'sop_classifier.classifier'),
  }
  if cfg.share == 'all':
    p['shared_attention'], p['shared_ffn'] = _sublayers_from_hf(get, _group_prefix(0), n, h)
  else:
    for i in range(cfg.num_layers):
      p[f'attention_{i}'], p[f'ffn_{i}'] = _sublayers_from_hf(get, _group_prefix(i), n, h)
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  _check_share(cfg)
  e = BASE + 'embeddings.'
  out = {e + 'word_embeddings.weight': p['token_embed']['embedding'],
         e + 'position_embeddings.weight': p['position_embed']['embedding'],
         e + 'token_type_embeddings.weight': p['type_embed']['embedding']}
  out.update(ln_out(p['embed_norm'], e + 'LayerNorm'))
  out.update(dense_out(p['embed_project'], BASE + 'encoder.embedding_hidden_mapping_in'))
  if cfg.share == 'all':
    out.update(_sublayers_to_hf(p['shared_attention'], p['shared_ffn'], _group_prefix(0)))
  else:
    for i in range(cfg.num_layers):
      out.update(_sublayers_to_hf(p[f'attention_{i}'], p[f'ffn_{i}'], _group_prefix(i)))
  out.update(dense_out(p['pooler'], BASE + 'pooler'))
  head = p['mlm_head']
  out.update(dense_out(head['dense'], 'predictions.dense'))
  out.update(ln_out(head['norm'], 'predictions.LayerNorm'))
  out['predictions.bias'] = head['bias']
  out.update(dense_out(p['sop_head'], 'sop_classifier.classifier'))
  return out


ALBERT = ArchMap(
    model_type='albert', family='albert', base_prefix=BASE,
    architectures={'AlbertForPreTraining': ('pooler', 'mlm_head', 'sop_head'),
                   'AlbertForMaskedLM': ('mlm_head',),
                   'AlbertModel': ('pooler',)},
    heads={'pooler': BASE + 'pooler.', 'mlm_head': 'predictions.', 'sop_head': 'sop_classifier.'},
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf,
    params_to_hf=_params_to_hf,
    matches=lambda cfg: True,  # the family's only HF class; config_to_hf names what it cannot write
    default_architecture='AlbertForPreTraining',
    # Older hub files store the tied decoder (`predictions.decoder.*`, = the word table and bias).
    ignore_suffixes=('embeddings.position_ids', 'embeddings.token_type_ids',
                     'predictions.decoder.weight', 'predictions.decoder.bias'),
)

MAPS = [ALBERT]
