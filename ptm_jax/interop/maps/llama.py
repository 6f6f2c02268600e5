"""Llama (`LlamaForCausalLM`, `LlamaModel`) <-> our `decoder` family with Llama options.

Rotary positions in HF's rotate-half layout (the same as ours, so q/k import unpermuted; GGUF files
store them permuted, see `interop/gguf.py`), grouped-query attention, SwiGLU, RMSNorm, and an LM
head that is untied unless `tie_word_embeddings` (SmolLM2 ties it). RoPE scaling is not supported.
A config with `vocab_pad_multiple` gets the embedding and LM head padded with zero vocabulary
rows on import and sliced back on export.
"""
from __future__ import annotations

from ptm_jax.interop.maps import ArchMap, Getter, activation_from_hf, dense, dense_out, require
from ptm_jax.models.decoder import pad_vocab_rows


def _rope_theta(c: dict) -> float:
  rope = c.get('rope_parameters') or c.get('rope_scaling') or {}
  kind = rope.get('rope_type', rope.get('type', 'default'))
  require(kind == 'default', f"Llama rope_type={kind!r} is not supported (only 'default')")
  return float(rope.get('rope_theta', c.get('rope_theta', 10_000.0)))


def config_from_hf(c: dict) -> dict:
  """Our decoder fields of a LlamaConfig (Mixtral's shares them)."""
  require(c.get('attention_bias', False) == c.get('mlp_bias', False),
          'Llama with attention_bias != mlp_bias is not supported')
  width, heads = c['hidden_size'], c['num_attention_heads']
  head_dim = c.get('head_dim') or width // heads
  return dict(
      vocab_size=c['vocab_size'], embed_dim=width, num_layers=c['num_hidden_layers'],
      num_heads=heads, num_kv_heads=c.get('num_key_value_heads') or heads,
      head_dim=None if head_dim == width // heads else head_dim,
      mlp_dim=c['intermediate_size'], max_position_embeddings=c.get('max_position_embeddings', 2048),
      positions='rotary', rope_theta=_rope_theta(c), norm='rmsnorm',
      layer_norm_eps=c.get('rms_norm_eps', 1e-6), mlp='swiglu',
      activation=activation_from_hf(c.get('hidden_act', 'silu')),
      use_bias=bool(c.get('attention_bias', False)),
      tie_embeddings=bool(c.get('tie_word_embeddings', False)), dropout_rate=0.0,
      attention_dropout_rate=float(c.get('attention_dropout', 0.0)),
      initializer_range=c.get('initializer_range', 0.02), scaled_residual_init=False)


def llama_like(cfg) -> bool:
  """Rotary, RMSNorm, SwiGLU: Llama's layer (Mixtral's too, with experts)."""
  return cfg.positions == 'rotary' and cfg.norm == 'rmsnorm' and cfg.mlp == 'swiglu'


def _matches(cfg) -> bool:
  return llama_like(cfg) and not getattr(cfg, 'moe_experts', 0)


def config_to_hf(cfg) -> dict:
  """The LlamaConfig fields of a Llama-like decoder (Mixtral adds its own)."""
  require(llama_like(cfg), 'only rotary, RMSNorm, SwiGLU decoders are Llama')
  return dict(
      model_type='llama', vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads or cfg.num_heads, head_dim=cfg.resolved_head_dim,
      intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_position_embeddings,
      rope_theta=cfg.rope_theta,
      rope_parameters={'rope_type': 'default', 'rope_theta': cfg.rope_theta},
      rms_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.activation, attention_bias=cfg.use_bias,
      mlp_bias=cfg.use_bias, tie_word_embeddings=cfg.tie_embeddings,
      attention_dropout=cfg.attention_dropout_rate, initializer_range=cfg.initializer_range)


def _config_to_hf(cfg) -> dict:
  require(not getattr(cfg, 'moe_experts', 0), 'a mixture-of-experts decoder is Mixtral, not Llama')
  return config_to_hf(cfg)


