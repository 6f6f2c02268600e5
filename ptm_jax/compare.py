"""Equal-compute comparison of pretraining objectives: a set of runs that share one FLOP budget.

A comparison config (e.g. experiments/compare_encoders.py) is an ordinary run config -- its model,
data, optim, train, mesh, seed and downstream blocks hold the settings every member shares -- plus
`config.comparison`: the member names, each member's experiment spec, the reference member and the
budget (`reference_steps` steps of the reference). `run.run` hands such a config to `run` here:
  1. each member's config is loaded from its experiment file and made equal on the shared fields
     (`member_config`);
  2. its training FLOPs per step come from `ptm_jax.flops`, and it trains
     floor(budget / FLOPs per step) steps, so cheaper objectives run more steps (`plan`);
  3. the units run in turn: the random-init baseline (the reference member's architecture,
     fine-tuned once per task and seed), then each member, pretrained and then fine-tuned on every
     downstream task and seed (`tasks.finetune.run_one`; generation tasks decode and score
     ROUGE); with `downstream.probe`, also a linear probe of its frozen encoder per layer and on
     the scalar mix of the layers for each classification task (`tasks.probe`; the baseline
     probes the reference architecture at random init), and `downstream.finetune=False` probes
     only (feature-based transfer of the same checkpoints, in minutes). A finished unit leaves
     a record (ptm_jax/compare_records.py) and is never run again:
     `comparison.records_dir`, `run_only` and `time_budget_s` split a comparison over machines,
     calls and sessions; more `downstream.seeds` than a record holds fine-tune only the
     missing seeds (from the unit's pretrained checkpoint in the workdir) and extend it;
  4. a markdown table, a bar plot and a JSON file (`comparison.output_name`) of every recorded
     unit land in the workdir (ptm_jax/compare_report.py).
Members of different families (experiments/compare_seq2seq.py: encoder-decoders next to single
stacks) take the shared width from the comparison config and their depth from
`comparison.member_model` (per-member model fields applied last); `comparison.member_objective`
sets per-member objective options (a variant of one experiment, e.g. T5 with i.i.d. noise).
Every run lives in its own directory (workdir/<member>/pretrain, workdir/<member>/<task>/...,
workdir/random/<task>/...), so a rerun of the same command also resumes a unit cut short.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from ptm_jax import configs
from ptm_jax import compare_records as records
from ptm_jax import compare_report as report
from ptm_jax import flops as flops_lib
from ptm_jax import models
from ptm_jax import train
from ptm_jax.data import corpus_stats
from ptm_jax.data.sources import downstream
from ptm_jax.data import tokenizers
from ptm_jax.tasks import finetune

# Fields every member takes from the comparison config (the encoder size and precision).
SHARED_MODEL_FIELDS = ('num_layers', 'num_encoder_layers', 'num_decoder_layers', 'embed_dim',
                       'num_heads', 'head_dim', 'mlp_dim', 'dtype', 'param_dtype', 'remat',
                       'remat_policy', 'attention_impl')
# The position scheme is shared only among the encoder families, where `positions` means the same
# thing ('learned' | 'rotary'); encdec ('relative' | 'learned') and decoder members keep their own.
POSITION_FIELDS = ('positions', 'rope_theta')
POSITION_FAMILIES = ('encoder', 'albert')
# The corpus, row length and the data order; each member keeps its own row recipe
# (pairs, cross_document, annotations, bos/eos).
SHARED_DATA_FIELDS = ('source', 'seq_len', 'data_dir', 'shuffle', 'shuffle_seed', 'num_threads',
                      'num_shards')
SHARED_TRAIN_FIELDS = ('batch_size', 'grad_accum', 'log_every', 'eval_batches', 'eval_batch_size',
                       'eval_split')


# Passes over the pretraining corpus past which the plan warns (BERT's budget was ~40).
MANY_EPOCHS = 50

_T0 = [time.time()]


def _say(message: str) -> None:
  """One progress line on stdout (the CLI silences INFO logs) and in the log, with elapsed time."""
  elapsed = time.time() - _T0[0]
  line = f'compare [{elapsed // 60:.0f}m{elapsed % 60:02.0f}s]: {message}'
  logging.info(line)
  if jax.process_index() == 0:
    print(line, flush=True)


def _resolve_spec(spec: str) -> str:
  """`experiments/x.py:arg` relative to the working directory, else to the repository root."""
  path, sep, arg = spec.partition(':')
  if not os.path.exists(path) and not os.path.isabs(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.exists(os.path.join(root, path)):
      path = os.path.join(root, path)
  return f'{path}{sep}{arg}'


def _copy(node) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(node.to_dict())


def member_config(config, name: str) -> ml_collections.ConfigDict:
  """Member `name`'s run config: its experiment file, with the shared fields forced equal."""
  cmp = config.comparison
  if name not in cmp.experiments:
    raise ValueError(f'comparison member {name!r} has no entry in comparison.experiments '
                     f'(known: {", ".join(cmp.experiments)})')
  cfg = configs.load_experiment(_resolve_spec(cmp.experiments[name]))
  shared = SHARED_MODEL_FIELDS
  if config.model.family in POSITION_FAMILIES and cfg.model.family in POSITION_FAMILIES:
    shared += POSITION_FIELDS
  for field in shared:
    if field in cfg.model and field in config.model:
      cfg.model[field] = config.model[field]
  # Positions run 0..seq_len-1 plus the family's offset (RoBERTa: 2).
  cfg.model.max_position_embeddings = (int(config.model.max_position_embeddings)
                                       + int(cfg.model.get('position_offset', 0)))
  if cfg.model.family == 'albert':
    cfg.model.embedding_size = int(cmp.albert_embedding_size or config.model.embed_dim // 4)
  for field, value in cmp.get('member_model', {}).get(name, {}).items():
    if field not in cfg.model:
      raise ValueError(f'comparison.member_model.{name}.{field}: {cfg.model.family} has no field '
                       f'{field!r}')
    cfg.model[field] = value
  for field, value in cmp.get('member_objective', {}).get(name, {}).items():
    if field not in cfg.objective:
      raise ValueError(f'comparison.member_objective.{name}.{field}: objective '
                       f'{cfg.objective.name!r} has no option {field!r}')
    cfg.objective[field] = value
  for field in SHARED_DATA_FIELDS:
    cfg.data[field] = config.data[field]
  cfg.data.tokenizer = _copy(config.data.tokenizer)  # one tokenizer: same source, same settings
  for field in SHARED_TRAIN_FIELDS:
    cfg.train[field] = config.train[field]
  cfg.optim = _copy(config.optim)
  cfg.mesh = _copy(config.mesh)
  cfg.downstream = _copy(config.downstream)
  cfg.seed = int(config.seed)
  cfg.init_from = ''
  cfg.report.title = str(cmp.labels.get(name, name))
  return cfg


@dataclasses.dataclass
class Member:
  """One member's pretraining plan: its config (steps set) and FLOP accounting."""

  name: str
  label: str
  config: ml_collections.ConfigDict
  flops_breakdown: dict[str, float]
  flops_per_step: float
  steps: int

  @property
  def flops(self) -> float:
    return self.flops_per_step * self.steps


def plan(config, vocab_size: int) -> tuple[list[Member], float]:
  """Members with their step counts, and the budget (reference_steps x reference FLOPs/step)."""
  cmp = config.comparison
  names = list(cmp.members)
  if not names:
    raise ValueError('comparison.members is empty; name at least the reference member')
  if 'random' in names:
    raise ValueError("'random' is the baseline's name; rename that comparison member")
  if cmp.reference not in names:
    raise ValueError(f'comparison.reference={cmp.reference!r} is not one of comparison.members '
                     f'({", ".join(names)})')
  if int(cmp.reference_steps) < 1:
    raise ValueError('comparison.reference_steps must be >= 1 (the budget is that many steps of '
                     'the reference member)')
  members = []
  for name in names:
    cfg = member_config(config, name)
    parts = flops_lib.breakdown(cfg, vocab_size=vocab_size,
                                scored=cmp.get('scored_positions', 'slab'))
    per_step = parts['total'] * int(cfg.train.batch_size) * int(cfg.data.seq_len)
    members.append(Member(name, cfg.report.title, cfg, parts, per_step, 0))
  ref_steps = int(cmp.reference_steps)
  budget = ref_steps * next(m for m in members if m.name == cmp.reference).flops_per_step
  for m in members:
    # The largest step count within the budget: every run is within one of its steps of it.
    m.steps = max(1, int(math.floor(budget / m.flops_per_step + 1e-9)))
    tc = m.config.train
    tc.steps, tc.stop_at = m.steps, 0
    tc.eval_every = m.steps if cmp.pretrain_eval else 0
    tc.checkpoint_every, tc.keep_checkpoints = m.steps, 1
    # Warm-up is the same fraction of every run (the config's value is the reference's).
    m.config.optim.warmup_steps = int(round(config.optim.warmup_steps * m.steps / ref_steps))
  return members, budget


def encoder_params(cfg, vocab_size: int) -> int:
  """Parameters of the model a fine-tune starts from (ELECTRA: the discriminator)."""
  fields = {k: v for k, v in cfg.model.items() if k not in ('family', 'variant') and v is not None}
  fields['vocab_size'] = vocab_size
  model = models.build(cfg.model.family, cfg.model.variant, **fields)
  ones = jax.ShapeDtypeStruct((1, 8), np.int32)
  shapes = jax.eval_shape(
      lambda t: model.init(jax.random.key(0), t, segment_ids=t, positions=t), ones)['params']
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


@contextlib.contextmanager
def compilation_cache(path: str | None):
  """JAX's persistent compilation cache at `path` for the block (kept if one is already set).

  A comparison compiles the same fine-tuning step once per member; with the cache, identical
  programs (every encoder-family fine-tune of one task) are compiled once.
  """
  if not path or jax.config.jax_compilation_cache_dir:
    yield
    return
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  previous_min = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  try:
    yield
  finally:
    jax.config.update('jax_compilation_cache_dir', None)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', previous_min)
    cc.reset_cache()


def run(config, workdir: str) -> dict[str, Any]:
  """Pretrains every member on the shared budget, fine-tunes each, writes table + plot + JSON."""
  os.makedirs(workdir, exist_ok=True)
  _T0[0] = time.time()
  cache = os.path.join(workdir, 'xla_cache') if config.comparison.compilation_cache else None
  with compilation_cache(cache):
    return _run(config, workdir)


def _run(config, workdir: str) -> dict[str, Any]:
  tokenizer = tokenizers.load_or_train(config.data.tokenizer, config.data)
  members, budget = plan(config, tokenizer.vocab_size)
  cmp = config.comparison
  corpus = corpus_stats.train_tokens(config.data.source, tokenizer, config.data.get('data_dir', ''))
  epochs = {m.name: corpus.epochs(m.steps * int(m.config.train.batch_size)
                                  * int(m.config.data.seq_len)) for m in members}
  _say(f'{len(members)} members, budget {budget:.3e} FLOPs = {cmp.reference_steps} '
       f'steps of {cmp.reference}; steps (epochs over the {corpus.total:,}-token train split): '
       + ', '.join(f'{m.name} {m.steps} ({epochs[m.name]:.1f})' for m in members))
  most = max(epochs, key=epochs.get)
  if epochs[most] > MANY_EPOCHS:  # a budget past this mostly measures memorising a small corpus
    logging.warning('%s passes over the train split %.0f times (BERT: ~40); a larger corpus or a '
                    'smaller comparison.reference_steps keeps the budget about pretraining', most,
                    epochs[most])
  reference = next(m for m in members if m.name == cmp.reference)
  # The units in the order they run: the baseline first (the floor every member is read against).
  units: list[Member | None] = [None, *members]
  names = ['random', *[m.name for m in members]]
  run_only = [str(n) for n in cmp.get('run_only', ())]
  unknown = sorted(set(run_only) - set(names))
  if unknown:
    raise ValueError(f'comparison.run_only names {", ".join(unknown)}; the units are '
                     f'{", ".join(names)}')
  store = records.Store(workdir, str(cmp.get('records_dir', '') or ''))
  clock = records.TimeBudget(float(cmp.get('time_budget_s', 0) or 0))
  results: dict[str, dict[str, Any]] = {'random': dict(
      label='random init (baseline)', family=reference.config.model.family,
      params_encoder=encoder_params(reference.config, tokenizer.vocab_size))}
  rows: list[dict[str, Any]] = []
  made: dict[str, dict[str, Any]] = {}
  stopped = False
  for i, (name, m) in enumerate(zip(names, units)):
    key = records.key((m or reference).config, budget, tokenizer.vocab_size)
    record = store.get(name, key)
    to_run = record is None or bool(record.get('seeds_to_add'))
    if to_run and (stopped or (run_only and name not in run_only)):
      continue
    if to_run and not clock.may_start():
      _say(f'time budget {clock.budget_s:.0f}s: {clock.used_s():.0f}s used, stopping before '
           f'{name}; rerun the same command to go on')
      stopped = True
      continue
    if record is not None and record.get('seeds_to_add'):
      t0 = time.time()
      record = _extend_unit(config, workdir, f'[{i + 1}/{len(units)}]', m, reference, store,
                            name, key, record)
      if record is None:  # preempted: the record stays as it was, the new run dirs resume
        stopped = True
        continue
      clock.unit_done(time.time() - t0)
    elif record is None:
      t0 = time.time()
      result, unit_rows, preempted = _run_unit(config, workdir, f'[{i + 1}/{len(units)}]', m,
                                               reference, budget, tokenizer.vocab_size)
      if preempted:  # an unfinished unit stays out of the table; its run dirs resume it
        stopped = True
        continue
      record = store.put(name, key, result, unit_rows, workdir)
      clock.unit_done(time.time() - t0)
    else:
      _say(f'[{i + 1}/{len(units)}] {name}: from its record ({record["made"]["device"]}, '
           f'{record["made"]["date"]})')
    if record['result'] is not None:
      results[name] = record['result']
    rows += [dict(r, member=name) for r in record['rows']]
    made[name] = record['made']
  missing = [n for n in names if n not in made]
  return _finish(config, workdir, members, results, rows, missing=missing, made=made,
                 epochs=epochs, corpus_tokens=corpus.total)


def _run_unit(config, workdir, tag: str, m: Member | None, reference: Member, budget: float,
              vocab_size: int):
  """One unit: the baseline's fine-tunes, or a member's pretraining and then its fine-tunes."""
  result = None
  if m is not None:
    _say(f'{tag} pretraining {m.name} ({m.label}): {m.steps} steps x '
         f'{m.flops_per_step:.3e} FLOPs')
    out = train.train(m.config, os.path.join(workdir, m.name, 'pretrain'))
    result = dict(
        label=m.label, objective=m.config.objective.name, family=m.config.model.family,
        steps=int(out.step), planned_steps=m.steps, flops_per_step=m.flops_per_step,
        flops=m.flops, flops_per_token=m.flops_breakdown, budget=budget,
        params_pretrain=int(out.num_params),
        params_encoder=encoder_params(m.config, vocab_size),
        train_loss=float(out.train_loss), eval=dict(out.eval_metrics),
        wall_time_s=float(out.wall_time_s))
    if out.preempted:
      return result, [], True
  else:
    _say(f'{tag} the random-init baseline')
  rows = _finetune_unit(config, workdir, m, reference)
  return result, rows, bool(rows) and rows[-1]['preempted']


def _extend_unit(config, workdir, tag: str, m: Member | None, reference: Member, store, name: str,
                 key, record) -> dict[str, Any] | None:
  """A recorded unit with fewer seeds than planned: fine-tunes the missing seeds from the unit's
  pretrained checkpoint and returns the extended record (None if preempted)."""
  seeds = [int(s) for s in record['seeds_to_add']]
  if m is not None and not os.path.isdir(os.path.join(workdir, m.name, 'pretrain', 'checkpoints')):
    raise ValueError(f'{name}\'s record lacks seeds {seeds}, which fine-tune its pretrained '
                     f'checkpoint, and there is none in {os.path.join(workdir, m.name, "pretrain")}; '
                     'copy the pretrain directory there (or move the record away to rerun the unit)')
  _say(f'{tag} {name}: from its record ({record["made"]["device"]}, {record["made"]["date"]}), '
       f'adding seeds {", ".join(map(str, seeds))}')
  rows = _finetune_unit(config, workdir, m, reference, seeds=seeds, probes=False)
  if rows and rows[-1]['preempted']:
    return None
  return store.extend(name, key, record, rows, workdir)


def _finetune_unit(config, workdir, m: Member | None, reference: Member, seeds=None,
                   probes: bool = True) -> list[dict[str, Any]]:
  """Every (task, seed) of one unit: the random-init baseline (m None) or a pretrained member;
  `seeds` (default: downstream.seeds) and the probes are narrowed when a record is extended."""
  tasks = list(finetune.downstream_field(config, 'tasks'))
  if seeds is None:
    seeds = [int(s) for s in finetune.downstream_field(config, 'seeds')]
  tokenizer_cfg = finetune.pinned_tokenizer_config(reference.config)
  name = m.name if m else 'random'
  rows = []
  runs = ([(t, s) for t in tasks for s in seeds]
          if finetune.downstream_field(config, 'finetune') else [])
  for j, (task, seed) in enumerate(runs):
    _say(f'  fine-tuning {name} on {task}, seed {seed} ({j + 1}/{len(runs)})')
    if m is None:  # the baseline: the reference architecture from random init
      row = finetune.run_one(reference.config, task, 'random', seed, os.path.join(workdir, 'random'),
                             '', tokenizer_cfg)
    else:
      row = finetune.run_one(m.config, task, 'pretrained', seed, os.path.join(workdir, m.name),
                             os.path.join(workdir, m.name, 'pretrain'), tokenizer_cfg)
    rows.append(dict(row, member=name))
    if row['preempted']:
      _say(f'preempted during {name}/{task}/seed{seed}; rerun the same command to resume')
      return rows
  if probes and finetune.downstream_field(config, 'probe'):
    rows += _probe_unit(config, workdir, m, reference, tasks, tokenizer_cfg)
  return rows


def _probe_unit(config, workdir: str, m: Member | None, reference: Member, tasks: list[str],
                tokenizer_cfg) -> list[dict[str, Any]]:
  """Linear probes of the unit's frozen encoder (tasks/probe.py) on each classification task:
  one per layer and one on the scalar mix, the member's pretrained weights or (the baseline) the
  reference architecture at random init. Rows with metric 'probe' (seed = the probe's init)."""
  from ptm_jax.tasks import probe  # pylint: disable=g-import-not-at-top
  name = m.name if m else 'random'
  run_config = (m or reference).config
  field = functools.partial(finetune.downstream_field, config)
  pretrained_dir = os.path.join(workdir, m.name, 'pretrain') if m else ''
  rows = []
  for task in tasks:
    if downstream.task_info(task).kind != 'classification':
      continue
    _say(f'  probing {name} on {task}')
    for r in probe.probe_task(run_config, task, pretrained_dir, tokenizer_cfg, field,
                              inits=('pretrained',) if m else ('random',)):
      rows.append(dict(task=task, member=name, init=r['init'], metric='probe', layer=r['layer'],
                       seed=int(run_config.seed), step=int(r['step']),
                       dev_score=r['dev_accuracy'], test_score=r['test_accuracy'],
                       mix_weights=r['mix_weights'], preempted=False))
  return rows


def _finish(config, workdir, members, results, rows, *, missing: list[str],
            made: dict[str, dict[str, Any]], epochs: dict[str, float],
            corpus_tokens: int) -> dict[str, Any]:
  accuracy = report.accuracy_summary(rows)
  lead = None  # the extractive floor a generated title must clear (no model)
  if ('news_headline' in finetune.downstream_field(config, 'tasks')
      and finetune.downstream_field(config, 'finetune')):
    from ptm_jax.tasks import generation  # pylint: disable=g-import-not-at-top
    lead = generation.lead_baseline(config.data.get('data_dir', ''))
  text = report.markdown(config, members, results, accuracy, missing=missing, made=made,
                         epochs=epochs, corpus_tokens=corpus_tokens, rows=rows, lead=lead)
  summary = {'members': results, 'accuracy': accuracy, 'rows': rows, 'markdown': text,
             'made': made, 'missing': missing, 'preempted': bool(missing), 'epochs': epochs,
             'corpus_train_tokens': corpus_tokens, 'lead_baseline': lead}
  if jax.process_index() == 0:
    name = report.output_name(config)
    report.plot(config, members, results, accuracy, os.path.join(workdir, f'{name}.png'),
                lead=lead)
    for filename in (f'{name}.md', 'report.md'):
      with open(os.path.join(workdir, filename), 'w', encoding='utf-8') as f:
        f.write(text)
    with open(os.path.join(workdir, f'{name}.json'), 'w', encoding='utf-8') as f:
      json.dump({k: v for k, v in summary.items() if k != 'markdown'}, f, indent=1, default=float)
    print(text, flush=True)
  return summary
