"""DistilBERT (`DistilBertForMaskedLM`, `DistilBertModel`) <-> our `encoder` family.

DistilBERT is BERT's post-LN encoder without token types (`type_vocab_size=0`: no `type_embed`)
and without a pooler / NSP head (ours are initialised fresh on import and never exported). Names:
`transformer.layer.{i}.attention.{q,k,v,out}_lin`, `sa_layer_norm`, `ffn.lin1/lin2`,
`output_layer_norm`; the MLM head `vocab_transform` (dense) -> activation -> `vocab_layer_norm`
-> `vocab_projector` (tied to the word table, + bias) is our `mlm_head`. Every DistilBERT
LayerNorm uses eps 1e-12 (hard-coded in HF), so `layer_norm_eps=1e-12`.
`sinusoidal_pos_embds=True` files import exactly: HF writes the sinusoid table into
`position_embeddings.weight`, which we read as a learned table (exported with
`sinusoidal_pos_embds=False`, the same numbers).
"""
from __future__ import annotations

from ptm_jax.interop.maps import (ArchMap, Getter, activation_from_hf, dense, dense_out, factorised,
                                  ln, ln_out, require)

BASE = 'distilbert.'


def _config_from_hf(c: dict) -> dict:
  width, heads = c['dim'], c['n_heads']
  return dict(
      vocab_size=c['vocab_size'], embed_dim=width, num_layers=c['n_layers'], num_heads=heads,
      head_dim=None, mlp_dim=c['hidden_dim'],
      max_position_embeddings=c.get('max_position_embeddings', 512), type_vocab_size=0,
      position_offset=0, layer_norm_eps=1e-12,
      activation=activation_from_hf(c.get('activation', 'gelu')),
      dropout_rate=c.get('dropout', 0.1), attention_dropout_rate=c.get('attention_dropout', 0.1),
      initializer_range=c.get('initializer_range', 0.02))


def _config_to_hf(cfg) -> dict:
  require(cfg.positions == 'learned',
          f'positions={cfg.positions!r} has no DistilBERT equivalent')
  require(cfg.head_dim in (None, cfg.embed_dim // cfg.num_heads),
          f'head_dim={cfg.head_dim} != embed_dim / num_heads has no DistilBERT equivalent')
  require(cfg.layer_norm_eps == 1e-12,
          f'layer_norm_eps={cfg.layer_norm_eps} has no DistilBERT equivalent (fixed 1e-12)')
  return dict(
      model_type='distilbert', vocab_size=cfg.vocab_size, dim=cfg.embed_dim,
      n_layers=cfg.num_layers, n_heads=cfg.num_heads, hidden_dim=cfg.mlp_dim,
      max_position_embeddings=cfg.max_position_embeddings, sinusoidal_pos_embds=False,
      activation=cfg.activation, dropout=cfg.dropout_rate,
      attention_dropout=cfg.attention_dropout_rate, initializer_range=cfg.initializer_range,
      tie_word_embeddings=True, pad_token_id=0)


def _layer_from_hf(get: Getter, pre: str, n: int, h: int) -> dict:
  def heads(name: str) -> dict:
    return {'kernel': get(f'{pre}attention.{name}.weight').T.reshape(-1, n, h),
            'bias': get(f'{pre}attention.{name}.bias').reshape(n, h)}

  return {
      'attention': {
          'query': heads('q_lin'), 'key': heads('k_lin'), 'value': heads('v_lin'),
          'out': {'kernel': get(pre + 'attention.out_lin.weight').T.reshape(n, h, -1),
                  'bias': get(pre + 'attention.out_lin.bias')}},
      'attention_norm': ln(get, pre + 'sa_layer_norm'),
      'mlp': {'wi': dense(get, pre + 'ffn.lin1'), 'wo': dense(get, pre + 'ffn.lin2')},
      'mlp_norm': ln(get, pre + 'output_layer_norm'),
  }


def _layer_to_hf(p: dict, pre: str) -> dict:
  a = p['attention']
  out = {}
  for ours, theirs in (('query', 'q_lin'), ('key', 'k_lin'), ('value', 'v_lin')):
    d, n, h = a[ours]['kernel'].shape
    out[f'{pre}attention.{theirs}.weight'] = a[ours]['kernel'].reshape(d, n * h).T
    out[f'{pre}attention.{theirs}.bias'] = a[ours]['bias'].reshape(n * h)
  n, h, d = a['out']['kernel'].shape
  out[pre + 'attention.out_lin.weight'] = a['out']['kernel'].reshape(n * h, d).T
  out[pre + 'attention.out_lin.bias'] = a['out']['bias']
  out.update(ln_out(p['attention_norm'], pre + 'sa_layer_norm'))
  out.update(dense_out(p['mlp']['wi'], pre + 'ffn.lin1'))
  out.update(dense_out(p['mlp']['wo'], pre + 'ffn.lin2'))
  out.update(ln_out(p['mlp_norm'], pre + 'output_layer_norm'))
  return out


def _params_from_hf(get: Getter, cfg) -> dict:
  n, h = cfg.num_heads, cfg.resolved_head_dim
  e = BASE + 'embeddings.'
  p = {
      'token_embed': {'embedding': get(e + 'word_embeddings.weight')},
      'position_embed': {'embedding': get(e + 'position_embeddings.weight')},
      'embed_norm': ln(get, e + 'LayerNorm'),
      'mlm_head': {'dense': dense(get, 'vocab_transform'), 'norm': ln(get, 'vocab_layer_norm'),
                   'bias': get('vocab_projector.bias')},
  }
  for i in range(cfg.num_layers):
    p[f'layers_{i}'] = _layer_from_hf(get, f'{BASE}transformer.layer.{i}.', n, h)
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  e = BASE + 'embeddings.'
  out = {e + 'word_embeddings.weight': p['token_embed']['embedding'],
         e + 'position_embeddings.weight': p['position_embed']['embedding']}
  out.update(ln_out(p['embed_norm'], e + 'LayerNorm'))
  for i in range(cfg.num_layers):
    out.update(_layer_to_hf(p[f'layers_{i}'], f'{BASE}transformer.layer.{i}.'))
  head = p['mlm_head']
  out.update(dense_out(head['dense'], 'vocab_transform'))
  out.update(ln_out(head['norm'], 'vocab_layer_norm'))
  out['vocab_projector.bias'] = head['bias']
  return out


DISTILBERT = ArchMap(
    model_type='distilbert', family='encoder', base_prefix=BASE,
    architectures={'DistilBertForMaskedLM': ('mlm_head',), 'DistilBertModel': ()},
    # 'vocab_' covers vocab_transform.*, vocab_layer_norm.* and vocab_projector.*.
    heads={'mlm_head': 'vocab_'},
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf,
    params_to_hf=_params_to_hf,
    matches=lambda cfg: (cfg.type_vocab_size == 0 and cfg.position_offset == 0 and not cfg.pre_norm
                         and not cfg.rtd_head and not factorised(cfg)),
    default_architecture='DistilBertForMaskedLM',
    ignore_suffixes=('embeddings.position_ids', 'vocab_projector.weight'),
    unmapped=('pooler', 'nsp_head'),
)

MAPS = [DISTILBERT]
