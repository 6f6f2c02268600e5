"""ALBERT (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations"): BERT's post-LN encoder with its two parameter reductions.

  * Factorised embedding: token / position / type tables of width E (`embedding_size`, 128) ->
    LayerNorm -> dropout -> a dense E -> H projection (`embed_project`) into the H-wide blocks.
    The MLM head maps H -> E (dense, activation, LayerNorm) and decodes with the E-wide token table.
  * Cross-layer sharing (`share`): 'all' (ALBERT's default: ONE attention sub-layer and ONE
    feed-forward sub-layer, applied `num_layers` times), 'attention' (one shared attention
    sub-layer, per-layer feed-forward), 'ffn' (per-layer attention, one shared feed-forward),
    'none' (BERT-like). A sub-layer owns its post-LN LayerNorm. Shared modules are single Flax
    modules called repeatedly, so the tree holds one copy and gradients sum over the calls.
  * A tanh pooler on the first token and a 2-way sentence-order head (`sop_logits`).
Parameter names: token_embed, position_embed (not with `positions='rotary'`), type_embed,
embed_norm, embed_project, shared_attention | attention_{i}, shared_ffn | ffn_{i}, mlm_head,
pooler, sop_head. The layout
matches HF `AlbertForPreTraining` (hidden_act gelu_new, no dropout, as ALBERT v2), which
tests/test_albert.py checks logit-for-logit ('all' = num_hidden_groups 1, 'none' = one group per
layer) together with the parameter counts of the paper's Table 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ptm_jax.layers import attention, blocks, embeddings, masks, mlp, norms
from ptm_jax.layers import dropout as dropout_lib
from ptm_jax.layers import positions as positions_lib
from ptm_jax.models.encoder import MLMHead, dtypes

SHARE_MODES = ('all', 'attention', 'ffn', 'none')


@dataclasses.dataclass(frozen=True)
class Config:
  """ALBERT hyper-parameters; defaults are ALBERT-base (30k sentencepiece vocab, E=128, H=768)."""

  vocab_size: int = 30000
  embedding_size: int = 128  # E: embedding tables and the MLM head's decoder width
  embed_dim: int = 768  # H: width of the Transformer blocks
  num_layers: int = 12
  num_heads: int = 12
  head_dim: int | None = None  # None = embed_dim // num_heads
  mlp_dim: int = 3072
  share: str = 'all'  # all | attention | ffn | none
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  position_offset: int = 0
  positions: str = 'learned'  # or 'rotary' (RoFormer): see encoder.Config.positions
  rope_theta: float = 10_000.0
  layer_norm_eps: float = 1e-12
  activation: str = 'gelu_new'  # HF AlbertConfig default (tanh GELU, as ALBERT's TF code)
  dropout_rate: float = 0.0  # ALBERT v2 trains without dropout
  attention_dropout_rate: float = 0.0
  dropout_impl: str = 'bits'  # every dropout mask's generator: layers.dropout.IMPLS ('hash')
  initializer_range: float = 0.02
  dtype: Any = 'float32'
  param_dtype: Any = 'float32'
  logits_dtype: str = 'float32'  # MLM logits; or 'compute' (e.g. bf16): embeddings.LOGITS_DTYPES
  remat: bool = False
  remat_policy: str = 'full'  # with remat: what each block keeps (layers.blocks.REMAT_POLICIES)
  attention_impl: str | None = None

  def __post_init__(self):
    if self.share not in SHARE_MODES:
      raise ValueError(f'albert.Config.share must be one of {", ".join(SHARE_MODES)}, '
                       f'got {self.share!r}')
    if self.positions not in ('learned', 'rotary'):
      raise ValueError(f"albert positions={self.positions!r}; known: learned, rotary")

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads


def _albert(layers: int, width: int, heads: int, embedding: int = 128) -> dict[str, Any]:
  return dict(num_layers=layers, embed_dim=width, num_heads=heads, mlp_dim=4 * width,
              embedding_size=embedding)


VARIANTS: dict[str, dict[str, Any]] = {
    'runlocal': dict(num_layers=4, embed_dim=128, num_heads=2, mlp_dim=512, embedding_size=32),
    'base': _albert(12, 768, 12),  # 12M parameters (paper, Table 1)
    'large': _albert(24, 1024, 16),  # 18M
    'xlarge': _albert(24, 2048, 16),  # 60M (HF albert-xlarge: 16 heads of 128)
    'xxlarge': _albert(12, 4096, 64),  # 235M
}


class AttentionSublayer(nn.Module):
  """Post-LN self-attention sub-layer: LN(x + dropout(attention(x)))."""

  config: Config

  @nn.compact
  def __call__(self, x_BLD, mask, rotary=None, deterministic: bool = True):
    cfg, dt = self.config, dtypes(self.config)
    h = attention.Attention(cfg.num_heads, cfg.resolved_head_dim, use_bias=True,
                            attention_dropout_rate=cfg.attention_dropout_rate,
                            dropout_impl=cfg.dropout_impl, init_stddev=cfg.initializer_range,
                            implementation=cfg.attention_impl,
                            name='attention', **dt)(x_BLD, mask, rotary=rotary,
                                                    deterministic=deterministic)
    h = dropout_lib.Dropout(cfg.dropout_rate, cfg.dropout_impl)(h, deterministic=deterministic)
    x_BLD = norms.LayerNorm(cfg.layer_norm_eps, name='norm', **dt)(x_BLD + h)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))


class FFNSublayer(nn.Module):
  """Post-LN feed-forward sub-layer: LN(x + dropout(W_o act(W_i x)))."""

  config: Config

  @nn.compact
  def __call__(self, x_BLD, deterministic: bool = True):
    cfg, dt = self.config, dtypes(self.config)
    h = mlp.MLP(cfg.mlp_dim, activation=cfg.activation, use_bias=True,
                init_stddev=cfg.initializer_range, name='mlp', **dt)(x_BLD)
    h = dropout_lib.Dropout(cfg.dropout_rate, cfg.dropout_impl)(h, deterministic=deterministic)
    x_BLD = norms.LayerNorm(cfg.layer_norm_eps, name='norm', **dt)(x_BLD + h)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))


class Model(nn.Module):
  """ALBERT encoder with MLM, pooler and SOP heads; returns a dict (contracts.md)."""

  config: Config

  def setup(self):
    cfg = self.config
    dt = dtypes(cfg)
    blocks.check_remat_policy(cfg.remat_policy)
    init = dict(init_stddev=cfg.initializer_range, **dt)
    self.token_embed = embeddings.Embed(cfg.vocab_size, cfg.embedding_size, **init)
    if cfg.positions == 'learned':
      self.position_embed = positions_lib.LearnedPositions(
          cfg.max_position_embeddings, cfg.embedding_size, offset=cfg.position_offset, **init)
    if cfg.type_vocab_size:
      self.type_embed = embeddings.Embed(cfg.type_vocab_size, cfg.embedding_size,
                                         axes=(None, 'embed'), **init)
    self.embed_norm = norms.LayerNorm(cfg.layer_norm_eps, **dt)
    self.embed_dropout = dropout_lib.Dropout(cfg.dropout_rate, cfg.dropout_impl)
    dense = dict(use_bias=True, stddev=cfg.initializer_range, **dt)
    # (None, 'embed'): E and H must not both map to the 'embed' mesh axis.
    self.embed_project = mlp.dense(cfg.embed_dim, (None, 'embed'), **dense)
    attn_cls, ffn_cls = AttentionSublayer, FFNSublayer
    if cfg.remat:  # static_argnums counts self: (self, x, mask, rotary, det) / (self, x, det)
      attn_cls = blocks.remat(AttentionSublayer, (4,), cfg.remat_policy)
      ffn_cls = blocks.remat(FFNSublayer, (2,), cfg.remat_policy)
    if cfg.share in ('all', 'attention'):
      self.shared_attention = attn_cls(cfg)
    else:
      self.attention = [attn_cls(cfg) for _ in range(cfg.num_layers)]
    if cfg.share in ('all', 'ffn'):
      self.shared_ffn = ffn_cls(cfg)
    else:
      self.ffn = [ffn_cls(cfg) for _ in range(cfg.num_layers)]
    # H -> E, then the tied E-wide decoder (ALBERT projects back to the embedding size).
    self.mlm_head = MLMHead(cfg, width=cfg.embedding_size, axes=('embed', None))
    self.pooler = mlp.dense(cfg.embed_dim, ('embed', 'mlp'), **dense)
    self.sop_head = mlp.dense(2, ('embed', None), **dense)

  def embed(self, tokens, *, positions, token_types=None, deterministic: bool = True):
    """Factorised embedding: E-wide sum -> LayerNorm -> dropout -> projection to `[B, L, H]`."""
    x_BLE = self.token_embed(tokens)
    if self.config.positions == 'learned':
      x_BLE = x_BLE + self.position_embed(positions)
    if self.config.type_vocab_size:
      if token_types is None:
        token_types = jnp.zeros_like(tokens)
      x_BLE = x_BLE + self.type_embed(token_types)
    x_BLE = self.embed_dropout(self.embed_norm(x_BLE), deterministic=deterministic)
    return nn.with_logical_constraint(self.embed_project(x_BLE), ('batch', 'length', 'embed'))

  def layer(self, i: int):
    """The (attention, feed-forward) sub-layers applied at depth i (shared ones at every i)."""
    cfg = self.config
    attn = self.shared_attention if cfg.share in ('all', 'attention') else self.attention[i]
    ffn = self.shared_ffn if cfg.share in ('all', 'ffn') else self.ffn[i]
    return attn, ffn

  def encode(self, x_BLD, *, segment_ids, attention_mask=None, deterministic: bool = True,
             output_hidden_states: bool = False, positions=None):
    """Runs the (possibly shared) layers; returns (hidden `[B, L, H]`, hidden_states or None)."""
    rotary = None
    if self.config.positions == 'rotary':
      if positions is None:
        raise ValueError('a rotary-position ALBERT needs `positions` in encode()')
      rotary = positions_lib.rotary_cos_sin(positions, self.config.resolved_head_dim,
                                            theta=self.config.rope_theta)
    mask = masks.combine(masks.padding_mask(segment_ids),
                         masks.segment_mask(segment_ids, segment_ids), attention_mask)
    states = [x_BLD]
    for i in range(self.config.num_layers):
      attn, ffn = self.layer(i)
      x_BLD = ffn(attn(x_BLD, mask, rotary, deterministic), deterministic)
      states.append(x_BLD)
    return x_BLD, (tuple(states) if output_hidden_states else None)

  def mlm_logits(self, hidden_BLD):
    """Float32 MLM logits `[B, L, V]` through the E-wide tied decoder."""
    return self.mlm_head(hidden_BLD, self.token_embed.attend)

  def pool(self, hidden_BLD):
    """tanh(dense(first token)) -> `[B, H]`."""
    return jnp.tanh(self.pooler(hidden_BLD[:, 0]))

  def __call__(self, tokens, *, segment_ids, positions, token_types=None, attention_mask=None,
               deterministic: bool = True, output_hidden_states: bool = False,
               logits_positions=None) -> dict[str, Any]:
    """tokens/segment_ids/positions `[B, L]` -> dict(hidden, logits, pooled, sop_logits).

    With `logits_positions` `[B, K]`, MLM logits are computed only there (`[B, K, V]`); `[G, K]`
    with G < B indexes slabs of B / G rows (`embeddings.gather_slab`).
    """
    x_BLD = self.embed(tokens, positions=positions, token_types=token_types,
                       deterministic=deterministic)
    hidden_BLD, states = self.encode(x_BLD, segment_ids=segment_ids,
                                     attention_mask=attention_mask, deterministic=deterministic,
                                     output_hidden_states=output_hidden_states, positions=positions)
    pooled_BD = self.pool(hidden_BLD)
    scored = hidden_BLD
    if logits_positions is not None:
      scored = embeddings.gather_slab(hidden_BLD, logits_positions)
    out = dict(hidden=hidden_BLD, logits=self.mlm_logits(scored), pooled=pooled_BD,
               sop_logits=self.sop_head(pooled_BD).astype(jnp.float32))
    if output_hidden_states:
      out['hidden_states'] = states
    return out
