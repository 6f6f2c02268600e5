"""The jitted train and eval steps, built once per run from (model, objective, optimizer)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from ptm_jax.state import TrainState

Batch = dict[str, jax.Array]


def _split_microbatches(batch: Batch, num: int) -> Batch:
  """[B, ...] -> [num, B/num, ...] taking rows b ≡ i (mod num), so each shard stays local."""
  def split(x):
    b = x.shape[0]
    if b % num:
      raise ValueError(f"batch of {b} rows does not split into {num} accumulation steps")
    return jnp.swapaxes(x.reshape((b // num, num) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: Callable, corrupt_fn: Callable, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1) -> Callable:
  """Returns step(state, batch) -> (state, metrics): corrupt on device, grad, clip, update.

  `loss_fn(params, batch, rng) -> (loss, metrics)` and `corrupt_fn(rng, batch) -> batch` are the
  objective's functions with their keyword arguments already bound.
  """

  def micro_grads(params, batch, rng):
    rng_corrupt, rng_dropout = jax.random.split(rng)
    corrupted = corrupt_fn(rng_corrupt, batch)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, corrupted, rng_dropout)
    metrics = dict(metrics, num_tokens=jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32))
    return grads, metrics

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    # The step's randomness is a pure function of (seed, step): exact resume for free.
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum == 1:
      grads, metrics = micro_grads(state.params, batch, rng)
    else:
      micro = _split_microbatches(batch, grad_accum)
      zeros = jax.tree.map(jnp.zeros_like, state.params)

      def body(acc, xs):
        micro_batch, i = xs
        g, m = micro_grads(state.params, micro_batch, jax.random.fold_in(rng, i))
        # Weight each micro-batch by its target count so the sum equals the full-batch mean.
        n = m["num_targets"]
        return jax.tree.map(lambda a, b: a + b * n, acc, g), m

      grads, ms = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum)))
      total = jnp.maximum(ms["num_targets"].sum(), 1.0)
      grads = jax.tree.map(lambda g: g / total, grads)
      metrics = {k: (v.sum() if k.startswith("num_") else (v * ms["num_targets"]).sum() / total)
                 for k, v in ms.items()}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return step


def make_eval_step(loss_fn: Callable, corrupt_fn: Callable) -> Callable:
  """Returns eval(params, batch, rng) -> metrics, deterministic (no dropout), fixed corruption rng."""

  def step(params, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    corrupted = corrupt_fn(rng, batch)
    _, metrics = loss_fn(params, corrupted, None)
    return dict(metrics, num_tokens=jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32))

  return step


def evaluation_options(options: Any) -> Any:
  """The objective's options for evaluation: its own `for_evaluation()` where it has one (UniLM
  titles scored as decoded: objectives/seq2seq_finetune.py), and label smoothing off.

  Label smoothing is a training regulariser (Szegedy et al. 2016); the dev and test losses are
  the model's cross-entropy of the real targets, so that they read as a negative log-likelihood
  (perplexity = exp(loss)) and compare across runs trained with and without smoothing.
  """
  if hasattr(options, 'for_evaluation'):
    options = options.for_evaluation()
  if dataclasses.is_dataclass(options) and getattr(options, 'label_smoothing', 0.0):
    return dataclasses.replace(options, label_smoothing=0.0)
  return options


def bind_objective(objective: Any, *, model: Any, specials: Any, options: Any
                   ) -> tuple[Callable, Callable]:
  """Partially applies an objective module's corrupt/loss to this run's model and options."""
  experts = getattr(getattr(model, 'config', None), 'moe_experts', 0)
  adds_aux = getattr(objective, 'ADDS_MODEL_AUX_LOSS', False)
  if callable(adds_aux):  # depends on the options (seq2seq_finetune: its encdec form)
    adds_aux = adds_aux(options)
  if experts and not adds_aux:
    name = objective.__name__.rsplit('.', 1)[-1]
    raise ValueError(f'objective {name!r} does not add the mixture-of-experts router losses; '
                     'train MoE models (model.moe_experts > 0) with clm, prefix_lm (decoder) or '
                     'span_corruption, bart, mass, seq2seq_finetune form=encdec (encdec)')
  corrupt = functools.partial(objective.corrupt, specials=specials, options=options)
  loss = functools.partial(objective.loss, model=model, specials=specials, options=options)
  return loss, corrupt
