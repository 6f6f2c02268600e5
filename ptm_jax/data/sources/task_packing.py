"""Several labelled examples per row for classification tasks (`data.pack_examples = K > 0`).

Why: sentence-classification examples are short next to a row (rt_sentiment: median 31 tokens, 95th
percentile 59, rows of 64), so one example per row spends about half of every step on padding.
Packing the examples first-fit, as pretraining packs documents, removes most of it.

Layout of a packed batch (one process's rows):
  * `tokens`, `segment_ids`, `positions` `[B, L]`: segment ids 1..n number the examples of a row
    (0 = padding) and positions restart at 0 for each, exactly as packed pretraining rows; the
    family's segment mask keeps attention inside one example, so every example's hidden states
    are those of its own unpacked row (tests/test_task_packing.py checks it through logits and
    gradients);
  * `label`, `label_weight`, `example_id` `[B, K]`: slot k describes segment k + 1; empty slots have
    weight 0 and id -1. `objectives.classify` pools each segment and scores every slot.

Train rows: the shuffled, endless example stream is packed by grain's first-fit packer
(checkpointable) with one bin per local row, so each flush of the packer is one batch;
`train.batch_size` then counts rows, and a step sees about `batch_size * examples per row` examples
(`mean_examples_per_row` measures it). Eval rows: the whole split is packed in order, identically
on every process, cut into global batches of rows (the last completed by empty rows), and each
process takes its contiguous slice of each: every process runs the same number of eval steps.
"""
from __future__ import annotations

import math

import grain
import numpy as np

def encode_fn(tokenizer, seq_len: int):
  """example -> `[CLS] text [SEP]` ids (truncated to seq_len) with the label and id per token.

  The packer moves sequences, not scalars, so the label and example id ride along as one value per
  token and are read back at each segment's first position.
  """
  specials = tokenizer.specials
  if seq_len < 3:
    raise ValueError(f'data.seq_len={seq_len} leaves no room for [CLS] text [SEP]')

  def encode(example):
    text = example['text']
    text = text.decode('utf-8') if isinstance(text, bytes) else str(text)
    ids = [specials.cls, *list(tokenizer.encode(text))[:seq_len - 2], specials.sep]
    n = len(ids)
    return {'tokens': np.asarray(ids, np.int32),
            'label': np.full((n,), int(example['label']), np.int32),
            'example_id': np.full((n,), int(example['example_id']), np.int32)}

  return encode


def _packer(examples: grain.IterDataset, seq_len: int, max_per_row: int, num_bins: int, pad_id: int):
  return grain.experimental.FirstFitPackIterDataset(
      examples, length_struct={k: seq_len for k in ('tokens', 'label', 'example_id')},
      num_packing_bins=max(1, num_bins), shuffle_bins=False, max_sequences_per_bin=max_per_row,
      padding_struct={'tokens': pad_id, 'label': 0, 'example_id': -1})


def to_row(packed: dict, max_per_row: int) -> dict[str, np.ndarray]:
  """One packer output row -> the layout above (per-token labels read at segment starts)."""
  seg = np.asarray(packed['tokens_segment_ids'], np.int32)
  pos = np.asarray(packed['tokens_positions'], np.int32)
  starts = np.flatnonzero((pos == 0) & (seg != 0))  # segments are laid out in order 1..n
  label = np.zeros((max_per_row,), np.int32)
  weight = np.zeros((max_per_row,), np.float32)
  example_id = np.full((max_per_row,), -1, np.int32)
  label[:len(starts)] = np.asarray(packed['label'])[starts]
  weight[:len(starts)] = 1.0
  example_id[:len(starts)] = np.asarray(packed['example_id'])[starts]
  return {'tokens': np.asarray(packed['tokens'], np.int32), 'segment_ids': seg, 'positions': pos,
          'label': label, 'label_weight': weight, 'example_id': example_id}


def _empty_row(seq_len: int, max_per_row: int, pad_id: int) -> dict[str, np.ndarray]:
  return {'tokens': np.full((seq_len,), pad_id, np.int32),
          'segment_ids': np.zeros((seq_len,), np.int32), 'positions': np.zeros((seq_len,), np.int32),
          'label': np.zeros((max_per_row,), np.int32),
          'label_weight': np.zeros((max_per_row,), np.float32),
          'example_id': np.full((max_per_row,), -1, np.int32)}


def train_batches(examples: grain.MapDataset, tokenizer, *, seq_len: int, max_per_row: int,
                  local_batch: int, threads: int) -> grain.IterDataset:
  """Endless packed batches from this process's shuffled, repeated example stream."""
  ds = examples.map(encode_fn(tokenizer, seq_len)).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(16, 4 * threads)))
  rows = _packer(ds, seq_len, max_per_row, local_batch, tokenizer.specials.pad)
  return rows.map(lambda r: to_row(r, max_per_row)).batch(local_batch, drop_remainder=True)


def eval_batches(source, tokenizer, *, seq_len: int, max_per_row: int, global_batch: int,
                 process_index: int, process_count: int) -> list[dict[str, np.ndarray]]:
  """Every example of `source` once, packed in order; this process's rows of each global batch."""
  ds = grain.MapDataset.source(source).map(encode_fn(tokenizer, seq_len)).to_iter_dataset()
  rows = [to_row(r, max_per_row)
          for r in _packer(ds, seq_len, max_per_row, global_batch, tokenizer.specials.pad)]
  rows = [r for r in rows if r['label_weight'].any()]
  num_batches = max(math.ceil(len(rows) / global_batch), 1)
  rows += [_empty_row(seq_len, max_per_row, tokenizer.specials.pad)
           for _ in range(num_batches * global_batch - len(rows))]
  local = global_batch // process_count
  batches = []
  for b in range(num_batches):
    mine = rows[b * global_batch + process_index * local:b * global_batch + (process_index + 1) * local]
    batches.append({k: np.stack([r[k] for r in mine]) for k in mine[0]})
  return batches


def mean_examples_per_row(batches) -> float:
  """Real examples per non-empty row over `batches` (what a packed step's batch holds)."""
  examples = rows = 0
  for b in batches:
    per_row = np.asarray(b['label_weight']).sum(axis=1)
    examples += float(per_row.sum())
    rows += int((per_row > 0).sum())
  return examples / max(rows, 1)
