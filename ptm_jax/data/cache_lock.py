"""One writer per cache entry when several processes share a data dir.

Two jobs on one `data_dir` (or two test workers, or the hosts of a multi-host run on a shared
filesystem) may ask for the same prepared corpus, tokenizer or lexicon at once. Without a lock both
build it: the work is done twice, and for a tfds builder the second rename of its finished
directory onto the first fails. With one, the first process builds the entry, the others wait and
then read it.

The lock is an OS file lock (`filelock`, fcntl on POSIX): a killed holder releases it, so a crashed
job never blocks the next one. `build_once` checks for the finished entry before taking the lock (so
a read-only data dir that already holds everything never needs one) and again after (another process
may have built it while this one waited).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator

from absl import logging
import filelock

LOCK_DIR = '.locks'


def lock_path(data_dir: str, entry: str) -> str:
  """`<data_dir>/.locks/<entry>.lock`, the entry name made filesystem-safe (and unique by hash)."""
  safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', entry)[:80]
  digest = hashlib.sha256(entry.encode()).hexdigest()[:8]
  return os.path.join(data_dir, LOCK_DIR, f'{safe}-{digest}.lock')


@contextlib.contextmanager
def exclusive(data_dir: str, entry: str) -> Iterator[None]:
  """Holds the lock of `entry` under `data_dir`; logs once when another process holds it."""
  path = lock_path(data_dir, entry)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lock = filelock.FileLock(path)
  try:
    lock.acquire(timeout=0)
  except filelock.Timeout:
    logging.info('waiting for another process to finish %s (lock %s)', entry, path)
    lock.acquire()
  try:
    yield
  finally:
    lock.release()


def build_once(data_dir: str, entry: str, is_built: Callable[[], bool],
               build: Callable[[], None]) -> None:
  """Runs `build()` unless `is_built()`, holding the entry's lock and checking again under it."""
  if is_built():
    return
  with exclusive(data_dir, entry):
    if not is_built():
      build()
