"""The tables and the plot of an equal-compute comparison (ptm_jax/compare.py runs it).

`markdown` writes the comparison table (objective, parameters, FLOPs per token, pretraining steps
and FLOPs, final loss, downstream score mean ± std per task) and the FLOPs-per-token breakdown;
`plot` the bar plot of downstream scores (dotted: the random-init baseline) over the pretraining
steps each objective got within the budget. Both read the members' results and the fine-tune rows
(`accuracy_summary`), whichever machine or session they came from (ptm_jax/compare_records.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ptm_jax.data.sources import downstream
from ptm_jax.tasks import finetune

OUTPUT_NAME = 'compare_encoders'  # the default of comparison.output_name
_SCORED_TEXT = {'expected': "the method's expected targets (mask_rate x seq_len positions; MASS's "
                            "decoder on its fragment, GLM's expected Part B)",
                'slab': "the objective's static slab"}


def output_name(config) -> str:
  """Base name of the comparison's md / png / json files."""
  return str(config.comparison.get('output_name', OUTPUT_NAME))


ROUGE_COLUMNS = (('rouge1', 'ROUGE-1'), ('rouge2', 'ROUGE-2'), ('rougeL', 'ROUGE-L'))
# Linear-probe rows (compare._probe_unit) and their summary key: `<task>:probe`.
PROBE_METRIC = 'probe'
PROBE_SUFFIX = ':probe'
# A generation task's teacher-forced test loss (cross-entropy per token, without the training's
# label smoothing: steps.evaluation_options) at the selected step: it ranks the inits where
# decoding has not yet learned to condition on the article.
LOSS_COLUMN = ('loss', 'test loss')
# How much the article lowers that loss: the title loss after another test article minus after
# its own (tasks/source_reliance.py); 0 = a decoder that does not read its source.
GAIN_COLUMN = ('source_gain', 'source gain')
GENERATION_EXTRA = (LOSS_COLUMN, GAIN_COLUMN)


def _stats(values) -> dict[str, float]:
  vals = np.asarray(values, np.float64)
  return dict(mean=float(vals.mean()), std=float(vals.std(ddof=1)) if vals.size > 1 else 0.0)


def accuracy_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
  """{member: {task: {mean, std, n, dev_mean, metric}}} of the test score at the selected
  evaluation (accuracy; entity F1 for tagging; ROUGE-L F for generation, whose entries also hold
  rouge1 / rouge2 / rougeL, the teacher-forced test loss and the source gain: {mean, std}); a
  probed task also has `<task>:probe`, the scalar-mix linear probe's test accuracy at its best
  dev step."""
  out: dict[str, dict[str, dict[str, Any]]] = {}
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in rows:
    if r['preempted']:
      continue
    if r.get('metric') == PROBE_METRIC:  # the scalar-mix probe scores; the per-layer in probe_table
      if r['layer'] == 'mix':
        groups.setdefault((r['member'], r['task'] + PROBE_SUFFIX), []).append(r)
    else:
      groups.setdefault((r['member'], r['task']), []).append(r)
  for (member, task), rs in groups.items():
    # Rows of records made before the generic `*_score` keys hold `*_accuracy` only.
    test = [r['test_score'] if 'test_score' in r else r['test_accuracy'] for r in rs]
    dev = [r['dev_score'] if 'dev_score' in r else r['dev_accuracy'] for r in rs]
    entry = dict(_stats(test), n=len(rs), dev_mean=float(np.mean(dev)),
                 metric=rs[0].get('metric', 'accuracy'))
    for key, _ in (*ROUGE_COLUMNS, *GENERATION_EXTRA):
      # Records made before the test loss was read lack it (or hold NaN): 'n/a', not a NaN mean.
      values = [r.get(f'test_{key}', float('nan')) for r in rs]
      if all(np.isfinite(values)):
        entry[key] = _stats(values)
    out.setdefault(member, {})[task] = entry
  return out


def _columns(config, tasks: list[str]) -> list[tuple[str, str, str | None]]:
  """(header, task, key) per score column: a task's fine-tuned score, or ROUGE-1/2/L and the test
  loss of a generation task; with `downstream.probe`, a classification task's probe score."""
  finetuned = finetune.downstream_field(config, 'finetune')
  probed = finetune.downstream_field(config, 'probe')
  cols = []
  for task in tasks:
    kind = downstream.task_info(task).kind
    if finetuned and kind == 'generation':
      cols += [(f'{task} {label}', task, key) for key, label in (*ROUGE_COLUMNS, *GENERATION_EXTRA)]
    elif finetuned:
      cols.append((task, task, None))
    if probed and kind == 'classification':
      cols.append((f'{task} (linear probe)', task + PROBE_SUFFIX, None))
  return cols


