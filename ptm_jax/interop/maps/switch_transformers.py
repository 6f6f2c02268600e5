"""Switch Transformer (`SwitchTransformersForConditionalGeneration`, HF; Fedus et al. 2022) <->
our `encdec` family in T5 style with a mixture of experts (`layers/moe.py`).

T5 v1.0's layers (`maps/t5.py`: relative position bias in block 0 of each stack, pre-RMSNorm, no
biases, LM head tied to `shared` with the decoder output scaled by d_model**-0.5) where every
`encoder_sparse_step`-th feed-forward is `num_experts` experts behind a bias-free top-1 router
(`mlp.router.classifier` [E, D]: our `router`, transposed; `mlp.experts.expert_{j}.wi/wo`: our
`wi`/`wo` at index j; dense layers keep `mlp.wi/wo`). The expert output is scaled by the router
probability, a token over `expert_capacity` (a fixed number of slots per expert and row, ours
`moe_capacity`) is dropped to zero, priority by position: all as ours, so the logits match.

Mapping notes:
- HF routes layers i with i % step == 1 (step = num_layers // num_sparse_*_layers), ours
  (i + 1) % moe_every == 0: the same layers for step 1 and 2 (Switch-Base/Large: 2); other steps
  and different encoder/decoder steps are refused in one line.
- HF routes padding tokens too; with right padding they come after every real token of the row
  and take no slot a real token needed, so real tokens route identically.
- `router_z_loss_coef` and `router_aux_loss_coef` weight HF's losses averaged over a stack's
  routed layers; ours sums the layers, so each becomes coef / (routed layers per stack; the
  shallower stack's count when they differ). The z-loss then matches on unpadded rows (HF counts
  padding too); HF's balance loss pools the layers' tokens before the product, ours takes it per
  layer, so the two agree in scale, not to the digit.
- `router_jitter_noise` is our `moe_jitter`; `router_bias=True` and a non-float32
  `router_dtype` are refused (ours: float32, no bias).
"""
from __future__ import annotations

import numpy as np

from ptm_jax.interop.maps import ArchMap, Getter, activation_from_hf, require
from ptm_jax.interop.maps import t5


def _sparse_step(c: dict, layers: int, routed: int, side: str) -> int:
  require(routed > 0, f'SwitchTransformers num_sparse_{side}_layers=0 (a dense T5): import it as '
          'T5ForConditionalGeneration')
  step = layers // routed
  require(step in (1, 2), f'SwitchTransformers {side} sparse step {step} (num_layers {layers} / '
          f'{routed} routed) routes layers i % {step} == 1, ours (i + 1) % step == 0: only steps '
          '1 and 2 coincide')
  return step


def _config_from_hf(c: dict) -> dict:
  require(not c.get('router_bias', False), 'SwitchTransformers router_bias=true is not supported')
  require(c.get('router_dtype', 'float32') == 'float32',
          f"SwitchTransformers router_dtype={c.get('router_dtype')!r}: ours routes in float32")
  encoder_layers = c['num_layers']
  decoder_layers = c.get('num_decoder_layers') or encoder_layers
  step = _sparse_step(c, encoder_layers, c.get('num_sparse_encoder_layers', 3), 'encoder')
  decoder_step = _sparse_step(c, decoder_layers, c.get('num_sparse_decoder_layers', 3), 'decoder')
  require(step == decoder_step, f'SwitchTransformers encoder sparse step {step} != decoder '
          f'{decoder_step}: ours routes both stacks every moe_every layers')
  drop = float(c.get('dropout_rate', 0.1))
  routed = min(encoder_layers, decoder_layers) // step
  return dict(
      vocab_size=c['vocab_size'], embed_dim=c['d_model'], num_encoder_layers=encoder_layers,
      num_decoder_layers=decoder_layers, num_heads=c['num_heads'], head_dim=c['d_kv'],
      mlp_dim=c['d_ff'], positions='relative',
      relative_buckets=c.get('relative_attention_num_buckets', 32),
      relative_max_distance=c.get('relative_attention_max_distance', 128), pre_norm=True,
      norm='rmsnorm', layer_norm_eps=c.get('layer_norm_epsilon', 1e-6), embed_norm=False,
      final_norm=True, mlp='mlp', activation=activation_from_hf(c.get('dense_act_fn', 'relu')),
      use_bias=False, scale_attention=False, scale_embedding=False, tie_embeddings=True,
      scale_decoder_output=True, logits_bias=False, dropout_rate=drop,
      attention_dropout_rate=drop, mlp_dropout_rate=drop, init='t5',
      decoder_start_id=int(c.get('decoder_start_token_id') or 0),
      moe_experts=c.get('num_experts', 8), moe_every=step, moe_top_k=1,
      moe_capacity=c.get('expert_capacity', 64),
      moe_jitter=float(c.get('router_jitter_noise', 0.01)),
      moe_balance_weight=float(c.get('router_aux_loss_coef', 0.001)) / routed,
      moe_z_weight=float(c.get('router_z_loss_coef', 0.001)) / routed)


