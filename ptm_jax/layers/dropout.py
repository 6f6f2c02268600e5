"""Dropout with two mask generators: the key's random bits (flax's), or a counter-based hash.

`impl='bits'` (the default) is exactly `flax.linen.Dropout`: `jax.random.bernoulli` draws a mask
from the layer's key, autodiff keeps that mask for the backward pass. On a GPU that is three passes
over every dropped activation beside the consumer's own: the generator's kernel writes the random
bits, a compare writes the mask, the backward reads it again (the H100 profile of GPT-2 small and
BERT-base put dropout at 2.0-2.5 ms of a 36-46 ms step, docs/benchmarks.md).

`impl='hash'` derives the mask from the element's position instead: 64 bits of the layer's key
(two uint32 seeds) and the element's global index go through an integer hash (Wellons'
"lowbias32", an invertible 32-bit mixer: xor-shift, multiply, three times), and an element is kept
when the hash is at or above round(rate * 2^32). The hash is a handful of integer operations that
XLA fuses into the kernel that reads the activation, so no bits or mask array is ever written; the
backward pass recomputes the mask from the seeds (custom VJP: the only residual is the two seeds).
The index is global (per-dimension iotas, which XLA's SPMD partitioner offsets per shard), so a
sharded step draws the same mask as an unsharded one whatever the key implementation: only 64 bits
are drawn from the key, so the cheap `rbg` keys (whose bits JAX does not promise to keep the same
under another sharding) are as good as threefry here.

Element i of the row-major order hashes mix(mix(i ^ seed0) + mix(block ^ seed1)), a bijection of i
for fixed seeds: no two elements of an array of fewer than 2^32 share their hash bits (`block`, the
2^32-element stretch i lies in, keeps larger arrays' wrapped indices apart).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

IMPLS = ('bits', 'hash')


def check_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"dropout_impl={impl!r}; use one of {', '.join(IMPLS)}")
  return impl


def _mix32(x: jnp.ndarray) -> jnp.ndarray:
  """lowbias32 (C. Wellons, "Hash function prospector"): a bijection of uint32 with low bias."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def rows_per_block(cols: int) -> int:
  """Rows of `cols` elements whose row-major indices span less than 2^32 (so never wrap)."""
  return max(1, (2**32 - cols) // cols)


def hash_bits(seed: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
  """uint32 hash of every element's global row-major index under a [2] uint32 seed."""
  shape = tuple(int(d) for d in shape)
  grid = shape or (1,)
  cols = grid[-1]
  lead = jnp.zeros(grid, jnp.uint32)  # the row-major index of the leading dims
  stride = 1
  for axis in range(len(grid) - 2, -1, -1):
    lead = lead + lax.broadcasted_iota(jnp.uint32, grid, axis) * jnp.uint32(stride % 2**32)
    stride *= grid[axis]
  flat = lead * jnp.uint32(cols) + lax.broadcasted_iota(jnp.uint32, grid, len(grid) - 1)
  # `flat` wraps past 2^32 elements; the block of rows an element lies in tells the wraps apart
  # (0 everywhere in an array of fewer than 2^32 elements).
  block = lead // jnp.uint32(rows_per_block(cols))
  bits = _mix32(_mix32(flat ^ seed[0]) + _mix32(block ^ seed[1]))
  return bits.reshape(shape)


def _threshold(rate: float) -> np.uint32:
  return np.uint32(min(int(round(rate * 2.0**32)), 2**32 - 1))


def hash_keep_mask(seed: jnp.ndarray, shape: tuple[int, ...], rate: float) -> jnp.ndarray:
  """True where an element is kept: P(keep) = 1 - rate (to 2^-32)."""
  return hash_bits(seed, shape) >= _threshold(rate)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _hash_dropout(x: jnp.ndarray, seed: jnp.ndarray, rate: float) -> jnp.ndarray:
  keep = hash_keep_mask(seed, x.shape, rate)
  return lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _hash_dropout_fwd(x, seed, rate):
  return _hash_dropout(x, seed, rate), seed  # the mask is recomputed, never stored


def _hash_dropout_bwd(rate, seed, g):
  keep = hash_keep_mask(seed, g.shape, rate)
  dx = lax.select(keep, g / (1.0 - rate), jnp.zeros_like(g))
  return dx, np.zeros(seed.shape, jax.dtypes.float0)  # integer seeds have no cotangent


_hash_dropout.defvjp(_hash_dropout_fwd, _hash_dropout_bwd)


def dropout(x: jnp.ndarray, rng: jax.Array, rate: float, impl: str = 'bits') -> jnp.ndarray:
  """Inverted dropout of `x` (kept elements scaled by 1 / (1 - rate)) with a mask from `rng`."""
  check_impl(impl)
  if rate == 0.0:
    return x
  if rate == 1.0:  # as flax: no mask, and no NaN gradient from 1 / 0
    return jnp.zeros_like(x)
  if impl == 'bits':
    keep = jax.random.bernoulli(rng, p=1.0 - rate, shape=x.shape)
    return lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))
  return _hash_dropout(x, jax.random.bits(rng, (2,), jnp.uint32), float(rate))


class Dropout(nn.Module):
  """`flax.linen.Dropout` (same name, so the same auto-names and keys) with `impl` = bits | hash."""

  rate: float
  impl: str = 'bits'
  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    check_impl(self.impl)
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    return dropout(x, self.make_rng(self.rng_collection), self.rate, self.impl)
