"""Does a fine-tuned title model read its article? Its title loss with and without the article.

The teacher-forced test loss of a generation fine-tune (`tasks/generation.py`) mixes two things:
how well the decoder models titles at all, and how much the article tells it. This measures the
second. Every test title is scored twice at the selected step, as the dev/test losses are
(`steps.evaluation_options`: no label smoothing, UniLM next-token):
  * `own`: each title after its own article (the recorded test loss, recomputed),
  * `other`: each title after another test article -- title i after article (i + n // 2) mod n of
    the split's n examples in stored order, a fixed derangement: every article is read once and
    no title meets its own --
and `gain = other - own`, nats per title token: an estimate of the information the article gives
about its title (the conditional mutual information, per token, that the model has learnt to
use). A decoder that ignores its source has gain 0 exactly (the test zeroes an encoder-decoder's
cross-attention); copying the article's words makes it large. Where every member's titles are
one string or a loop, this tells which inits have begun to condition on the article.

  python -m ptm_jax.tasks.source_reliance --workdir runs/s2s_cpu   # a compare_seq2seq or
                                                                  # news_headline fine-tune run
  writes <workdir>/source_reliance.md and .json: per member / init, mean ± std over seeds of the
  recorded test loss, `own` (equal to it), `other`, `gain`, the encoder spread (each seed) and
  the recorded test ROUGE-1.

For an encoder-decoder the tool also reports the encoder's `spread`: per article, the standard
deviation of the encoder output over the article's positions (mean over features) relative to
its root-mean-square -- about 1 for a fresh encoder, ~0 for one whose output is the same vector
at every position and for every article (a collapsed encoder, which no decoder can read).

`generation.run_one` records `test_source_gain` (and `test_other_source_loss`) in every new row,
so the seq2seq comparison table has the column too.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax import objectives
from ptm_jax import steps
from ptm_jax.data.sources import news_headline


def other_article(index: int, n: int) -> int:
  """The article title `index` is paired with in the `other` pass (a derangement for n >= 2)."""
  return (index + n // 2) % n


def rows(ft, tokenizer, split: str, other: bool) -> list[dict[str, np.ndarray]]:
  """The split's fine-tuning rows, each title after its own or after another article."""
  examples = news_headline.split_examples(ft.data.get('data_dir', ''), split)
  n = len(examples)
  if n < 2:
    raise ValueError(f'news_headline/{split} has {n} example(s); pairing titles with other '
                     'articles needs at least 2')
  encode = news_headline.encode_fn(ft.data, tokenizer)
  out = []
  for i, (example_id, _, title) in enumerate(examples):
    text = examples[other_article(i, n) if other else i][1]
    out.append(encode({'text': text, 'title': title, 'example_id': example_id}))
  return out


def title_losses(ft, run_dir: str, step: int, tokenizer, split: str = 'test') -> dict[str, float]:
  """{own, other, gain, examples, tokens}: the split's title loss (nats per title token) after
  each title's own article and after another one, at the fine-tune's step-`step` parameters."""
  from ptm_jax.tasks import generation  # pylint: disable=g-import-not-at-top (imports this)
  model, params = generation.restore_model(ft, run_dir, step, tokenizer)
  return title_losses_with(model, params, ft, tokenizer, split)


def title_losses_with(model, params, ft, tokenizer, split: str = 'test') -> dict[str, float]:
  """`title_losses` for given model parameters."""
  objective = objectives.get('seq2seq_finetune')
  options = steps.evaluation_options(objectives.build_options(objective, ft.objective))
  loss_fn, corrupt_fn = steps.bind_objective(objective, model=model, specials=tokenizer.specials,
                                             options=options)
  eval_step = jax.jit(steps.make_eval_step(loss_fn, corrupt_fn))
  params = jax.device_put(params, jax.devices()[0])
  batch_size = int(ft.train.eval_batch_size or ft.train.batch_size)
  passes = {'own': rows(ft, tokenizer, split, other=False),
            'other': rows(ft, tokenizer, split, other=True)}
  # Static shapes: the last batch is completed by empty rows (weight 0), as the task iterator's.
  empty = news_headline.encode_fn(ft.data, tokenizer)({})
  out: dict[str, float] = {'examples': float(len(passes['own']))}
  for name, split_rows in passes.items():
    split_rows = split_rows + [empty] * (-len(split_rows) % batch_size)
    weight, total = 0.0, 0.0
    for start in range(0, len(split_rows), batch_size):
      batch = {k: np.stack([r[k] for r in split_rows[start:start + batch_size]])
               for k in split_rows[0]}
      m = jax.device_get(eval_step(params, batch, jax.random.key(0)))
      total += float(m['loss']) * float(m['num_targets'])
      weight += float(m['num_targets'])
    out[name] = total / weight
    out['tokens'] = weight
  out['gain'] = out['other'] - out['own']
  if str(ft.data.generation_form) == 'encdec':
    out['spread'] = encoder_spread(model, params, passes['own'], batch_size)
  return out


