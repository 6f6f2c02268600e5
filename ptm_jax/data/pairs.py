"""Sentence-pair rows for NSP (Devlin et al. 2019) and SOP (Lan et al. 2020), built in grain.

Each row is one example `[CLS] A [SEP] B [SEP]` (never packed with another): `token_types` is 0
on `[CLS] A [SEP]` and 1 on `B [SEP]`, `segment_ids` is 1 on the example and 0 on padding,
`positions` run 0.. over the example, and `pair_label` (a scalar per row, `[B]` per batch) is
  * NSP: 0 = IsNext (B is the text that follows A in the same document), 1 = NotNext (B is a
    run of sentences of ANOTHER document, starting at a random sentence), as HF's
    `next_sentence_label`;
  * SOP: 0 = in order (A then B, consecutive text of one document), 1 = swapped, as HF's
    `sentence_order_label`.
The segments follow BERT's `create_instances_from_document`: sentences accumulate into a chunk
until it reaches the target length (`seq_len - 3`, or with probability `short_seq_prob` = 0.1 a
uniform length in [2, seq_len - 3], drawn once per document), A is its first `a_end` sentences
(`a_end` uniform in [1, n - 1]), B the rest; a NotNext example puts its unused sentences back so
that they start the next chunk; `truncate_pair` trims the longer side one token at a time, from
its front or back at random. Departures, each so that labels stay exactly Bernoulli(1/2) and B
stays contiguous text: the label is drawn before anything else; a one-sentence chunk is cut
inside its sentence (BERT/ALBERT would take a random B, which biases the labels towards 1) except
for a NotNext example, whose A is the whole sentence as in BERT; a one-token chunk with no
sentence to follow is dropped.

`document_pairs` is a pure, seeded numpy function of (rng, document, other documents).
`make_dataset` (the loader's branch) runs it in grain's MapDataset stage with an rng derived
from (seed, data shard, example index) and fetches NotNext documents by random access into the
shard's unshuffled documents (the j-th one of an example from its own (index, j) stream), so the
stream is deterministic and its state checkpoints like every other loader stream.
Tests: tests/test_pairs.py (labels 50 +- 2 % over >= 2,000 examples and correct, token types,
truncation, determinism, loader checkpoint/resume, cross-document rows).
"""
from __future__ import annotations

from typing import Callable, Sequence

import grain
import numpy as np

from ptm_jax.data import packing

KINDS = ('nsp', 'sop')
SHORT_SEQ_PROB = 0.1  # BERT's create_pretraining_data default


