"""Token embeddings whose table is also read by tied output heads (`attend`), and the
vocabulary projection those heads (tied or not) share (`vocab_logits`)."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_FORWARD = {'vd': '...d,vd->...v', 'dv': '...d,dv->...v'}
_INPUT_GRAD = {'vd': '...v,vd->...d', 'dv': '...v,dv->...d'}
_WEIGHT_GRAD = {'vd': '...d,...v->vd', 'dv': '...d,...v->dv'}
# A family Config's `logits_dtype`: 'float32', or 'compute' (its compute dtype, e.g. bf16: the
# vocabulary matmul rounds its float32 accumulators on output, as torch autocast does; the losses
# still reduce in float32, and every pass over [tokens, vocab] moves half the bytes).
LOGITS_DTYPES = ('float32', 'compute')


def logits_dtype(cfg) -> jnp.dtype:
  """The dtype a family writes its vocabulary logits in (`cfg.logits_dtype`, default float32)."""
  name = getattr(cfg, 'logits_dtype', 'float32')
  if name not in LOGITS_DTYPES:
    raise ValueError(f'logits_dtype={name!r}; use one of {", ".join(LOGITS_DTYPES)}')
  return jnp.dtype(jnp.float32) if name == 'float32' else jnp.dtype(cfg.dtype)


def gather_slab(hidden_BLD, positions_GK):
  """Hidden states at the scored slots, `[G, K, D]`: per row when G == B; otherwise each of the G
  slabs is B / G consecutive rows laid end to end (slot p of slab g is row g * B / G + p // L,
  position p % L; `objectives.mlm.gather_selected` with `slab_rows`)."""
  num_rows, length, width = hidden_BLD.shape
  groups = positions_GK.shape[0]
  if num_rows % groups:
    raise ValueError(f'{groups} scored slabs do not divide a batch of {num_rows} rows')
  slab_GWD = nn.with_logical_constraint(
      hidden_BLD.reshape(groups, num_rows // groups * length, width), ('batch', 'length', 'embed'))
  return jnp.take_along_axis(slab_GWD, positions_GK[..., None], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def vocab_logits(x_ND, w, layout: str, keep: int, out_dtype: Any = jnp.float32):
  """Logits `x @ W` over the first `keep` vocabulary entries (float32 unless `out_dtype` says
  otherwise); backward in x's dtype.

  `w` is `[V, D]` (layout 'vd', an embedding table) or `[D, V]` ('dv', a head kernel), already
  in the compute dtype. Forward: one matmul in that dtype with float32 accumulation and output,
  sliced to `keep` columns (vocabulary padding). Backward: autodiff would multiply the float32
  logits cotangent with the low-precision operands, so XLA runs two float32 (TF32 on GPU)
  matmuls of the whole vocabulary -- measured on an H100 at 2x the time of the bf16 forward
  (docs/benchmarks.md) -- and pads the cotangent back to V in float32. Here the cotangent is cast
  to the compute dtype first (as mixed-precision training rounds every other gradient) and padded
  there, so both backward matmuls run in bf16 with float32 accumulation. In float32 compute this
  is exactly autodiff.

  `out_dtype=bfloat16` (a family's `logits_dtype='compute'`) has the matmul write its float32
  accumulators rounded to bf16, as the PyTorch reference does under autocast: the losses read
  the logits in float32 registers either way (`objectives.common`), but every pass over the
  vocabulary then moves half the bytes.
  """
  return _vocab_logits_fwd(x_ND, w, layout, keep, out_dtype)[0]


def _vocab_logits_fwd(x_ND, w, layout, keep, out_dtype):
  logits = jnp.einsum(_FORWARD[layout], x_ND, w, preferred_element_type=out_dtype)
  if keep < logits.shape[-1]:
    logits = logits[..., :keep]
  return logits, (x_ND, w)


def _vocab_logits_bwd(layout, keep, out_dtype, residuals, g):
  del out_dtype  # the cotangent is cast to the compute dtype whatever the logits' dtype
  x_ND, w = residuals
  g = g.astype(x_ND.dtype)
  vocab = w.shape[0] if layout == 'vd' else w.shape[1]
  if keep < vocab:  # padded entries get exactly zero gradient
    g = jnp.pad(g, [(0, 0)] * (g.ndim - 1) + [(0, vocab - keep)])
  dx = jnp.einsum(_INPUT_GRAD[layout], g, w, preferred_element_type=jnp.float32)
  dw = jnp.einsum(_WEIGHT_GRAD[layout], x_ND, g, preferred_element_type=jnp.float32)
  return dx.astype(x_ND.dtype), dw.astype(w.dtype)


vocab_logits.defvjp(_vocab_logits_fwd, _vocab_logits_bwd)


class Embed(nn.Module):
  """Lookup table `[num_embeddings, features]`; `attend` gives float32 logits against it."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_stddev: float = 0.02
  axes: tuple[str | None, str | None] = ('vocab', 'embed')

  def setup(self):
    self.embedding = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), self.axes),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids_BL: jnp.ndarray) -> jnp.ndarray:
    """Embeds integer ids; returns `[..., features]` in the compute dtype."""
    # 'clip' instead of jnp.take's NaN fill: a NaN in a masked key would still poison probs @ V.
    return jnp.take(self.embedding, ids_BL, axis=0, mode='clip').astype(self.dtype)

  def attend(self, x_BLD: jnp.ndarray, keep: int | None = None,
             out_dtype: Any = jnp.float32) -> jnp.ndarray:
    """Tied output projection: `[..., D] -> [..., keep]` logits (`vocab_logits`: float32 unless
    `out_dtype`)."""
    return vocab_logits(x_BLD.astype(self.dtype), self.embedding.astype(self.dtype), 'vd',
                        self.num_embeddings if keep is None else keep, out_dtype)


class VocabProjection(nn.Module):
  """Untied output head: a `[D, V]` kernel (param `kernel`, as `nn.Dense` names it), float32
  logits over the first `keep` entries through `vocab_logits`, no bias."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, keep: int | None = None,
               out_dtype: Any = jnp.float32) -> jnp.ndarray:
    kernel = self.param('kernel', self.kernel_init, (x_BLD.shape[-1], self.features),
                        self.param_dtype)
    return vocab_logits(x_BLD.astype(self.dtype), kernel.astype(self.dtype), 'dv',
                        self.features if keep is None else keep, out_dtype)
