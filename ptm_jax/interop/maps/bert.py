"""BERT and RoBERTa <-> our `encoder` family.

HF classes: BertModel / BertForPreTraining / BertForMaskedLM (also the sentence-transformers
layout, e.g. all-MiniLM-L6-v2, whose names have no `bert.` prefix) and RobertaModel /
RobertaForMaskedLM.

RoBERTa decisions:
- Positions: HF numbers non-pad tokens from `padding_idx + 1` (= 2): our encoder takes plain
  0-based positions and `position_offset = pad_token_id + 1`, so the table (514 rows for
  roberta-base) is imported unchanged and `max_position_embeddings` keeps HF's value (table size).
- Token types: RoBERTa keeps a `token_type_embeddings` table with `type_vocab_size = 1` whose only
  row HF adds to every token. We *keep* it as our `type_embed` with `type_vocab_size = 1` (token
  types default to 0), rather than folding it into the position table: the import stays a pure
  rename, it round-trips bit-exactly, and `type_vocab_size` is whatever the file says.
- RoBERTa has no NSP head: our `nsp_head` is freshly initialised on import and never exported.
"""
from __future__ import annotations

from ptm_jax.interop.maps import (ArchMap, Getter, activation_from_hf, dense, dense_out, factorised,
                                  ln, ln_out, require)


def _config_from_hf(c: dict, *, roberta: bool) -> dict:
  require(c.get('position_embedding_type', 'absolute') == 'absolute',
          f"position_embedding_type={c.get('position_embedding_type')!r} is not supported "
          "(only 'absolute')")
  require(not c.get('is_decoder', False), 'is_decoder=True BERT checkpoints are not supported')
  width, heads = c['hidden_size'], c['num_attention_heads']
  return dict(
      vocab_size=c['vocab_size'], embed_dim=width, num_layers=c['num_hidden_layers'],
      num_heads=heads, head_dim=None, mlp_dim=c['intermediate_size'],
      max_position_embeddings=c['max_position_embeddings'],
      type_vocab_size=c.get('type_vocab_size', 2),
      position_offset=(c.get('pad_token_id', 1) + 1) if roberta else 0,
      layer_norm_eps=c.get('layer_norm_eps', 1e-12),
      activation=activation_from_hf(c.get('hidden_act', 'gelu')),
      dropout_rate=c.get('hidden_dropout_prob', 0.1),
      attention_dropout_rate=c.get('attention_probs_dropout_prob', 0.1),
      initializer_range=c.get('initializer_range', 0.02))


