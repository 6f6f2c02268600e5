"""Deterministic document-level splits shared by pretraining and downstream builders."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

# Pretraining keeps ~2 % of documents for validation; downstream tasks split 80/10/10.
VALIDATION_FRACTION = 0.02
TASK_FRACTIONS = (0.8, 0.1, 0.1)


def stable_fraction(doc_key: str | int, seed: int) -> float:
  """Maps (doc_key, seed) to a uniform float in [0, 1), identical on every machine and Python run."""
  # sha256 rather than hash(): Python's str hash is salted per process (PYTHONHASHSEED).
  digest = hashlib.sha256(f'{seed}:{doc_key}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_of(doc_key: str | int, seed: int) -> str:
  """The 80/10/10 'train'|'validation'|'test' split of one document, a pure function of its key."""
  u = stable_fraction(doc_key, seed)
  if u < TASK_FRACTIONS[0]:
    return 'train'
  return 'validation' if u < TASK_FRACTIONS[0] + TASK_FRACTIONS[1] else 'test'


def validation_keys(doc_keys: Iterable[str | int], seed: int,
                    fraction: float = VALIDATION_FRACTION) -> set[str]:
  """Keys of the ~`fraction` of documents held out for pretraining validation (never empty)."""
  scored = [(stable_fraction(k, seed), str(k)) for k in doc_keys]
  if len(scored) < 2:
    raise ValueError(f'a corpus needs at least 2 documents for train/validation splits, got {len(scored)} '
                     '(add text, or separate documents by a blank line)')
  chosen = {k for u, k in scored if u < fraction}
  # tfds refuses to write an empty split, so a small corpus still gets its lowest-scoring document.
  return chosen or {min(scored)[1]}
