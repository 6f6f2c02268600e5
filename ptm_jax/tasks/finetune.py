"""Downstream fine-tuning: every task x seed x init (pretrained / random) through `train.train`.

Each run is the main config with the `classify` objective (the `tag` objective for tagging tasks)
over the task's source, the pretraining tokenizer, and `config.downstream`'s budget; the reported test
score (accuracy; entity F1 for tagging) is the one measured at the evaluation with the best dev score
(model selection on dev only).
"""
from __future__ import annotations

import math
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from ptm_jax import metrics as metrics_lib
from ptm_jax import train as train_lib
from ptm_jax.configs import base
from ptm_jax.data import sources
from ptm_jax.data import tokenizers
from ptm_jax.data.sources import downstream

INITS = ('pretrained', 'random')
# config.downstream fields and their defaults; experiments set the ones they care about.
DEFAULTS = dict(tasks=(), seeds=(0,), steps=1000, batch_size=32, learning_rate=5e-5,
                warmup_steps=100, layerwise_lr_decay=1.0, eval_every=100,
                # > 0: the pretrained embedding tables start fine-tuning at this token-table RMS
                # (train.init_embedding_rms; function-preserving, see embedding_init.rescale_tables).
                init_embedding_rms=0.0,
                # Modules re-initialised instead of loaded (train.init_skip: 'decoder*', ...).
                init_skip=(), eval_batch_size=0, early_stop_patience=0, early_stop_min_steps=0,
                pooling='cls', head_dropout_rate=0.1, weight_decay=0.01, seq_len=0,
                train_examples=0, inits=INITS,  # ('pretrained',) drops the random-init baseline
                # > 0: classification rows hold up to this many examples, first-fit packed
                # (data/sources/task_packing.py); batch_size then counts rows, not examples.
                pack_examples=0,
                # Feature-based transfer (tasks/probe.py): frozen encoder, per-layer linear probes
                # and an ELMo scalar mix, for the classification tasks; off unless asked for.
                probe=False, probe_steps=500, probe_learning_rate=1e-2, probe_l2=1e-3,
                finetune=True,
                # Generation tasks (tasks/generation.py): title length, the family's seq2seq form
                # ('' = by family), the decoding search, the decoded splits and a cap on their
                # examples (0 = all); no_repeat_ngram_size / min_new_tokens constrain any search
                # (decoding.Options; 0 = off).
                target_len=32, generation_form='', label_smoothing=0.0, decode_strategy='beam',
                num_beams=4, length_penalty=0.6, no_repeat_ngram_size=0, min_new_tokens=0,
                generation_splits=('validation', 'test'), generation_examples=0)


def downstream_field(config, name: str) -> Any:
  """`config.downstream.<name>`, or its default."""
  return config.downstream.get(name, DEFAULTS[name])


def pinned_tokenizer_config(config) -> ml_collections.ConfigDict:
  """The pretraining tokenizer, made independent of `data.source` (a task source would retrain it).

  An imported vocabulary or an explicit `path` is already independent; a sentencepiece model trained
  on the pretraining source is pinned by the path of its cached model (trained now if missing).
  """
  tok_cfg = config.data.tokenizer
  if tok_cfg.get('kind', 'sentencepiece') != 'sentencepiece' or tok_cfg.get('path'):
    return tok_cfg
  tokenizers.load_or_train(tok_cfg, config.data)  # a cache hit after pretraining
  data_dir = sources.resolve_data_dir(config.data.get('data_dir', ''))
  fingerprint = sources.get_source(config.data.source, data_dir, prepare_data=False).fingerprint
  path = os.path.join(data_dir, 'tokenizers', tokenizers.cache_key(fingerprint, tok_cfg), 'sp.model')
  if not os.path.exists(path):
    raise FileNotFoundError(f'the pretraining tokenizer is not at {path}; set '
                            '--config.data.tokenizer.path to the sp.model used for pretraining')
  pinned = ml_collections.ConfigDict(tok_cfg.to_dict())
  pinned.path = path
  return pinned


