"""Causal Transformer decoder: GPT-2 (Radford et al. 2019) and Llama-style options.

GPT-2: learned positions, pre-LN blocks with biases, tanh-GELU MLP, final LayerNorm, LM head tied
to the token embeddings. Llama (Touvron et al. 2023): `norm='rmsnorm'`, `positions='rotary'`,
`num_kv_heads` (GQA), `mlp='swiglu'`, `tie_embeddings=False`, `use_bias=False`.
Parameter names: token_embed, position_embed, layers_{i}, final_norm, lm_head (untied only).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ptm_jax.layers import attention, blocks, embeddings, masks, moe, norms
from ptm_jax.layers import dropout as dropout_lib
from ptm_jax.layers import positions as positions_lib


@dataclasses.dataclass(frozen=True)
class Config(moe.Fields):
  """Decoder hyper-parameters; defaults are GPT-2 small (124M, 50257 BPE vocab, 1024 context).

  `moe_experts > 0` makes every `moe_every`-th feed-forward a Switch mixture of experts
  (`layers.moe.Fields`); the model then also returns `aux_loss` and `moe` metrics.
  """

  vocab_size: int = 50257
  # > 1: the embedding table / LM head get rows up to the next multiple (GPT-2: 50257 -> 50304
  # with 128), so the vocabulary matmuls have tensor-core-friendly shapes; logits are sliced
  # back to vocab_size, so losses and generation never see the extra rows. 0 = no padding.
  vocab_pad_multiple: int = 0
  logits_dtype: str = 'float32'  # or 'compute' (e.g. bf16 logits): embeddings.LOGITS_DTYPES
  embed_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  num_kv_heads: int | None = None  # None = num_heads; fewer = grouped-query attention
  head_dim: int | None = None  # None = embed_dim // num_heads
  mlp_dim: int = 3072
  max_position_embeddings: int = 1024  # size of the learned table ('learned' positions only)
  positions: str = 'learned'  # 'learned' | 'rotary' | 'sinusoidal'
  rope_theta: float = 10_000.0
  norm: str = 'layernorm'  # 'layernorm' | 'rmsnorm'
  layer_norm_eps: float = 1e-5  # epsilon of whichever norm
  mlp: str = 'mlp'  # 'mlp' | 'swiglu'
  activation: str = 'gelu_new'  # GPT-2's tanh GELU; Llama: 'silu'
  use_bias: bool = True
  tie_embeddings: bool = True
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0  # GPT-2 trained with 0.1; 0 keeps the fused kernel
  dropout_impl: str = 'bits'  # every dropout mask's generator: layers.dropout.IMPLS ('hash')
  initializer_range: float = 0.02
  scaled_residual_init: bool = True  # GPT-2: residual projections ~ N(0, range / sqrt(2 * layers))
  dtype: Any = 'float32'  # compute dtype
  param_dtype: Any = 'float32'
  remat: bool = False
  remat_policy: str = 'full'  # with remat: what each block keeps (layers.blocks.REMAT_POLICIES)
  attention_impl: str | None = None  # None/'xla'/'cudnn' for jax.nn.dot_product_attention
  # How the causal × segment mask reaches the kernel (layers.masks.SegmentMask): 'dense' (any
  # rows), 'lengths' (one right-padded document per row: is_causal + lengths, cuDNN's fast path),
  # 'packed' (<= mask_max_segments contiguous documents per row: cuDNN segment offsets).
  # Prefix LM, an explicit attention_mask and KV-cache decoding always use the dense mask.
  mask_form: str = 'dense'
  mask_max_segments: int = 8

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the embedding table and LM head: vocab_size rounded up to vocab_pad_multiple."""
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m if m > 1 else self.vocab_size


def pad_vocab_rows(table_VD, cfg: Config):
  """An HF `[vocab_size, ...]` table -> our `[padded_vocab_size, ...]` (zero rows appended)."""
  extra = cfg.padded_vocab_size - table_VD.shape[0]
  if extra < 0:
    raise ValueError(f'table has {table_VD.shape[0]} rows, more than padded_vocab_size='
                     f'{cfg.padded_vocab_size}; check vocab_size')
  return np.pad(np.asarray(table_VD), [(0, extra)] + [(0, 0)] * (table_VD.ndim - 1))