def _config_to_hf(cfg, *, roberta: bool) -> dict:
  require(cfg.positions == 'learned',
          f'positions={cfg.positions!r} has no BERT/RoBERTa equivalent')
  require(cfg.head_dim in (None, cfg.embed_dim // cfg.num_heads),
          f'head_dim={cfg.head_dim} != embed_dim / num_heads has no BERT/RoBERTa equivalent')
  require(cfg.type_vocab_size >= 1, 'type_vocab_size=0 has no BERT/RoBERTa equivalent')
  out = dict(
      model_type='roberta' if roberta else 'bert', vocab_size=cfg.vocab_size,
      hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
      max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
      layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.activation,
      hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      initializer_range=cfg.initializer_range, position_embedding_type='absolute',
      tie_word_embeddings=True, is_decoder=False)
  if roberta:
    out.update(pad_token_id=cfg.position_offset - 1, bos_token_id=0, eos_token_id=2)
  else:
    out.update(pad_token_id=0)
  return out


def layer_from_hf(get: Getter, pre: str, n: int, h: int) -> dict:
  """One post-LN BERT layer (`{pre}attention.self.query...`) -> our block; ELECTRA shares it."""
  def heads(name: str) -> dict:
    return {'kernel': get(f'{pre}attention.self.{name}.weight').T.reshape(-1, n, h),
            'bias': get(f'{pre}attention.self.{name}.bias').reshape(n, h)}

  return {
      'attention': {
          'query': heads('query'), 'key': heads('key'), 'value': heads('value'),
          'out': {'kernel': get(pre + 'attention.output.dense.weight').T.reshape(n, h, -1),
                  'bias': get(pre + 'attention.output.dense.bias')}},
      'attention_norm': ln(get, pre + 'attention.output.LayerNorm'),
      'mlp': {'wi': dense(get, pre + 'intermediate.dense'), 'wo': dense(get, pre + 'output.dense')},
      'mlp_norm': ln(get, pre + 'output.LayerNorm'),
  }


def layer_to_hf(p: dict, pre: str) -> dict:
  """Our block -> one BERT layer's tensors (the inverse of `layer_from_hf`)."""
  a = p['attention']
  out = {}
  for name in ('query', 'key', 'value'):
    d, n, h = a[name]['kernel'].shape
    out[f'{pre}attention.self.{name}.weight'] = a[name]['kernel'].reshape(d, n * h).T
    out[f'{pre}attention.self.{name}.bias'] = a[name]['bias'].reshape(n * h)
  n, h, d = a['out']['kernel'].shape
  out[pre + 'attention.output.dense.weight'] = a['out']['kernel'].reshape(n * h, d).T
  out[pre + 'attention.output.dense.bias'] = a['out']['bias']
  out.update(ln_out(p['attention_norm'], pre + 'attention.output.LayerNorm'))
  out.update(dense_out(p['mlp']['wi'], pre + 'intermediate.dense'))
  out.update(dense_out(p['mlp']['wo'], pre + 'output.dense'))
  out.update(ln_out(p['mlp_norm'], pre + 'output.LayerNorm'))
  return out


def _plain(cfg) -> bool:
  """Learned positions (rotary encoders are RoFormer's), token types, no factorised embedding, no
  RTD head (else DistilBERT or ELECTRA write it), and the MLM decoder tied to the input embeddings
  (HF BERT/RoBERTa checkpoints are)."""
  return (cfg.positions == 'learned' and cfg.type_vocab_size >= 1 and not cfg.rtd_head
          and getattr(cfg, 'tie_embeddings', True) and not cfg.pre_norm
          and not factorised(cfg))


def _params_from_hf(get: Getter, cfg, *, base: str, mlm: str, roberta: bool) -> dict:
  n, h = cfg.num_heads, cfg.resolved_head_dim
  e = base + 'embeddings.'
  norm_name = 'layer_norm' if roberta else 'transform.LayerNorm'
  dense_name = 'dense' if roberta else 'transform.dense'
  p = {
      'token_embed': {'embedding': get(e + 'word_embeddings.weight')},
      'position_embed': {'embedding': get(e + 'position_embeddings.weight')},
      'embed_norm': ln(get, e + 'LayerNorm'),
      'pooler': dense(get, base + 'pooler.dense'),
      'mlm_head': {'dense': dense(get, mlm + dense_name), 'norm': ln(get, mlm + norm_name),
                   'bias': get(mlm + 'bias')},
  }
  if cfg.type_vocab_size:
    p['type_embed'] = {'embedding': get(e + 'token_type_embeddings.weight')}
  if not roberta:
    p['nsp_head'] = dense(get, 'cls.seq_relationship')
  for i in range(cfg.num_layers):
    p[f'layers_{i}'] = layer_from_hf(get, f'{base}encoder.layer.{i}.', n, h)
  return p


def _params_to_hf(p: dict, cfg, *, base: str, mlm: str, roberta: bool) -> dict:
  e = base + 'embeddings.'
  out = {e + 'word_embeddings.weight': p['token_embed']['embedding'],
         e + 'position_embeddings.weight': p['position_embed']['embedding']}
  if 'type_embed' in p:
    out[e + 'token_type_embeddings.weight'] = p['type_embed']['embedding']
  out.update(ln_out(p['embed_norm'], e + 'LayerNorm'))
  for i in range(cfg.num_layers):
    out.update(layer_to_hf(p[f'layers_{i}'], f'{base}encoder.layer.{i}.'))
  out.update(dense_out(p['pooler'], base + 'pooler.dense'))
  head = p['mlm_head']
  out.update(dense_out(head['dense'], mlm + ('dense' if roberta else 'transform.dense')))
  out.update(ln_out(head['norm'], mlm + ('layer_norm' if roberta else 'transform.LayerNorm')))
  out[mlm + 'bias'] = head['bias']
  if not roberta:
    out.update(dense_out(p['nsp_head'], 'cls.seq_relationship'))
  return out


BERT = ArchMap(
    model_type='bert', family='encoder', base_prefix='bert.',
    architectures={'BertForPreTraining': ('pooler', 'mlm_head', 'nsp_head'),
                   'BertForMaskedLM': ('mlm_head',),
                   'BertModel': ('pooler',)},
    heads={'pooler': 'bert.pooler.', 'mlm_head': 'cls.predictions.',
           'nsp_head': 'cls.seq_relationship.'},
    config_from_hf=lambda c: _config_from_hf(c, roberta=False),
    config_to_hf=lambda cfg: _config_to_hf(cfg, roberta=False),
    params_from_hf=lambda get, cfg: _params_from_hf(get, cfg, base='bert.', mlm='cls.predictions.',
                                                    roberta=False),
    params_to_hf=lambda p, cfg: _params_to_hf(p, cfg, base='bert.', mlm='cls.predictions.',
                                              roberta=False),
    matches=lambda cfg: cfg.position_offset == 0 and _plain(cfg),
    default_architecture='BertForPreTraining',
    ignore_suffixes=('embeddings.position_ids', 'embeddings.token_type_ids',
                     'cls.predictions.decoder.weight', 'cls.predictions.decoder.bias'),
)

ROBERTA = ArchMap(
    model_type='roberta', family='encoder', base_prefix='roberta.',
    architectures={'RobertaForMaskedLM': ('mlm_head',), 'RobertaModel': ('pooler',)},
    heads={'pooler': 'roberta.pooler.', 'mlm_head': 'lm_head.'},
    config_from_hf=lambda c: _config_from_hf(c, roberta=True),
    config_to_hf=lambda cfg: _config_to_hf(cfg, roberta=True),
    params_from_hf=lambda get, cfg: _params_from_hf(get, cfg, base='roberta.', mlm='lm_head.',
                                                    roberta=True),
    params_to_hf=lambda p, cfg: _params_to_hf(p, cfg, base='roberta.', mlm='lm_head.',
                                              roberta=True),
    matches=lambda cfg: cfg.position_offset > 0 and _plain(cfg),
    default_architecture='RobertaForMaskedLM',
    ignore_suffixes=('embeddings.position_ids', 'embeddings.token_type_ids',
                     'lm_head.decoder.weight', 'lm_head.decoder.bias'),
    unmapped=('nsp_head',),
)

MAPS = [BERT, ROBERTA]
