"""Re-decode finished generation fine-tunes with other decoding settings, no training.

A generation fine-tune (`tasks/generation.py`) keeps a checkpoint at every evaluation and records
the step it selected; decoding is the only step of its ROUGE that depends on the search. This
tool reads the rows of a finished run -- a comparison's `compare_seq2seq.json` or a fine-tune's
`downstream.json` -- restores each row's selected parameters, decodes its split again with the
row's own search changed by the flags, and writes a before/after table:

  python -m ptm_jax.tasks.redecode --workdir runs/s2s_cpu --no_repeat_ngram_size 3

  writes runs/s2s_cpu/redecode_<tag>.md and .json (tag: the changed settings, e.g. `nrng3`) and
  each run's titles to generations_test.<tag>.jsonl beside its originals (which stay).

Per member / init (mean ± sample std over seeds): test ROUGE-1/2/L before and after, the
distinct titles among the split's examples, and the share of titles that repeat a trigram of
tokenizer pieces (the degenerate `Trump'sssss...` loops of an undertrained decoder). With no
flag changed the re-decoding reproduces the recorded scores (a check of the tool;
tests/test_news_headline.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any

import ml_collections
import numpy as np

RESULT_FILES = ('compare_seq2seq.json', 'downstream.json')
CHANGES = ('strategy', 'num_beams', 'length_penalty', 'no_repeat_ngram_size', 'min_new_tokens')
_TAGS = dict(strategy='', num_beams='beams', length_penalty='lp', no_repeat_ngram_size='nrng',
             min_new_tokens='min')


def row_name(row: dict[str, Any]) -> str:
  return f'{row.get("member") or row["init"]} seed {row["seed"]}'


def read_rows(workdir: str) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
  """The generation rows of a finished run in `workdir` whose run directories are here, its member
  labels (if a comparison) and the names of the rows whose runs are not: a comparison that reads
  `comparison.records_dir` reports units recorded on another machine or in another workdir, whose
  records hold scores but no checkpoints. Those are skipped (and said so) rather than stopping the
  tool after the rows before them."""
  for name in RESULT_FILES:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        data = json.load(f)
      rows = data['rows'] if isinstance(data, dict) else data
      members = data.get('members', {}) if isinstance(data, dict) else {}
      rows = [r for r in rows if r.get('metric') == 'rougeL' and not r.get('preempted')
              and r.get('best_step')]
      if not rows:
        raise ValueError(f'{path} holds no finished generation fine-tune; nothing to re-decode')
      here, elsewhere = [], []
      for r in rows:
        if os.path.exists(os.path.join(workdir, r['workdir'], 'config.json')):
          here.append(r)
        else:
          elsewhere.append(row_name(r))
      if not here:
        raise ValueError(f'none of the {len(rows)} finished fine-tunes in {path} has its run '
                         f'directory under {workdir} (recorded elsewhere: their records hold no '
                         'checkpoints); run the tool where the runs were made')
      for name_ in elsewhere:
        print(f'skipped {name_}: its run is not under {workdir} (recorded elsewhere)', flush=True)
      return here, members, elsewhere
  raise FileNotFoundError(f'{workdir} has none of {", ".join(RESULT_FILES)}; point --workdir at a '
                          'finished compare_seq2seq or news_headline fine-tune run')


def tag_of(changes: dict[str, Any]) -> str:
  parts = [f'{_TAGS[k]}{v:g}' if isinstance(v, float) else f'{_TAGS[k]}{v}'
           for k, v in changes.items()]
  return '_'.join(parts) or 'same'


def titles_stats(predictions: list[str], tokenizer) -> dict[str, float]:
  """Distinct titles, and the share of titles in which some trigram of the tokenizer's pieces
  occurs twice (pieces, not words: `Trump'sssss` is one word and a loop of `s` pieces)."""
  def repeats(title: str) -> bool:
    ids = tokenizer.encode(title)
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    return len(grams) != len(set(grams))
  return {'distinct': float(len(set(predictions))),
          'repeat_share': float(np.mean([repeats(p) for p in predictions])) if predictions else 0.0}


def _read_predictions(path: str) -> list[str]:
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line)['prediction'] for line in f if line.strip()]


def load_row(workdir: str, row: dict[str, Any]):
  """(run directory, fine-tune config, tokenizer) of one finished row of the run in `workdir`."""
  from ptm_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  run_dir = os.path.join(workdir, row['workdir'])  # rows of a comparison are relative to it
  with open(os.path.join(run_dir, 'config.json'), encoding='utf-8') as f:
    ft = ml_collections.ConfigDict(json.load(f))
  return run_dir, ft, tokenizers.load_or_train(ft.data.tokenizer, ft.data)


def redecode_row(workdir: str, row: dict[str, Any], changes: dict[str, Any], split: str,
                 tag: str) -> dict[str, Any]:
  """Decodes one row's selected checkpoint with its search changed by `changes`."""
  from ptm_jax.tasks import finetune, generation  # pylint: disable=g-import-not-at-top
  run_dir, ft, tokenizer = load_row(workdir, row)
  options = generation.decode_options(lambda name: finetune.downstream_field(ft, name),
                                      tokenizer.specials)
  options = dataclasses.replace(options, **changes)
  limit = int(finetune.downstream_field(ft, 'generation_examples'))
  scores = generation.decode_and_score(ft, run_dir, int(row['best_step']), tokenizer, options,
                                       (split,), limit, suffix=f'.{tag}')[split]
  before = _read_predictions(os.path.join(run_dir, f'generations_{split}.jsonl'))
  after = _read_predictions(os.path.join(run_dir, f'generations_{split}.{tag}.jsonl'))
  prefix = 'dev' if split == 'validation' else 'test'
  return {'member': row.get('member', ''), 'init': row['init'], 'seed': int(row['seed']),
          'workdir': row['workdir'], 'best_step': int(row['best_step']), 'options': repr(options),
          **{f'before_{k}': float(row.get(f'{prefix}_{k}', math.nan))
             for k in generation.ROUGE_KEYS},
          **{f'after_{k}': scores[k] for k in generation.ROUGE_KEYS},
          **{f'before_{k}': v for k, v in titles_stats(before, tokenizer).items()},
          **{f'after_{k}': v for k, v in titles_stats(after, tokenizer).items()},
          'examples': int(scores['examples'])}


