"""Feed-forward blocks: an activation MLP (BERT/GPT-2/T5) and a gated one (Llama, T5 v1.1)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptm_jax.layers import dropout as dropout_lib

ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),  # BERT: exact erf GELU
    'gelu_new': functools.partial(jax.nn.gelu, approximate=True),  # GPT-2: tanh approximation
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
}


def activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Looks an activation up by its HF-style name."""
  if name not in ACTIVATIONS:
    raise ValueError(f'unknown activation {name!r}; known: {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool, dtype: Any,
          param_dtype: Any, stddev: float, name: str | None = None) -> nn.Dense:
  """An `nn.Dense` whose kernel and bias carry logical axis names."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class MLP(nn.Module):
  """x -> act(x W_i + b_i) W_o + b_o; kernels ('embed','mlp') and ('mlp','embed')."""

  mlp_dim: int
  activation: str = 'gelu'
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02
  out_init_stddev: float | None = None  # None = init_stddev; GPT-2 shrinks residual outputs
  dropout_rate: float = 0.0  # on the hidden activations (T5 dropout_rate, BART activation_dropout)
  dropout_impl: str = 'bits'  # layers.dropout.IMPLS

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
              stddev=self.init_stddev)
    h_BLF = dense(self.mlp_dim, ('embed', 'mlp'), name='wi', **kw)(x_BLD)
    h_BLF = nn.with_logical_constraint(activation(self.activation)(h_BLF),
                                       ('batch', 'length', 'mlp'))
    h_BLF = dropout_lib.Dropout(self.dropout_rate, self.dropout_impl)(h_BLF,
                                                                  deterministic=deterministic)
    kw['stddev'] = self.out_init_stddev or self.init_stddev
    return dense(x_BLD.shape[-1], ('mlp', 'embed'), name='wo', **kw)(h_BLF)


class SwiGLU(nn.Module):
  """x -> (act(x W_gate) * x W_up) W_o (Shazeer 2020; Llama: act = SiLU, T5 v1.1: tanh-GELU)."""

  mlp_dim: int
  activation: str = 'silu'
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02
  out_init_stddev: float | None = None  # None = init_stddev; GPT-2 shrinks residual outputs
  dropout_rate: float = 0.0  # on the gated hidden activations (T5 v1.1 dropout_rate)
  dropout_impl: str = 'bits'  # layers.dropout.IMPLS

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
              stddev=self.init_stddev)
    gate_BLF = dense(self.mlp_dim, ('embed', 'mlp'), name='wi_gate', **kw)(x_BLD)
    up_BLF = dense(self.mlp_dim, ('embed', 'mlp'), name='wi_up', **kw)(x_BLD)
    h_BLF = nn.with_logical_constraint(activation(self.activation)(gate_BLF) * up_BLF,
                                       ('batch', 'length', 'mlp'))
    h_BLF = dropout_lib.Dropout(self.dropout_rate, self.dropout_impl)(h_BLF,
                                                                  deterministic=deterministic)
    kw['stddev'] = self.out_init_stddev or self.init_stddev
    return dense(x_BLD.shape[-1], ('mlp', 'embed'), name='wo', **kw)(h_BLF)