def truncate_pair(rng: np.random.Generator, a: np.ndarray, b: np.ndarray,
                  max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """BERT's truncate_seq_pair: drops one token at a time from the longer side, front or back."""
  a0, a1, b0, b1 = 0, len(a), 0, len(b)
  excess = len(a) + len(b) - max_tokens
  if excess <= 0:
    return a, b
  for front in rng.random(excess) < 0.5:
    if a1 - a0 > b1 - b0:
      a0, a1 = (a0 + 1, a1) if front else (a0, a1 - 1)
    else:
      b0, b1 = (b0 + 1, b1) if front else (b0, b1 - 1)
  return a[a0:a1], b[b0:b1]


def build_example(a: np.ndarray, b: np.ndarray, label: int, *, seq_len: int,
                  specials) -> dict[str, np.ndarray]:
  """`[CLS] a [SEP] b [SEP]` padded to seq_len with segment_ids, positions, token_types, pair_label."""
  n = len(a) + len(b) + 3
  if n > seq_len:
    raise ValueError(f'pair of {len(a)} + {len(b)} tokens does not fit seq_len={seq_len}')
  tokens = np.full((seq_len,), specials.pad, np.int32)
  tokens[:n] = np.concatenate([[specials.cls], a, [specials.sep], b, [specials.sep]])
  index = np.arange(seq_len, dtype=np.int32)
  valid = index < n
  token_types = ((index >= len(a) + 2) & valid).astype(np.int32)
  return {'tokens': tokens, 'segment_ids': valid.astype(np.int32),
          'positions': np.where(valid, index, 0).astype(np.int32), 'token_types': token_types,
          'pair_label': np.asarray(label, np.int32)}


def document_pairs(rng: np.random.Generator, sentences: Sequence[Sequence[int]], *, kind: str,
                   seq_len: int, specials,
                   other_document: Callable[[int], Sequence[Sequence[int]]] | None = None,
                   short_seq_prob: float = SHORT_SEQ_PROB) -> list[dict[str, np.ndarray]]:
  """All pair examples of one tokenized document (a list of sentences of ids).

  `other_document(j)` returns the sentences of a different document for the j-th example
  (NSP only); it must be deterministic in j for the stream to be reproducible.
  """
  if kind not in KINDS:
    raise ValueError(f'unknown pair kind {kind!r}; known: {", ".join(KINDS)}')
  if kind == 'nsp' and other_document is None:
    raise ValueError('NSP needs other_document to draw NotNext segments from')
  max_tokens = seq_len - 3  # [CLS] A [SEP] B [SEP]
  if max_tokens < 2:
    raise ValueError(f'seq_len={seq_len} leaves no room for a sentence pair (needs >= 5)')
  sents = [np.asarray(s, np.int32) for s in sentences if len(s)]
  target = max_tokens
  if rng.random() < short_seq_prob:
    target = int(rng.integers(2, max_tokens + 1))
  examples: list[dict[str, np.ndarray]] = []
  chunk: list[np.ndarray] = []
  length, i = 0, 0
  while i < len(sents):
    chunk.append(sents[i])
    length += len(sents[i])
    if i == len(sents) - 1 or length >= target:
      flip = bool(rng.random() < 0.5)  # NotNext / swapped
      if len(chunk) >= 2:
        a_end = int(rng.integers(1, len(chunk)))
        a, rest = np.concatenate(chunk[:a_end]), chunk[a_end:]
      elif kind == 'nsp' and flip:
        a, rest = chunk[0], []
      elif len(chunk[0]) >= 2:  # one sentence: cut inside it so that B is still the text after A
        cut = int(rng.integers(1, len(chunk[0])))
        a, rest = chunk[0][:cut], [chunk[0][cut:]]
      else:
        a, rest = None, []
      if a is not None:
        if kind == 'nsp' and flip:
          other = [np.asarray(s, np.int32) for s in other_document(len(examples)) if len(s)]
          target_b = target - len(a)
          pieces, got = [], 0
          for s in other[int(rng.integers(len(other))):]:
            pieces.append(s)
            got += len(s)
            if got >= target_b:
              break
          b = np.concatenate(pieces)
          i -= len(rest)  # the unused sentences start the next chunk, as in BERT
        else:
          b = np.concatenate(rest)
        a, b = truncate_pair(rng, a, b, max_tokens)
        if kind == 'sop' and flip:
          a, b = b, a
        examples.append(build_example(a, b, int(flip), seq_len=seq_len, specials=specials))
      chunk, length = [], 0
    i += 1
  return examples


class _Flatten(grain.experimental.FlatMapTransform):
  """grain flat-map: one document's list of examples -> its examples."""

  max_fan_out = 4096  # an upper bound only; the IterDataset flat-map does not enforce it

  def flat_map(self, element):
    return element


def sentence_tokenizer(tokenizer):
  """document dict -> list of int32 id arrays, one per '\\n'-separated non-empty sentence."""
  def fn(text: str) -> list[np.ndarray]:
    sentences = [s for s in text.split('\n') if s.strip()]
    return [np.asarray(ids, np.int32) for ids in tokenizer.encode_batch(sentences)] if sentences else []
  return fn


def _same(a: dict, b: dict) -> bool:
  return a['text'] == b['text'] or (a['doc_id'] >= 0 and a['doc_id'] == b['doc_id']
                                    and a.get('title') == b.get('title'))


def pair_documents(docs: grain.MapDataset, pool: grain.MapDataset, tokenizer, *, kind: str,
                   seq_len: int, seed: int, process_index: int = 0,
                   short_seq_prob: float = SHORT_SEQ_PROB) -> grain.MapDataset:
  """docs -> per-document lists of pair examples; NotNext segments come from `pool[k]`, k seeded."""
  if kind not in KINDS:
    raise ValueError(f"data.pairs must be '', 'nsp' or 'sop', got {kind!r}")
  if kind == 'nsp' and len(pool) < 2:
    raise ValueError('NSP needs at least 2 documents per process to draw NotNext segments')
  split_sentences = sentence_tokenizer(tokenizer)
  specials = tokenizer.specials

  def build(index: int, doc: dict) -> list[dict[str, np.ndarray]]:
    key = [int(seed) % 2**32, int(process_index), int(index)]

    def other_document(j: int):
      # Its own stream per (example index, j): which document is drawn never depends on how
      # many numbers the pair construction consumed before.
      pick = np.random.default_rng(key + [1, j])
      for _ in range(64):
        other = pool[int(pick.integers(len(pool)))]
        if not _same(other, doc):
          sentences = split_sentences(other['text'])
          if sentences:
            return sentences
      raise ValueError('could not draw a different non-empty document for a NotNext segment')

    return document_pairs(np.random.default_rng(key + [0]), split_sentences(doc['text']),
                          kind=kind, seq_len=seq_len, specials=specials,
                          other_document=other_document, short_seq_prob=short_seq_prob)

  return docs.map_with_index(build)


def batch_rows(rows: grain.IterDataset, batch_size: int, *, repeat: bool,
               pad_id: int) -> grain.IterDataset:
  """Batches one-example rows; a single pass keeps its last rows, padded to the static batch."""
  ds = rows.batch(batch_size, drop_remainder=repeat)
  if not repeat:
    ds = ds.map(lambda b: packing.pad_batch(b, batch_size, pad_id))
  return ds


def make_dataset(data_cfg, tokenizer, docs: grain.MapDataset, *, source, split: str,
                 batch_size: int, seed: int, process_index: int, process_count: int,
                 repeat: bool, threads: int) -> grain.IterDataset:
  """The loader's batches for `data.pairs` ('nsp' | 'sop') or `data.cross_document` (RoBERTa)."""
  kind = str(data_cfg.get('pairs', '') or '')
  if kind and data_cfg.get('cross_document', False):
    raise ValueError('data.pairs and data.cross_document are exclusive: pairs are one per row')
  if kind and kind not in KINDS:
    raise ValueError(f"data.pairs must be '', 'nsp' or 'sop', got {kind!r}")
  read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(16, 4 * threads))
  if not kind:
    from ptm_jax.data import full_sentences
    rows = full_sentences.rows(docs, tokenizer, data_cfg, read)
    return batch_rows(rows, batch_size, repeat=repeat, pad_id=tokenizer.specials.pad)
  from ptm_jax.data import loader  # the shard's documents, unshuffled, for random access
  pool = loader.documents(source, split, seed=0, shuffle=False, repeat=False,
                          process_index=process_index, process_count=process_count)
  per_doc = pair_documents(docs, pool, tokenizer, kind=kind, seq_len=int(data_cfg.seq_len),
                           seed=seed, process_index=process_index)
  rows = grain.experimental.FlatMapIterDataset(per_doc.to_iter_dataset(read), _Flatten())
  return batch_rows(rows, batch_size, repeat=repeat, pad_id=tokenizer.specials.pad)