def _matches(cfg) -> bool:
  return t5.t5_like(cfg) and getattr(cfg, 'moe_experts', 0) > 0


def _config_to_hf(cfg) -> dict:
  require(_matches(cfg), 'only T5-style encdec configs with experts are SwitchTransformers')
  require(cfg.mlp == 'mlp', f"SwitchTransformers experts are plain MLPs, not mlp={cfg.mlp!r}")
  require(cfg.tie_embeddings and cfg.scale_decoder_output,
          'SwitchTransformers ties the LM head and scales the decoder output (T5 v1.0)')
  require(cfg.moe_top_k == 1, f'moe_top_k={cfg.moe_top_k}: SwitchTransformers routes top-1')
  require(cfg.moe_every in (1, 2), f'moe_every={cfg.moe_every}: only 1 and 2 route the same '
          'layers in HF SwitchTransformers')
  require(cfg.moe_capacity > 0, 'SwitchTransformers has a fixed expert_capacity: set '
          'moe_capacity (slots per expert and row; the capacity factors have no HF field)')
  require(cfg.attention_dropout_rate == cfg.dropout_rate == cfg.mlp_dropout_rate,
          'SwitchTransformers has one dropout_rate; set dropout_rate = attention_dropout_rate = '
          'mlp_dropout_rate')
  routed = min(cfg.num_encoder_layers, cfg.num_decoder_layers) // cfg.moe_every
  return dict(
      model_type='switch_transformers', vocab_size=cfg.vocab_size, d_model=cfg.embed_dim,
      d_kv=cfg.resolved_head_dim, d_ff=cfg.mlp_dim, num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
      num_sparse_encoder_layers=cfg.num_encoder_layers // cfg.moe_every,
      num_sparse_decoder_layers=cfg.num_decoder_layers // cfg.moe_every,
      num_experts=cfg.moe_experts, expert_capacity=cfg.moe_capacity, router_bias=False,
      router_jitter_noise=cfg.moe_jitter, router_dtype='float32',
      router_ignore_padding_tokens=False, router_aux_loss_coef=cfg.moe_balance_weight * routed,
      router_z_loss_coef=cfg.moe_z_weight * routed,
      relative_attention_num_buckets=cfg.relative_buckets,
      relative_attention_max_distance=cfg.relative_max_distance, dropout_rate=cfg.dropout_rate,
      layer_norm_epsilon=cfg.layer_norm_eps, dense_act_fn=cfg.activation,
      tie_word_embeddings=True, is_encoder_decoder=True, initializer_factor=1.0, pad_token_id=0,
      decoder_start_token_id=cfg.decoder_start_id)


def _feed_forward_from_hf(get: Getter, prefix: str, cfg, index: int) -> dict:
  if (index + 1) % cfg.moe_every:  # a dense layer
    return {'mlp': {ours: {'kernel': get(f'{prefix}mlp.{ours}.weight').T}
                    for ours in ('wi', 'wo')}}
  experts = {ours: np.stack([get(f'{prefix}mlp.experts.expert_{j}.{ours}.weight').T
                             for j in range(cfg.moe_experts)]) for ours in ('wi', 'wo')}
  return {'moe': dict(router=get(prefix + 'mlp.router.classifier.weight').T, **experts)}


def _feed_forward_to_hf(layer: dict, prefix: str, cfg) -> dict:
  if 'mlp' in layer:
    return {f'{prefix}mlp.{ours}.weight': layer['mlp'][ours]['kernel'].T for ours in ('wi', 'wo')}
  out = {prefix + 'mlp.router.classifier.weight': layer['moe']['router'].T}
  for ours in ('wi', 'wo'):
    for j in range(cfg.moe_experts):
      out[f'{prefix}mlp.experts.expert_{j}.{ours}.weight'] = layer['moe'][ours][j].T
  return out


def _params_from_hf(get: Getter, cfg) -> dict:
  return {'token_embed': {'embedding': get('shared.weight')},
          **t5.stacks_from_hf(get, cfg, _feed_forward_from_hf)}


def _params_to_hf(p: dict, cfg) -> dict:
  return {'shared.weight': p['token_embed']['embedding'],
          **t5.stacks_to_hf(p, cfg, _feed_forward_to_hf)}


MAPS = [ArchMap(
    model_type='switch_transformers', family='encdec', base_prefix='',
    architectures={'SwitchTransformersForConditionalGeneration': (),
                   'SwitchTransformersModel': ()},
    heads={}, config_from_hf=_config_from_hf, config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf, params_to_hf=_params_to_hf, matches=_matches,
    default_architecture='SwitchTransformersForConditionalGeneration',
    ignore_suffixes=('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
                     'lm_head.weight'),
)]
