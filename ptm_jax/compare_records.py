"""One record per finished unit of a comparison, so that a comparison can span machines, sessions.

A comparison (ptm_jax/compare.py) is a list of units: the random-init baseline and each member (its
pretraining, then its fine-tunes). When a unit finishes, its record -- the pretraining summary and
the fine-tune rows, a few kB -- is written to `workdir/records/<unit>.json` and, when
`comparison.records_dir` is set, there too. A unit that has a record is not run again, and its
checkpoints need not exist any more (a member's are hundreds of MB at the `gpu` sizes). That is how
a comparison too long for one machine adds up to one table: run it where a call lasts ten minutes
and a machine is lent for thirty (a lent GPU), keep only the records (in the repository, say), and
the next run with the same `records_dir` runs what is left and writes the whole table. Several
machines can also run disjoint parts at once (`comparison.run_only`) into one records dir.

A record holds the fingerprint of what decides its numbers: the unit's resolved run config (the
member's, with its step count; the baseline's is the reference member's), the budget and the
vocabulary size, without the fields that only say where or how verbosely it runs (data dir, reader
threads, logging, mesh), and those settings themselves. A record whose settings differ from the
planned unit's is refused with a one-line error that names the file and the first differing
fields: a result of another configuration never lands in the table. A field the code gained after
the record was made (the library grows between the sessions a comparison spans) matches when the
planned unit leaves it at its default (`configs.base.base_config`, `tasks.finetune.DEFAULTS`),
which by the project's rule for new options is the behaviour the record was made with. A record
whose only difference is fewer fine-tuning seeds (`downstream.seeds` a subset of the planned ones)
is extended: the comparison fine-tunes the missing seeds from the unit's pretrained checkpoint
(which must be in the workdir) and rewrites the record with all of them. Each
record also says where and when it was made (device kind, JAX version, UTC date), which the table
prints, since a split comparison may run on more than one kind of machine. Every process
of a multi-host run reads the records, so `records_dir` (like the workdir) must be on a file system
they share.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from typing import Any, NamedTuple

import jax

RECORD_VERSION = 2  # 2: records keep their settings (1 kept only the fingerprint)
RECORDS_SUBDIR = 'records'
# Fields that do not change a unit's numbers: where data lives, how many reader threads, how often
# it logs, how the devices are laid out (8 devices give the numbers of 1: tests/test_sharding.py).
_VOLATILE = {('data', 'data_dir'), ('data', 'num_threads'), ('train', 'log_every'), ('mesh',),
             ('report',), ('downstream', 'eval_batch_size')}


def _strip(tree: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    here = (*path, key)
    if here in _VOLATILE:
      continue
    out[key] = _strip(value, here) if isinstance(value, dict) else value
  return out


def _json(value: Any) -> Any:
  """As a record stores it (tuples become lists, other objects strings)."""
  return json.loads(json.dumps(value, sort_keys=True, default=str))


# Since 2026-12-06 dev and test losses are the cross-entropy without the training's label
# smoothing (steps.evaluation_options); a unit trained with smoothing (its pretraining objective
# or its fine-tunes) says so in its settings, so that a record made before, whose losses are
# smoothed, is refused, while the records of units without smoothing (whose numbers did not
# change) still match.
EVAL_LOSS_UNSMOOTHED = 'cross-entropy without label smoothing'
# Since 2026-12-06 too, UniLM's generation dev/test loss is the next-token NLL of the titles (each
# token at a [MASK] after the real ones before it: objectives/seq2seq_finetune.py), no longer
# its training cloze; such a unit's records made before are refused by this marker.
EVAL_LOSS_UNILM_NEXT_TOKEN = 'UniLM titles: next-token cross-entropy, as decoded'


def _fine_tunes_unilm_generation(config: dict[str, Any]) -> bool:
  """Whether a unit fine-tunes a generation task in UniLM's form (tasks/generation.py)."""
  from ptm_jax.data.sources import downstream  # pylint: disable=g-import-not-at-top
  from ptm_jax.objectives import seq2seq_finetune  # pylint: disable=g-import-not-at-top
  block = config.get('downstream', {}) or {}
  tasks = [t for t in block.get('tasks', ()) if t in downstream.TASKS
           and downstream.TASKS[t].kind == 'generation']
  if not tasks or not block.get('finetune', True):
    return False
  model = config.get('model', {})
  try:
    form = block.get('generation_form') or seq2seq_finetune.form_for(model.get('family', ''), model)
  except ValueError:
    return False
  return form == 'unilm'


