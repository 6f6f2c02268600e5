"""RoBERTa's FULL-SENTENCES rows (Liu et al. 2019, section 4.2), selected by `data.cross_document`.

"Each input is packed with full sentences sampled contiguously from one or more documents, such
that the total length is at most 512 tokens. Inputs may cross document boundaries. When we reach
the end of one document, we begin sampling sentences from the next document and add an extra
separator token between documents." Here: documents are read in order as a stream of whole
sentences, the last sentence of each document carrying the separator (`eos`, if `data.eos`);
sentences are packed greedily, in order, into rows of `[bos] + ...` (grain's first-fit packer with
a single bin: a sentence that does not fit closes the row); a sentence longer than a row is cut.
Every row is ONE segment -- `segment_ids` 1 on every token, 0 on padding; `positions` 0..n-1 --
so attention crosses document boundaries, as in RoBERTa.
"""
from __future__ import annotations

import grain
import numpy as np

from ptm_jax.data import pairs


def sentence_units(sentences, room: int, eos: int | None) -> list[np.ndarray]:
  """A document's sentences as packing units of <= room ids; eos closes the document."""
  units = [np.asarray(s, np.int32) for s in sentences if len(s)]
  if eos is not None and units:
    units[-1] = np.concatenate([units[-1], np.asarray([eos], np.int32)])
  return [u[i:i + room] for u in units for i in range(0, len(u), room)]


class _Units(grain.experimental.FlatMapTransform):
  max_fan_out = 4096  # an upper bound only; the IterDataset flat-map does not enforce it

  def flat_map(self, element):
    return [{'tokens': u} for u in element]


def _finish(bos: int | None, pad: int):
  def fn(row: dict) -> dict[str, np.ndarray]:
    tokens, valid = row['tokens'].astype(np.int32), row['tokens_segment_ids'] > 0
    if bos is not None:
      tokens = np.concatenate([np.asarray([bos], np.int32), tokens])
      valid = np.concatenate([[True], valid])
    index = np.arange(len(tokens), dtype=np.int32)
    return {'tokens': np.where(valid, tokens, pad).astype(np.int32),
            'segment_ids': valid.astype(np.int32),
            'positions': np.where(valid, index, 0).astype(np.int32)}
  return fn


def rows(docs: grain.MapDataset, tokenizer, data_cfg, read: grain.ReadOptions) -> grain.IterDataset:
  """Rows {tokens, segment_ids, positions} of `data_cfg.seq_len`, documents concatenated."""
  specials = tokenizer.specials
  bos = specials.bos if data_cfg.get('bos', True) else None
  eos = specials.eos if data_cfg.get('eos', True) else None
  room = int(data_cfg.seq_len) - (bos is not None)
  if room < 1:
    raise ValueError(f'seq_len={data_cfg.seq_len} leaves no room for tokens next to bos')
  split_sentences = pairs.sentence_tokenizer(tokenizer)
  units = docs.map(lambda d: sentence_units(split_sentences(d['text']), room, eos))
  ds = grain.experimental.FlatMapIterDataset(units.to_iter_dataset(read), _Units())
  # One bin: rows take sentences strictly in stream order, so a row is contiguous text.
  packed = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct={'tokens': room}, num_packing_bins=1, shuffle_bins=False,
      padding_struct={'tokens': specials.pad})
  return packed.map(_finish(bos, specials.pad))
