"""Feature-based transfer: a frozen encoder, a linear probe per layer, and an ELMo-style scalar mix.

Peters et al. (2018, ELMo) use a pretrained network as a frozen feature extractor: the task model
reads `gamma * sum_j softmax(s)_j * h_j`, a learned mix of every layer. Probing each layer on its own
(Tenney et al. 2019; Liu et al. 2019) shows where the transferable information sits.

Recipe, per classification task and per init (pretrained weights vs the same network at random init):
  * features: for every example of train/validation/test, each layer's output (the embedding output
    is layer 0) pooled over the real tokens (mean pooling, or the first token with pooling='cls'),
    computed once with the encoder frozen (`deterministic=True`);
  * each layer's features are standardised with the train split's mean/std (the probe then sees
    every layer at one scale, as ELMo's optional per-layer normalisation does);
  * a linear softmax probe per layer, and one on the scalar mix (mix logits `s`, scale `gamma` and the
    probe trained jointly), full-batch Adam with L2 `probe_l2` for `probe_steps` steps; dev accuracy
    is measured every 25 steps and the test accuracy reported is the one at the best dev step.
Writes `probe.json` and `probe.png` (accuracy per layer, pretrained vs random) into the workdir.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from ptm_jax import checkpoint as ckpt
from ptm_jax import models
from ptm_jax import train as train_lib
from ptm_jax.data import tokenizers
from ptm_jax.data.sources import downstream

SPLITS = ('train', 'validation', 'test')
EVAL_EVERY = 25


def build_backbone(config, vocab_size: int) -> nn.Module:
  """The pretraining family model with the run's model fields (vocab from the tokenizer)."""
  fields = {k: v for k, v in config.model.items() if k not in ('family', 'variant')}
  if fields.get('vocab_size', 0) in (0, None):
    fields['vocab_size'] = vocab_size
  for key in ('dtype', 'param_dtype'):
    if isinstance(fields.get(key), str):
      fields[key] = jnp.dtype(fields[key])
  return models.build(config.model.family, config.model.variant, **fields)


def init_params(model: nn.Module, seq_len: int, seed: int) -> Any:
  """Random-init params of the backbone (unboxed host arrays)."""
  ones = jnp.ones((1, seq_len), jnp.int32)
  variables = model.init({'params': jax.random.key(seed), 'dropout': jax.random.key(seed)},
                         ones, segment_ids=ones,
                         positions=jnp.arange(seq_len, dtype=jnp.int32)[None], deterministic=True)
  return jax.device_get(nn.unbox(variables['params']))


@functools.partial(jax.jit, static_argnames=('model', 'pooling'))
def _pooled_features(params, batch, *, model: nn.Module, pooling: str) -> jax.Array:
  """`[B, num_layers + 1, D]` per-layer features, pooled over real tokens (or the first, 'cls').

  Module-level with the model static (linen modules hash by their config): one compilation serves
  every split and both inits of a task, instead of one per call.
  """
  out = model.apply({'params': params}, batch['tokens'], segment_ids=batch['segment_ids'],
                    positions=batch['positions'], deterministic=True, output_hidden_states=True)
  states_BJLD = jnp.stack([h.astype(jnp.float32) for h in out['hidden_states']], axis=1)
  if pooling == 'cls':
    return states_BJLD[:, :, 0]
  real_BL = (batch['segment_ids'] != 0).astype(jnp.float32)
  summed_BJD = jnp.einsum('bjld,bl->bjd', states_BJLD, real_BL)
  return summed_BJD / jnp.maximum(real_BL.sum(axis=1), 1.0)[:, None, None]