def finetune_config(config, task: str, init: str, seed: int, pretrained_dir: str,
                    tokenizer_cfg=None) -> ml_collections.ConfigDict:
  """The run config of one (task, init, seed) fine-tune, derived from the main config."""
  if init not in INITS:
    raise ValueError(f'unknown init {init!r}; known: {", ".join(INITS)}')
  info = downstream.task_info(task)
  ft = config.copy_and_resolve_references()
  field = lambda name: downstream_field(config, name)  # noqa: E731
  steps = int(field('steps'))
  with ft.unlocked():
    ft.seed = int(seed)
    ft.init_from = pretrained_dir if init == 'pretrained' else ''
    ft.train.init_embedding_rms = float(field('init_embedding_rms')) if init == 'pretrained' else 0.0
    skip = field('init_skip') if init == 'pretrained' else ()
    ft.train.init_skip = (skip,) if isinstance(skip, str) else tuple(skip)
    # Count-based embedding init belongs to the pretraining stage: the random-init baseline stays
    # random, the pretrained init already carries it.
    if 'embedding_init' in ft.train:
      ft.train.embedding_init = ''
    if info.kind == 'tagging':
      ft.objective = base.objective_config('tag', num_tags=info.num_classes,
                                           dropout_rate=field('head_dropout_rate'))
    elif info.kind == 'generation':
      ft.objective = base.objective_config('seq2seq_finetune')  # its form: generation.configure
    else:
      ft.objective = base.objective_config(
          'classify', num_classes=info.num_classes, pooling=field('pooling'),
          dropout_rate=field('head_dropout_rate'),
          backbone='decoder' if config.model.family == 'decoder' else 'encoder')
    ft.data.source = task
    # A fixed subset of the labelled train split (0 = all): the low-resource regime.
    ft.data.max_train_examples = int(field('train_examples'))
    # Tagging and generation rows keep one example each (their targets are per token).
    ft.data.pack_examples = int(field('pack_examples')) if info.kind == 'classification' else 0
    ft.data.tokenizer = tokenizer_cfg if tokenizer_cfg is not None else pinned_tokenizer_config(config)
    if field('seq_len'):
      ft.data.seq_len = int(field('seq_len'))
    ft.optim.learning_rate = float(field('learning_rate'))
    ft.optim.warmup_steps = int(field('warmup_steps'))
    ft.optim.weight_decay = float(field('weight_decay'))
    ft.optim.layerwise_lr_decay = float(field('layerwise_lr_decay'))
    ft.train.steps = steps
    ft.train.stop_at = 0
    ft.train.grad_accum = 1
    ft.train.batch_size = int(field('batch_size'))
    ft.train.eval_batch_size = int(field('eval_batch_size'))
    ft.train.eval_every = int(field('eval_every')) or steps
    ft.train.eval_batches = 0  # 0 = the whole split
    ft.train.eval_split = 'validation'
    ft.train.test_split = 'test'
    ft.train.early_stop_patience = int(field('early_stop_patience'))
    ft.train.early_stop_min_steps = int(field('early_stop_min_steps'))
    ft.train.early_stop_metric = f'eval/{selection_metric(task)}'
    ft.train.log_every = max(1, min(int(ft.train.log_every), ft.train.eval_every))
    ft.train.checkpoint_every = steps  # only the final state: fine-tunes are short
    ft.train.keep_checkpoints = 1
    ft.report.title = f'{task} fine-tune ({init} init, seed {seed})'
    if info.kind == 'generation':
      from ptm_jax.tasks import generation  # pylint: disable=g-import-not-at-top
      generation.configure(ft, config, field)
  return ft


def _eval_history(result: train_lib.TrainResult, workdir: str) -> list[dict[str, float]]:
  """Evaluations of a run: the TrainResult's, else (a finished run resumed) its metrics.jsonl."""
  if result.eval_history:
    return list(result.eval_history)
  path = os.path.join(workdir, metrics_lib.JSONL_NAME)
  if not os.path.exists(path):
    return []
  return [r for r in metrics_lib.read_jsonl(path) if 'eval/accuracy' in r]


