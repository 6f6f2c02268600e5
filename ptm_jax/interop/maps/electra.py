"""ELECTRA (`ElectraForPreTraining`, `ElectraForMaskedLM`, `ElectraModel`) <-> our `encoder` family.

Decisions:
- Both networks are encoders. An HF ELECTRA file holds ONE of them (the discriminator in
  `ElectraForPreTraining`, the generator in `ElectraForMaskedLM`), so each imports as one
  `encoder` model; `electra_pair` / `split_pretraining` convert between two such models and the
  `objectives/electra.py` tree (`discriminator`, `generator`, `rtd_head`) that pretraining uses.
- Heads: the discriminator's `discriminator_predictions` (dense -> hidden_act -> dense(1)) is the
  encoder's optional `rtd_head` (`rtd_head=True`, output `rtd_logits`); the generator's
  `generator_predictions` (dense H -> E, GELU, LayerNorm) + `generator_lm_head` (tied decoder and
  its bias) is the encoder's `mlm_head`. Every ELECTRA import sets `rtd_head=True` (initialised
  fresh, and listed, when the file has none): it is what marks the config as ELECTRA on export.
  ELECTRA has no pooler / NSP head: ours are initialised fresh and never exported.
- Embedding projection: `embedding_size` E != `hidden_size` H (ELECTRA-Small, every generator)
  is the encoder's factorised embedding (`embedding_size=E`: E-wide tables and LayerNorm, then
  `embed_project` = HF `electra.embeddings_project`).
- HF's generator head applies `gelu` whatever `hidden_act` says, ours the config's activation: an
  `ElectraForMaskedLM` whose `hidden_act` is not `gelu` is refused (one line) on import.
"""
from __future__ import annotations

import dataclasses

from ptm_jax.interop.maps import (ArchMap, Getter, activation_from_hf, dense, dense_out, factorised,
                                  ln, ln_out, require)
from ptm_jax.interop.maps.bert import layer_from_hf, layer_to_hf

BASE = 'electra.'
EMBEDDING_KEYS = ('token_embed', 'position_embed', 'type_embed', 'embed_norm')


def _config_from_hf(c: dict) -> dict:
  require(c.get('position_embedding_type', 'absolute') == 'absolute',
          f"ELECTRA position_embedding_type={c.get('position_embedding_type')!r} is not supported "
          "(only 'absolute')")
  require(not c.get('is_decoder', False), 'is_decoder=True ELECTRA checkpoints are not supported')
  act = c.get('hidden_act', 'gelu')
  require(act == 'gelu' or 'ElectraForMaskedLM' not in (c.get('architectures') or []),
          f"ElectraForMaskedLM with hidden_act={act!r} is not supported: HF's generator head "
          "always uses 'gelu', ours the model's activation")
  width, width_e = c['hidden_size'], c.get('embedding_size', 128)
  return dict(
      vocab_size=c['vocab_size'], embed_dim=width, num_layers=c['num_hidden_layers'],
      num_heads=c['num_attention_heads'], head_dim=None, mlp_dim=c['intermediate_size'],
      max_position_embeddings=c.get('max_position_embeddings', 512),
      type_vocab_size=c.get('type_vocab_size', 2), position_offset=0,
      embedding_size=None if width_e == width else width_e, rtd_head=True,
      layer_norm_eps=c.get('layer_norm_eps', 1e-12), activation=activation_from_hf(act),
      dropout_rate=c.get('hidden_dropout_prob', 0.1),
      attention_dropout_rate=c.get('attention_probs_dropout_prob', 0.1),
      initializer_range=c.get('initializer_range', 0.02))