def encoder_spread(model, params, split_rows, batch_size: int) -> float:
  """Mean over rows of the encoder output's std over the row's source positions (mean over
  features) over its root-mean-square there: ~1 fresh, ~0 for a collapsed encoder."""
  @jax.jit
  def spread_B(params, tokens, segment_ids, positions):
    hidden = model.apply({'params': params}, tokens, segment_ids=segment_ids, positions=positions,
                         method='encode').astype(jnp.float32)  # [B, S, D]
    w = (segment_ids > 0).astype(jnp.float32)[..., None]
    n = jnp.maximum(jnp.sum(w, axis=1), 1.0)  # [B, 1]
    mean = jnp.sum(hidden * w, axis=1) / n
    var = jnp.sum(jnp.square(hidden - mean[:, None]) * w, axis=1) / n
    rms = jnp.sqrt(jnp.sum(jnp.square(hidden) * w, axis=(1, 2)) / (n[:, 0] * hidden.shape[-1]))
    return jnp.mean(jnp.sqrt(var), axis=-1) / jnp.maximum(rms, 1e-12)
  values = []
  for start in range(0, len(split_rows), batch_size):
    chunk = split_rows[start:start + batch_size]
    batch = {k: np.stack([r[k] for r in chunk]) for k in ('tokens', 'segment_ids', 'positions')}
    values += list(np.asarray(spread_B(params, batch['tokens'], batch['segment_ids'],
                                       batch['positions'])))
  return float(np.mean(values))


def measure_row(workdir: str, row: dict[str, Any], split: str = 'test') -> dict[str, Any]:
  """`title_losses` of one finished row (its selected step), with the row's recorded scores."""
  from ptm_jax.tasks import redecode  # pylint: disable=g-import-not-at-top
  run_dir, ft, tokenizer = redecode.load_row(workdir, row)
  losses = title_losses(ft, run_dir, int(row['best_step']), tokenizer, split)
  prefix = 'dev' if split == 'validation' else 'test'
  return {'member': row.get('member', ''), 'init': row['init'], 'seed': int(row['seed']),
          'workdir': row['workdir'], 'best_step': int(row['best_step']),
          'recorded_loss': float(row.get(f'{prefix}_loss', math.nan)),
          'recorded_rouge1': float(row.get(f'{prefix}_rouge1', math.nan)), **losses}


def table(results: list[dict[str, Any]], members: dict[str, Any], split: str) -> str:
  """Markdown: per member / init, the losses and the gain (mean ± sample std over seeds)."""
  from ptm_jax.tasks import generation, redecode  # pylint: disable=g-import-not-at-top
  lines = [f'Title loss on `{split}` (nats per title token, teacher-forced, at the selected step) '
           'after each title\'s own article and after another article of the split; gain = '
           'other - own.', '',
           '| member | init | seeds | recorded loss | own article | other article | **gain** | '
           'encoder spread | recorded ROUGE-1 |', '|---|---|---|---|---|---|---|---|---|']
  for label, init, rs in redecode.by_member(results, members):
    cells = [generation.mean_std([r[k] for r in rs])
             for k in ('recorded_loss', 'own', 'other', 'gain', 'recorded_rouge1')]
    cells[3] = f'**{cells[3]}**'
    spreads = [r['spread'] for r in rs if 'spread' in r]
    cells.insert(4, ' / '.join(f'{v:.2g}' for v in spreads) if spreads else '—')
    lines.append(f'| {label} | {init} | {len(rs)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def run(workdir: str, split: str = 'test') -> str:
  """Measures every finished row of the run in `workdir`; writes source_reliance.md/.json."""
  from ptm_jax.tasks import redecode  # pylint: disable=g-import-not-at-top
  finished, members, elsewhere = redecode.read_rows(workdir)
  results = []
  for i, row in enumerate(finished, 1):
    print(f'source_reliance [{i}/{len(finished)}] {redecode.row_name(row)}', flush=True)
    results.append(measure_row(workdir, row, split))
  text = table(results, members, split) + redecode.skipped_note(elsewhere)
  with open(os.path.join(workdir, 'source_reliance.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  with open(os.path.join(workdir, 'source_reliance.json'), 'w', encoding='utf-8') as f:
    json.dump({'split': split, 'rows': results, 'not_here': elsewhere}, f, indent=1)
  return text


def main(argv: list[str] | None = None) -> int:
  from ptm_jax.tasks import redecode  # pylint: disable=g-import-not-at-top
  return redecode.finished_run_cli('python -m ptm_jax.tasks.source_reliance', __doc__, argv,
                                   lambda parser: None, lambda args: run(args.workdir, args.split))


if __name__ == '__main__':
  sys.exit(main())
