"""Mixtral (`MixtralForCausalLM`, `MixtralModel`) <-> our `decoder` family with a mixture of experts
in every layer (`layers/moe.py`).

Mixtral's layer is Llama's (`maps/llama.py`: rotary, grouped-query attention, RMSNorm; attention
without biases) with the SwiGLU feed-forward replaced by `num_local_experts` SwiGLU experts and a
bias-free router `gate` [E, D]. Each token takes its `num_experts_per_tok` most probable experts
(softmax over all E, then the k probabilities renormalised to sum to 1: our top-k gates, k >= 2).
Expert j's `w1`, `w3`, `w2` are our `wi`, `wi_up`, `wo` at index j.

Differences handled on import:
- Mixtral drops no token (no expert capacity). The import sets `moe_dropless=True` (tokens sorted
  by expert and the experts applied with `ragged_dot`: each token reaches its k experts, so the
  logits are HF's) and both capacity factors to E / k, so that with `moe_dropless=False` (the
  one-hot capacity path, e.g. for `moe_capacity_factor=1.25` in fine-tuning, through
  `config_overrides`) every expert's capacity is still the whole row until a factor is lowered.
- `router_aux_loss_coef` weights HF's balance loss averaged over the layers; ours is summed over
  the layers (Switch), so the import sets `moe_balance_weight = coef / num_layers`. HF's balance
  loss counts all k choices of a token, ours its first choice (Switch); the scale is the same up
  to that difference. `router_jitter_noise` is our `moe_jitter` (the same multiplicative noise).
- `sliding_window` attention is not supported: a window shorter than `max_position_embeddings` is
  refused in one line (Mixtral-8x7B ships without one).

Files are read and written in the per-expert layout every Mixtral checkpoint on the Hub uses
(`block_sparse_moe.experts.{j}.w1.weight`; transformers v5 fuses them in memory and writes this
layout back). The router z-loss weight (`moe_z_weight`) has no HF field and is not saved.
"""
from __future__ import annotations

import numpy as np

from ptm_jax.interop.maps import ArchMap, Getter, require
from ptm_jax.interop.maps import llama

_EXPERT_WEIGHTS = (('wi', 'w1'), ('wi_up', 'w3'), ('wo', 'w2'))


def _config_from_hf(c: dict) -> dict:
  experts, top_k = int(c.get('num_local_experts', 8)), int(c.get('num_experts_per_tok', 2))
  window = c.get('sliding_window')
  max_positions = c.get('max_position_embeddings', 4096 * 32)
  require(window is None or window >= max_positions,
          f'Mixtral sliding_window={window} < max_position_embeddings={max_positions} is not '
          'supported (sliding-window attention); set sliding_window to null')
  require(top_k >= 2, f'Mixtral num_experts_per_tok={top_k}: Mixtral renormalises the top-k '
          'gates, which at k=1 gives gate 1, not our Switch gate (the router probability)')
  fields = llama.config_from_hf(dict(c, attention_bias=False, mlp_bias=False))
  dropless = experts / top_k
  fields.update(
      moe_experts=experts, moe_every=1, moe_top_k=top_k, moe_dropless=True,
      moe_capacity_factor=dropless,
      moe_eval_capacity_factor=dropless, moe_jitter=float(c.get('router_jitter_noise', 0.0)),
      moe_balance_weight=float(c.get('router_aux_loss_coef', 0.001)) / fields['num_layers'],
      moe_z_weight=0.0)
  return fields


def _matches(cfg) -> bool:
  return llama.llama_like(cfg) and getattr(cfg, 'moe_experts', 0) > 0


def _config_to_hf(cfg) -> dict:
  require(_matches(cfg), 'only rotary, RMSNorm, SwiGLU decoders with experts are Mixtral')
  require(cfg.moe_every == 1, f'moe_every={cfg.moe_every}: Mixtral routes every layer\'s '
          'feed-forward (moe_every=1)')
  require(cfg.moe_top_k >= 2, f'moe_top_k={cfg.moe_top_k}: Mixtral renormalises the top-k gates '
          '(at k=1 its gate is 1, not the Switch router probability); use moe_top_k >= 2')
  require(not cfg.use_bias, 'Mixtral has no biases; use use_bias=False')
  dropless = cfg.moe_experts / cfg.moe_top_k
  require(cfg.moe_dropless or cfg.moe_eval_capacity_factor >= dropless,
          f'moe_eval_capacity_factor={cfg.moe_eval_capacity_factor} drops tokens at inference; '
          f'Mixtral drops none: set moe_dropless=True (or the factor >= moe_experts / moe_top_k '
          f'= {dropless:g}) before export')
  out = llama.config_to_hf(cfg)
  for llama_only in ('attention_bias', 'mlp_bias'):
    out.pop(llama_only)
  out.update(model_type='mixtral', num_local_experts=cfg.moe_experts,
             num_experts_per_tok=cfg.moe_top_k, router_jitter_noise=cfg.moe_jitter,
             router_aux_loss_coef=cfg.moe_balance_weight * cfg.num_layers, sliding_window=None,
             output_router_logits=False)
  return out


def _params_from_hf(get: Getter, cfg) -> dict:
  p = llama.embeddings_from_hf(get, cfg)
  for i in range(cfg.num_layers):
    pre = f'model.layers.{i}.'
    moe_pre = pre + 'block_sparse_moe.'
    experts = {ours: np.stack([get(f'{moe_pre}experts.{j}.{theirs}.weight').T
                                for j in range(cfg.moe_experts)])
               for ours, theirs in _EXPERT_WEIGHTS}
    p[f'layers_{i}'] = dict(llama.attention_from_hf(get, pre, cfg),
                            moe=dict(router=get(moe_pre + 'gate.weight').T, **experts))
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  out = llama.embeddings_to_hf(p, cfg)
  for i in range(cfg.num_layers):
    pre, layer = f'model.layers.{i}.', p[f'layers_{i}']
    moe_pre = pre + 'block_sparse_moe.'
    out.update(llama.attention_to_hf(layer, pre))
    out[moe_pre + 'gate.weight'] = layer['moe']['router'].T
    for ours, theirs in _EXPERT_WEIGHTS:
      for j in range(cfg.moe_experts):
        out[f'{moe_pre}experts.{j}.{theirs}.weight'] = layer['moe'][ours][j].T
  return out


MAPS = [ArchMap(
    model_type='mixtral', family='decoder', base_prefix='model.',
    architectures={'MixtralForCausalLM': ('lm_head',), 'MixtralModel': ()},
    heads={'lm_head': 'lm_head.'},
    config_from_hf=_config_from_hf, config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf, params_to_hf=_params_to_hf, matches=_matches,
    default_architecture='MixtralForCausalLM',
    ignore_suffixes=('rotary_emb.inv_freq',),
)]
