"""T5 (`T5ForConditionalGeneration`, `T5Model`) <-> our `encdec` family in T5 style.

v1.0 (ReLU MLP, LM head tied to `shared` with the decoder output scaled by d_model**-0.5) and v1.1
(`feed_forward_proj='gated-gelu'`, untied `lm_head`, no scaling). HF stores the relative position
bias in block 0 of each stack; ours is one table per stack (`{encoder,decoder}_relpos`), shared by
every layer exactly as HF shares block 0's. Tied copies (`encoder.embed_tokens`,
`decoder.embed_tokens`) and the unused cross-attention bias some old files carry are ignored.
Transformers 5 decides `scale_decoder_outputs` from `tie_word_embeddings` in config.json, then
forces `tie_word_embeddings=true` and unties `lm_head` only when the file stores its own; we read
`scale_decoder_outputs` when present, untie when the file has an `lm_head.weight`, and write both
config keys explicitly.
"""
from __future__ import annotations

from ptm_jax.interop.maps import ArchMap, Getter, activation_from_hf, require

_HF_ACT = {'relu': 'relu', 'gelu': 'gelu', 'gelu_new': 'gelu_new', 'silu': 'silu'}


def _mlp_from_hf(c: dict) -> tuple[str, str]:
  proj = c.get('feed_forward_proj', 'relu')
  parts = proj.split('-')
  require(len(parts) == 1 or (len(parts) == 2 and parts[0] == 'gated'),
          f"T5 feed_forward_proj={proj!r} is not 'ACT' or 'gated-ACT'")
  if proj == 'gated-gelu':  # HF's backwards-compatible alias: T5 v1.1 uses the tanh GELU
    return 'swiglu', 'gelu_new'
  return ('swiglu' if parts[0] == 'gated' else 'mlp'), activation_from_hf(parts[-1])


def _config_from_hf(c: dict) -> dict:
  mlp, act = _mlp_from_hf(c)
  tied = c.get('tie_word_embeddings', True) is not False
  drop = float(c.get('dropout_rate', 0.1))
  return dict(
      vocab_size=c['vocab_size'], embed_dim=c['d_model'], num_encoder_layers=c['num_layers'],
      num_decoder_layers=c.get('num_decoder_layers') or c['num_layers'],
      num_heads=c['num_heads'], head_dim=c['d_kv'], mlp_dim=c['d_ff'], positions='relative',
      relative_buckets=c.get('relative_attention_num_buckets', 32),
      relative_max_distance=c.get('relative_attention_max_distance', 128), pre_norm=True,
      norm='rmsnorm', layer_norm_eps=c.get('layer_norm_epsilon', 1e-6), embed_norm=False,
      final_norm=True, mlp=mlp, activation=act, use_bias=False, scale_attention=False,
      scale_embedding=False, tie_embeddings=tied,
      scale_decoder_output=bool(c.get('scale_decoder_outputs', tied)), logits_bias=False,
      dropout_rate=drop, attention_dropout_rate=drop, mlp_dropout_rate=drop, init='t5',
      decoder_start_id=int(c.get('decoder_start_token_id') or 0))


def _config_from_names(fields: dict, names: set[str]) -> dict:
  # Transformers 5 writes tie_word_embeddings=true even for an untied v1.1 model and unties on
  # load when the file holds its own lm_head; so do we.
  if 'lm_head.weight' in names:
    return dict(fields, tie_embeddings=False)
  return fields


def t5_like(cfg) -> bool:
  """T5's layer: relative positions, pre-RMSNorm, no biases (SwitchTransformers' too)."""
  return (cfg.positions == 'relative' and cfg.norm == 'rmsnorm' and cfg.pre_norm
          and cfg.final_norm and not cfg.embed_norm and not cfg.use_bias
          and not cfg.scale_attention and not cfg.scale_embedding and not cfg.logits_bias)


def _matches(cfg) -> bool:
  return t5_like(cfg) and not getattr(cfg, 'moe_experts', 0)


def _feed_forward_proj(cfg) -> str:
  require(cfg.activation in _HF_ACT, f'activation {cfg.activation!r} has no T5 equivalent')
  if cfg.mlp == 'swiglu':
    return 'gated-gelu' if cfg.activation == 'gelu_new' else f'gated-{cfg.activation}'
  return cfg.activation


def _config_to_hf(cfg) -> dict:
  require(t5_like(cfg), 'only pre-RMSNorm, bias-free, relative-position encdec configs are T5')
  require(not getattr(cfg, 'moe_experts', 0),
          'a mixture-of-experts T5 is SwitchTransformers, not T5')
  require(cfg.attention_dropout_rate == cfg.dropout_rate == cfg.mlp_dropout_rate,
          'T5 has one dropout_rate; set dropout_rate = attention_ = mlp_dropout_rate')
  return dict(
      model_type='t5', vocab_size=cfg.vocab_size, d_model=cfg.embed_dim,
      d_kv=cfg.resolved_head_dim, d_ff=cfg.mlp_dim, num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
      relative_attention_num_buckets=cfg.relative_buckets,
      relative_attention_max_distance=cfg.relative_max_distance, dropout_rate=cfg.dropout_rate,
      layer_norm_epsilon=cfg.layer_norm_eps, feed_forward_proj=_feed_forward_proj(cfg),
      tie_word_embeddings=cfg.tie_embeddings, scale_decoder_outputs=cfg.scale_decoder_output,
      is_encoder_decoder=True, initializer_factor=1.0, pad_token_id=0,
      decoder_start_token_id=cfg.decoder_start_id)


