"""Transformer blocks: attention + feed-forward with residuals, pre-LN or post-LN, and the
encoder–decoder layer (self-attention, cross-attention over the encoder output, feed-forward)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptm_jax.layers import attention, mlp, moe, norms
from ptm_jax.layers import dropout as dropout_lib


class _Sublayers(nn.Module):
  """Shared fields and builders of `Block` and `EncoderDecoderBlock`."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: int | None = None
  pre_norm: bool = False
  norm: str = 'layernorm'  # or 'rmsnorm'
  norm_eps: float = 1e-12
  mlp: str = 'mlp'  # or 'swiglu' (any gated activation: SiLU for Llama, tanh-GELU for T5 v1.1)
  activation: str = 'gelu'
  use_bias: bool = True
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  mlp_dropout_rate: float = 0.0  # inside the feed-forward, after the activation
  dropout_impl: str = 'bits'  # every mask of the block: layers.dropout.IMPLS
  init_stddev: float = 0.02
  out_init_stddev: float | None = None  # init of the two projections that feed the residual
  query_init_stddev: float | None = None  # None = init_stddev (T5: (embed * head_dim) ** -0.5)
  mlp_out_init_stddev: float | None = None  # None = out_init_stddev (T5: mlp_dim ** -0.5)
  attention_scale: float | None = None  # None = 1/sqrt(head_dim); T5: 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None
  # Mixture of experts (`MoeBlock` only; layers.moe): the feed-forward becomes `moe_experts`
  # routed copies of it, each token going to its top `moe_top_k`.
  moe_fields: moe.Fields = moe.Fields()

  def _dt(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def _attention(self, name: str) -> attention.Attention:
    return attention.Attention(
        self.num_heads, self.head_dim, num_kv_heads=self.num_kv_heads, use_bias=self.use_bias,
        attention_dropout_rate=self.attention_dropout_rate, dropout_impl=self.dropout_impl,
        init_stddev=self.init_stddev,
        out_init_stddev=self.out_init_stddev, query_init_stddev=self.query_init_stddev,
        scale=self.attention_scale, implementation=self.attention_impl, name=name, **self._dt())

  def _mlp(self) -> nn.Module:
    kw = dict(activation=self.activation, use_bias=self.use_bias, init_stddev=self.init_stddev,
              out_init_stddev=self.mlp_out_init_stddev or self.out_init_stddev,
              dropout_rate=self.mlp_dropout_rate, dropout_impl=self.dropout_impl, name='mlp',
              **self._dt())
    if self.mlp == 'mlp':
      return mlp.MLP(self.mlp_dim, **kw)
    if self.mlp == 'swiglu':
      return mlp.SwiGLU(self.mlp_dim, **kw)
    raise ValueError(f"unknown mlp {self.mlp!r}; known: 'mlp', 'swiglu'")

  def _norm(self, name: str) -> nn.Module:
    return norms.make_norm(self.norm, epsilon=self.norm_eps, name=name, **self._dt())

  def _residual(self, x_BLD, f, norm, deterministic: bool):
    """pre-LN: x + drop(f(norm(x))); post-LN: norm(x + drop(f(x)))."""
    drop = dropout_lib.Dropout(self.dropout_rate, self.dropout_impl)
    if self.pre_norm:
      x_BLD = x_BLD + drop(f(norm(x_BLD)), deterministic=deterministic)
    else:
      x_BLD = norm(x_BLD + drop(f(x_BLD), deterministic=deterministic))
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))

  def _self_attention(self, x_BLD, mask, rotary, deterministic: bool, bias, cache_index):
    """The self-attention sublayer with its residual and norm (`Block`, `MoeBlock`)."""
    attn = self._attention('attention')
    return self._residual(
        x_BLD, lambda h: attn(h, mask, rotary=rotary, deterministic=deterministic, bias=bias,
                              use_cache=cache_index is not None, cache_index=cache_index),
        self._norm('attention_norm'), deterministic)

  def _routed_feed_forward(self, x_BLD, valid_BL, deterministic: bool):
    """The mixture-of-experts feed-forward sublayer: (x, router aux dict) (`layers.moe`)."""
    experts = moe.MoeMlp(
        mlp_dim=self.mlp_dim, **moe.mlp_kwargs(self.moe_fields), mlp=self.mlp,
        activation=self.activation, use_bias=self.use_bias, init_stddev=self.init_stddev,
        out_init_stddev=self.mlp_out_init_stddev or self.out_init_stddev,
        dropout_rate=self.mlp_dropout_rate, dropout_impl=self.dropout_impl, name='moe',
        **self._dt())
    if valid_BL is None:
      valid_BL = jnp.ones(x_BLD.shape[:2], bool)
    aux = {}

    def routed(h_BLD):
      y_BLD, aux_ = experts(h_BLD, valid_BL, deterministic)
      aux.update(aux_)
      return y_BLD

    x_BLD = self._residual(x_BLD, routed, self._norm('mlp_norm'), deterministic)
    return x_BLD, aux


class Block(_Sublayers):
  """One layer. post-LN (BERT): x = LN(x + f(x)); pre-LN (GPT-2, Llama): x = x + f(LN(x))."""

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, mask: jnp.ndarray | None,
               rotary: tuple[jnp.ndarray, jnp.ndarray] | None = None,
               deterministic: bool = True, bias: jnp.ndarray | None = None,
               cache_index: jnp.ndarray | None = None) -> jnp.ndarray:
    """Positional args only (nn.remat marks `deterministic`, argument 4 counting self, static).

    `bias` is an additive attention bias (T5 relative positions). A `cache_index` (int32 scalar)
    runs the self-attention against its KV cache (`layers.attention`); it is an array, not a
    flag, so that it passes through nn.remat untouched (None = no cache).
    """
    ff = self._mlp()
    x_BLD = self._self_attention(x_BLD, mask, rotary, deterministic, bias, cache_index)
    return self._residual(x_BLD, lambda h: ff(h, deterministic),
                          self._norm('mlp_norm'), deterministic)


