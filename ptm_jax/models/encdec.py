"""Encoder–decoder Transformer: T5 (Raffel et al. 2020) and BART (Lewis et al. 2020) as options.

T5: pre-norm RMSNorm blocks without biases, a bucketed relative position bias per stack
(bidirectional buckets in the encoder, unidirectional in the decoder) computed once and added in
every layer, unscaled attention logits (1/sqrt(d) folded into the query init), ReLU MLP (v1.0) or
gated tanh-GELU (v1.1, `mlp='swiglu'`, `activation='gelu_new'`), a final norm per stack, and an LM
head tied to the shared embedding with the decoder output rescaled by `embed_dim ** -0.5` (v1.0)
or untied and unscaled (v1.1).
BART: learned positions (2 reserved rows, `position_offset=2`), an embedding LayerNorm in each
stack, post-LN blocks with biases, exact GELU, optional `scale_embedding` (sqrt(d)), an LM head
tied to the shared embedding plus `final_logits_bias` (`logits_bias`).

  out = model.apply({'params': p}, encoder_tokens, decoder_tokens,
                    encoder_segment_ids=..., decoder_segment_ids=...,
                    encoder_positions=None, decoder_positions=None,  # None = arange per row
                    deterministic=True, rngs=None)
  # dict(logits [B, Ld, V] float32, hidden [B, Ld, D], encoder_hidden [B, Le, D])

segment_ids: 0 = padding, packed segments 1, 2, ...; decoder self-attention is causal and
same-segment; cross-attention lets decoder segment s read encoder segment s only. `encode` and
`decode` run one stack each, so generation runs the encoder once (`ptm_jax.decoding`).
The uniform single-sequence call `model.init(rng, tokens, segment_ids=..., positions=...)` that
the trainer and the interop template make feeds the same tokens to both stacks.
Parameter names: token_embed, {encoder,decoder}_position_embed (BART),
{encoder,decoder}_relpos (T5), {encoder,decoder}_embed_norm (BART), encoder_layers_{i},
decoder_layers_{i}, {encoder,decoder}_final_norm (T5), lm_head (untied), logits_bias/bias (BART).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ptm_jax.layers import attention, blocks, embeddings, masks, moe, norms
from ptm_jax.layers import dropout as dropout_lib
from ptm_jax.layers import positions as positions_lib


@dataclasses.dataclass(frozen=True)
class Config(moe.Fields):
  """Encoder–decoder hyper-parameters; defaults are T5 v1.0 small (60.5M, 32128 vocab).

  `moe_experts > 0` makes every `moe_every`-th feed-forward of both stacks a mixture of experts
  (`layers.moe.Fields`): the Switch Transformer (Fedus et al. 2022) is T5 with 8..2048 experts
  in every other layer. The model then also returns `aux_loss` and `moe` metrics.
  """

  vocab_size: int = 32128
  embed_dim: int = 512
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  head_dim: int | None = 64  # None = embed_dim // num_heads
  mlp_dim: int = 2048
  positions: str = 'relative'  # 'relative' (T5 bucketed bias) | 'learned' (BART)
  relative_buckets: int = 32
  relative_max_distance: int = 128
  max_position_embeddings: int = 512  # learned positions: usable length (table = this + offset)
  position_offset: int = 2  # BART reserves the first 2 rows of its position tables
  pre_norm: bool = True  # T5 pre-norm; BART post-LN
  norm: str = 'rmsnorm'  # 'rmsnorm' (T5LayerNorm) | 'layernorm'
  layer_norm_eps: float = 1e-6
  embed_norm: bool = False  # BART layernorm_embedding after token + position embeddings
  final_norm: bool = True  # T5 final_layer_norm at the end of each stack
  mlp: str = 'mlp'  # 'mlp' | 'swiglu' (gated: T5 v1.1 gated-gelu with activation='gelu_new')
  activation: str = 'relu'
  use_bias: bool = False
  scale_attention: bool = False  # False: T5's unscaled logits; True: 1/sqrt(head_dim) (BART)
  scale_embedding: bool = False  # BART option: token embeddings * sqrt(embed_dim)
  tie_embeddings: bool = True  # LM head = shared token embedding
  scale_decoder_output: bool = True  # T5 v1.0: decoder output * embed_dim**-0.5 before the head
  logits_bias: bool = False  # BART final_logits_bias
  dropout_rate: float = 0.1  # embeddings, residual branches (and T5's stack outputs)
  attention_dropout_rate: float = 0.1  # T5 drops attention probabilities with dropout_rate
  mlp_dropout_rate: float = 0.1  # after the MLP activation (BART: activation_dropout)
  dropout_impl: str = 'bits'  # every dropout mask's generator: layers.dropout.IMPLS ('hash')
  init: str = 't5'  # 't5' (HF/Mesh TF scheme: fan-in scaled, query / sqrt(head_dim)) | 'normal'
  initializer_range: float = 0.02  # std of every weight with init='normal' (BART init_std)
  decoder_start_id: int = 0  # first decoder input when generating (T5: pad = 0; BART: eos = 2)
  dtype: Any = 'float32'  # compute dtype
  param_dtype: Any = 'float32'
  logits_dtype: str = 'float32'  # or 'compute' (e.g. bf16 logits): embeddings.LOGITS_DTYPES
  remat: bool = False
  remat_policy: str = 'full'  # with remat: what each block keeps (layers.blocks.REMAT_POLICIES)
  attention_impl: str | None = None  # None/'xla'/'cudnn' for jax.nn.dot_product_attention

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads


def dtypes(cfg: Config) -> dict[str, Any]:
  """The config's compute and parameter dtypes as numpy dtypes (configs may hold strings)."""
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _t5(width: int, layers: int, heads: int, mlp_dim: int, **kw) -> dict[str, Any]:
  return dict(embed_dim=width, num_encoder_layers=layers, num_decoder_layers=layers,
              num_heads=heads, head_dim=64, mlp_dim=mlp_dim, **kw)