def selection_metric(task: str) -> str:
  """The dev metric a task's runs are selected on: entity F1 (tagging), loss (generation)."""
  kind = downstream.task_info(task).kind
  return {'tagging': 'f1', 'generation': 'loss'}.get(kind, 'accuracy')


def select_best(history: list[dict[str, float]], metric: str = 'accuracy') -> dict[str, float]:
  """The evaluation with the highest dev `metric` (the earliest on ties)."""
  key = f'eval/{metric}'
  scored = [h for h in history if math.isfinite(float(h.get(key, float('nan'))))]
  if not scored:
    return {'step': 0, key: float('nan'), f'test/{metric}': float('nan'),
            'eval/accuracy': float('nan'), 'test/accuracy': float('nan')}
  return max(scored, key=lambda h: (float(h[key]), -int(h['step'])))


def run_one(config, task: str, init: str, seed: int, workdir: str, pretrained_dir: str,
            tokenizer_cfg=None) -> dict[str, Any]:
  """Trains one fine-tune and returns its row (best-dev step, dev and test accuracy, cost)."""
  if downstream.task_info(task).kind == 'generation':  # decode + ROUGE at the best dev loss
    from ptm_jax.tasks import generation  # pylint: disable=g-import-not-at-top
    return generation.run_one(config, task, init, seed, workdir, pretrained_dir, tokenizer_cfg)
  run_dir = os.path.join(workdir, task, init, f'seed{seed}')
  ft = finetune_config(config, task, init, seed, pretrained_dir, tokenizer_cfg)
  result = train_lib.train(ft, run_dir)
  metric = selection_metric(task)
  best = select_best(_eval_history(result, run_dir), metric)
  nan = float('nan')
  row = {'task': task, 'init': init, 'seed': int(seed), 'best_step': int(best['step']),
         'metric': metric, 'dev_score': float(best.get(f'eval/{metric}', nan)),
         'test_score': float(best.get(f'test/{metric}', nan)),
         'dev_accuracy': float(best.get('eval/accuracy', nan)),
         'test_accuracy': float(best.get('test/accuracy', nan)),
         'steps': int(result.step), 'wall_time_s': float(result.wall_time_s), 'workdir': run_dir,
         'preempted': bool(result.preempted)}
  logging.info('fine-tune %s/%s/seed%d: best dev %s %.4f at step %d, test %.4f', task, init, seed,
               metric, row['dev_score'], row['best_step'], row['test_score'])
  return row


def _mean_std(values: list[float]) -> str:
  vals = np.asarray(values, np.float64)
  if vals.size == 0 or not np.isfinite(vals).any():
    return 'n/a'
  vals = vals[np.isfinite(vals)]
  std = vals.std(ddof=1) if vals.size > 1 else 0.0
  return f'{vals.mean():.3f} ± {std:.3f}'


def summarize(rows: list[dict[str, Any]]) -> str:
  """Markdown table: per task and init, dev/test accuracy mean ± std over seeds, steps, wall time."""
  lines = ['## Downstream fine-tuning', '',
           'Test score at the best-dev evaluation (accuracy; entity-level F1 for tagging tasks); '
           'mean ± sample std over seeds.', '',
           '| task | init | seeds | metric | dev | test | steps (best) | wall time / run |',
           '|---|---|---|---|---|---|---|---|']
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in rows:
    groups.setdefault((r['task'], r['init']), []).append(r)
  for (task, init), rs in groups.items():
    steps = int(np.mean([r['steps'] for r in rs]))
    best = int(np.mean([r['best_step'] for r in rs]))
    metric = rs[0].get('metric', 'accuracy')
    dev = _mean_std([r.get('dev_score', r['dev_accuracy']) for r in rs])
    test = _mean_std([r.get('test_score', r['test_accuracy']) for r in rs])
    lines.append(f'| {task} | {init} | {len(rs)} | {metric} | {dev} | {test} | {steps} ({best}) | '
                 f'{np.mean([r["wall_time_s"] for r in rs]):.0f}s |')
  return '\n'.join(lines)


