"""The grain input pipeline: shard documents by process, shuffle, tokenize, chunk, pack, batch."""
from __future__ import annotations

import grain
import ml_collections
import numpy as np

from ptm_jax.data import packing
from ptm_jax.data import sources
from ptm_jax.data.tokenizers import Tokenizer


def default_data_config() -> ml_collections.ConfigDict:
  """The `data` block of an experiment config."""
  return ml_collections.ConfigDict({
      'source': 'news_en',     # news_en | wiki_en | text:<glob> | jsonl:<glob> | 'a:0.7,b:0.3' | tfds name
      'seq_len': 128,
      'data_dir': '',          # '' -> $PTM_JAX_DATA_DIR -> ~/.cache/ptm_jax
      'bos': True,             # prepend [CLS]/BOS to every chunk
      'eos': True,             # append [SEP]/EOS to every chunk
      'shuffle': True,         # train split only; eval is read in order
      'shuffle_seed': 0,       # combined with make_iterator's seed
      'num_threads': 4,        # grain read/tokenize threads
      'pairs': '',             # '' | 'nsp' | 'sop': one [CLS] A [SEP] B [SEP] example per row (data/pairs.py)
      'cross_document': False, # RoBERTa FULL-SENTENCES: rows span documents, one segment each
      'max_train_examples': 0, # labelled tasks: use only the first N train examples (0 = all)
      'pack_examples': 0,      # classification tasks: up to N examples per row (sources/task_packing.py)
      'num_shards': 0,         # data shards (0 = one per process); fixes the data order across host counts
      'annotations': (),       # any of 'words', 'phrases', 'entities': *_ids arrays per row (data/annotate.py)
      'tokenizer': {
          'kind': 'sentencepiece',  # sentencepiece | wordpiece | hf_json
          'model_type': 'unigram',  # unigram | bpe (sentencepiece)
          'vocab_size': 8000,
          'path': '',               # vocab.txt / tokenizer.json / sp.model; pkg:<package>/<file> works
          'max_train_chars': 5_000_000,
          'extra_ids': 0,           # T5 sentinels <extra_id_i>, ids 5, 6, ... (SpecialIds.extra)
          'byte_fallback': True,    # unseen characters become byte pieces instead of [UNK]
          'character_coverage': 0.9995,
          'lowercase': True,        # wordpiece only
      },
  })


def _seed(shuffle_seed: int, seed: int) -> int:
  return int(np.random.SeedSequence([int(shuffle_seed) % 2**32, int(seed) % 2**32]).generate_state(1)[0])


def documents(source: sources.Source, split: str, *, seed: int, shuffle: bool, repeat: bool,
              process_index: int, process_count: int) -> grain.MapDataset:
  """This process's documents of `split` ({'text', 'doc_id', 'title'}), mixed by the source's weights."""
  parts = []
  for i, part in enumerate(source.parts(split)):
    # Shard documents (not rows) first, so processes never see each other's documents.
    part = part[process_index::process_count]
    if len(part) == 0:
      raise ValueError(f"split '{split}' of '{source.name}' has fewer documents than the "
                       f'{process_count} processes: use a bigger corpus or fewer hosts')
    if shuffle:
      part = part.shuffle(seed=(seed + i) % 2**32)
    if repeat:
      part = part.repeat()  # reseeds the shuffle each epoch
    parts.append(part)
  if len(parts) == 1:
    return parts[0]
  if repeat:
    return grain.MapDataset.mix(parts, list(source.weights))
  # A single evaluation pass reads every document once rather than stopping at the shortest part.
  return grain.MapDataset.concatenate(parts)


def _tokenize(tokenizer: Tokenizer):
  def fn(example: dict) -> dict:
    # Sentences are '\n'-separated; the model reads a document as one stream of text.
    return {'tokens': np.asarray(tokenizer.encode(example['text'].replace('\n', ' ')), np.int32)}

  return fn