def dtypes(cfg: Config) -> dict[str, Any]:
  """The config's compute and parameter dtypes as numpy dtypes (configs may hold strings)."""
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _gpt2(layers: int, width: int) -> dict[str, Any]:
  return dict(num_layers=layers, embed_dim=width, num_heads=width // 64, mlp_dim=4 * width)


_LLAMA = dict(norm='rmsnorm', layer_norm_eps=1e-6, positions='rotary', mlp='swiglu',
              activation='silu', tie_embeddings=False, use_bias=False, dropout_rate=0.0,
              scaled_residual_init=False)

VARIANTS: dict[str, dict[str, Any]] = {
    'runlocal': dict(num_layers=2, embed_dim=128, num_heads=2, mlp_dim=512,
                     max_position_embeddings=512),
    'small': _gpt2(12, 768),
    'medium': _gpt2(24, 1024),
    'large': _gpt2(36, 1280),
    'llama_runlocal': dict(num_layers=2, embed_dim=128, num_heads=4, num_kv_heads=2, mlp_dim=344,
                           max_position_embeddings=512, **_LLAMA),
}


class Model(nn.Module):
  """GPT-2 / Llama decoder; returns dict(hidden, logits[, hidden_states]) (contracts.md)."""

  config: Config

  def setup(self):
    cfg = self.config
    dt = dtypes(cfg)
    blocks.check_remat_policy(cfg.remat_policy)
    if cfg.positions not in ('learned', 'rotary', 'sinusoidal'):
      raise ValueError(f"unknown positions {cfg.positions!r}; known: learned, rotary, sinusoidal")
    if cfg.vocab_pad_multiple < 0:
      raise ValueError(f'vocab_pad_multiple={cfg.vocab_pad_multiple} must be >= 0 (0 = off)')
    embeddings.logits_dtype(cfg)  # a bad name fails here, not at the first loss
    if cfg.mask_form not in masks.MASK_FORMS:
      raise ValueError(f'mask_form={cfg.mask_form!r}; use one of {", ".join(masks.MASK_FORMS)}')
    moe.check(cfg)
    self.token_embed = embeddings.Embed(cfg.padded_vocab_size, cfg.embed_dim,
                                        init_stddev=cfg.initializer_range, **dt)
    if cfg.positions == 'learned':
      self.position_embed = positions_lib.LearnedPositions(
          cfg.max_position_embeddings, cfg.embed_dim, init_stddev=cfg.initializer_range, **dt)
    self.embed_dropout = dropout_lib.Dropout(cfg.dropout_rate, cfg.dropout_impl)
    out_std = (cfg.initializer_range / math.sqrt(2 * cfg.num_layers)
               if cfg.scaled_residual_init else None)
    self.layers = [
        blocks.block_class(cfg.remat, moe.is_moe_layer(cfg, i), cfg.remat_policy)(
          num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim,
          num_kv_heads=cfg.num_kv_heads, pre_norm=True, norm=cfg.norm,
          norm_eps=cfg.layer_norm_eps, mlp=cfg.mlp, activation=cfg.activation,
          use_bias=cfg.use_bias, dropout_rate=cfg.dropout_rate,
          attention_dropout_rate=cfg.attention_dropout_rate, dropout_impl=cfg.dropout_impl,
          init_stddev=cfg.initializer_range, out_init_stddev=out_std,
          attention_impl=cfg.attention_impl,
          **(moe.block_kwargs(cfg) if moe.is_moe_layer(cfg, i) else {}), **dt)
        for i in range(cfg.num_layers)]
    self.final_norm = norms.make_norm(cfg.norm, epsilon=cfg.layer_norm_eps, **dt)
    self.decode_cache = attention.DecodeCache()  # only used (and only has state) with use_cache
    if not cfg.tie_embeddings:
      # float32 logits without upcasting the [D, V] kernel; backward in the compute dtype.
      self.lm_head = embeddings.VocabProjection(
          cfg.padded_vocab_size, **dt,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(cfg.initializer_range), ('embed', 'vocab')))

  def embed(self, tokens: jnp.ndarray, *, positions: jnp.ndarray,
            deterministic: bool = True) -> jnp.ndarray:
    """Embedding output `[B, L, D]` (token + absolute positions where used, dropout)."""
    cfg = self.config
    x_BLD = self.token_embed(tokens)
    if cfg.positions == 'learned':
      x_BLD = x_BLD + self.position_embed(positions)
    elif cfg.positions == 'sinusoidal':
      x_BLD = x_BLD + positions_lib.sinusoidal(positions, cfg.embed_dim).astype(x_BLD.dtype)
    x_BLD = self.embed_dropout(x_BLD, deterministic=deterministic)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))

  def decode(self, x_BLD: jnp.ndarray, *, segment_ids: jnp.ndarray, positions: jnp.ndarray,
             attention_mask: jnp.ndarray | None = None, deterministic: bool = True,
             output_hidden_states: bool = False, prefix_flags: jnp.ndarray | None = None,
             use_cache: bool = False):
    """Blocks + final norm on embeddings; returns (hidden `[B, L, D]`, hidden_states or None,
    MoE outputs: `layers.moe.model_outputs`, {} when dense).

    As in HF, the last entry of hidden_states is the final-normed output (= hidden).
    `prefix_flags` `[B, L]` (prefix LM): flagged positions see each other bidirectionally.
    With `use_cache` (mutable 'cache'; see `ptm_jax.decoding`) the tokens continue the cached
    ones: causality is by cache slot and an `attention_mask` must cover all cache slots.
    """
    cfg = self.config
    # Causal by index, not by position: with packing, index order within a segment is the
    # position order, and `positions` may carry offsets.
    key_segments, cache_index = segment_ids, None
    causal = masks.causal_mask(x_BLD.shape[1])
    if use_cache:
      view = self.decode_cache(segment_ids, positions)
      cache_index, key_segments, causal = view.index, view.segment_ids, view.causal
    if prefix_flags is not None:
      prefix_BL = prefix_flags.astype(bool)
      key_prefix_BS = view.place(prefix_BL) if use_cache else prefix_BL
      causal = causal | (prefix_BL[:, None, :, None] & key_prefix_BS[:, None, None, :])
    if cfg.mask_form != 'dense' and not use_cache and prefix_flags is None and (
        attention_mask is None):
      mask = masks.SegmentMask(segment_ids, causal=True, form=cfg.mask_form,
                               max_segments=cfg.mask_max_segments)
    else:
      mask = masks.combine(causal, masks.padding_mask(key_segments),
                           masks.segment_mask(segment_ids, key_segments), attention_mask)
    rotary = None
    if cfg.positions == 'rotary':
      rotary = positions_lib.rotary_cos_sin(positions, cfg.resolved_head_dim, theta=cfg.rope_theta)
    states, layer_aux = [x_BLD], []
    for i, layer in enumerate(self.layers):
      if moe.is_moe_layer(cfg, i):
        x_BLD, aux = layer(x_BLD, mask, rotary, deterministic, None, cache_index, segment_ids != 0)
        layer_aux.append(aux)
      else:
        x_BLD = layer(x_BLD, mask, rotary, deterministic, None, cache_index)
      states.append(x_BLD)
    hidden_BLD = nn.with_logical_constraint(self.final_norm(x_BLD), ('batch', 'length', 'embed'))
    states[-1] = hidden_BLD
    return (hidden_BLD, (tuple(states) if output_hidden_states else None),
            moe.model_outputs(cfg, layer_aux))

  def lm_logits(self, hidden_BLD: jnp.ndarray, keep_padding: bool = False) -> jnp.ndarray:
    """Next-token logits `[B, L, V]` (float32 unless `logits_dtype='compute'`; tied to
    token_embed unless `tie_embeddings=False`).

    The padded rows are no tokens: the projection keeps the first vocab_size columns, so no
    loss, argmax or sampler ever sees them and they get no gradient. `keep_padding=True` returns
    all `padded_vocab_size` columns, for a loss that masks them itself (the chunked loss's
    `valid_vocab`), which spares the slice and the padding of its gradient.
    """
    cfg = self.config
    keep = cfg.padded_vocab_size if keep_padding else cfg.vocab_size
    out_dtype = embeddings.logits_dtype(cfg)
    if cfg.tie_embeddings:
      logits_BLV = self.token_embed.attend(hidden_BLD, keep=keep, out_dtype=out_dtype)
    else:
      logits_BLV = self.lm_head(hidden_BLD, keep=keep, out_dtype=out_dtype)
    return nn.with_logical_constraint(logits_BLV, ('batch', 'length', 'vocab'))

  def __call__(self, tokens: jnp.ndarray, *, segment_ids: jnp.ndarray, positions: jnp.ndarray,
               token_types: jnp.ndarray | None = None,
               attention_mask: jnp.ndarray | None = None, deterministic: bool = True,
               output_hidden_states: bool = False,
               prefix_flags: jnp.ndarray | None = None, use_cache: bool = False,
               compute_logits: bool = True) -> dict[str, Any]:
    """tokens/segment_ids/positions `[B, L]` int32 -> dict(hidden, logits[, hidden_states]).

    `token_types` is accepted for a uniform call signature and ignored; `prefix_flags` makes
    the flagged positions a bidirectional prefix (see `decode`). `compute_logits=False` leaves
    out `logits` for a loss that applies `lm_logits` itself, chunk by chunk
    (`objectives.common.chunked_lm_loss_and_metrics`).
    """
    del token_types
    x_BLD = self.embed(tokens, positions=positions, deterministic=deterministic)
    hidden_BLD, states, moe_out = self.decode(
        x_BLD, segment_ids=segment_ids, positions=positions, attention_mask=attention_mask,
        deterministic=deterministic, output_hidden_states=output_hidden_states,
        prefix_flags=prefix_flags, use_cache=use_cache)
    out = dict(hidden=hidden_BLD, **moe_out)
    if compute_logits:
      out['logits'] = self.lm_logits(hidden_BLD)
    if output_hidden_states:
      out['hidden_states'] = states
    return out
