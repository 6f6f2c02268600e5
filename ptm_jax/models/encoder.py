"""Bidirectional Transformer encoder: BERT (Devlin et al. 2019) and RoBERTa (Liu et al. 2019).

Embeddings (token + learned position + token type) -> LayerNorm -> dropout -> post-LN blocks,
then an MLM head tied to the token embeddings, a tanh pooler over the first token and an NSP head.
`positions='rotary'` (RoFormer, Su et al. 2021) drops the position table (no `position_embed`)
and rotates queries and keys by position in every block instead.
Parameter names follow `docs/contracts.md`: token_embed, position_embed, type_embed, embed_norm,
[embed_project,] layers_{i}, mlm_head, pooler, nsp_head[, rtd_head][, mlm_decoder]. Two optional
ones exist for ELECTRA checkpoints: a factorised embedding (`embedding_size` E < H) and the
discriminator's replaced-token-detection head (`rtd_head=True`); `mlm_decoder` is the untied MLM
output table (`tie_embeddings=False`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptm_jax.layers import attention, blocks, embeddings, masks, mlp, norms
from ptm_jax.layers import dropout as dropout_lib
from ptm_jax.layers import positions as positions_lib


@dataclasses.dataclass(frozen=True)
class Config:
  """BERT/RoBERTa hyper-parameters; defaults are BERT-base (uncased, 30522 WordPiece vocab)."""

  vocab_size: int = 30522
  embed_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  head_dim: int | None = None  # None = embed_dim // num_heads
  mlp_dim: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2  # 0 = no token-type embeddings (DistilBERT)
  # E < embed_dim factorises the embedding: E-wide tables and LayerNorm, a dense E -> H
  # (`embed_project`), an H -> E MLM transform before the tied decoder (HF ELECTRA generators,
  # ELECTRA-Small). None = embed_dim.
  embedding_size: int | None = None
  rtd_head: bool = False  # ELECTRA's replaced-token detection (`rtd_logits`; HF discriminators)
  # False: the MLM head reads its own [V, E] output table (`mlm_decoder`) instead of the input
  # embeddings (decoupled embeddings, Chung et al. 2021): a rare word's input vector then moves only
  # when the word is seen, not with every softmax over the vocabulary.
  tie_embeddings: bool = True
  # True: pre-LN blocks + a final LayerNorm (Xiong et al. 2020): trains without a long warmup and
  # tolerates higher learning rates, which small CPU-budget runs need; BERT itself is post-LN.
  pre_norm: bool = False
  position_offset: int = 0  # RoBERTa: padding_idx + 1 = 2
  # 'learned' (BERT: an absolute table added to the token embeddings) or 'rotary' (RoFormer, Su et
  # al. 2021: no table; queries and keys rotated by position, so every attention score depends on
  # the relative offset). At a small budget a learned table never gets the model to use word
  # order (README, quickstart section); rotary does from the first steps.
  positions: str = 'learned'
  rope_theta: float = 10_000.0
  block_position_embeddings: bool = False  # GLM: a second learned table (position inside a span)
  layer_norm_eps: float = 1e-12
  activation: str = 'gelu'  # exact erf GELU, as BERT
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0  # BERT trained with 0.1; 0 keeps the fused kernel
  dropout_impl: str = 'bits'  # every dropout mask's generator: layers.dropout.IMPLS ('hash')
  initializer_range: float = 0.02
  dtype: Any = 'float32'  # compute dtype
  param_dtype: Any = 'float32'
  logits_dtype: str = 'float32'  # MLM logits; or 'compute' (e.g. bf16): embeddings.LOGITS_DTYPES
  remat: bool = False
  remat_policy: str = 'full'  # with remat: what each block keeps (layers.blocks.REMAT_POLICIES)
  attention_impl: str | None = None  # None/'xla'/'cudnn' for jax.nn.dot_product_attention
  # How the padding × segment mask reaches the kernel (layers.masks.SegmentMask): 'dense' (any
  # rows), 'lengths' (one right-padded document per row: sequence lengths, cuDNN's fast path),
  # 'packed' (<= mask_max_segments contiguous documents per row: cuDNN segment offsets).
  # An explicit attention_mask (UniLM, GLM, ...) always uses the dense mask.
  mask_form: str = 'dense'
  mask_max_segments: int = 8

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def resolved_embedding_size(self) -> int:
    return self.embedding_size or self.embed_dim


def dtypes(cfg) -> dict[str, Any]:
  """The config's compute and parameter dtypes as numpy dtypes (configs may hold strings)."""
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _bert(layers: int, width: int) -> dict[str, Any]:
  return dict(num_layers=layers, embed_dim=width, num_heads=width // 64, mlp_dim=4 * width)


VARIANTS: dict[str, dict[str, Any]] = {
    'runlocal': dict(num_layers=2, embed_dim=128, num_heads=2, mlp_dim=512,
                     max_position_embeddings=512),
    'tiny': _bert(2, 128),
    'mini': _bert(4, 256),
    'small': _bert(4, 512),
    'medium': _bert(8, 512),
    'base': _bert(12, 768),
    'large': _bert(24, 1024),
}


class MLMHead(nn.Module):
  """BERT's masked-LM head: dense -> GELU -> LayerNorm -> tied decoder (+ output bias).

  `width`/`axes` let ALBERT project H down to its embedding size E before the tied decoder.
  """

  config: Any
  width: int | None = None  # None = embed_dim
  axes: tuple = ('embed', 'mlp')

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, decode) -> jnp.ndarray:
    """`decode` maps `[B, L, D]` to tied logits (the token embedding's `attend`), float32 unless
    the config's `logits_dtype` is 'compute'; the output bias is added in float32 either way."""
    cfg, dt = self.config, dtypes(self.config)
    out_dtype = embeddings.logits_dtype(cfg)
    h = mlp.dense(self.width or cfg.embed_dim, self.axes, use_bias=True,
                  stddev=cfg.initializer_range, name='dense', **dt)(x_BLD)
    h = mlp.activation(cfg.activation)(h)
    h = norms.LayerNorm(cfg.layer_norm_eps, name='norm', **dt)(h)
    bias_V = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                        (cfg.vocab_size,), dt['param_dtype'])
    logits_BLV = (decode(h, out_dtype=out_dtype).astype(jnp.float32)
                  + bias_V.astype(jnp.float32)[None, None, :]).astype(out_dtype)
    return nn.with_logical_constraint(logits_BLV, ('batch', 'length', 'vocab'))