def extract_features(model: nn.Module, params: Any, data_cfg, tokenizer, split: str, *,
                     pooling: str = 'mean', batch_size: int = 256,
                     max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Pooled per-layer features `[N, num_layers + 1, D]` float32 and labels `[N]` of one split.

  `max_examples` > 0: the split's first N examples only (the ordered pass stops there), the same
  subset a fine-tune with `max_train_examples = N` trains on.
  """
  it = downstream.make_task_iterator(data_cfg, tokenizer, split=split, global_batch_size=batch_size,
                                     seed=0, repeat=False)
  feats, labels, kept = [], [], 0
  for batch in it:
    keep = np.asarray(batch['label_weight']) > 0
    f = np.asarray(_pooled_features(
        params, {k: jnp.asarray(batch[k]) for k in ('tokens', 'segment_ids', 'positions')},
        model=model, pooling=pooling))
    feats.append(f[keep])
    labels.append(np.asarray(batch['label'])[keep])
    kept += int(keep.sum())
    if max_examples and kept >= max_examples:
      break
  n = max_examples or kept
  return np.concatenate(feats)[:n], np.concatenate(labels)[:n].astype(np.int32)


def _standardise(splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-layer, per-dimension standardisation with the train split's statistics."""
  mean = splits['train'].mean(axis=0, keepdims=True)
  std = splits['train'].std(axis=0, keepdims=True) + 1e-6
  return {k: (v - mean) / std for k, v in splits.items()}


def train_probe(x: dict[str, np.ndarray], y: dict[str, np.ndarray], num_classes: int, *,
                mix: bool, steps: int = 500, learning_rate: float = 1e-2, l2: float = 1e-3,
                seed: int = 0) -> dict[str, Any]:
  """A linear probe on `[N, D]` features, or (mix=True) on a learned scalar mix of `[N, J, D]`.

  Returns best-dev accuracy, the test accuracy at that step, and the mix weights softmax(s) * gamma.
  """
  x = {k: jnp.asarray(v) for k, v in x.items()}
  y = {k: jnp.asarray(v) for k, v in y.items()}
  dim = x['train'].shape[-1]
  key = jax.random.key(seed)
  params = {'w': 0.01 * jax.random.normal(key, (dim, num_classes)), 'b': jnp.zeros((num_classes,))}
  if mix:
    params.update(s=jnp.zeros((x['train'].shape[1],)), gamma=jnp.ones(()))

  def logits(p, feats):
    if mix:
      feats = p['gamma'] * jnp.einsum('njd,j->nd', feats, jax.nn.softmax(p['s']))
    return feats @ p['w'] + p['b'][None, :]

  def loss_fn(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits(p, x['train']), y['train']).mean()
    return ce + l2 * jnp.sum(jnp.square(p['w']))

  def accuracy(p, split):
    return jnp.mean(jnp.argmax(logits(p, x[split]), axis=-1) == y[split])

  tx = optax.adam(learning_rate)

  @jax.jit
  def run_chunk(p, opt_state):
    def body(carry, _):
      p, o = carry
      grads = jax.grad(loss_fn)(p)
      updates, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), None
    (p, opt_state), _ = jax.lax.scan(body, (p, opt_state), None, length=EVAL_EVERY)
    return p, opt_state, accuracy(p, 'validation'), accuracy(p, 'test')

  opt_state = tx.init(params)
  best = {'dev_accuracy': -1.0, 'test_accuracy': float('nan'), 'step': 0, 'mix_weights': None}
  for chunk in range(max(steps // EVAL_EVERY, 1)):
    params, opt_state, dev, test = run_chunk(params, opt_state)
    if float(dev) > best['dev_accuracy']:
      weights = (np.asarray(jax.nn.softmax(params['s']) * params['gamma']).tolist()
                 if mix else None)
      best = {'dev_accuracy': float(dev), 'test_accuracy': float(test),
              'step': (chunk + 1) * EVAL_EVERY, 'mix_weights': weights}
  return best


def probe_task(config, task: str, pretrained_dir: str, tokenizer_cfg, field,
               inits: tuple[str, ...] = ('pretrained', 'random')) -> list[dict[str, Any]]:
  """Per-layer and scalar-mix probes of one classification task, for each of `inits` (the
  pretrained weights, the same network at random init)."""
  info = downstream.task_info(task)
  if info.kind != 'classification':
    raise ValueError(f'probes read one label per example; {task!r} is a {info.kind} task')
  tokenizer = tokenizers.load_or_train(tokenizer_cfg, config.data)
  data_cfg = config.data.copy_and_resolve_references()
  with data_cfg.unlocked():
    data_cfg.source = task
    data_cfg.tokenizer = tokenizer_cfg
    data_cfg.max_train_examples = int(field('train_examples'))
    if field('seq_len'):
      data_cfg.seq_len = int(field('seq_len'))
  model = build_backbone(config, tokenizer.vocab_size)
  fresh = init_params(model, int(data_cfg.seq_len), int(config.seed))
  unknown = set(inits) - {'pretrained', 'random'}
  if unknown:
    raise ValueError(f'probe inits are pretrained and random, not {", ".join(sorted(unknown))}')
  rows = []
  for init in inits:
    params = (train_lib.merge_pretrained(fresh, ckpt.restore_params(pretrained_dir))
              if init == 'pretrained' else fresh)
    feats, labels = {}, {}
    for split in SPLITS:
      feats[split], labels[split] = extract_features(
          model, params, data_cfg, tokenizer, split, pooling=field('pooling'),
          max_examples=int(field('train_examples')) if split == 'train' else 0)
    feats = _standardise(feats)
    num_layers = feats['train'].shape[1]
    kwargs = dict(steps=int(field('probe_steps')), learning_rate=float(field('probe_learning_rate')),
                  l2=float(field('probe_l2')), seed=int(config.seed))
    for layer in range(num_layers):
      r = train_probe({k: v[:, layer] for k, v in feats.items()}, labels, info.num_classes,
                      mix=False, **kwargs)
      rows.append(dict(task=task, init=init, layer=str(layer), **r))
    r = train_probe(feats, labels, info.num_classes, mix=True, **kwargs)
    rows.append(dict(task=task, init=init, layer='mix', **r))
    logging.info('probe %s/%s: %s', task, init,
                 ' '.join(f'{x["layer"]}:{x["test_accuracy"]:.3f}' for x in rows if x['init'] == init
                          and x['task'] == task))
  return rows


def summarize(rows: list[dict[str, Any]]) -> str:
  """Markdown: test accuracy (at the best dev step) per layer and for the scalar mix."""
  layers = list(dict.fromkeys(r['layer'] for r in rows))
  head = ' | '.join(('emb' if l == '0' else f'L{l}') if l != 'mix' else 'scalar mix' for l in layers)
  lines = ['## Feature-based transfer (frozen encoder, linear probes)', '',
           'Test accuracy of a linear probe per layer (layer 0 = embeddings) and on an ELMo-style '
           'learned scalar mix of all layers, at the best dev step; mix weights = gamma * softmax(s).',
           '', f'| task | init | {head} | mix weights |', '|---|---|' + '---|' * len(layers) + '---|']
  for task in dict.fromkeys(r['task'] for r in rows):
    for init in ('pretrained', 'random'):
      rs = {r['layer']: r for r in rows if r['task'] == task and r['init'] == init}
      if not rs:
        continue
      cells = ' | '.join(f'{rs[l]["test_accuracy"]:.3f}' if l in rs else '' for l in layers)
      mix = rs.get('mix', {}).get('mix_weights') or []
      lines.append(f'| {task} | {init} | {cells} | {" ".join(f"{w:.2f}" for w in mix)} |')
  return '\n'.join(lines)


def plot(rows: list[dict[str, Any]], out_png: str) -> str:
  """Probe test accuracy against layer, pretrained vs random, one panel per task."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  tasks = list(dict.fromkeys(r['task'] for r in rows))
  fig = Figure(figsize=(5.5 * len(tasks), 4), dpi=120)
  FigureCanvasAgg(fig)
  colors = {'pretrained': 'tab:blue', 'random': 'tab:orange'}
  for i, task in enumerate(tasks):
    ax = fig.add_subplot(1, len(tasks), i + 1)
    for init, color in colors.items():
      layer_rows = [r for r in rows if r['task'] == task and r['init'] == init and r['layer'] != 'mix']
      if not layer_rows:
        continue
      ax.plot([int(r['layer']) for r in layer_rows], [r['test_accuracy'] for r in layer_rows],
              marker='o', color=color, label=f'{init} (per layer)')
      mix = [r for r in rows if r['task'] == task and r['init'] == init and r['layer'] == 'mix']
      if mix:
        ax.axhline(mix[0]['test_accuracy'], color=color, linestyle='--', label=f'{init} (scalar mix)')
    ax.set_title(f'{task}: linear probe on frozen features')
    ax.set_xlabel('layer (0 = embeddings)')
    ax.set_ylabel('test accuracy')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(out_png, format='png')
  return out_png


def run_probes(config, workdir: str, pretrained_dir: str, tokenizer_cfg, field) -> dict[str, Any]:
  """Probes every classification task of `config.downstream.tasks`; writes probe.json/probe.png."""
  tasks = [t for t in field('tasks') if downstream.task_info(t).kind == 'classification']
  rows = [r for task in tasks for r in probe_task(config, task, pretrained_dir, tokenizer_cfg, field)]
  markdown = summarize(rows) if rows else ''
  if rows and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'probe.json'), 'w') as f:
      json.dump(rows, f, indent=1)
    png = plot(rows, os.path.join(workdir, 'probe.png'))
    markdown += f'\n\n![probes]({os.path.basename(png)})'
  return {'markdown': markdown, 'rows': rows}
