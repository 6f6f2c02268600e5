"""Equal-compute comparison of pretraining objectives: a set of runs that share one FLOP budget.

A comparison config (e.g. experiments/compare_encoders.py) is an ordinary run config -- its model,
data, optim, train, mesh, seed and downstream blocks hold the settings every member shares -- plus
`config.comparison`: the member names, each member's experiment spec, the reference member and the
budget (`reference_steps` steps of the reference). `run.run` hands such a config to `run` here:
  1. each member's config is loaded from its experiment file and made equal on the shared fields
     (`member_config`);
  2. its training FLOPs per step come from `ptm_jax.flops`, and it trains
     floor(budget / FLOPs per step) steps, so cheaper objectives run more steps (`plan`);
  3. each pretrained model is fine-tuned on every downstream task and seed
     (`tasks.finetune.run_one`; generation tasks decode and score ROUGE); the random-init baseline
     (the reference member's architecture) runs once per task and seed;
  4. a markdown table, a bar plot and a JSON file (`comparison.output_name`) land in the workdir.
Members of different families (experiments/compare_seq2seq.py: encoder-decoders next to single
stacks) take the shared width from the comparison config and their depth from
`comparison.member_model` (per-member model fields applied last); `comparison.member_objective`
sets per-member objective options (a variant of one experiment, e.g. T5 with i.i.d. noise).
Every run lives in its own directory (workdir/<member>/pretrain, workdir/<member>/<task>/...,
workdir/random/<task>/...), so a rerun of the same command resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
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
from ptm_jax import flops as flops_lib
from ptm_jax import models
from ptm_jax import train
from ptm_jax.data import tokenizers
from ptm_jax.data.sources import downstream
from ptm_jax.tasks import finetune

# Fields every member takes from the comparison config (the encoder size and precision).
SHARED_MODEL_FIELDS = ('num_layers', 'num_encoder_layers', 'num_decoder_layers', 'embed_dim',
                       'num_heads', 'head_dim', 'mlp_dim', 'dtype', 'param_dtype', 'remat',
                       'attention_impl')
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
OUTPUT_NAME = 'compare_encoders'  # the default of comparison.output_name
_SCORED_TEXT = {'expected': "the method's expected targets (mask_rate x seq_len positions; MASS's "
                            "decoder on its fragment, GLM's expected Part B)",
                'slab': "the objective's static slab"}


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


def output_name(config) -> str:
  """Base name of the comparison's md / png / json files."""
  return str(config.comparison.get('output_name', OUTPUT_NAME))


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
  _say(f'{len(members)} members, budget {budget:.3e} FLOPs = {config.comparison.reference_steps} '
       f'steps of {config.comparison.reference}; steps: '
       + ', '.join(f'{m.name} {m.steps}' for m in members))
  results: dict[str, dict[str, Any]] = {}
  for i, m in enumerate(members):
    _say(f'[{i + 1}/{len(members)}] pretraining {m.name} ({m.label}): {m.steps} steps x '
         f'{m.flops_per_step:.3e} FLOPs')
    result = train.train(m.config, os.path.join(workdir, m.name, 'pretrain'))
    results[m.name] = dict(
        label=m.label, objective=m.config.objective.name, family=m.config.model.family,
        steps=int(result.step), planned_steps=m.steps, flops_per_step=m.flops_per_step,
        flops=m.flops, flops_per_token=m.flops_breakdown, budget=budget,
        params_pretrain=int(result.num_params),
        params_encoder=encoder_params(m.config, tokenizer.vocab_size),
        train_loss=float(result.train_loss), eval=dict(result.eval_metrics),
        wall_time_s=float(result.wall_time_s))
    if result.preempted:
      return _finish(config, workdir, members, results, [], preempted=True)
  reference = next(m for m in members if m.name == config.comparison.reference)
  results['random'] = dict(label='random init (baseline)', family=reference.config.model.family,
                           params_encoder=encoder_params(reference.config, tokenizer.vocab_size))
  rows = _finetune_all(config, workdir, members)
  preempted = bool(rows) and rows[-1]['preempted']
  return _finish(config, workdir, members, results, rows, preempted=preempted)