def make_dataset(data_cfg, tokenizer: Tokenizer, *, split: str, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, repeat: bool = True,
                  source: sources.Source | None = None) -> grain.IterDataset:
  """Dataset of numpy batches {tokens, segment_ids, positions}: [B/processes, seq_len]."""
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible by '
                     f'process_count={process_count}')
  batch_size = global_batch_size // process_count
  source = source or sources.get_source(data_cfg.source, data_cfg.get('data_dir', ''))
  specials = tokenizer.specials
  docs = documents(source, split, seed=_seed(data_cfg.get('shuffle_seed', 0), seed),
                   shuffle=bool(data_cfg.get('shuffle', True)) and split == 'train', repeat=repeat,
                   process_index=process_index, process_count=process_count)
  threads = int(data_cfg.get('num_threads', 4))
  if (data_cfg.get('pairs', '') or data_cfg.get('cross_document', False)) and \
      data_cfg.get('annotations', ()):
    raise ValueError('data.annotations (word/phrase/entity ids) cannot be combined with '
                     'data.pairs or data.cross_document yet; use one of them')
  if data_cfg.get('pairs', '') or data_cfg.get('cross_document', False):
    from ptm_jax.data import pairs  # NSP/SOP pair rows, or RoBERTa's cross-document rows
    return pairs.make_dataset(
        data_cfg, tokenizer, docs, source=source, split=split, batch_size=batch_size,
        seed=_seed(data_cfg.get('shuffle_seed', 0), seed), process_index=process_index,
        process_count=process_count, repeat=repeat, threads=threads)
  if data_cfg.get('annotations', ()):
    from ptm_jax.data import annotate  # word/phrase/entity ids for whole-word, ERNIE, SpanBERT
    return annotate.make_dataset(data_cfg, tokenizer, docs, source=source, batch_size=batch_size,
                                 repeat=repeat, threads=threads)
  # Tokenizing in the MapDataset stage lets grain's read threads run it in parallel.
  ds = docs.map(_tokenize(tokenizer)).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(16, 4 * threads)))
  chunker = packing.ChunkDocuments(data_cfg.seq_len, specials.bos if data_cfg.get('bos', True) else None,
                                   specials.eos if data_cfg.get('eos', True) else None)
  chunker.flat_map({'tokens': []})  # a too-small seq_len fails here, not inside a grain thread
  ds = grain.experimental.FlatMapIterDataset(ds, chunker)
  ds = packing.pack(ds, data_cfg.seq_len, num_bins=batch_size, pad_id=specials.pad)
  # An endless train stream never has a remainder; a single pass keeps its last rows, padded below.
  ds = ds.batch(batch_size, drop_remainder=repeat)
  if not repeat:
    ds = ds.map(lambda b: packing.pad_batch(b, batch_size, specials.pad))
  return ds


def make_iterator(data_cfg, tokenizer: Tokenizer, *, split: str, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, repeat: bool = True,
                  source: sources.Source | None = None) -> grain.DatasetIterator:
  """Checkpointable iterator of this process's rows of each global batch.

  The data order depends on `data.num_shards` (0 = one shard per process), never on the number
  of hosts: a process owning several shards concatenates their rows, so one host with
  `num_shards=2` sees exactly the batches that two hosts see together (and a run can resume on a
  different host count).
  """
  from ptm_jax.data.sources import downstream  # labelled tasks: one example per row, no packing
  if source is None and data_cfg.source in downstream.TASKS:
    return downstream.make_task_iterator(
        data_cfg, tokenizer, split=split, global_batch_size=global_batch_size, seed=seed,
        process_index=process_index, process_count=process_count, repeat=repeat)
  num_shards = int(data_cfg.get('num_shards', 0) or process_count)
  if num_shards % process_count:
    raise ValueError(f'data.num_shards={num_shards} must be a multiple of the {process_count} '
                     'processes')
  per_process = num_shards // process_count
  parts = [make_dataset(data_cfg, tokenizer, split=split, global_batch_size=global_batch_size,
                        seed=seed, process_index=shard, process_count=num_shards, repeat=repeat,
                        source=source)
           for shard in range(process_index * per_process, (process_index + 1) * per_process)]
  if per_process == 1:
    return iter(parts[0])
  zipped = grain.experimental.ZipIterDataset(parents=parts)
  return iter(zipped.map(lambda rows: {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}))
