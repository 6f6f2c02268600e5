"""Prepares everything a run reads from the data dir, without training: data for an offline machine.

    python -m ptm_jax.data.prepare --config experiments/compare_encoders.py:gpu --data_dir DIR

builds under DIR (default: the config's data dir) every pretraining source the run reads (for a
comparison, every member's), the sentencepiece tokenizer, the ERNIE phrase lexicon where a member
masks phrases, each downstream task's splits and, for a comparison, the corpus's token count (its
table's epochs). It does so by building the iterators a run
builds and reading one batch of each, so whatever a run would prepare on first use is prepared
here, by the same code. A run pointed at DIR (`--config.data.data_dir=DIR` or
`PTM_JAX_DATA_DIR=DIR`) then needs neither the data packages nor a network: the prepared
array_record files, the tokenizer and the lexicon are all it opens (tests/test_prepare_data.py
runs a comparison with the data packages hidden). That is how the corpora reach a machine that
cannot build them: a lent GPU, an air-gapped cluster, a TPU VM without the data packages.
Prints what DIR holds and its size.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

flags.DEFINE_string('data_dir', '', 'Where to prepare (default: the config\'s data dir).')


def run_configs(config) -> list:
  """The run configs whose data a job reads: a comparison's members, else the config itself."""
  if 'comparison' not in config:
    return [config]
  from ptm_jax import compare  # pylint: disable=g-import-not-at-top
  return [compare.member_config(config, name) for name in config.comparison.members]


def prepare(config, data_dir: str = '') -> dict[str, int]:
  """Prepares the data of `config` (a run or a comparison) in `data_dir`; returns {entry: bytes}."""
  # pylint: disable-next=g-import-not-at-top
  from ptm_jax.data import corpus_stats, loader, sources, tokenizers
  from ptm_jax.data.sources import downstream  # pylint: disable=g-import-not-at-top
  from ptm_jax.tasks import finetune  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  if data_dir:
    with config.unlocked():
      config.data.data_dir = data_dir
  for cfg in run_configs(config):
    tokenizer = tokenizers.load_or_train(cfg.data.tokenizer, cfg.data)
    if cfg.data.source in downstream.TASKS or not int(cfg.train.steps):
      continue  # a labelled source is prepared with the tasks below; steps=0 pretrains nothing
    # The held-out split too, whether or not this config evaluates: a flag override may.
    for split, repeat in (('train', True), (cfg.train.eval_split, False)):
      it = loader.make_iterator(cfg.data, tokenizer, split=split,
                                global_batch_size=int(cfg.train.batch_size), seed=int(cfg.seed),
                                repeat=repeat)
      next(iter(it))
  if 'comparison' in config:  # its table states each budget in epochs over the corpus
    tokenizer = tokenizers.load_or_train(config.data.tokenizer, config.data)
    corpus_stats.train_tokens(config.data.source, tokenizer, config.data.get('data_dir', ''))
  if 'downstream' in config:
    for task in finetune.downstream_field(config, 'tasks'):
      downstream.get_task_builder(task, config.data.get('data_dir', ''))
  root = sources.resolve_data_dir(config.data.get('data_dir', ''))
  return {entry: _size(os.path.join(root, entry)) for entry in sorted(os.listdir(root))
          if not entry.startswith('.')}


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from ptm_jax import main as cli  # pylint: disable=g-import-not-at-top
  config = cli.FLAGS.config
  if config is None:
    raise app.UsageError('--config is required')
  if not cli.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # tfds logs every file it writes at INFO
  try:
    sizes = prepare(config, flags.FLAGS.data_dir)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for entry, size in sizes.items():
    print(f'{size / 2**20:9.1f} MiB  {entry}')
  print(f'{sum(sizes.values()) / 2**20:9.1f} MiB  in all')


if __name__ == '__main__':
  from ptm_jax import main as _cli  # registers --config (and --workdir, unused here)
  sys.exit(app.run(main, flags_parser=_cli.parse_flags))
