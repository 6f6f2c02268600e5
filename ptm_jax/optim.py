"""optax builders: AdamW / LAMB / Adafactor, warmup + decay schedules, weight-decay masks, clipping,
layer-wise learning-rate decay."""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Leaves whose path contains one of these names are never weight-decayed (BERT recipe: biases and norms).
NO_DECAY_NAMES = ("bias", "scale", "norm", "ln")


def default_optim_config() -> ml_collections.ConfigDict:
  """The optimizer fields every experiment carries (BERT-style AdamW defaults)."""
  return ml_collections.ConfigDict(dict(
      name="adamw",            # adamw | lamb | adafactor
      learning_rate=1e-4,
      warmup_steps=100,
      schedule="linear",       # linear | cosine | constant (after warmup)
      end_lr_fraction=0.0,     # final LR as a fraction of the peak
      b1=0.9, b2=0.999, eps=1e-6,
      weight_decay=0.01,
      clip_norm=1.0,           # global-norm clipping; 0 disables
      # Layer-wise LR decay (fine-tuning recipe of ELECTRA, Clark et al. 2020): block i of N gets
      # LR * decay**(N - i), the embeddings decay**(N + 1), heads/pooler/final norm the full LR.
      layerwise_lr_decay=1.0,  # 1 = off
  ))


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to the peak, then linear/cosine decay (or constant) until `total_steps`."""
  peak, warm = cfg.learning_rate, int(cfg.warmup_steps)
  decay_steps = max(int(total_steps) - warm, 1)
  end = peak * cfg.end_lr_fraction
  if cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction)
  elif cfg.schedule == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose linear, cosine or constant")
  if warm <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: matrices, not biases or norm scales."""
  def keep(path, leaf) -> bool:
    names = [_key_name(k).lower() for k in path]
    if any(n in NO_DECAY_NAMES or n.endswith("_norm") or "norm" in n for n in names[-2:]):
      return False
    return getattr(leaf, "ndim", 0) >= 2
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax chain (clip -> optimizer with LR schedule and masked decay)."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  elif cfg.name == "lamb":
    opt = optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay, mask=decay_mask)
  elif cfg.name == "adafactor":
    opt = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                          weight_decay_mask=decay_mask)
  else:
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose adamw, lamb or adafactor")
  chain = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  decay = float(cfg.get("layerwise_lr_decay", 1.0))
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"optim.layerwise_lr_decay must be in (0, 1] (1 = off), got {decay}")
  # After the optimizer, so the decoupled weight decay (part of the update) is scaled alike.
  tail = [scale_by_layer_depth(decay)] if decay < 1.0 else []
  return optax.chain(*chain, opt, *tail), schedule


_LAYER_KEY = re.compile(r"^layers_(\d+)$")


def _key_name(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", k)))


def layer_depth_multipliers(params: Any, decay: float) -> Any:
  """A tree of per-leaf LR multipliers: block `layers_i` of N -> decay**(N - i), embeddings (a
  module named *embed* beside the blocks) -> decay**(N + 1), everything else -> 1.

  Works on the encoder and decoder families (blocks `layers_{i}`), wrapped or not (a task model's
  `backbone`, ELECTRA's `discriminator`).
  """
  paths = [[_key_name(k) for k in path] for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  depths = [int(m.group(1)) for names in paths for n in names if (m := _LAYER_KEY.match(n))]
  if not depths:
    raise ValueError("optim.layerwise_lr_decay needs a model whose blocks are named layers_{i} (the "
                     "encoder and decoder families); set it to 1.0 for this model")
  num_layers = max(depths) + 1

  def multiplier(path, leaf) -> float:
    names = [_key_name(k) for k in path]
    for n in names:
      m = _LAYER_KEY.match(n)
      if m:
        return decay ** (num_layers - int(m.group(1)))
    # Outside the blocks: a leaf under a module named *embed* (token/position/type tables,
    # embed_norm, embed_project) is an embedding; the leaf's own name is not looked at.
    if any("embed" in n.lower() for n in names[:-1]):
      return decay ** (num_layers + 1)
    return 1.0
  return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_layer_depth(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_depth_multipliers` (static per parameter path)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scales = layer_depth_multipliers(updates, decay)
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(init_fn, update_fn)