def plot_dev_curves(rows: list[dict[str, Any]], out_png: str) -> str:
  """Dev score (accuracy / entity F1) against step, one panel per task, one line per (init, seed)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  tasks = list(dict.fromkeys(r['task'] for r in rows))
  fig = Figure(figsize=(6 * max(len(tasks), 1), 4.5), dpi=120)
  FigureCanvasAgg(fig)
  colors = {'pretrained': 'tab:blue', 'random': 'tab:orange'}
  for i, task in enumerate(tasks):
    ax = fig.add_subplot(1, len(tasks), i + 1)
    for r in (r for r in rows if r['task'] == task):
      path = os.path.join(r['workdir'], metrics_lib.JSONL_NAME)
      key = f'eval/{r.get("curve_metric", r.get("metric", "accuracy"))}'
      points = sorted((h['step'], h[key]) for h in metrics_lib.read_jsonl(path)
                      if key in h) if os.path.exists(path) else []
      if points:
        ax.plot(*zip(*points), marker='o', markersize=3, color=colors.get(r['init']),
                label=f'{r["init"]} seed {r["seed"]}', alpha=0.85)
    ax.set_title(f'{task}: dev {selection_metric(task)}')
    ax.set_xlabel('fine-tuning step')
    ax.set_ylabel(selection_metric(task))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(out_png, format='png')
  return out_png


def run_downstream(config, workdir: str, pretrained_dir: str) -> dict[str, Any]:
  """Fine-tunes every `config.downstream.tasks` x seeds x (pretrained, random); returns the table.

  Returns {'markdown', 'rows' (one dict per fine-tune), 'probe_rows'} and writes finetune.png
  (and, with `downstream.probe`, probe.json + probe.png; `downstream.finetune=False` probes only).
  """
  tasks = list(downstream_field(config, 'tasks'))
  for task in tasks:
    downstream.task_info(task)  # unknown names fail before any training
  seeds = [int(s) for s in downstream_field(config, 'seeds')]
  inits = [str(i) for i in downstream_field(config, 'inits')]
  if not inits or set(inits) - set(INITS):
    raise ValueError(f'downstream.inits={tuple(inits)}: use a non-empty subset of {INITS}')
  tokenizer_cfg = pinned_tokenizer_config(config)
  rows = []
  field = lambda name: downstream_field(config, name)  # noqa: E731
  jobs = [(task, seed, init) for task in tasks for seed in seeds for init in inits]
  if not field('finetune'):
    jobs = []
  for task, seed, init in jobs:
    rows.append(run_one(config, task, init, seed, workdir, pretrained_dir, tokenizer_cfg))
    if rows[-1]['preempted']:
      # SIGTERM stopped this fine-tune (it saved a checkpoint): stop here; a rerun resumes it.
      logging.warning('fine-tuning preempted at %s/%s/seed%d; %d runs left for the rerun', task, init,
                      seed, len(jobs) - len(rows))
      break
  markdown = summarize([r for r in rows if not r['preempted']]) if rows else ''
  if any(r.get('metric') == 'rougeL' for r in rows):
    from ptm_jax.tasks import generation  # pylint: disable=g-import-not-at-top
    markdown += '\n\n' + generation.summarize(rows)
  if rows and rows[-1]['preempted']:
    markdown += '\n\n(preempted: the table is incomplete; rerun the same command to resume)'
  if jax.process_index() == 0 and rows:
    plot = plot_dev_curves(rows, os.path.join(workdir, 'finetune.png'))
    markdown += f'\n\n![fine-tuning dev score]({os.path.basename(plot)})'
  probe_rows = []
  if field('probe') and not (rows and rows[-1]['preempted']):
    from ptm_jax.tasks import probe  # pylint: disable=g-import-not-at-top
    probes = probe.run_probes(config, workdir, pretrained_dir, tokenizer_cfg, field)
    probe_rows = probes['rows']
    markdown = '\n\n'.join(m for m in (markdown, probes['markdown']) if m)
  return {'markdown': markdown, 'rows': rows, 'probe_rows': probe_rows}