def _finetune_all(config, workdir, members: list[Member]) -> list[dict[str, Any]]:
  """Every (task, seed): the random-init baseline once, then each pretrained member."""
  tasks = list(finetune.downstream_field(config, 'tasks'))
  seeds = [int(s) for s in finetune.downstream_field(config, 'seeds')]
  reference = next(m for m in members if m.name == config.comparison.reference)
  tokenizer_cfg = finetune.pinned_tokenizer_config(reference.config)
  jobs = [(task, seed, m) for task in tasks for seed in seeds for m in [None, *members]]
  rows = []
  for i, (task, seed, m) in enumerate(jobs):
    name = m.name if m else 'random'
    _say(f'[{i + 1}/{len(jobs)}] fine-tuning {name} on {task}, seed {seed}')
    if m is None:  # the baseline: the reference architecture from random init
      row = finetune.run_one(reference.config, task, 'random', seed, os.path.join(workdir, 'random'),
                             '', tokenizer_cfg)
    else:
      row = finetune.run_one(m.config, task, 'pretrained', seed, os.path.join(workdir, m.name),
                             os.path.join(workdir, m.name, 'pretrain'), tokenizer_cfg)
    rows.append(dict(row, member=name))
    if row['preempted']:
      _say(f'preempted during {name}/{task}/seed{seed}; rerun the same command to resume')
      break
  return rows


ROUGE_COLUMNS = (('rouge1', 'ROUGE-1'), ('rouge2', 'ROUGE-2'), ('rougeL', 'ROUGE-L'))


def _stats(values) -> dict[str, float]:
  vals = np.asarray(values, np.float64)
  return dict(mean=float(vals.mean()), std=float(vals.std(ddof=1)) if vals.size > 1 else 0.0)


def accuracy_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
  """{member: {task: {mean, std, n, dev_mean, metric}}} of the test score at the selected
  evaluation (accuracy; entity F1 for tagging; ROUGE-L F for generation, whose entries also hold
  rouge1 / rouge2 / rougeL: {mean, std})."""
  out: dict[str, dict[str, dict[str, Any]]] = {}
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in rows:
    if not r['preempted']:
      groups.setdefault((r['member'], r['task']), []).append(r)
  for (member, task), rs in groups.items():
    test = [r.get('test_score', r['test_accuracy']) for r in rs]
    dev = [r.get('dev_score', r['dev_accuracy']) for r in rs]
    entry = dict(_stats(test), n=len(rs), dev_mean=float(np.mean(dev)),
                 metric=rs[0].get('metric', 'accuracy'))
    for key, _ in ROUGE_COLUMNS:
      if f'test_{key}' in rs[0]:
        entry[key] = _stats([r[f'test_{key}'] for r in rs])
    out.setdefault(member, {})[task] = entry
  return out


def _columns(tasks: list[str]) -> list[tuple[str, str, str | None]]:
  """(header, task, key) per score column: a task's score, or ROUGE-1/2/L of a generation task."""
  cols = []
  for task in tasks:
    if downstream.task_info(task).kind == 'generation':
      cols += [(f'{task} {label}', task, key) for key, label in ROUGE_COLUMNS]
    else:
      cols.append((task, task, None))
  return cols


def _score(accuracy, member: str, task: str, key: str | None) -> dict[str, float] | None:
  entry = accuracy.get(member, {}).get(task)
  return entry if entry is None or key is None else entry.get(key)


def _fmt_acc(acc: dict[str, float] | None) -> str:
  if not acc:
    return 'n/a'
  return f'{acc["mean"]:.3f} ± {acc["std"]:.3f}'


def _model_text(config, members: list[Member]) -> str:
  """'one 2-layer 64-wide encoder' or, across families, each stack's depth and its members."""
  stacks: dict[str, list[str]] = {}
  for m in members:
    mc = m.config.model
    stack = (f'{mc.num_encoder_layers}+{mc.num_decoder_layers}-layer encoder-decoder'
             if mc.family == 'encdec' else f'{mc.num_layers}-layer {mc.family}')
    stacks.setdefault(stack, []).append(m.name)
  if len(stacks) == 1:
    return f'one {next(iter(stacks))} {config.model.embed_dim} wide'
  return f'width {config.model.embed_dim}: ' + '; '.join(
      f'{stack} ({", ".join(names)})' for stack, names in stacks.items())


