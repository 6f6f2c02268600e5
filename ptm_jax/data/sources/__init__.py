"""Registry of text sources: tfds array_record builders resolved by name, read without TensorFlow."""
from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from ptm_jax.data import cache_lock

# Modules that register builders when imported (each calls register() at import time).
_BUILTIN_MODULES = ('news_en', 'wiki_en', 'text_files', 'downstream', 'people_daily_zh', 'debian_corpora')
_NAMED: dict[str, Callable[[str], tfds.core.DatasetBuilder]] = {}
_PREFIXED: dict[str, Callable[[str, str], tfds.core.DatasetBuilder]] = {}
SPLITS = ('train', 'validation')
# Our builders set `code_path = None`: tfds 4.9.10 derives it through `importlib_resources`, which it
# only installs for Python < 3.9, and the path only locates a checksums file we never ship.
NO_CODE_PATH_WHY = 'tfds code_path needs importlib_resources; builders download nothing'


def register(name: str, factory: Callable, *, prefix: bool = False) -> None:
  """Adds `name` (factory(data_dir)) or a `name:<arg>` prefix (factory(data_dir, arg)) to the registry."""
  (_PREFIXED if prefix else _NAMED)[name] = factory


def _ensure_registered() -> None:
  for module in _BUILTIN_MODULES:
    importlib.import_module(f'{__name__}.{module}')


def resolve_data_dir(data_dir: str | None = '') -> str:
  """config `data.data_dir`, else $PTM_JAX_DATA_DIR, else ~/.cache/ptm_jax."""
  chosen = data_dir or os.environ.get('PTM_JAX_DATA_DIR') or os.path.join('~', '.cache', 'ptm_jax')
  return os.path.abspath(os.path.expanduser(chosen))


def document_info(builder: tfds.core.DatasetBuilder, description: str) -> tfds.core.DatasetInfo:
  """The schema every pretraining source shares: sentences joined by '\\n', an int id, a title."""
  features = tfds.features.FeaturesDict({
      'text': tfds.features.Text(), 'doc_id': np.int64, 'title': tfds.features.Text()})
  return tfds.core.DatasetInfo(builder=builder, description=description, features=features,
                               metadata=tfds.core.MetadataDict())


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Writes the array_record files once; one process per data dir does it, the others wait."""
  config = builder.builder_config.name if builder.builder_config else ''
  # GCS holds TFRecord copies only, so asking it would just cost a network timeout offline.
  cache_lock.build_once(
      os.fspath(builder.data_dir_root), f'tfds-{builder.name}-{config}-{builder.version}',
      builder.is_prepared,
      lambda: builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(try_download_gcs=False)))
  return _read_info(builder)


def _read_info(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """A builder made before another process prepared its data has no splits yet (tfds reads them
  from disk only at construction): read them now."""
  if not builder.info.splits:
    builder.info.read_from_directory(builder.data_dir)
  return builder


def _decode(example: dict) -> dict:
  """tfds hands back Text features as bytes; the pipeline works on str."""
  def as_str(value):
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)

  if 'text' not in example:
    raise ValueError(f"source examples need a 'text' feature, got {sorted(example)}")
  out = {'text': as_str(example['text']), 'doc_id': int(example.get('doc_id', -1)),
         'title': as_str(example.get('title', b''))}
  if 'words' in example:  # a kept segmentation (people_daily_zh): whole-word / ERNIE masking
    out['words'] = as_str(example['words'])
  return out


@dataclasses.dataclass(frozen=True)
class Source:
  """One prepared source or a weighted mixture of them."""

  name: str
  builders: tuple[tfds.core.DatasetBuilder, ...]
  weights: tuple[float, ...]

  @property
  def fingerprint(self) -> str:
    """Identifies the prepared data (builder, config, version, weights) for caches keyed on it."""
    parts = []
    for builder, weight in zip(self.builders, self.weights):
      config = builder.builder_config.name if builder.builder_config else ''
      parts.append(f'{builder.name}/{config}/{builder.version}@{weight:g}')
    return ','.join(parts)

  def num_examples(self, split: str) -> int:
    """Documents in `split` summed over the mixture's parts."""
    return sum(len(self._data_source(b, split)) for b in self.builders)

  def split_sizes(self) -> dict[str, int]:
    """{'train': n, 'validation': m} documents."""
    return {split: self.num_examples(split) for split in SPLITS}

  def _data_source(self, builder, split: str):
    if split not in builder.info.splits:
      raise ValueError(f"source '{builder.name}' has no split '{split}' "
                       f'(it has {sorted(builder.info.splits)})')
    return builder.as_data_source(split)

  def parts(self, split: str) -> list[grain.MapDataset]:
    """One grain MapDataset of {'text', 'doc_id', 'title'} dicts per mixture part."""
    return [grain.MapDataset.source(self._data_source(b, split)).map(_decode) for b in self.builders]

  def texts(self, split: str, max_chars: int) -> Iterator[str]:
    """Sentences from the first ~max_chars characters of `split`, each part by its weight share."""
    total = sum(self.weights)
    for part, weight in zip(self.parts(split), self.weights):
      budget = max_chars * weight / total
      for example in part:
        for sentence in example['text'].split('\n'):
          if budget <= 0:
            break
          budget -= len(sentence)
          yield sentence
        if budget <= 0:
          break


def _parse_mixture(name: str) -> list[tuple[str, float]]:
  parts = []
  for item in name.split(','):
    head, _, tail = item.strip().rpartition(':')
    try:
      parts.append((head, float(tail)))
    except ValueError:
      parts.append((item.strip(), 1.0))
  if any(w <= 0 or not n for n, w in parts):
    raise ValueError(f"bad mixture '{name}': write 'name:weight,name:weight' with positive weights")
  return parts


def get_builder(name: str, data_dir: str = '') -> tfds.core.DatasetBuilder:
  """The (unprepared) builder for a registered name, a `prefix:<arg>`, or a tfds catalog name."""
  _ensure_registered()
  data_dir = resolve_data_dir(data_dir)
  if name in _NAMED:
    return _NAMED[name](data_dir)
  prefix, sep, arg = name.partition(':')
  if sep and prefix in _PREFIXED:
    return _PREFIXED[prefix](data_dir, arg)
  try:
    return tfds.builder(name, data_dir=data_dir, file_format='array_record')
  except Exception as e:  # tfds raises several types (DatasetNotFoundError, ValueError, ...)
    known = ', '.join(sorted(_NAMED) + [f'{p}:<glob>' for p in sorted(_PREFIXED)])
    raise ValueError(f"unknown data source '{name}': use one of {known}, a mixture "
                     f"'a:0.7,b:0.3', or a tfds catalog name ({type(e).__name__})") from None


def get_source(name: str, data_dir: str = '', prepare_data: bool = True) -> Source:
  """Resolves (and prepares once) news_en, wiki_en, text:<glob>, jsonl:<glob>, mixtures, catalog names."""
  name = (name or '').strip()
  if not name:
    raise ValueError("data.source is empty: set it to e.g. 'news_en', 'text:corpus/*.txt' or "
                     "'news_en:0.7,wiki_en:0.3'")
  pairs = _parse_mixture(name) if ',' in name else [(name, 1.0)]
  builders = []
  for part, _ in pairs:
    builder = get_builder(part, data_dir)
    builders.append(prepare(builder) if prepare_data else builder)
  source = Source(name, tuple(builders), tuple(w for _, w in pairs))
  if prepare_data and source.num_examples('train') == 0:
    raise ValueError(f"data source '{name}' has no training documents: add text to it")
  return source