def attention_from_hf(get: Getter, pre: str, cfg) -> dict:
  """One layer's attention and its two RMSNorms (`model.layers.{i}.`); shared with Mixtral."""
  n, kv, h = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads, cfg.resolved_head_dim
  bias = cfg.use_bias

  def heads(name: str, k: int) -> dict:
    out = {'kernel': get(name + '.weight').T.reshape(-1, k, h)}
    if bias:
      out['bias'] = get(name + '.bias').reshape(k, h)
    return out

  out = {'kernel': get(pre + 'self_attn.o_proj.weight').T.reshape(n, h, -1)}
  if bias:
    out['bias'] = get(pre + 'self_attn.o_proj.bias')
  return {
      'attention': {'query': heads(pre + 'self_attn.q_proj', n),
                    'key': heads(pre + 'self_attn.k_proj', kv),
                    'value': heads(pre + 'self_attn.v_proj', kv), 'out': out},
      'attention_norm': {'scale': get(pre + 'input_layernorm.weight')},
      'mlp_norm': {'scale': get(pre + 'post_attention_layernorm.weight')},
  }


def attention_to_hf(layer: dict, pre: str) -> dict:
  """Our layer's attention and norms -> HF tensors (the inverse of `attention_from_hf`)."""
  a, out = layer['attention'], {}
  for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
    d, k, h = a[ours]['kernel'].shape
    out[f'{pre}self_attn.{theirs}.weight'] = a[ours]['kernel'].reshape(d, k * h).T
    if 'bias' in a[ours]:
      out[f'{pre}self_attn.{theirs}.bias'] = a[ours]['bias'].reshape(k * h)
  n, h, d = a['out']['kernel'].shape
  out[pre + 'self_attn.o_proj.weight'] = a['out']['kernel'].reshape(n * h, d).T
  if 'bias' in a['out']:
    out[pre + 'self_attn.o_proj.bias'] = a['out']['bias']
  out[pre + 'input_layernorm.weight'] = layer['attention_norm']['scale']
  out[pre + 'post_attention_layernorm.weight'] = layer['mlp_norm']['scale']
  return out


def embeddings_from_hf(get: Getter, cfg) -> dict:
  """Token table, final norm and (untied) LM head, vocabulary rows padded as the config asks."""
  p = {'token_embed': {'embedding': pad_vocab_rows(get('model.embed_tokens.weight'), cfg)},
       'final_norm': {'scale': get('model.norm.weight')}}
  if not cfg.tie_embeddings:
    p['lm_head'] = {'kernel': pad_vocab_rows(get('lm_head.weight'), cfg).T}
  return p


def embeddings_to_hf(p: dict, cfg) -> dict:
  out = {'model.embed_tokens.weight': p['token_embed']['embedding'][:cfg.vocab_size],
         'model.norm.weight': p['final_norm']['scale']}
  if 'lm_head' in p:
    out['lm_head.weight'] = p['lm_head']['kernel'][:, :cfg.vocab_size].T
  return out


def _params_from_hf(get: Getter, cfg) -> dict:
  p = embeddings_from_hf(get, cfg)
  for i in range(cfg.num_layers):
    pre = f'model.layers.{i}.'
    p[f'layers_{i}'] = dict(
        attention_from_hf(get, pre, cfg),
        mlp={'wi_gate': dense(get, pre + 'mlp.gate_proj', cfg.use_bias),
             'wi_up': dense(get, pre + 'mlp.up_proj', cfg.use_bias),
             'wo': dense(get, pre + 'mlp.down_proj', cfg.use_bias)})
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  out = embeddings_to_hf(p, cfg)
  for i in range(cfg.num_layers):
    pre, layer = f'model.layers.{i}.', p[f'layers_{i}']
    out.update(attention_to_hf(layer, pre))
    for ours, theirs in (('wi_gate', 'gate_proj'), ('wi_up', 'up_proj'), ('wo', 'down_proj')):
      out.update(dense_out(layer['mlp'][ours], f'{pre}mlp.{theirs}'))
  return out


MAPS = [ArchMap(
    model_type='llama', family='decoder', base_prefix='model.',
    architectures={'LlamaForCausalLM': ('lm_head',), 'LlamaModel': ()},
    heads={'lm_head': 'lm_head.'},
    config_from_hf=config_from_hf, config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf, params_to_hf=_params_to_hf, matches=_matches,
    default_architecture='LlamaForCausalLM',
    ignore_suffixes=('rotary_emb.inv_freq',),
)]
