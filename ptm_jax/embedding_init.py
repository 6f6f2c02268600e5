"""Count-based initial token embeddings: PPMI + truncated SVD over the pretraining stream.

Levy & Goldberg (2014) and Levy, Goldberg & Dagan (2015): the SVD of the positive pointwise mutual
information matrix of word–context co-occurrences recovers what skip-gram embeddings learn, in
seconds of numpy. Early neural models started from such vectors (word2vec/GloVe initialisation);
here they are an *option* of the pretraining stage (`train.embedding_init='ppmi_svd'`) for runs
whose budget is too small for MLM to learn word similarity on its own: on 2 CPU cores, 1,200 MLM
steps leave the token table no better than random for sentiment (a linear probe on mean-pooled
embeddings: 0.614 vs 0.622 test accuracy on rt_sentiment), while PPMI-SVD vectors of the same
unlabelled text reach 0.689 (measured 2026-11-23; see experiments/quickstart.py).

Recipe:
  * co-occurrences from the packed training rows themselves (the pretraining split only, so a task's
    held-out text never enters): for every pair of positions at distance d <= `window` inside one
    segment (never across packed documents or into padding), both directions, weighted 1/d;
  * PPMI with context-distribution smoothing (context counts ** 0.75, Levy et al. 2015);
  * the `max_vocab` most frequent ids only (the PPMI matrix is dense); a randomized SVD (Halko et
    al. 2011, 4 power iterations) gives `U_k sqrt(S_k)` (symmetric weighting, Levy et al. 2015);
  * rows are rescaled to the model's init standard deviation; ids never seen, or outside the
    frequent set, keep a random normal row of that scale.

Also here: `rescale_tables`, the fine-tuning-time rescaling of pretrained embedding tables
(`train.init_embedding_rms`).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def cooccurrence_counts(rows: Iterable[dict[str, np.ndarray]], vocab_size: int, *, window: int,
                        max_tokens: int) -> tuple[np.ndarray, int]:
  """1/d-weighted symmetric counts `[V, V]` (float64) from packed rows, and the tokens read."""
  counts = np.zeros((vocab_size, vocab_size), np.float64)
  seen = 0
  for row in rows:
    tokens = np.asarray(row['tokens']).reshape(-1, np.shape(row['tokens'])[-1])
    segments = np.asarray(row['segment_ids']).reshape(tokens.shape)
    for t_L, s_L in zip(tokens, segments):
      for d in range(1, min(window, len(t_L) - 1) + 1):
        same = (s_L[:-d] == s_L[d:]) & (s_L[:-d] != 0)
        a, b = t_L[:-d][same], t_L[d:][same]
        np.add.at(counts, (a, b), 1.0 / d)
        np.add.at(counts, (b, a), 1.0 / d)
      seen += int(np.count_nonzero(s_L))
    if seen >= max_tokens:
      break
  return counts, seen


def ppmi(counts: np.ndarray, context_power: float = 0.75) -> np.ndarray:
  """Positive PMI of a symmetric count matrix, with smoothed context probabilities."""
  total = counts.sum()
  if total <= 0:
    raise ValueError('embedding_init: no co-occurrences were counted (empty pretraining stream?)')
  p_word = counts.sum(axis=1) / total
  context = counts.sum(axis=0) ** context_power
  p_context = context / context.sum()
  with np.errstate(divide='ignore', invalid='ignore'):
    pmi = np.log(counts / total) - np.log(p_word)[:, None] - np.log(p_context)[None, :]
  return np.where(counts > 0, np.maximum(pmi, 0.0), 0.0)


def randomized_svd(matrix: np.ndarray, rank: int, *, power_iterations: int = 4,
                   oversample: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Top-`rank` left singular vectors and values of `matrix` (Halko, Martinsson & Tropp 2011)."""
  rng = np.random.default_rng(seed)
  k = min(rank + oversample, min(matrix.shape))
  q, _ = np.linalg.qr(matrix @ rng.standard_normal((matrix.shape[1], k)))
  for _ in range(power_iterations):  # sharpens the spectrum; QR keeps it well conditioned
    q, _ = np.linalg.qr(matrix.T @ q)
    q, _ = np.linalg.qr(matrix @ q)
  u_small, s, _ = np.linalg.svd(q.T @ matrix, full_matrices=False)
  return (q @ u_small)[:, :rank], s[:rank]