def probe_table(rows: list[dict[str, Any]]) -> list[str]:
  """Markdown lines: each unit's probe test accuracy per layer (0 = embeddings) and on the mix."""
  probes = [r for r in rows if r.get('metric') == PROBE_METRIC and not r['preempted']]
  if not probes:
    return []
  layers = list(dict.fromkeys(r['layer'] for r in probes))
  head = ' | '.join('scalar mix' if layer == 'mix' else ('emb' if layer == '0' else f'L{layer}')
                    for layer in layers)
  lines = ['', 'Linear probes on the frozen encoder (tasks/probe.py: mean-pooled features of each '
           'layer, standardised, a softmax probe per layer and on an ELMo-style scalar mix; test '
           'accuracy at the best dev step):', '',
           f'| task | objective | {head} |', '|---|---|' + '---|' * len(layers)]
  for task in dict.fromkeys(r['task'] for r in probes):
    for member in dict.fromkeys(r['member'] for r in probes if r['task'] == task):
      by_layer = {r['layer']: r for r in probes if r['task'] == task and r['member'] == member}
      cells = ' | '.join(f'{by_layer[layer]["test_score"]:.3f}' if layer in by_layer else ''
                         for layer in layers)
      lines.append(f'| {task} | {member} | {cells} |')
  return lines


def _score(accuracy, member: str, task: str, key: str | None) -> dict[str, float] | None:
  entry = accuracy.get(member, {}).get(task)
  return entry if entry is None or key is None else entry.get(key)


def _fmt_acc(acc: dict[str, float] | None) -> str:
  if not acc:
    return 'n/a'
  return f'{acc["mean"]:.3f} ± {acc["std"]:.3f}'


def _model_text(config, members: list) -> str:
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
    articles = f'the first {examples}' if examples else 'all'
    parts.append(f'ROUGE-1/2/L F of the titles decoded ({decode}) at the lowest-dev-loss '
                 f'evaluation, {articles} test articles, and the teacher-forced test loss of the '
                 'titles there (cross-entropy per token without label smoothing; lower is better)')
  return '; '.join(parts)


def _downstream_text(config, tasks: list[str], seeds: list[int]) -> str:
  parts = []
  if finetune.downstream_field(config, 'finetune'):
    parts.append(f'{_score_text(config, tasks)}; mean ± std over seeds {tuple(seeds)}, '
                 f'{finetune.downstream_field(config, "steps")} fine-tuning steps')
  if finetune.downstream_field(config, 'probe'):
    parts.append('linear probe: test accuracy of a softmax probe on the scalar mix of the frozen '
                 'layers at its best dev step (one probe, '
                 f'{finetune.downstream_field(config, "probe_steps")} full-batch steps)')
  return '; '.join(parts) or 'none'


def _made_text(made: dict[str, dict[str, Any]]) -> str:
  """'Run on NVIDIA H100 80GB HBM3 (jax 0.11.2, 2026-11-26: random, mlm); ...' from the records."""
  groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
  for unit, m in made.items():
    groups.setdefault((m['device'], m['jax']), []).append((m['date'], unit))
  parts = []
  for (device, version), items in groups.items():
    dates = sorted({d for d, _ in items})
    span = dates[0] if len(dates) == 1 else f'{dates[0]} to {dates[-1]}'
    parts.append(f'{device} (jax {version}, {span}: {", ".join(u for _, u in items)})')
  return 'Run on ' + '; '.join(parts) + '.'


