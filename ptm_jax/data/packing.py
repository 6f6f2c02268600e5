"""Chunk tokenized documents to fit `seq_len`, then pack chunks into rows with segment ids/positions."""
from __future__ import annotations

import grain
import numpy as np


def chunk_document(ids, seq_len: int, bos: int | None = None, eos: int | None = None) -> list[np.ndarray]:
  """Cuts one document's ids into pieces that, with bos/eos added to each, hold <= seq_len tokens."""
  room = seq_len - (bos is not None) - (eos is not None)
  if room < 1:
    raise ValueError(f'seq_len={seq_len} leaves no room for tokens next to bos/eos')
  ids = np.asarray(ids, np.int32)
  head = np.asarray([] if bos is None else [bos], np.int32)
  tail = np.asarray([] if eos is None else [eos], np.int32)
  return [np.concatenate([head, ids[i:i + room], tail]) for i in range(0, len(ids), room)]


class ChunkDocuments(grain.experimental.FlatMapTransform):
  """grain flat-map: one {'tokens': ids} document -> several {'tokens': chunk} elements."""

  # Only an upper bound for grain's MapDataset flat-map; the IterDataset flat-map used here does not
  # enforce it, so documents of any length are fine.
  max_fan_out = 4096

  def __init__(self, seq_len: int, bos: int | None, eos: int | None):
    self.seq_len, self.bos, self.eos = seq_len, bos, eos

  def flat_map(self, element):
    return [{'tokens': c} for c in chunk_document(element['tokens'], self.seq_len, self.bos, self.eos)]


def _rename(row: dict) -> dict:
  return {'tokens': row['tokens'].astype(np.int32),
          'segment_ids': row['tokens_segment_ids'].astype(np.int32),
          'positions': row['tokens_positions'].astype(np.int32)}


def pack(chunks: grain.IterDataset, seq_len: int, num_bins: int, pad_id: int = 0) -> grain.IterDataset:
  """Rows of `seq_len` int32 tokens / segment_ids (1..n, 0 = pad) / positions (0.. per segment)."""
  # grain's first-fit packer has exactly the contract's semantics (verified in the tests): a chunk
  # is never split across rows, segment ids restart at 1 per row, padding is 0; its state is
  # checkpointable, unlike a hand-rolled generator.
  packed = grain.experimental.FirstFitPackIterDataset(
      chunks, length_struct={'tokens': seq_len}, num_packing_bins=max(1, num_bins), shuffle_bins=False,
      padding_struct={'tokens': pad_id})
  return packed.map(_rename)


def pack_to_rows(documents, seq_len: int, *, bos: int | None = None, eos: int | None = None,
                 num_bins: int = 4, pad_id: int = 0) -> list[dict[str, np.ndarray]]:
  """Eager helper (tests, notebooks): chunk and pack a list of id lists."""
  ds = grain.MapDataset.source([{'tokens': np.asarray(d, np.int32)} for d in documents])
  chunks = grain.experimental.FlatMapIterDataset(ds.to_iter_dataset(), ChunkDocuments(seq_len, bos, eos))
  return list(pack(chunks, seq_len, num_bins, pad_id))


def pad_batch(batch: dict[str, np.ndarray], batch_size: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """Appends all-padding rows (segment id 0) so a final eval batch keeps the static batch size."""
  missing = batch_size - len(batch['tokens'])
  if missing <= 0:
    return batch
  return {k: np.concatenate([v, np.full((missing, *v.shape[1:]), pad_id if k == 'tokens' else 0, v.dtype)])
          for k, v in batch.items()}