def tied_mlm_head(cfg) -> MLMHead:
  """The MLM transform back to the token table's width: E when factorised (E and H then on
  different mesh axes), else the model width."""
  width = cfg.resolved_embedding_size
  return MLMHead(cfg) if width == cfg.embed_dim else MLMHead(cfg, width=width,
                                                              axes=('embed', None))


class RTDHead(nn.Module):
  """ELECTRA replaced-token detection: dense(H) -> activation -> dense(1) -> float32 `[B, L]`."""

  config: Any

  @nn.compact
  def __call__(self, hidden_BLD: jnp.ndarray) -> jnp.ndarray:
    cfg, dt = self.config, dtypes(self.config)
    kw = dict(use_bias=True, stddev=cfg.initializer_range, **dt)
    h_BLD = mlp.dense(cfg.embed_dim, ('embed', 'mlp'), name='dense', **kw)(hidden_BLD)
    h_BLD = mlp.activation(cfg.activation)(h_BLD)
    logits_BL1 = mlp.dense(1, ('mlp', None), name='out', **kw)(h_BLD)
    return logits_BL1[..., 0].astype(jnp.float32)


class Model(nn.Module):
  """BERT/RoBERTa encoder with MLM, pooler and NSP heads; returns a dict (contracts.md)."""

  config: Config

  def setup(self):
    cfg = self.config
    dt = dtypes(cfg)
    blocks.check_remat_policy(cfg.remat_policy)
    width = cfg.resolved_embedding_size
    self.token_embed = embeddings.Embed(cfg.vocab_size, width,
                                        init_stddev=cfg.initializer_range, **dt)
    if cfg.positions not in ('learned', 'rotary'):
      raise ValueError(f"encoder positions={cfg.positions!r}; known: learned, rotary")
    if cfg.positions == 'learned':
      self.position_embed = positions_lib.LearnedPositions(
          cfg.max_position_embeddings, width, offset=cfg.position_offset,
          init_stddev=cfg.initializer_range, **dt)
    if cfg.type_vocab_size:
      self.type_embed = embeddings.Embed(cfg.type_vocab_size, width,
                                         init_stddev=cfg.initializer_range,
                                         axes=(None, 'embed'), **dt)
    self.embed_norm = norms.LayerNorm(cfg.layer_norm_eps, **dt)
    if cfg.block_position_embeddings:  # GLM's 2-D positions: the index inside a blank
      self.block_position_embed = positions_lib.LearnedPositions(
          cfg.max_position_embeddings, width,
          init_stddev=cfg.initializer_range, **dt)
    self.embed_dropout = dropout_lib.Dropout(cfg.dropout_rate, cfg.dropout_impl)
    if width != cfg.embed_dim:  # (None, 'embed'): E and H must not both map to one mesh axis
      self.embed_project = mlp.dense(cfg.embed_dim, (None, 'embed'), use_bias=True,
                                     stddev=cfg.initializer_range, **dt)
    block = blocks.block_class(cfg.remat, policy=cfg.remat_policy)
    self.decode_cache = attention.DecodeCache()  # only used (and only has state) with use_cache
    self.layers = [
        block(num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim,
              pre_norm=cfg.pre_norm, norm='layernorm', norm_eps=cfg.layer_norm_eps, mlp='mlp',
              activation=cfg.activation, use_bias=True, dropout_rate=cfg.dropout_rate,
              attention_dropout_rate=cfg.attention_dropout_rate, dropout_impl=cfg.dropout_impl,
              init_stddev=cfg.initializer_range, attention_impl=cfg.attention_impl, **dt)
        for _ in range(cfg.num_layers)]
    if cfg.pre_norm:
      self.final_norm = norms.LayerNorm(cfg.layer_norm_eps, **dt)
    self.mlm_head = tied_mlm_head(cfg)
    if not cfg.tie_embeddings:
      self.mlm_decoder = embeddings.Embed(cfg.vocab_size, width, init_stddev=cfg.initializer_range,
                                          **dt)
    dense = dict(use_bias=True, stddev=cfg.initializer_range, **dt)
    self.pooler = mlp.dense(cfg.embed_dim, ('embed', 'mlp'), **dense)
    self.nsp_head = mlp.dense(2, ('embed', None), **dense)
    if cfg.rtd_head:
      self.rtd_head = RTDHead(cfg)

  def embed(self, tokens: jnp.ndarray, *, positions: jnp.ndarray,
            token_types: jnp.ndarray | None = None, deterministic: bool = True,
            block_positions: jnp.ndarray | None = None, project: bool = True) -> jnp.ndarray:
    """Embedding output `[B, L, D]` (sum, LayerNorm, dropout); ELECTRA shares this part.

    With a factorised embedding (`embedding_size` E < D), `project=False` returns the E-wide
    output before `embed_project`: what ELECTRA's generator projects to its own width.
    """
    x_BLD = self.token_embed(tokens)
    if self.config.positions == 'learned':
      x_BLD = x_BLD + self.position_embed(positions)
    if self.config.block_position_embeddings:
      # Outside GLM's blanks (and at init) the second position is 0.
      block = jnp.zeros_like(tokens) if block_positions is None else block_positions
      x_BLD = x_BLD + self.block_position_embed(block)
    if self.config.type_vocab_size:
      if token_types is None:
        token_types = jnp.zeros_like(tokens)
      x_BLD = x_BLD + self.type_embed(token_types)
    x_BLD = self.embed_dropout(self.embed_norm(x_BLD), deterministic=deterministic)
    if self.config.resolved_embedding_size != self.config.embed_dim:
      if not project:
        return nn.with_logical_constraint(x_BLD, ('batch', 'length', None))
      x_BLD = self.embed_project(x_BLD)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))

  def encode(self, x_BLD: jnp.ndarray, *, segment_ids: jnp.ndarray,
             attention_mask: jnp.ndarray | None = None, deterministic: bool = True,
             output_hidden_states: bool = False, positions: jnp.ndarray | None = None,
             use_cache: bool = False):
    """Runs the blocks on embeddings; returns (hidden `[B, L, D]`, hidden_states tuple or None).

    `positions` `[B, L]` is needed with rotary positions (the blocks rotate queries and keys).
    With `use_cache` (mutable 'cache', as the decoder's; `ptm_jax.tasks.generation` decodes UniLM
    and GLM this way) the chunk is written to the KV cache at the next slots and its queries see
    every earlier written slot, and inside the chunk what `attention_mask` `[B, 1, L, L]` allows
    (all of it without one): a bidirectional source prefilled in one chunk, then generated tokens.
    One document per row there (segment 0 marks padding and unwritten slots; no packing).
    """
    cfg = self.config
    rotary = None
    if cfg.positions == 'rotary':
      if positions is None:
        raise ValueError('a rotary-position encoder needs `positions` in encode()')
      rotary = positions_lib.rotary_cos_sin(positions, cfg.resolved_head_dim, theta=cfg.rope_theta)
    if cfg.mask_form not in masks.MASK_FORMS:
      raise ValueError(f'mask_form={cfg.mask_form!r}; use one of {", ".join(masks.MASK_FORMS)}')
    cache_index = None
    if use_cache:
      mask, cache_index = self._cache_mask(segment_ids, positions, attention_mask)
    elif cfg.mask_form != 'dense' and attention_mask is None:
      mask = masks.SegmentMask(segment_ids, causal=False, form=cfg.mask_form,
                               max_segments=cfg.mask_max_segments)
    else:
      mask = masks.combine(masks.padding_mask(segment_ids),
                           masks.segment_mask(segment_ids, segment_ids), attention_mask)
    states = [x_BLD]
    for layer in self.layers:
      x_BLD = layer(x_BLD, mask, rotary, deterministic, None, cache_index)
      states.append(x_BLD)
    if self.config.pre_norm:  # pre-LN residual streams are unnormalised until here
      x_BLD = self.final_norm(x_BLD)
      states[-1] = x_BLD
    return x_BLD, (tuple(states) if output_hidden_states else None)

  def _cache_mask(self, segment_ids, positions, chunk_mask):
    """(mask `[B, 1, L, S]`, cache index) of a cached chunk: every earlier written slot, and
    inside the chunk what `chunk_mask` `[B, 1, L, L]` allows (all of it when None)."""
    if positions is None:
      raise ValueError('encode(use_cache=True) needs `positions`')
    view = self.decode_cache(segment_ids, positions)
    num_rows, length = segment_ids.shape
    slot_S = jnp.arange(view.segment_ids.shape[1])
    earlier = (slot_S < view.index)[None, None, None, :]
    inside = jnp.ones((num_rows, 1, length, length), bool) if chunk_mask is None else (
        jnp.asarray(chunk_mask, bool))
    placed = jax.lax.dynamic_update_slice(
        jnp.zeros((num_rows, 1, length, slot_S.shape[0]), bool), inside, (0, 0, 0, view.index))
    return masks.combine(earlier | placed, masks.padding_mask(view.segment_ids)), view.index

  def mlm_logits(self, hidden_BLD: jnp.ndarray) -> jnp.ndarray:
    """MLM logits `[B, L, V]` from the last hidden state (float32 unless `logits_dtype`)."""
    table = self.token_embed if self.config.tie_embeddings else self.mlm_decoder
    return self.mlm_head(hidden_BLD, table.attend)

  def pool(self, hidden_BLD: jnp.ndarray) -> jnp.ndarray:
    """BERT pooler: tanh(dense(first token)) -> `[B, D]`."""
    return jnp.tanh(self.pooler(hidden_BLD[:, 0]))

  def __call__(self, tokens: jnp.ndarray, *, segment_ids: jnp.ndarray, positions: jnp.ndarray,
               token_types: jnp.ndarray | None = None,
               attention_mask: jnp.ndarray | None = None, deterministic: bool = True,
               output_hidden_states: bool = False,
               logits_positions: jnp.ndarray | None = None,
               block_positions: jnp.ndarray | None = None,
               use_cache: bool = False) -> dict[str, Any]:
    """tokens/segment_ids/positions `[B, L]` int32 -> dict(hidden, logits, pooled, nsp_logits).

    With `logits_positions` `[B, K]`, MLM logits are computed only there (`[B, K, V]`): the vocab
    projection dominates a small encoder's cost and MLM scores ~15 % of positions. `[G, K]` with
    G < B indexes slabs of B / G rows (`embeddings.gather_slab`; logits `[G, K, V]`).
    """
    x_BLD = self.embed(tokens, positions=positions, token_types=token_types,
                       deterministic=deterministic, block_positions=block_positions)
    hidden_BLD, states = self.encode(x_BLD, segment_ids=segment_ids,
                                     attention_mask=attention_mask, deterministic=deterministic,
                                     output_hidden_states=output_hidden_states, positions=positions,
                                     use_cache=use_cache)
    pooled_BD = self.pool(hidden_BLD)
    scored = hidden_BLD
    if logits_positions is not None:
      scored = embeddings.gather_slab(hidden_BLD, logits_positions)  # [G, K, D]
    out = dict(hidden=hidden_BLD, logits=self.mlm_logits(scored), pooled=pooled_BD,
               nsp_logits=self.nsp_head(pooled_BD).astype(jnp.float32))
    if self.config.rtd_head:
      out['rtd_logits'] = self.rtd_head(hidden_BLD)
    if output_hidden_states:
      out['hidden_states'] = states
    return out