def _score_text(config, tasks: list[str]) -> str:
  kinds = {downstream.task_info(t).kind for t in tasks}
  parts = []
  if kinds - {'generation'}:
    parts.append('test accuracy (entity F1 for tagging) at the best-dev evaluation')
  if 'generation' in kinds:
    decode = finetune.downstream_field(config, 'decode_strategy')
    if decode == 'beam':
      decode += (f' {finetune.downstream_field(config, "num_beams")}, length penalty '
                 f'{finetune.downstream_field(config, "length_penalty")}')
    examples = int(finetune.downstream_field(config, 'generation_examples'))
    parts.append(f'ROUGE-1/2/L F of the titles decoded ({decode}) at the lowest-dev-loss '
                 f'evaluation, {"the first " + str(examples) if examples else "all"} test articles')
  return '; '.join(parts)


def markdown(config, members: list[Member], results, accuracy, *, preempted: bool) -> str:
  """The comparison table (+ the FLOPs-per-token breakdown) as markdown."""
  tasks = list(finetune.downstream_field(config, 'tasks'))
  seeds = list(finetune.downstream_field(config, 'seeds'))
  cols = _columns(tasks)
  cmp = config.comparison
  budget = next(m.flops_per_step for m in members if m.name == cmp.reference) * int(
      cmp.reference_steps)
  eval_loss = any('eval/loss' in results.get(m.name, {}).get('eval', {}) for m in members)
  generation = any(key for _, _, key in cols)
  lines = [
      f'# {config.report.title or "Equal-compute comparison"}', '',
      f'{len(members)} objectives, {_model_text(config, members)}, `{config.data.source}`, '
      f'{config.data.seq_len}-token rows of batch '
      f'{config.train.batch_size}; budget {budget:.3e} training FLOPs each '
      f'(= {cmp.reference_steps} steps of `{cmp.reference}`; sparse vocabulary projections '
      f'counted at {_SCORED_TEXT[cmp.get("scored_positions", "slab")]}). Downstream: '
      f'{_score_text(config, tasks)}; mean ± std over seeds {tuple(seeds)}, '
      f'{finetune.downstream_field(config, "steps")} fine-tuning steps.', '',
      '| objective | params (pretrain) | params (fine-tuned) | FLOPs / token | pretrain steps | '
      'pretrain FLOPs | final loss (train' + (' / eval' if eval_loss else '') + ') | '
      + ' | '.join(header for header, _, _ in cols) + ' |',
      '|---|' + '---|' * (6 + len(cols)),
  ]
  for name in ['random', *[m.name for m in members]]:
    r = results.get(name)
    if r is None:
      continue
    acc = [_fmt_acc(_score(accuracy, name, task, key)) for _, task, key in cols]
    if name == 'random':
      lines.append(f'| {r["label"]} | — | {r["params_encoder"] / 1e6:.2f}M | 0 | 0 | 0 | — | '
                   + ' | '.join(acc) + ' |')
      continue
    loss = f'{r["train_loss"]:.3f}'
    if eval_loss:
      loss += f' / {r["eval"].get("eval/loss", float("nan")):.3f}'
    lines.append(
        f'| {r["label"]} | {r["params_pretrain"] / 1e6:.2f}M | {r["params_encoder"] / 1e6:.2f}M | '
        f'{r["flops_per_token"]["total"]:.3e} | {r["steps"]} | {r["flops"]:.3e} | {loss} | '
        + ' | '.join(acc) + ' |')
  parts = [p for p in dict.fromkeys(k for m in members for k in m.flops_breakdown)
           if p != 'total' and any(m.flops_breakdown.get(p) for m in members)]
  lines += ['', 'Training FLOPs per token by part (ptm_jax/flops.py; forward + backward, '
            'matmuls only):', '',
            '| objective | ' + ' | '.join(parts) + ' | total |', '|---|' + '---|' * (len(parts) + 1)]
  for m in members:
    b = m.flops_breakdown
    lines.append(f'| {m.name} | ' + ' | '.join(f'{b[p]:.3g}' if b.get(p) else '0' for p in parts)
                 + f' | {b["total"]:.4g} |')
  note = ('Final loss is each objective\'s own training loss: it is comparable across runs of one '
          'objective, not across objectives')
  if any(m.config.objective.name in ('mlm_nsp', 'spanbert', 'electra') for m in members):
    note += (' (MLM+NSP adds the NSP term, SpanBERT the SBO term, ELECTRA is L_MLM(generator) + '
             '50 L_disc)')
  lines += ['', note + '.']
  if preempted:
    lines += ['', '(preempted: the table is incomplete; rerun the same command to resume)']
  alt = 'ROUGE by objective' if generation else 'accuracy by objective'
  lines += ['', f'![{alt}]({output_name(config)}.png)', '']
  return '\n'.join(lines)


