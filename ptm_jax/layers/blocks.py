"""A Transformer block: attention + feed-forward, residuals, pre-LN or post-LN."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ptm_jax.layers import attention, mlp, norms


class Block(nn.Module):
  """One layer. post-LN (BERT): x = LN(x + f(x)); pre-LN (GPT-2, Llama): x = x + f(LN(x))."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: int | None = None
  pre_norm: bool = False
  norm: str = 'layernorm'  # or 'rmsnorm'
  norm_eps: float = 1e-12
  mlp: str = 'mlp'  # or 'swiglu'
  activation: str = 'gelu'
  use_bias: bool = True
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  init_stddev: float = 0.02
  out_init_stddev: float | None = None  # init of the two projections that feed the residual
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, mask: jnp.ndarray | None,
               rotary: tuple[jnp.ndarray, jnp.ndarray] | None = None,
               deterministic: bool = True) -> jnp.ndarray:
    """Positional args only (nn.remat marks `deterministic`, argument 4 counting self, static)."""
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = attention.Attention(
        self.num_heads, self.head_dim, num_kv_heads=self.num_kv_heads, use_bias=self.use_bias,
        attention_dropout_rate=self.attention_dropout_rate, init_stddev=self.init_stddev,
        out_init_stddev=self.out_init_stddev, implementation=self.attention_impl,
        name='attention', **dt)
    if self.mlp == 'mlp':
      ff = mlp.MLP(self.mlp_dim, activation=self.activation, use_bias=self.use_bias,
                   init_stddev=self.init_stddev, out_init_stddev=self.out_init_stddev,
                   name='mlp', **dt)
    elif self.mlp == 'swiglu':
      ff = mlp.SwiGLU(self.mlp_dim, activation=self.activation, use_bias=self.use_bias,
                      init_stddev=self.init_stddev, out_init_stddev=self.out_init_stddev,
                      name='mlp', **dt)
    else:
      raise ValueError(f"unknown mlp {self.mlp!r}; known: 'mlp', 'swiglu'")
    attn_norm = norms.make_norm(self.norm, epsilon=self.norm_eps, name='attention_norm', **dt)
    mlp_norm = norms.make_norm(self.norm, epsilon=self.norm_eps, name='mlp_norm', **dt)
    drop = nn.Dropout(self.dropout_rate)
    axes = ('batch', 'length', 'embed')

    if self.pre_norm:
      h = attn(attn_norm(x_BLD), mask, rotary=rotary, deterministic=deterministic)
      x_BLD = x_BLD + drop(h, deterministic=deterministic)
      x_BLD = nn.with_logical_constraint(x_BLD, axes)
      h = ff(mlp_norm(x_BLD))
      x_BLD = x_BLD + drop(h, deterministic=deterministic)
    else:
      h = attn(x_BLD, mask, rotary=rotary, deterministic=deterministic)
      x_BLD = attn_norm(x_BLD + drop(h, deterministic=deterministic))
      x_BLD = nn.with_logical_constraint(x_BLD, axes)
      h = ff(x_BLD)
      x_BLD = mlp_norm(x_BLD + drop(h, deterministic=deterministic))
    return nn.with_logical_constraint(x_BLD, axes)


def block_class(remat: bool) -> type[Block]:
  """`Block`, or its rematerialised version (activations recomputed in the backward pass)."""
  if not remat:
    return Block
  # static_argnums counts `self`: (self, x, mask, rotary, deterministic).
  return nn.remat(Block, static_argnums=(4,))