def attention_from_hf(get: Getter, pre: str, n: int, h: int) -> dict:
  """T5's q/k/v/o (no biases) -> our Attention params; shared with SwitchTransformers."""
  qkv = {ours: {'kernel': get(f'{pre}.{theirs}.weight').T.reshape(-1, n, h)}
         for ours, theirs in (('query', 'q'), ('key', 'k'), ('value', 'v'))}
  return {**qkv, 'out': {'kernel': get(f'{pre}.o.weight').T.reshape(n, h, -1)}}


def attention_to_hf(a: dict, pre: str) -> dict:
  out = {}
  for ours, theirs in (('query', 'q'), ('key', 'k'), ('value', 'v')):
    d, n, h = a[ours]['kernel'].shape
    out[f'{pre}.{theirs}.weight'] = a[ours]['kernel'].reshape(d, n * h).T
  n, h, d = a['out']['kernel'].shape
  out[f'{pre}.o.weight'] = a['out']['kernel'].reshape(n * h, d).T
  return out


_GATED = (('wi_gate', 'wi_0'), ('wi_up', 'wi_1'), ('wo', 'wo'))
_PLAIN = (('wi', 'wi'), ('wo', 'wo'))


def stacks_from_hf(get: Getter, cfg, feed_forward) -> dict:
  """Both stacks' relative biases, final norms and layers; `feed_forward(get, prefix, cfg, i)`
  gives a layer's feed-forward params (T5's `mlp`; SwitchTransformers' `mlp` or `moe`)."""
  n, h = cfg.num_heads, cfg.resolved_head_dim
  p = {}
  for stack, num in (('encoder', cfg.num_encoder_layers), ('decoder', cfg.num_decoder_layers)):
    p[f'{stack}_relpos'] = {'embedding': get(
        f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight')}
    p[f'{stack}_final_norm'] = {'scale': get(f'{stack}.final_layer_norm.weight')}
    for i in range(num):
      pre = f'{stack}.block.{i}.layer.'
      ff = f'{pre}{2 if stack == "decoder" else 1}.'
      layer = {'attention': attention_from_hf(get, pre + '0.SelfAttention', n, h),
               'attention_norm': {'scale': get(pre + '0.layer_norm.weight')},
               'mlp_norm': {'scale': get(ff + 'layer_norm.weight')},
               **feed_forward(get, ff, cfg, i)}
      if stack == 'decoder':
        layer['cross_attention'] = attention_from_hf(get, pre + '1.EncDecAttention', n, h)
        layer['cross_attention_norm'] = {'scale': get(pre + '1.layer_norm.weight')}
      p[f'{stack}_layers_{i}'] = layer
  return p


def stacks_to_hf(p: dict, cfg, feed_forward_out) -> dict:
  """The inverse of `stacks_from_hf`; `feed_forward_out(layer, prefix, cfg)` names the
  feed-forward tensors."""
  out = {}
  for stack, num in (('encoder', cfg.num_encoder_layers), ('decoder', cfg.num_decoder_layers)):
    out[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
        p[f'{stack}_relpos']['embedding'])
    out[f'{stack}.final_layer_norm.weight'] = p[f'{stack}_final_norm']['scale']
    for i in range(num):
      pre, layer = f'{stack}.block.{i}.layer.', p[f'{stack}_layers_{i}']
      ff = f'{pre}{2 if stack == "decoder" else 1}.'
      out.update(attention_to_hf(layer['attention'], pre + '0.SelfAttention'))
      out[pre + '0.layer_norm.weight'] = layer['attention_norm']['scale']
      if stack == 'decoder':
        out.update(attention_to_hf(layer['cross_attention'], pre + '1.EncDecAttention'))
        out[pre + '1.layer_norm.weight'] = layer['cross_attention_norm']['scale']
      out.update(feed_forward_out(layer, ff, cfg))
      out[ff + 'layer_norm.weight'] = layer['mlp_norm']['scale']
  return out


def _dense_mlp_from_hf(get: Getter, prefix: str, cfg, index: int) -> dict:
  del index  # every T5 layer is dense
  names = _GATED if cfg.mlp == 'swiglu' else _PLAIN
  return {'mlp': {ours: {'kernel': get(f'{prefix}DenseReluDense.{theirs}.weight').T}
                  for ours, theirs in names}}


def _dense_mlp_to_hf(layer: dict, prefix: str, cfg) -> dict:
  names = _GATED if cfg.mlp == 'swiglu' else _PLAIN
  return {f'{prefix}DenseReluDense.{theirs}.weight': layer['mlp'][ours]['kernel'].T
          for ours, theirs in names}


def _params_from_hf(get: Getter, cfg) -> dict:
  p = {'token_embed': {'embedding': get('shared.weight')}}
  if not cfg.tie_embeddings:
    p['lm_head'] = {'kernel': get('lm_head.weight').T}
  return dict(p, **stacks_from_hf(get, cfg, _dense_mlp_from_hf))


def _params_to_hf(p: dict, cfg) -> dict:
  out = {'shared.weight': p['token_embed']['embedding']}
  if 'lm_head' in p:
    out['lm_head.weight'] = p['lm_head']['kernel'].T
  return dict(out, **stacks_to_hf(p, cfg, _dense_mlp_to_hf))


MAPS = [ArchMap(
    model_type='t5', family='encdec', base_prefix='',
    architectures={'T5ForConditionalGeneration': ('lm_head',), 'T5Model': ()},
    heads={'lm_head': 'lm_head.'},
    config_from_hf=_config_from_hf, config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf, params_to_hf=_params_to_hf, matches=_matches,
    default_architecture='T5ForConditionalGeneration', config_from_names=_config_from_names,
    ignore_suffixes=('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
                     'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight'),
)]