def markdown(config, members: list, results, accuracy, *, missing: list[str],
             made: dict[str, dict[str, Any]], epochs: dict[str, float],
             corpus_tokens: int, rows: list[dict[str, Any]] = (),
             lead: dict[str, float] | None = None) -> str:
  """The comparison table (+ the FLOPs-per-token breakdown, the per-layer probe table when `rows`
  hold probes, and the extractive baseline's ROUGE when `lead` is given) as markdown."""
  tasks = list(finetune.downstream_field(config, 'tasks'))
  seeds = list(finetune.downstream_field(config, 'seeds'))
  cols = _columns(config, tasks)
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
      f'counted at {_SCORED_TEXT[cmp.get("scored_positions", "slab")]}); the train split holds '
      f'{corpus_tokens:,} tokens, epochs = steps x batch x row length over it. Downstream: '
      f'{_downstream_text(config, tasks, seeds)}.', '',
      '| objective | params (pretrain) | params (fine-tuned) | FLOPs / token | pretrain steps | '
      'epochs | pretrain FLOPs | final loss (train' + (' / eval' if eval_loss else '') + ') | '
      + ' | '.join(header for header, _, _ in cols) + ' |',
      '|---|' + '---|' * (7 + len(cols)),
  ]
  for name in ['random', *[m.name for m in members]]:
    r = results.get(name)
    if r is None:
      continue
    acc = [_fmt_acc(_score(accuracy, name, task, key)) for _, task, key in cols]
    if name == 'random':
      lines.append(f'| {r["label"]} | — | {r["params_encoder"] / 1e6:.2f}M | 0 | 0 | 0 | 0 | '
                   '— | ' + ' | '.join(acc) + ' |')
      continue
    loss = f'{r["train_loss"]:.3f}'
    if eval_loss:
      loss += f' / {r["eval"].get("eval/loss", float("nan")):.3f}'
    lines.append(
        f'| {r["label"]} | {r["params_pretrain"] / 1e6:.2f}M | {r["params_encoder"] / 1e6:.2f}M | '
        f'{r["flops_per_token"]["total"]:.3e} | {r["steps"]} | '
        f'{epochs.get(name, float("nan")):.1f} | {r["flops"]:.3e} | {loss} | '
        + ' | '.join(acc) + ' |')
  if lead:
    lines += ['', f'Extractive reference, no model (`generation.lead_baseline`): the first '
              f'{lead["words"]} words of each test article as its title ({lead["words"]} = the '
              f'median train title length) score ROUGE-1 {lead["rouge1"]:.3f}, ROUGE-2 '
              f'{lead["rouge2"]:.3f}, ROUGE-L {lead["rougeL"]:.3f} ({lead["examples"]} articles).']
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
  lines += probe_table(rows)
  if made:
    lines += ['', _made_text(made)]
  if missing:
    lines += ['', f'(incomplete: no result yet for {", ".join(missing)}; rerun the same command, '
              'with the same comparison.records_dir if one was set, to add them)']
  alt = 'ROUGE by objective' if generation else 'accuracy by objective'
  lines += ['', f'![{alt}]({output_name(config)}.png)', '']
  return '\n'.join(lines)


def _bars(ax, names, accuracy, cols, lead: dict[str, float] | None = None) -> None:
  """Grouped bars of each column's mean ± std per member; dotted: the random-init baseline;
  dashed: the extractive baseline of a ROUGE column (`lead`)."""
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
    if lead and key in lead:
      ax.axhline(lead[key], color=f'C{j}', linestyle='--', linewidth=1)
  ax.set_xticks(x, names, rotation=20)
  ax.legend(fontsize='small')
  ax.grid(True, axis='y', alpha=0.3)


def plot(config, members: list, results, accuracy, out_png: str,
         lead: dict[str, float] | None = None) -> str:
  """Bar plot: test score per objective and task (± std; probes as their own bars; dashed: the
  extractive baseline's ROUGE), a generation task's test loss, and pretraining steps."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  names = ['random', *[m.name for m in members]]
  cols = _columns(config, list(finetune.downstream_field(config, 'tasks')))
  loss_cols = [c for c in cols if c[2] == LOSS_COLUMN[0]]
  score_cols = [c for c in cols if c[2] not in (LOSS_COLUMN[0], GAIN_COLUMN[0])]
  panels = 3 if loss_cols else 2
  fig = Figure(figsize=(max(8.0, 1.1 * len(names) + 2), 3.75 * panels), dpi=110)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(panels, 1, 1)
  _bars(ax, names, accuracy, score_cols, lead)
  generation = bool(loss_cols)
  ax.set_ylabel('test score (ROUGE F / accuracy)' if generation else 'test accuracy (best dev)')
  ax.set_title('downstream score at equal pretraining FLOPs (dotted: random init'
               + (f'; dashed: first {lead["words"]} words of the article' if lead else '') + ')')
  if loss_cols:
    ax_loss = fig.add_subplot(panels, 1, 2)
    _bars(ax_loss, names, accuracy, loss_cols)
    ax_loss.set_ylabel('test loss (teacher-forced)')
    ax_loss.set_title('title loss at the selected step, lower is better (dotted: random init)')
    finite = [s['mean'] for n in names for _, task, key in loss_cols
              if (s := _score(accuracy, n, task, key))]
    if finite:  # the losses differ by tenths of a nat: start the axis near them, not at 0
      spread = max(finite) - min(finite)
      ax_loss.set_ylim(min(finite) - spread - 0.05, max(finite) + spread + 0.05)
  ax_steps = fig.add_subplot(panels, 1, panels)
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