def _config_to_hf(cfg) -> dict:
  require(cfg.positions == 'learned',
          f'positions={cfg.positions!r} has no ELECTRA equivalent')
  require(cfg.head_dim in (None, cfg.embed_dim // cfg.num_heads),
          f'head_dim={cfg.head_dim} != embed_dim / num_heads has no ELECTRA equivalent')
  require(cfg.type_vocab_size >= 1, 'type_vocab_size=0 has no ELECTRA equivalent')
  require(cfg.position_offset == 0, 'position_offset > 0 has no ELECTRA equivalent')
  return dict(
      model_type='electra', vocab_size=cfg.vocab_size, embedding_size=cfg.resolved_embedding_size,
      hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
      max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
      layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.activation,
      hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      initializer_range=cfg.initializer_range, position_embedding_type='absolute',
      tie_word_embeddings=True, is_decoder=False, pad_token_id=0)


def _params_from_hf(get: Getter, cfg) -> dict:
  n, h = cfg.num_heads, cfg.resolved_head_dim
  e = BASE + 'embeddings.'
  p = {
      'token_embed': {'embedding': get(e + 'word_embeddings.weight')},
      'position_embed': {'embedding': get(e + 'position_embeddings.weight')},
      'type_embed': {'embedding': get(e + 'token_type_embeddings.weight')},
      'embed_norm': ln(get, e + 'LayerNorm'),
      'mlm_head': {'dense': dense(get, 'generator_predictions.dense'),
                   'norm': ln(get, 'generator_predictions.LayerNorm'),
                   'bias': get('generator_lm_head.bias')},
      'rtd_head': {'dense': dense(get, 'discriminator_predictions.dense'),
                   'out': dense(get, 'discriminator_predictions.dense_prediction')},
  }
  if factorised(cfg):
    p['embed_project'] = dense(get, BASE + 'embeddings_project')
  for i in range(cfg.num_layers):
    p[f'layers_{i}'] = layer_from_hf(get, f'{BASE}encoder.layer.{i}.', n, h)
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  # A head the tree lacks (split_pretraining's discriminator has no MLM head) is not written.
  e = BASE + 'embeddings.'
  out = {e + 'word_embeddings.weight': p['token_embed']['embedding'],
         e + 'position_embeddings.weight': p['position_embed']['embedding'],
         e + 'token_type_embeddings.weight': p['type_embed']['embedding']}
  out.update(ln_out(p['embed_norm'], e + 'LayerNorm'))
  if factorised(cfg):
    out.update(dense_out(p['embed_project'], BASE + 'embeddings_project'))
  for i in range(cfg.num_layers):
    out.update(layer_to_hf(p[f'layers_{i}'], f'{BASE}encoder.layer.{i}.'))
  if 'mlm_head' in p:
    head = p['mlm_head']
    out.update(dense_out(head['dense'], 'generator_predictions.dense'))
    out.update(ln_out(head['norm'], 'generator_predictions.LayerNorm'))
    out['generator_lm_head.bias'] = head['bias']
  if 'rtd_head' in p:
    out.update(dense_out(p['rtd_head']['dense'], 'discriminator_predictions.dense'))
    out.update(dense_out(p['rtd_head']['out'], 'discriminator_predictions.dense_prediction'))
  return out


ELECTRA = ArchMap(
    model_type='electra', family='encoder', base_prefix=BASE,
    architectures={'ElectraForPreTraining': ('rtd_head',), 'ElectraForMaskedLM': ('mlm_head',),
                   'ElectraModel': ()},
    # 'generator_' covers generator_predictions.* and generator_lm_head.*.
    heads={'mlm_head': 'generator_', 'rtd_head': 'discriminator_predictions.'},
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf,
    params_to_hf=_params_to_hf,
    # A factorised rotary encoder without an RTD head is RoFormer's (it has embeddings_project).
    matches=lambda cfg: (cfg.position_offset == 0 and cfg.type_vocab_size >= 1 and not cfg.pre_norm
                         and (cfg.rtd_head or (factorised(cfg) and cfg.positions != 'rotary'))),
    default_architecture='ElectraForPreTraining',
    ignore_suffixes=('embeddings.position_ids', 'embeddings.token_type_ids',
                     'generator_lm_head.weight'),
    unmapped=('pooler', 'nsp_head'),
)

MAPS = [ELECTRA]


# ---- our ELECTRA pretraining tree <-> two HF-shaped encoders -------------------------------------

def discriminator_part(params: dict, disc_config) -> tuple:
  """`objectives/electra.py` params -> (config, params) of the discriminator as an `encoder`.

  What transfers: `save_pretrained` writes it as `ElectraForPreTraining`; a factorised embedding
  (`embedding_size` E < H) keeps its `embed_project` (HF `electra.embeddings_project`).
  """
  disc = params['discriminator']
  keep = EMBEDDING_KEYS + ('embed_project',)
  d_params = {k: v for k, v in disc.items() if k in keep or k.startswith('layers_')}
  return dataclasses.replace(disc_config, rtd_head=True), {**d_params,
                                                           'rtd_head': params['rtd_head']}


def generator_part(params: dict, disc_config, gen_config) -> tuple:
  """`objectives/electra.py` params -> (config, params) of the generator as an `encoder`.

  It gets a copy of the shared E-wide embedding block (HF stores it in both files) and is written
  as `ElectraForMaskedLM`. HF drops `embeddings_project` when embedding_size == hidden_size,
  so a generator as wide as the shared embedding has no HF equivalent (one-line error).
  """
  width_e = disc_config.resolved_embedding_size
  require(gen_config.embed_dim != width_e,
          f'a generator as wide as the shared embedding ({width_e}; the discriminator when '
          'embedding_size is unset) has no HF ELECTRA equivalent (HF drops embeddings_project '
          'when embedding_size == hidden_size): use generator_width_fraction < 1')
  disc = params['discriminator']
  shared = {k: disc[k] for k in EMBEDDING_KEYS if k in disc}
  g_cfg = dataclasses.replace(gen_config, embedding_size=width_e, rtd_head=True)
  gen = params['generator']
  g_params = {**shared, 'embed_project': gen['embed_project'], **gen['encoder'],
              'mlm_head': gen['mlm_head']}
  return g_cfg, g_params


def split_pretraining(params: dict, disc_config, gen_config) -> tuple[tuple, tuple]:
  """`objectives/electra.py` params -> ((config, params) of the discriminator, of the generator).

  Each pair is an `encoder` model that `save_pretrained` writes as `ElectraForPreTraining` /
  `ElectraForMaskedLM`. `disc_config` / `gen_config` are `electra.Model.config` /
  `.generator_config`; the discriminator may be factorised (`embedding_size` E < H).
  """
  generator = generator_part(params, disc_config, gen_config)  # validates before any copying
  return discriminator_part(params, disc_config), generator


def electra_pair(disc_params: dict, gen_params: dict) -> dict:
  """Two imported encoders (discriminator, generator) -> the `objectives/electra.py` tree.

  The shared embedding block is the discriminator's (ELECTRA ties the two; the generator's copy
  in its own file is dropped). Pair it with `electra.Model(disc_config, gen_config)` where
  `gen_config` has `embedding_size` unset.
  """
  return {
      'discriminator': {k: v for k, v in disc_params.items()
                        if k in EMBEDDING_KEYS + ('embed_project',) or k.startswith('layers_')},
      'generator': {'embed_project': gen_params['embed_project'],
                    'encoder': {k: v for k, v in gen_params.items() if k.startswith('layers_')},
                    'mlm_head': gen_params['mlm_head']},
      'rtd_head': disc_params['rtd_head'],
  }