# T5 v1.1: gated tanh-GELU MLP (Shazeer 2020), untied and unscaled LM head.
_T5_V1_1 = dict(mlp='swiglu', activation='gelu_new', tie_embeddings=False,
                scale_decoder_output=False)
_BART = dict(vocab_size=50265, positions='learned', max_position_embeddings=1024,
             position_offset=2, pre_norm=False, norm='layernorm', layer_norm_eps=1e-5,
             embed_norm=True, final_norm=False, mlp='mlp', activation='gelu', use_bias=True,
             scale_attention=True, scale_embedding=False, tie_embeddings=True,
             scale_decoder_output=False, logits_bias=True, dropout_rate=0.1,
             attention_dropout_rate=0.1, mlp_dropout_rate=0.1, init='normal',
             initializer_range=0.02, decoder_start_id=2)


def _bart(width: int, layers: int, **kw) -> dict[str, Any]:
  return dict(_BART, embed_dim=width, num_encoder_layers=layers, num_decoder_layers=layers,
              num_heads=width // 64, head_dim=64, mlp_dim=4 * width, **kw)


VARIANTS: dict[str, dict[str, Any]] = {
    'runlocal': _t5(128, 2, 2, 512),
    't5_runlocal': _t5(128, 2, 2, 512),
    't5_small': _t5(512, 6, 8, 2048),  # 60.5M
    't5_base': _t5(768, 12, 12, 3072),  # 222.9M
    't5_large': _t5(1024, 24, 16, 4096),  # 737.7M
    't5_v1_1_small': _t5(512, 8, 6, 1024, **_T5_V1_1),
    't5_v1_1_base': _t5(768, 12, 12, 2048, **_T5_V1_1),
    # Switch Transformer (Fedus et al. 2022): T5 v1.0 with 8 top-1 experts in every other layer.
    'switch_runlocal': _t5(128, 2, 2, 512, moe_experts=4),
    'switch_base_8': _t5(768, 12, 12, 3072, moe_experts=8),  # 619.3M, as google/switch-base-8
    'bart_runlocal': _bart(128, 2, max_position_embeddings=512),
    'bart_base': _bart(768, 6),  # 139.4M (+ the 50265 logits bias)
    'bart_large': _bart(1024, 12),  # 406.3M (+ the 50265 logits bias)
}


class _Init:
  """Init std of each weight: T5's fan-in scheme (HF `_init_weights`) or one normal std."""

  def __init__(self, cfg: Config):
    d, h, n, f = cfg.embed_dim, cfg.resolved_head_dim, cfg.num_heads, cfg.mlp_dim
    if cfg.init == 't5':
      self.embed, self.kv, self.query = 1.0, d ** -0.5, (d * h) ** -0.5
      self.out, self.mlp_out, self.relpos, self.head = (n * h) ** -0.5, f ** -0.5, d ** -0.5, 1.0
    elif cfg.init == 'normal':
      s = cfg.initializer_range
      self.embed = self.kv = self.query = self.out = self.mlp_out = self.relpos = self.head = s
    else:
      raise ValueError(f"unknown init {cfg.init!r}; known: 't5', 'normal'")


def _check(cfg: Config) -> None:
  moe.check(cfg)
  blocks.check_remat_policy(cfg.remat_policy)
  if cfg.positions not in ('relative', 'learned'):
    raise ValueError(f"unknown positions {cfg.positions!r}; known: 'relative', 'learned'")
  if cfg.norm not in ('rmsnorm', 'layernorm'):
    raise ValueError(f"unknown norm {cfg.norm!r}; known: 'rmsnorm', 'layernorm'")


class LogitsBias(nn.Module):
  """BART's `final_logits_bias`: a learned `[V]` bias added to the float32 logits."""

  vocab_size: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, logits_BLV: jnp.ndarray) -> jnp.ndarray:
    bias_V = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                        (self.vocab_size,), self.param_dtype)
    return logits_BLV + bias_V.astype(jnp.float32)[None, None, :]