def by_member(results: list[dict[str, Any]], members: dict[str, Any]):
  """(label, init, rows) per member / init of a tool's per-row results, in first-seen order."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in results:
    groups.setdefault((r['member'], r['init']), []).append(r)
  return [(members.get(member, {}).get('label', member) if member else init, init, rs)
          for (member, init), rs in groups.items()]


def table(results: list[dict[str, Any]], members: dict[str, Any], changes: dict[str, Any],
          split: str) -> str:
  """Markdown: per member / init, before -> after (mean ± std over seeds)."""
  from ptm_jax.tasks import generation  # pylint: disable=g-import-not-at-top
  said = ', '.join(f'{k}={v}' for k, v in changes.items()) or 'no change (a reproduction check)'
  lines = [f'Re-decoded `{split}` with {said}; every other setting as recorded '
           f'({results[0]["options"]} after the change).', '',
           '| member | init | seeds | ROUGE-1 before → after | ROUGE-2 before → after | '
           'ROUGE-L before → after | distinct titles before → after | titles repeating a '
           'piece trigram before → after |', '|---|---|---|---|---|---|---|---|']
  for label, init, rs in by_member(results, members):
    cells = [' → '.join(generation.mean_std([r[f'{when}_{k}'] for r in rs])
                        for when in ('before', 'after')) for k in generation.ROUGE_KEYS]
    distinct = lambda when: ' / '.join(f'{r[f"{when}_distinct"]:.0f}' for r in rs)  # noqa: E731
    share = lambda when: ' / '.join(f'{r[f"{when}_repeat_share"]:.2f}' for r in rs)  # noqa: E731
    lines.append(f'| {label} | {init} | {len(rs)} | {" | ".join(cells)} | '
                 f'{distinct("before")} → {distinct("after")} | '
                 f'{share("before")} → {share("after")} |')
  return '\n'.join(lines) + '\n'


def run(workdir: str, changes: dict[str, Any], split: str = 'test') -> str:
  """Re-decodes every row of the run in `workdir`; writes redecode_<tag>.md/.json; the table."""
  rows, members, elsewhere = read_rows(workdir)
  tag = tag_of(changes)
  results = []
  for i, row in enumerate(rows, 1):
    print(f'redecode [{i}/{len(rows)}] {row_name(row)}', flush=True)
    results.append(redecode_row(workdir, row, changes, split, tag))
  text = table(results, members, changes, split) + skipped_note(elsewhere)
  with open(os.path.join(workdir, f'redecode_{tag}.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  with open(os.path.join(workdir, f'redecode_{tag}.json'), 'w', encoding='utf-8') as f:
    json.dump({'changes': changes, 'split': split, 'rows': results, 'not_here': elsewhere},
              f, indent=1)
  return text


def skipped_note(elsewhere: list[str]) -> str:
  """The line under a tool's table that names the rows it could not measure here."""
  if not elsewhere:
    return ''
  return (f'\nNot measured (recorded elsewhere, no run directory here): {", ".join(elsewhere)}.\n')


def finished_run_cli(prog: str, doc: str, argv, add_arguments, call) -> int:
  """The command line of a tool over a finished generation run (this one, source_reliance):
  --workdir, --split and the tool's own flags; `call(args)`'s table printed, or a one-line error."""
  parser = argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='a finished seq2seq comparison or fine-tune')
  parser.add_argument('--split', default='test', choices=('test', 'validation'))
  add_arguments(parser)
  args = parser.parse_args(argv)
  try:
    print(call(args))
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def main(argv: list[str] | None = None) -> int:
  def add_arguments(parser):
    parser.add_argument('--strategy', choices=('beam', 'greedy'))
    parser.add_argument('--num_beams', type=int)
    parser.add_argument('--length_penalty', type=float)
    parser.add_argument('--no_repeat_ngram_size', type=int)
    parser.add_argument('--min_new_tokens', type=int)

  def call(args):
    changes = {k: getattr(args, k) for k in CHANGES if getattr(args, k) is not None}
    return run(args.workdir, changes, args.split)
  return finished_run_cli('python -m ptm_jax.tasks.redecode', __doc__, argv, add_arguments, call)


if __name__ == '__main__':
  sys.exit(main())