def settings(run_config, budget: float, vocab_size: int) -> dict[str, Any]:
  """What decides a unit's numbers: its resolved run config (volatile fields dropped), budget and
  vocabulary size, as stored in its record."""
  config = _strip(run_config.to_dict())
  out = {'config': config, 'budget': float(budget), 'vocab_size': int(vocab_size)}
  if any(float(config.get(block, {}).get('label_smoothing', 0.0) or 0.0)
         for block in ('objective', 'downstream')):
    out['eval_loss'] = EVAL_LOSS_UNSMOOTHED
  if _fine_tunes_unilm_generation(config):
    out['eval_loss'] = EVAL_LOSS_UNILM_NEXT_TOKEN
  return _json(out)


def fingerprint(run_config, budget: float, vocab_size: int) -> str:
  """Hash of `settings` (and the record version)."""
  text = json.dumps(dict(settings(run_config, budget, vocab_size), version=RECORD_VERSION),
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


class Key(NamedTuple):
  """A planned unit's fingerprint, settings and the defaults of its config's fields."""

  fingerprint: str
  settings: dict[str, Any]
  defaults: dict[str, Any]


def key(run_config, budget: float, vocab_size: int) -> Key:
  """The `Key` `Store.get` / `Store.put` match a unit's record by."""
  from ptm_jax.configs import base  # here: configs imports what imports this module
  from ptm_jax.tasks import finetune
  model, objective = run_config.model, run_config.objective
  defaults = base.base_config(model.family, model.variant, objective.name).to_dict()
  defaults['downstream'] = dict(finetune.DEFAULTS)
  return Key(fingerprint(run_config, budget, vocab_size),
             settings(run_config, budget, vocab_size), {'config': _json(_strip(defaults))})


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if not isinstance(tree, dict) or not tree:
    return {path: tree}
  return {p: v for k, sub in tree.items() for p, v in _leaves(sub, (*path, k)).items()}


def differences(recorded: dict[str, Any], planned: dict[str, Any],
                defaults: dict[str, Any]) -> list[str]:
  """The settings paths where a record and a planned unit differ, as 'path: recorded -> planned';
  a path only the planned unit has matches when it holds its default (a field added since)."""
  r, p, d = _leaves(recorded), _leaves(planned), _leaves(defaults)
  out = []
  for path in sorted(set(r) | set(p)):
    name = '.'.join(path)
    if path in r and path in p:
      if r[path] != p[path]:
        out.append(f'{name}: {r[path]!r} -> {p[path]!r}')
    elif path in p:
      if path not in d or d[path] != p[path]:
        out.append(f'{name}: (no such field) -> {p[path]!r}')
    else:
      out.append(f'{name}: {r[path]!r} -> (no such field)')
  return out


def where_and_when() -> dict[str, Any]:
  """The device kind, count, JAX version and UTC date a record was made on."""
  device = jax.devices()[0]
  return {'device': str(device.device_kind), 'platform': str(device.platform),
          'device_count': int(jax.device_count()), 'jax': jax.__version__,
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')}


class Store:
  """The records of one comparison: read from `records_dir` and workdir/records, written to both."""

  def __init__(self, workdir: str, records_dir: str = ''):
    self.dirs = [os.path.join(workdir, RECORDS_SUBDIR)]
    if records_dir:
      self.dirs.append(os.path.abspath(os.path.expanduser(records_dir)))

  def get(self, unit: str, expected: Key) -> dict[str, Any] | None:
    """The unit's record if one exists and matches `expected`; None if none exists.

    A record found only beside the run (a unit finished before `records_dir` was set) is copied
    to `records_dir`, so that directory ends up holding the whole comparison.
    """
    for k, directory in enumerate(self.dirs[::-1]):  # records_dir first: what the user named
      path = os.path.join(directory, f'{unit}.json')
      if not os.path.exists(path):
        continue
      try:
        with open(path, encoding='utf-8') as f:
          record = json.load(f)
      except (OSError, ValueError) as e:
        raise ValueError(f'comparison record {path} is unreadable ({type(e).__name__}: {e}); '
                         'delete it to run that unit again') from None
      seeds = _check_match(path, record, expected)
      if k and len(self.dirs) > 1:
        self._write(self.dirs[-1], unit, record)
      return dict(record, seeds_to_add=seeds) if seeds else record
    return None

  def extend(self, unit: str, expected: Key, record: dict[str, Any], rows: list[dict[str, Any]],
             workdir: str) -> dict[str, Any]:
    """The unit's record with the fine-tune rows of its added seeds, under the planned key."""
    new = [dict(r, workdir=os.path.relpath(r['workdir'], workdir)) if 'workdir' in r else r
           for r in rows]
    merged = [r for r in record['rows'] if r.get('metric') != 'probe'] + new
    tasks = list(dict.fromkeys(r['task'] for r in merged))
    merged.sort(key=lambda r: (tasks.index(r['task']), int(r['seed'])))
    merged += [r for r in record['rows'] if r.get('metric') == 'probe']
    added = sorted({int(r['seed']) for r in new})
    extended = {'unit': unit, 'version': RECORD_VERSION, 'fingerprint': expected.fingerprint,
                'settings': expected.settings, 'made': record['made'],
                'extended': [*record.get('extended', ()), dict(where_and_when(), seeds=added)],
                'result': record['result'], 'rows': merged}
    for directory in self.dirs:
      self._write(directory, unit, extended)
    return extended

  def put(self, unit: str, expected: Key, result: dict[str, Any] | None,
          rows: list[dict[str, Any]], workdir: str) -> dict[str, Any]:
    """Writes the unit's record to every directory (process 0 only) and returns it."""
    record = {'unit': unit, 'version': RECORD_VERSION, 'fingerprint': expected.fingerprint,
              'settings': expected.settings,
              'made': where_and_when(), 'result': result,
              # Run directories relative to the comparison's workdir: no machine's path is kept.
              'rows': [dict(r, workdir=os.path.relpath(r['workdir'], workdir))
                       if 'workdir' in r else r for r in rows]}
    for directory in self.dirs:
      self._write(directory, unit, record)
    return record

  @staticmethod
  def _write(directory: str, unit: str, record: dict[str, Any]) -> None:
    if jax.process_index() != 0:
      return
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f'.{unit}.json.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=1, default=float)
    os.replace(tmp, os.path.join(directory, f'{unit}.json'))  # never a half-written record


SEEDS_PATH = ('config', 'downstream', 'seeds')


def _check_match(path: str, record: dict[str, Any], expected: Key) -> list[int]:
  """Raises the one-line error when the record at `path` is not the planned unit's.

  A record that differs only in having fewer fine-tuning seeds (`downstream.seeds` a subset of the
  planned ones) is the planned unit's, shorter: returns the seeds it lacks (else [])."""
  if record.get('fingerprint') == expected.fingerprint:
    return []
  diffs = None
  if record.get('settings') and record.get('version') == RECORD_VERSION:
    diffs = differences(record['settings'], expected.settings, expected.defaults)
    if not diffs:  # made before fields were added that this unit leaves at their defaults
      return []
    if len(diffs) == 1 and diffs[0].startswith('.'.join(SEEDS_PATH) + ':'):
      had = set(_at(record['settings'], SEEDS_PATH))
      want = _at(expected.settings, SEEDS_PATH)
      if had < set(want):
        return sorted(set(want) - had)
  detail = (f'{len(diffs)} differing: {"; ".join(diffs[:3])}{"; ..." if len(diffs) > 3 else ""}'
            if diffs else f'fingerprint {record.get("fingerprint")}, this run '
            f'{expected.fingerprint}')
  raise ValueError(f'comparison record {path} was made with another configuration ({detail}); '
                   'move it away or point comparison.records_dir elsewhere')


def _at(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


class TimeBudget:
  """Whether to start another unit within `budget_s` seconds of wall time (0: no budget).

  A unit is started only if the time used plus the longest unit finished so far fits; the first
  unit of a run always starts, so every run makes progress. A unit cut short anyway (SIGTERM from
  `timeout`) saves its checkpoint and the next run on the same workdir resumes it.
  """

  def __init__(self, budget_s: float, clock=time.monotonic):
    self.budget_s, self._clock = float(budget_s or 0.0), clock
    self._start = clock()
    self._longest = 0.0
    self._finished = 0

  def unit_done(self, seconds: float) -> None:
    self._longest, self._finished = max(self._longest, float(seconds)), self._finished + 1

  def may_start(self) -> bool:
    if self.budget_s <= 0 or self._finished == 0:
      return True
    return self._clock() - self._start + self._longest <= self.budget_s

  def used_s(self) -> float:
    return self._clock() - self._start