def plot(members: list[Member], results, accuracy, tasks: list[str], out_png: str) -> str:
  """Bar plot: test score per objective and task (± std), and pretraining steps per objective."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  names = ['random', *[m.name for m in members]]
  cols = _columns(tasks)
  fig = Figure(figsize=(max(8.0, 1.1 * len(names) + 2), 7.5), dpi=110)
  FigureCanvasAgg(fig)
  ax, ax_steps = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
  x = np.arange(len(names), dtype=np.float64)
  width = 0.8 / max(len(cols), 1)
  for j, (header, task, key) in enumerate(cols):
    scores = [_score(accuracy, n, task, key) or {} for n in names]
    mean = [s.get('mean', np.nan) for s in scores]
    std = [s.get('std', 0.0) for s in scores]
    offset = (j - (len(cols) - 1) / 2) * width
    ax.bar(x + offset, mean, width, yerr=std, capsize=3, label=header, alpha=0.85)
    base = (_score(accuracy, 'random', task, key) or {}).get('mean')
    if base is not None:
      ax.axhline(base, color=f'C{j}', linestyle=':', linewidth=1)
  generation = any(key for _, _, key in cols)
  ax.set_xticks(x, names, rotation=20)
  ax.set_ylabel('test score (ROUGE F / accuracy)' if generation else 'test accuracy (best dev)')
  ax.set_title('downstream score at equal pretraining FLOPs (dotted: random init)')
  ax.legend(fontsize='small')
  ax.grid(True, axis='y', alpha=0.3)
  steps = [results.get(m.name, {}).get('steps', 0) for m in members]
  ax_steps.bar(np.arange(len(members)), steps, color='tab:gray')
  for i, s in enumerate(steps):
    ax_steps.annotate(str(s), (i, s), ha='center', va='bottom', fontsize='small')
  ax_steps.set_xticks(np.arange(len(members)), [m.name for m in members], rotation=20)
  ax_steps.set_ylabel('pretraining steps')
  ax_steps.set_title('steps within the same FLOP budget')
  fig.tight_layout()
  fig.savefig(out_png, format='png')
  return out_png


def _finish(config, workdir, members, results, rows, *, preempted: bool) -> dict[str, Any]:
  accuracy = accuracy_summary(rows)
  text = markdown(config, members, results, accuracy, preempted=preempted)
  summary = {'members': results, 'accuracy': accuracy, 'rows': rows, 'markdown': text,
             'preempted': preempted}
  if jax.process_index() == 0:
    tasks = list(finetune.downstream_field(config, 'tasks'))
    name = output_name(config)
    plot(members, results, accuracy, tasks, os.path.join(workdir, f'{name}.png'))
    for filename in (f'{name}.md', 'report.md'):
      with open(os.path.join(workdir, filename), 'w', encoding='utf-8') as f:
        f.write(text)
    with open(os.path.join(workdir, f'{name}.json'), 'w', encoding='utf-8') as f:
      json.dump({k: v for k, v in summary.items() if k != 'markdown'}, f, indent=1, default=float)
    print(text, flush=True)
  return summary
