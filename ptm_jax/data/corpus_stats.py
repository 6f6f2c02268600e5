"""How many tokens a source's train split holds under a tokenizer, and what a budget is in epochs.

A pretraining budget means little without the corpus it is spent on: BERT's 1M steps of 256 x 512
tokens were ~40 passes over its 3.3B words, while the same step count on the 2.6M-token news corpus
packaged here would be thousands. The comparisons report each member's budget in epochs over the
train split (`epochs`), so a size that only repeats a small corpus shows it in its table.

Counts are the loader's own (each document's text with its sentence newlines as spaces, encoded
once; no BOS/EOS), cached per (source fingerprint, tokenizer) under `<data_dir>/corpus_stats/`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os

from absl import logging

from ptm_jax.data import sources

_BATCH = 256  # documents per encode_batch call


def _cache_path(data_dir: str, source: sources.Source, tokenizer) -> str:
  key = json.dumps({'source': source.fingerprint, 'tokenizer': tokenizer.name,
                    'vocab_size': tokenizer.vocab_size}, sort_keys=True)
  return os.path.join(data_dir, 'corpus_stats',
                      hashlib.sha256(key.encode()).hexdigest()[:16] + '.json')


@dataclasses.dataclass(frozen=True)
class TrainTokens:
  """Tokens in the train split of each part of a source, with the parts' mixture weights."""

  counts: tuple[int, ...]
  weights: tuple[float, ...]

  @property
  def total(self) -> int:
    return sum(self.counts)

  def epochs(self, tokens_seen: float) -> float:
    """Passes over the most-repeated part when `tokens_seen` row tokens are drawn by the weights."""
    norm = sum(self.weights)
    return max(tokens_seen * w / norm / max(n, 1) for w, n in zip(self.weights, self.counts))


def train_tokens(source_name: str, tokenizer, data_dir: str = '') -> TrainTokens:
  """Counts the train split's tokens of every part of `source_name` (cached)."""
  data_dir = sources.resolve_data_dir(data_dir)
  source = sources.get_source(source_name, data_dir)
  path = _cache_path(data_dir, source, tokenizer)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return TrainTokens(tuple(int(n) for n in json.load(f)['train_tokens']), source.weights)
  counts = []
  for part in source.parts('train'):
    total, texts = 0, []
    for example in part:
      texts.append(example['text'].replace('\n', ' '))
      if len(texts) == _BATCH:
        total += sum(map(len, tokenizer.encode_batch(texts)))
        texts = []
    counts.append(total + (sum(map(len, tokenizer.encode_batch(texts))) if texts else 0))
  if not any(counts):
    raise ValueError(f"the train split of {source_name!r} holds no tokens; check data.source")
  tmp = f'{path}.tmp{os.getpid()}'  # write-then-rename: a concurrent reader sees all or nothing
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump({'source': source.fingerprint, 'tokenizer': tokenizer.name,
                 'train_tokens': counts}, f)
    os.replace(tmp, path)
  except OSError as e:  # a read-only data dir: the count is still right, only not kept
    logging.warning('corpus token counts not cached at %s: %s', path, e)
    with contextlib.suppress(OSError):
      os.remove(tmp)
  return TrainTokens(tuple(counts), source.weights)