def ppmi_svd_embeddings(rows: Iterable[dict[str, np.ndarray]], vocab_size: int, dim: int, *,
                        init_stddev: float, window: int = 5, max_tokens: int = 2_000_000,
                        max_vocab: int = 8192, seed: int = 0) -> tuple[np.ndarray, dict]:
  """A `[vocab_size, dim]` float32 table and a summary dict (tokens read, rows initialised)."""
  if dim > max_vocab:
    raise ValueError(f'embedding_init: embedding width {dim} exceeds max_vocab {max_vocab}')
  rng = np.random.default_rng(seed)
  table = rng.normal(0.0, init_stddev, (vocab_size, dim)).astype(np.float32)
  counts, seen = cooccurrence_counts(rows, vocab_size, window=window, max_tokens=max_tokens)
  frequency = counts.sum(axis=1)
  keep = np.argsort(-frequency)[:min(max_vocab, vocab_size)]
  keep = keep[frequency[keep] > 0]
  if len(keep) <= dim:
    raise ValueError(f'embedding_init: only {len(keep)} distinct tokens co-occur, fewer than the '
                     f'embedding width {dim}; read more text (train.embedding_init_tokens)')
  u, s = randomized_svd(ppmi(counts[np.ix_(keep, keep)]), dim, seed=seed)
  vectors = u * np.sqrt(s)[None, :]
  vectors *= init_stddev / max(float(vectors.std()), 1e-12)
  table[keep] = vectors.astype(np.float32)
  return table, dict(tokens=seen, initialised_rows=int(len(keep)), vocab_size=vocab_size)


def rescale_tables(params: dict, rms: float) -> dict:
  """Pretrained params with every embedding table that feeds `embed_norm` scaled by one factor, so
  that the token table's root-mean-square equals `rms` (e.g. the init std, 0.02).

  Why: the tables are summed and then LayerNorm'd, so a common factor leaves the network's outputs
  unchanged (up to LayerNorm's epsilon), but it changes fine-tuning. Adam's step size does not
  depend on a parameter's scale, so a table's *relative* learning rate is inverse to its RMS, and
  MLM pretraining with a tied head grows the token table (RMS 0.064 after the quickstart's 1,200
  steps, against 0.02 at init): fine-tuned at the same LR, the pretrained words move 3x slower than
  a random-init copy's. Rescaling to the init RMS gives both inits the same relative step.

  Applies to every sub-tree holding `token_embed` and `embed_norm` (the encoder family; an ELECTRA
  run's shared tables). The decoder family adds its embeddings without a LayerNorm, where a factor
  would change the outputs: a one-line error.
  """
  if rms <= 0:
    raise ValueError(f'train.init_embedding_rms must be > 0 (0 = off), got {rms}')
  found = 0

  def walk(tree):
    nonlocal found
    if not isinstance(tree, dict):
      return tree
    if 'token_embed' in tree and 'embed_norm' in tree:
      found += 1
      table = np.asarray(tree['token_embed']['embedding'], np.float64)
      factor = rms / max(float(np.sqrt(np.mean(table ** 2))), 1e-12)
      scaled = lambda e: (np.asarray(e) * factor).astype(np.asarray(e).dtype)  # noqa: E731
      return {k: ({'embedding': scaled(v['embedding'])}
                  if k.endswith('_embed') and set(v) == {'embedding'} else walk(v))
              for k, v in tree.items()}
    return {k: walk(v) for k, v in tree.items()}

  out = walk(params)
  if not found:
    raise ValueError('train.init_embedding_rms needs pretrained embeddings that feed a LayerNorm '
                     '(token_embed next to embed_norm: the encoder family); set it to 0 here')
  return out
