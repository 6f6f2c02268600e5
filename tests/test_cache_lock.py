"""Processes sharing a data dir: one prepares a corpus / trains a tokenizer, the others wait, read.

The defining property is checked across real processes: two started together on one fresh data
dir build each entry exactly once and both read the same result.
"""
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import filelock
import pytest

from ptm_jax.data import cache_lock
from ptm_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child process: counts (in a file per call) every real preparation and tokenizer training, made
# slow enough that the other child surely asks for the same entry meanwhile.
CHILD = textwrap.dedent('''
    import json, os, sys, time
    import tensorflow_datasets as tfds
    from ptm_jax.data import loader, sources, tokenizers

    data_dir, corpus, marks = sys.argv[1:4]
    real_prepare = tfds.core.DatasetBuilder.download_and_prepare
    real_train = tokenizers.train_sentencepiece

    def mark(what):
      open(os.path.join(marks, f'{what}-{os.getpid()}'), 'w').close()
      time.sleep(1.5)

    def prepare(self, *args, **kwargs):
      mark('prepare')
      return real_prepare(self, *args, **kwargs)

    def train(*args, **kwargs):
      mark('train')
      return real_train(*args, **kwargs)

    tfds.core.DatasetBuilder.download_and_prepare = prepare
    tokenizers.train_sentencepiece = train
    cfg = loader.default_data_config()
    cfg.update(source=f'text:{corpus}/*.txt', data_dir=data_dir)
    cfg.tokenizer.update(vocab_size=400, max_train_chars=50_000)
    tokenizer = tokenizers.load_or_train(cfg)
    source = sources.get_source(cfg.source, data_dir)
    print(json.dumps(dict(sizes=source.split_sizes(), ids=tokenizer.encode('The river runs.'))))
''')


def _corpus(root):
  """6 files x 5 documents of seeded pseudo-words (enough pieces for a 400-id vocabulary)."""
  rng = random.Random(0)
  words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9)))
           for _ in range(400)]
  root.mkdir()
  for i in range(6):
    docs = [' '.join(' '.join(rng.choices(words, k=12)).capitalize() + '.' for _ in range(12))
            for _ in range(5)]
    (root / f'{i}.txt').write_text('\n\n'.join(docs) + '\n')


def test_two_processes_build_each_entry_once_and_read_the_same(tmp_path):
  _corpus(tmp_path / 'corpus')
  data_dir, marks = tmp_path / 'data', tmp_path / 'marks'
  marks.mkdir()
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-c', CHILD, str(data_dir), str(tmp_path / 'corpus'), str(marks)]
  procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert results[0] == results[1]
  assert sum(results[0]['sizes'].values()) == 30 and results[0]['sizes']['validation'] >= 1
  done = sorted(name.split('-')[0] for name in os.listdir(marks))
  assert done == ['prepare', 'train']  # once each, by whichever process came first
  assert len(os.listdir(data_dir / 'tokenizers')) == 1


def test_a_builder_made_before_another_process_prepared_it_reads_the_splits(tmp_path):
  corpus = tmp_path / 'corpus'
  _corpus(corpus)
  name, data_dir = f'text:{corpus}/*.txt', str(tmp_path / 'data')
  early = sources.get_builder(name, data_dir)  # made while nothing is prepared
  assert not early.is_prepared() and not early.info.splits
  sources.get_source(name, data_dir)  # "another process": a second builder prepares the data
  assert sources.prepare(early) is early
  assert sum(len(early.as_data_source(s)) for s in sources.SPLITS) == 30


def test_lock_is_exclusive_named_safely_and_freed_when_its_holder_dies(tmp_path):
  path = cache_lock.lock_path(str(tmp_path), 'tfds-text/a b:c-1.0.0')
  assert os.path.dirname(path) == os.path.join(str(tmp_path), cache_lock.LOCK_DIR)
  assert ' ' not in os.path.basename(path) and '/' not in os.path.basename(path)
  assert path != cache_lock.lock_path(str(tmp_path), 'tfds-text/a b:c-1.0.1')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom ptm_jax.data import cache_lock\n'
       'with cache_lock.exclusive(sys.argv[1], sys.argv[2]):\n  print("held", flush=True)\n'
       '  time.sleep(600)\n', str(tmp_path), 'tfds-text/a b:c-1.0.0'],
      env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(filelock.Timeout):
      filelock.FileLock(path).acquire(timeout=0.2)
  finally:
    holder.kill()
    holder.wait()
  start = time.monotonic()
  with cache_lock.exclusive(str(tmp_path), 'tfds-text/a b:c-1.0.0'):  # the OS freed it
    assert time.monotonic() - start < 5