class Model(nn.Module):
  """T5 / BART encoder–decoder; returns dict(logits, hidden, encoder_hidden) (see module doc)."""

  config: Config

  def setup(self):
    cfg = self.config
    _check(cfg)
    dt, std = dtypes(cfg), _Init(cfg)
    self.token_embed = embeddings.Embed(cfg.vocab_size, cfg.embed_dim, init_stddev=std.embed,
                                        **dt)
    if cfg.positions == 'learned':
      learned = functools.partial(
          positions_lib.LearnedPositions, cfg.max_position_embeddings + cfg.position_offset,
          cfg.embed_dim, offset=cfg.position_offset, init_stddev=std.embed, **dt)
      self.encoder_position_embed, self.decoder_position_embed = learned(), learned()
    else:
      relpos = functools.partial(
          positions_lib.RelativePositionBias, cfg.num_heads, num_buckets=cfg.relative_buckets,
          max_distance=cfg.relative_max_distance, init_stddev=std.relpos,
          param_dtype=dt['param_dtype'])
      self.encoder_relpos = relpos(bidirectional=True)
      self.decoder_relpos = relpos(bidirectional=False)
    norm = functools.partial(norms.make_norm, cfg.norm, epsilon=cfg.layer_norm_eps, **dt)
    if cfg.embed_norm:
      self.encoder_embed_norm, self.decoder_embed_norm = norm(), norm()
    if cfg.final_norm:
      self.encoder_final_norm, self.decoder_final_norm = norm(), norm()
    self.dropout = dropout_lib.Dropout(cfg.dropout_rate, cfg.dropout_impl)
    layer = dict(num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim,
                 pre_norm=cfg.pre_norm, norm=cfg.norm, norm_eps=cfg.layer_norm_eps, mlp=cfg.mlp,
                 activation=cfg.activation, use_bias=cfg.use_bias,
                 dropout_rate=cfg.dropout_rate, attention_dropout_rate=cfg.attention_dropout_rate,
                 mlp_dropout_rate=cfg.mlp_dropout_rate, dropout_impl=cfg.dropout_impl,
                 init_stddev=std.kv,
                 out_init_stddev=std.out, query_init_stddev=std.query,
                 mlp_out_init_stddev=std.mlp_out,
                 attention_scale=None if cfg.scale_attention else 1.0,
                 attention_impl=cfg.attention_impl, **dt)
    routed = lambda i: moe.is_moe_layer(cfg, i)  # noqa: E731
    moe_kw = lambda i: moe.block_kwargs(cfg) if routed(i) else {}  # noqa: E731
    self.encoder_layers = [
        blocks.block_class(cfg.remat, routed(i), cfg.remat_policy)(**layer, **moe_kw(i))
        for i in range(cfg.num_encoder_layers)]
    decoder_block = lambda i: blocks.encoder_decoder_block_class(  # noqa: E731
        cfg.remat, routed(i), cfg.remat_policy)
    self.decoder_layers = [decoder_block(i)(**layer, **moe_kw(i))
                           for i in range(cfg.num_decoder_layers)]
    if not cfg.tie_embeddings:
      # float32 logits without upcasting the [D, V] kernel; backward in the compute dtype.
      self.lm_head = embeddings.VocabProjection(
          cfg.vocab_size, **dt,
          kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std.head),
                                                   ('embed', 'vocab')))
    if cfg.logits_bias:
      self.logits_bias = LogitsBias(cfg.vocab_size, param_dtype=dt['param_dtype'])
    self.decode_cache = attention.DecodeCache()

  def _embed(self, tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray, side: str,
             deterministic: bool) -> jnp.ndarray:
    cfg = self.config
    x_BLD = self.token_embed(tokens_BL)
    if cfg.scale_embedding:
      x_BLD = x_BLD * jnp.asarray(math.sqrt(cfg.embed_dim), x_BLD.dtype)
    if cfg.positions == 'learned':
      x_BLD = x_BLD + getattr(self, f'{side}_position_embed')(positions_BL)
    if cfg.embed_norm:
      x_BLD = getattr(self, f'{side}_embed_norm')(x_BLD)
    x_BLD = self.dropout(x_BLD, deterministic=deterministic)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))

  def _finish(self, x_BLD: jnp.ndarray, side: str, deterministic: bool) -> jnp.ndarray:
    if self.config.final_norm:
      x_BLD = self.dropout(getattr(self, f'{side}_final_norm')(x_BLD),
                           deterministic=deterministic)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))

  def encode(self, tokens: jnp.ndarray, *, segment_ids: jnp.ndarray,
             positions: jnp.ndarray | None = None, deterministic: bool = True) -> jnp.ndarray:
    """Encoder stack: tokens `[B, Le]` -> hidden `[B, Le, D]`."""
    return self._encode(tokens, segment_ids, positions, deterministic)[0]

  def _encode(self, tokens, segment_ids, positions, deterministic):
    """`encode` and the routed layers' aux dicts."""
    positions = _default_positions(tokens, positions)
    x_BLD = self._embed(tokens, positions, 'encoder', deterministic)
    mask = masks.combine(masks.padding_mask(segment_ids),
                         masks.segment_mask(segment_ids, segment_ids))
    bias = None
    if self.config.positions == 'relative':
      bias = self.encoder_relpos(positions, positions)
    layer_aux = []
    for i, layer in enumerate(self.encoder_layers):
      if moe.is_moe_layer(self.config, i):
        x_BLD, aux = layer(x_BLD, mask, None, deterministic, bias, None, segment_ids != 0)
        layer_aux.append(aux)
      else:
        x_BLD = layer(x_BLD, mask, None, deterministic, bias, None)
    return self._finish(x_BLD, 'encoder', deterministic), layer_aux

  def decode(self, tokens: jnp.ndarray, encoded: jnp.ndarray, *,
             encoder_segment_ids: jnp.ndarray, segment_ids: jnp.ndarray,
             positions: jnp.ndarray | None = None, deterministic: bool = True,
             use_cache: bool = False) -> jnp.ndarray:
    """Decoder stack over `encoded` `[B, Le, D]`: tokens `[B, Ld]` -> hidden `[B, Ld, D]`.

    With `use_cache` (mutable 'cache'), the tokens continue the cached ones (`ptm_jax.decoding`):
    causality is by cache slot, and `positions` must be given.
    """
    return self._decode(tokens, encoded, encoder_segment_ids, segment_ids, positions,
                        deterministic, use_cache)[0]

  def _decode(self, tokens, encoded, encoder_segment_ids, segment_ids, positions, deterministic,
              use_cache):
    """`decode` and the routed layers' aux dicts."""
    if use_cache and positions is None:
      raise ValueError('decode(use_cache=True) needs explicit positions (where the tokens sit)')
    positions = _default_positions(tokens, positions)
    x_BLD = self._embed(tokens, positions, 'decoder', deterministic)
    key_segments, key_positions, cache_index = segment_ids, positions, None
    causal = masks.causal_mask(tokens.shape[1])
    if use_cache:
      view = self.decode_cache(segment_ids, positions)
      cache_index, key_segments, key_positions, causal = view
    mask = masks.combine(causal, masks.padding_mask(key_segments),
                         masks.segment_mask(segment_ids, key_segments))
    cross_mask = masks.combine(masks.padding_mask(encoder_segment_ids),
                               masks.segment_mask(segment_ids, encoder_segment_ids))
    bias = None
    if self.config.positions == 'relative':
      bias = self.decoder_relpos(positions, key_positions)
    layer_aux = []
    for i, layer in enumerate(self.decoder_layers):
      if moe.is_moe_layer(self.config, i):
        x_BLD, aux = layer(x_BLD, mask, encoded, cross_mask, bias, deterministic, cache_index,
                           segment_ids != 0)
        layer_aux.append(aux)
      else:
        x_BLD = layer(x_BLD, mask, encoded, cross_mask, bias, deterministic, cache_index)
    return self._finish(x_BLD, 'decoder', deterministic), layer_aux

  def lm_logits(self, hidden_BLD: jnp.ndarray) -> jnp.ndarray:
    """Next-token logits `[B, L, V]` from the decoder output (float32 unless `logits_dtype`)."""
    cfg = self.config
    out_dtype = embeddings.logits_dtype(cfg)
    if cfg.scale_decoder_output:
      hidden_BLD = hidden_BLD * jnp.asarray(cfg.embed_dim ** -0.5, hidden_BLD.dtype)
    if cfg.tie_embeddings:
      logits_BLV = self.token_embed.attend(hidden_BLD, out_dtype=out_dtype)
    else:
      logits_BLV = self.lm_head(hidden_BLD, out_dtype=out_dtype)
    if cfg.logits_bias:
      logits_BLV = self.logits_bias(logits_BLV).astype(out_dtype)
    return nn.with_logical_constraint(logits_BLV, ('batch', 'length', 'vocab'))

  def __call__(self, encoder_tokens: jnp.ndarray, decoder_tokens: jnp.ndarray | None = None, *,
               encoder_segment_ids: jnp.ndarray | None = None,
               decoder_segment_ids: jnp.ndarray | None = None,
               encoder_positions: jnp.ndarray | None = None,
               decoder_positions: jnp.ndarray | None = None,
               segment_ids: jnp.ndarray | None = None, positions: jnp.ndarray | None = None,
               token_types: jnp.ndarray | None = None,
               deterministic: bool = True, compute_logits: bool = True) -> dict[str, Any]:
    """Encoder + decoder + LM head -> dict(logits, hidden, encoder_hidden[, aux_loss, moe]).

    `compute_logits=False` skips the `[B, L, V]` projection (a chunked loss applies `lm_logits`
    to slices of `hidden` itself); `logits` is then absent.

    `segment_ids`/`positions`/`token_types` serve only the uniform single-sequence call
    (no `decoder_tokens`: both stacks read `encoder_tokens`); `token_types` is ignored.
    """
    del token_types
    if decoder_tokens is None:
      decoder_tokens, decoder_segment_ids = encoder_tokens, segment_ids
      encoder_segment_ids, encoder_positions = segment_ids, positions
      decoder_positions = positions
    if encoder_segment_ids is None or decoder_segment_ids is None:
      raise ValueError('encdec.Model needs encoder_segment_ids and decoder_segment_ids '
                       '(0 = padding, 1.. = packed segments)')
    encoded_BSD, encoder_aux = self._encode(encoder_tokens, encoder_segment_ids,
                                            encoder_positions, deterministic)
    hidden_BLD, decoder_aux = self._decode(decoder_tokens, encoded_BSD, encoder_segment_ids,
                                           decoder_segment_ids, decoder_positions, deterministic,
                                           False)
    out = dict(hidden=hidden_BLD, encoder_hidden=encoded_BSD,
               **moe.model_outputs(self.config, encoder_aux + decoder_aux))
    if compute_logits:
      out['logits'] = self.lm_logits(hidden_BLD)
    return out


def _default_positions(tokens_BL: jnp.ndarray, positions_BL: jnp.ndarray | None) -> jnp.ndarray:
  """`positions` or arange per row (what HF uses for T5 and BART)."""
  if positions_BL is not None:
    return positions_BL
  return jnp.broadcast_to(jnp.arange(tokens_BL.shape[1], dtype=jnp.int32), tokens_BL.shape)