class MoeBlock(_Sublayers):
  """`Block` whose feed-forward is a mixture of experts; returns (x, router aux dict)."""

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, mask: jnp.ndarray | None,
               rotary: tuple[jnp.ndarray, jnp.ndarray] | None = None,
               deterministic: bool = True, bias: jnp.ndarray | None = None,
               cache_index: jnp.ndarray | None = None, valid_BL: jnp.ndarray | None = None):
    """`Block`'s arguments and `valid_BL` `[B, L]` (the tokens to route: not padding)."""
    x_BLD = self._self_attention(x_BLD, mask, rotary, deterministic, bias, cache_index)
    return self._routed_feed_forward(x_BLD, valid_BL, deterministic)


class EncoderDecoderBlock(_Sublayers):
  """Decoder layer of an encoder–decoder (T5, BART): causal self-attention, cross-attention over
  the encoder output, feed-forward; each with its own norm (pre- or post-LN)."""

  def _attend(self, x_BLD, mask, encoded_BSD, cross_mask, bias, deterministic, cache_index):
    """The self- and cross-attention sublayers (this block and `MoeEncoderDecoderBlock`)."""
    use_cache = cache_index is not None
    attn, cross = self._attention('attention'), self._attention('cross_attention')
    x_BLD = self._residual(
        x_BLD, lambda h: attn(h, mask, deterministic=deterministic, bias=bias,
                              use_cache=use_cache, cache_index=cache_index),
        self._norm('attention_norm'), deterministic)
    return self._residual(
        x_BLD, lambda h: cross(h, cross_mask, deterministic=deterministic, kv_BSD=encoded_BSD,
                               use_cache=use_cache),
        self._norm('cross_attention_norm'), deterministic)

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, mask: jnp.ndarray | None,
               encoded_BSD: jnp.ndarray, cross_mask: jnp.ndarray | None,
               bias: jnp.ndarray | None = None, deterministic: bool = True,
               cache_index: jnp.ndarray | None = None) -> jnp.ndarray:
    """Positional args only (nn.remat marks `deterministic` static); `cache_index` as in `Block`."""
    ff = self._mlp()
    x_BLD = self._attend(x_BLD, mask, encoded_BSD, cross_mask, bias, deterministic, cache_index)
    return self._residual(x_BLD, lambda h: ff(h, deterministic),
                          self._norm('mlp_norm'), deterministic)


class MoeEncoderDecoderBlock(EncoderDecoderBlock):
  """`EncoderDecoderBlock` whose feed-forward is a mixture of experts (Switch Transformer's
  decoder layers); returns (x, router aux dict)."""

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, mask: jnp.ndarray | None,
               encoded_BSD: jnp.ndarray, cross_mask: jnp.ndarray | None,
               bias: jnp.ndarray | None = None, deterministic: bool = True,
               cache_index: jnp.ndarray | None = None, valid_BL: jnp.ndarray | None = None):
    """`EncoderDecoderBlock`'s arguments and `valid_BL` `[B, L]` (the tokens to route)."""
    x_BLD = self._attend(x_BLD, mask, encoded_BSD, cross_mask, bias, deterministic, cache_index)
    return self._routed_feed_forward(x_BLD, valid_BL, deterministic)


# What a rematerialised block keeps from its forward pass for the backward (a family's
# `remat_policy`, with `remat=True`); everything else is recomputed:
#   'full': nothing but the block's inputs (the least memory, one more forward per block);
#   'dots': the outputs of matmuls without batch dimensions, i.e. every projection (Q/K/V, the
#           attention output, the MLP's) but not the attention scores, so the backward recomputes
#           only elementwise work, norms and attention (MaxText's 'minimal'; the usual choice
#           when activations, not matmuls, bound the batch);
#   'dots_all': every matmul output, the attention scores and probabilities of the XLA path too.
REMAT_POLICIES = {
    'full': None,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'dots_all': jax.checkpoint_policies.dots_saveable,
}


def check_remat_policy(policy: str) -> None:
  """One-line error for a `remat_policy` that is not one of `REMAT_POLICIES`."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={policy!r}; use one of {', '.join(REMAT_POLICIES)}")


def remat(cls: type, static_argnums: tuple[int, ...], policy: str = 'full') -> type:
  """`nn.remat(cls)` keeping what `policy` says (`REMAT_POLICIES`) for the backward."""
  check_remat_policy(policy)
  return nn.remat(cls, static_argnums=static_argnums, policy=REMAT_POLICIES[policy])


def block_class(remat_blocks: bool, moe_block: bool = False, policy: str = 'full'
                ) -> type[Block] | type[MoeBlock]:
  """`Block` (or `MoeBlock`), or its rematerialised version (activations recomputed in the
  backward pass but what `policy` keeps)."""
  cls = MoeBlock if moe_block else Block
  if not remat_blocks:
    return cls
  # static_argnums counts `self`: (self, x, mask, rotary, deterministic, ...).
  return remat(cls, (4,), policy)


def encoder_decoder_block_class(remat_blocks: bool, moe_block: bool = False,
                                policy: str = 'full') -> type[EncoderDecoderBlock]:
  """`EncoderDecoderBlock` (or `MoeEncoderDecoderBlock`), or its rematerialised version."""
  cls = MoeEncoderDecoderBlock if moe_block else EncoderDecoderBlock
  if not remat_blocks:
    return cls
  # (self, x, mask, encoded, cross_mask, bias, deterministic, cache_index[, valid]).
  return remat(cls, (6,), policy)
