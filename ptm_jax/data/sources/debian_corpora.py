"""English pretraining text from Debian packages: `linux_doc_en`, `gcide_en`, `kjv_en`.

Each needs its Debian package (`apt-get install -y --no-install-recommends <package>`); without it,
`get_source(name)` raises a one-line FileNotFoundError naming that command. Nothing else in ptm_jax
(tests included) needs these packages.

  * `linux_doc_en` (package `linux-doc-6.1`): `Documentation/**/*.rst.gz`, except `translations/`;
    one document per file, title = the path under Documentation/. RST is stripped minimally
    (`clean_rst`): directive and comment blocks (`.. xxx::`, `.. _label:`, `..`) with their indented
    bodies, `::` literal blocks, section over/underlines, grid and simple tables, field lists; inline
    roles, literals, emphasis and link targets are reduced to their text.
  * `gcide_en` (package `dict-gcide`): `/usr/share/dictd/gcide.dict.dz`, a gzip file in dictd format,
    and its `gcide.index` (headword, base64 offset, base64 length). One document per entry (distinct
    offset/length block; several headwords often share one); title = the entry's first headword; the
    `00-database-*` blocks are skipped. The dictd conversion holds no `<...>` SGML tags (GCIDE's
    source does), but its own plain-text markup, which `clean_gcide` strips: `\\Ab*an"don\\`
    syllabification with the pronunciation that follows, `[1913 Webster]`-style source lines,
    `{cross references}` braces, and `[a^]`-style character codes, mapped to Unicode.
  * `kjv_en` (package `bible-kjv`): the King James Bible read with its own `bible` command
    (`bible -f -l0 -p <dir> -d <file> gen1:1-rev22:21`; the data file `/usr/lib/bible.data` is a
    private compressed format, so the command is the reader); one document per chapter (1,189),
    title such as 'Genesis 1', one verse per paragraph.

All keep sentence boundaries like the other builders (`text_files.document_text`: one sentence per
line) and hold out ~2 % of documents for validation with `splits.validation_keys`.
"""
from __future__ import annotations

import base64
import glob
import gzip
import os
import re
import shutil
import subprocess
import unicodedata

import tensorflow_datasets as tfds

from ptm_jax.data import sources
from ptm_jax.data.sources import splits
from ptm_jax.data.sources import text_files

# Where the Debian packages install their files (tests point these at an empty dir to simulate absence).
LINUX_DOC_DIR = '/usr/share/doc/linux-doc-6.1/Documentation'
GCIDE_DICT = '/usr/share/dictd/gcide.dict.dz'
GCIDE_INDEX = '/usr/share/dictd/gcide.index'
BIBLE_DATA = '/usr/lib/bible.data'
BIBLE_COMMAND = 'bible'
PACKAGES = {'linux_doc_en': 'linux-doc-6.1', 'gcide_en': 'dict-gcide', 'kjv_en': 'bible-kjv'}
SPLIT_SEEDS = {'linux_doc_en': 61, 'gcide_en': 1913, 'kjv_en': 1611}


def _missing(name: str) -> FileNotFoundError:
  return FileNotFoundError(f'{name} needs the Debian package: '
                           f'apt-get install -y --no-install-recommends {PACKAGES[name]}')


def require(name: str) -> None:
  """Raises the one-line FileNotFoundError naming the apt command when `name`'s package is absent."""
  if name == 'linux_doc_en':
    present = os.path.isdir(LINUX_DOC_DIR)
  elif name == 'gcide_en':
    present = os.path.isfile(GCIDE_DICT) and os.path.isfile(GCIDE_INDEX)
  else:
    present = os.path.isfile(BIBLE_DATA) and shutil.which(BIBLE_COMMAND) is not None
  if not present:
    raise _missing(name)


def _paragraphs_to_text(paragraphs) -> str:
  return text_files.document_text(p for p in paragraphs if re.search(r'[A-Za-z]{2}', p))


# ----------------------------------------------------------------------------- linux_doc_en

_UNDERLINE = re.compile(r'^\s*[=\-~^*#+\'"`:.]{3,}\s*$')
_SIMPLE_TABLE_BORDER = re.compile(r'^\s*=+( +=+)+\s*$')
_GRID_LINE = re.compile(r'^\s*(\+[-=+]+\+?|\|.*)\s*$')
_FIELD = re.compile(r'^\s*:[\w][\w .-]*:(\s|$)')
_BULLET = re.compile(r'^\s*(?:[-*+\u2022]|#\.|\(?(?:\d+|[a-zA-Z])[.)])\s+')
_ROLE = re.compile(r':[\w:.+-]+:`([^`]*)`')
_LINK = re.compile(r'`([^`<]*?)\s*<[^`>]*>`_{1,2}')
_REF = re.compile(r'`([^`]+)`_{1,2}')
_LITERAL = re.compile(r'``(.+?)``')
_INTERPRETED = re.compile(r'`([^`]+)`')
_STRONG = re.compile(r'\*\*(\S(?:.*?\S)?)\*\*')
_EMPHASIS = re.compile(r'(?<![\w*])\*(\S(?:[^*]*?\S)?)\*(?![\w*])')
_FOOTNOTE = re.compile(r'\s*\[(?:#\w*|\*|\d+)\]_')


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip(' \t'))


def _inline(text: str) -> str:
  text = _ROLE.sub(lambda m: re.sub(r'\s*<[^>]*>$', '', m.group(1)) or m.group(1), text)
  text = _LINK.sub(r'\1', text)
  text = _LITERAL.sub(r'\1', text)
  text = _REF.sub(r'\1', text)
  text = _INTERPRETED.sub(r'\1', text)
  text = _FOOTNOTE.sub('', text)
  return _EMPHASIS.sub(r'\1', _STRONG.sub(r'\1', text))


def clean_rst(rst: str) -> list[str]:
  """reStructuredText -> prose paragraphs (see the module docstring for what is removed)."""
  paragraphs: list[str] = []
  current: list[str] = []
  skip_above = None  # skip lines indented deeper than this (directive/literal block bodies)
  in_table = False

  def flush():
    if current:
      paragraphs.append(_inline(' '.join(current)))
      current.clear()

  lines = rst.expandtabs(8).splitlines()
  for i, line in enumerate(lines):
    stripped = line.strip()
    if skip_above is not None:
      if not stripped or _indent(line) > skip_above:
        continue
      skip_above = None
    if in_table:
      if _SIMPLE_TABLE_BORDER.match(line) and (i + 1 == len(lines) or not lines[i + 1].strip()):
        in_table = False
      continue
    if not stripped:
      flush()
      continue
    if _BULLET.match(line):
      flush()
      line = ' ' * _indent(line) + _BULLET.sub('', line)
      stripped = line.strip()
    if stripped == '..' or stripped.startswith('.. '):
      flush()
      skip_above = _indent(line)
      continue
    if _SIMPLE_TABLE_BORDER.match(line):
      flush()
      in_table = True
      continue
    if _UNDERLINE.match(line) or _GRID_LINE.match(line) or _FIELD.match(line):
      flush()  # a heading's text line is kept as its own paragraph
      continue
    if stripped.endswith('::'):
      # "text::" keeps "text:"; a bare "::" disappears; the indented literal block after is code.
      text = line.rstrip()[:-2].rstrip()
      if text.strip():
        current.append(text.strip() + ':')
      flush()
      skip_above = _indent(lines[i])
      continue
    current.append(line.strip())
  flush()
  return paragraphs


def linux_doc_files() -> list[str]:
  """Sorted paths relative to Documentation/ of the English *.rst.gz files."""
  require('linux_doc_en')
  paths = glob.glob(os.path.join(LINUX_DOC_DIR, '**', '*.rst.gz'), recursive=True)
  relative = (os.path.relpath(p, LINUX_DOC_DIR) for p in paths)
  return sorted(p for p in relative if p.split(os.sep)[0] != 'translations')


def read_linux_docs() -> list[tuple[int, str, str]]:
  """(doc_id, title, text) of every English file with prose left after cleaning."""
  out = []
  for doc_id, rel in enumerate(linux_doc_files()):
    with gzip.open(os.path.join(LINUX_DOC_DIR, rel), 'rb') as f:
      rst, _ = text_files.decode_utf8(f.read())
    text = _paragraphs_to_text(clean_rst(rst))
    if text:
      out.append((doc_id, rel[:-len('.gz')].replace(os.sep, '/'), text))
  return out


# ----------------------------------------------------------------------------- gcide_en

_B64 = {c: i for i, c in enumerate('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')}
_SYLLABLES = re.compile(r'\\[^\\\n]*\\(?:\s*\([^()\n]*\))?')
# Source tags end each sense; the conversion sometimes appends the next headwords after one.
_SOURCE_TAG = re.compile(r'\[[^\]\n]*(?:Webster|WordNet|PJC|Century|RDH|RHUD|MW10|Chambers)[^\]\n]*\]'
                         r'[^\n]*(?:\n[ \t]+[A-Z][\w-]*[ \t]*(?=\n|$))*')
_BRACES = re.compile(r'\{([^{}]*)\}')
_SGML = re.compile(r'<[^<>\n]*>')
_CODE = re.compile(r'\[([^\[\]\s]{1,6})\]')
_NAMED = {'ae': 'æ', 'AE': 'Æ', 'oe': 'œ', 'OE': 'Œ', 'eth': 'ð', 'thorn': 'þ', 'yogh': 'ȝ',
          'ng': 'ŋ', 'imac': 'ī', 'aum': 'ä', 'root': '√', 'deg': '°', 'sect': '§', 'oo': 'oo',
          'oo^': 'o͝o', '=oo': 'o͞o', '=ae': 'ǣ', 'th': 'th', 'sharp': '♯', 'flat': '♭',
          'alpha': 'α', 'beta': 'β', 'gamma': 'γ', 'delta': 'δ', 'Delta': 'Δ', 'theta': 'θ',
          'iota': 'ι', 'pi': 'π', 'rho': 'ρ', 'tau': 'τ', 'phi': 'φ', 'mu': 'μ', 'omega': 'ω'}
# "[a^]" breve, "['e]" acute, "[=a]" / "[-o]" macron, '["o]' diaeresis, "[`e]" grave, "[~n]" tilde,
# "[.a]" dot, "[^a]" circumflex, "[,c]" cedilla: letter + combining mark, then NFC.
_MARKS = {'^': '\u0306', "'": '\u0301', '=': '\u0304', '-': '\u0304', '"': '\u0308', '`': '\u0300',
          '~': '\u0303', '.': '\u0307', ',': '\u0327'}


def _char_code(m: re.Match) -> str:
  code = m.group(1)
  if code in _NAMED:
    return _NAMED[code]
  if len(code) == 2 and code[1] == '^' and code[0].isalpha():
    return unicodedata.normalize('NFC', code[0] + _MARKS['^'])
  if len(code) == 2 and code[0] == '^' and code[1].isalpha():
    return unicodedata.normalize('NFC', code[1] + '\u0302')
  if len(code) == 2 and code[0] in _MARKS and code[1].isalpha():
    return unicodedata.normalize('NFC', code[1] + _MARKS[code[0]])
  if len(code) == 2 and code[0] == '*' and code[1].isalpha():
    return code[1]
  return m.group(0)  # "[Obs.]", "[R.]" and other labels are text


def _b64(value: str) -> int:
  number = 0
  for c in value:
    number = number * 64 + _B64[c]
  return number


def clean_gcide(entry: str) -> list[str]:
  """One dictd entry -> paragraphs (blank-line separated, wrapped lines joined)."""
  text = _SYLLABLES.sub('', entry)
  text = _SOURCE_TAG.sub('', text)
  text = _SGML.sub('', text)
  text = _remove_braces(text)
  text = _CODE.sub(_char_code, text)
  paragraphs = []
  for block in re.split(r'\n\s*\n', text):
    para = ' '.join(block.split())
    if para:
      paragraphs.append(para.replace(' ,', ','))
  return paragraphs


def _remove_braces(text: str) -> str:
  while True:
    text, n = _BRACES.subn(r'\1', text)
    if not n:
      return text


def gcide_entries() -> list[tuple[str, int, int]]:
  """(first headword, offset, length) of each distinct entry block, in file order."""
  require('gcide_en')
  blocks: dict[tuple[int, int], str] = {}
  with open(GCIDE_INDEX, 'rb') as f:
    index, _ = text_files.decode_utf8(f.read())
  for line in index.splitlines():
    parts = line.split('\t')
    if len(parts) != 3 or parts[0].startswith('00-database-') or parts[0].startswith('00-web1913'):
      continue
    key = (_b64(parts[1]), _b64(parts[2]))
    blocks.setdefault(key, parts[0])
  return [(head, off, n) for (off, n), head in sorted(blocks.items()) if not head.startswith('00-')]


def read_gcide() -> list[tuple[int, str, str]]:
  """(doc_id, headword, text) of every entry with prose, doc_id = the entry's rank by file offset."""
  entries = gcide_entries()
  with gzip.open(GCIDE_DICT, 'rb') as f:
    data = f.read()
  out = []
  for doc_id, (head, offset, length) in enumerate(entries):
    entry, _ = text_files.decode_utf8(data[offset:offset + length])
    paragraphs = [p for p in clean_gcide(entry) if re.search(r'[A-Za-z]{2}', p)]
    # The head line (headword, part of speech, etymology) stays one line: its "n. [L. ...]"
    # abbreviations would fool the sentence splitter.
    text = '\n'.join(filter(None, paragraphs[:1] + [_paragraphs_to_text(paragraphs[1:])]))
    if text:
      out.append((doc_id, head, text))
  return out


# ----------------------------------------------------------------------------- kjv_en

BOOKS = ('Genesis', 'Exodus', 'Leviticus', 'Numbers', 'Deuteronomy', 'Joshua', 'Judges', 'Ruth',
         '1 Samuel', '2 Samuel', '1 Kings', '2 Kings', '1 Chronicles', '2 Chronicles', 'Ezra',
         'Nehemiah', 'Esther', 'Job', 'Psalms', 'Proverbs', 'Ecclesiastes', 'Song of Solomon',
         'Isaiah', 'Jeremiah', 'Lamentations', 'Ezekiel', 'Daniel', 'Hosea', 'Joel', 'Amos', 'Obadiah',
         'Jonah', 'Micah', 'Nahum', 'Habakkuk', 'Zephaniah', 'Haggai', 'Zechariah', 'Malachi',
         'Matthew', 'Mark', 'Luke', 'John', 'Acts', 'Romans', '1 Corinthians', '2 Corinthians',
         'Galatians', 'Ephesians', 'Philippians', 'Colossians', '1 Thessalonians', '2 Thessalonians',
         '1 Timothy', '2 Timothy', 'Titus', 'Philemon', 'Hebrews', 'James', '1 Peter', '2 Peter',
         '1 John', '2 John', '3 John', 'Jude', 'Revelation')
_VERSE = re.compile(r'^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$')


def read_kjv_verses() -> list[tuple[str, int, int, str]]:
  """(book abbreviation, chapter, verse, text) of all 31,102 verses, via the `bible` command."""
  require('kjv_en')
  command = [shutil.which(BIBLE_COMMAND), '-f', '-l0', '-p', os.path.dirname(BIBLE_DATA),
             '-d', os.path.basename(BIBLE_DATA), 'gen1:1-rev22:21']
  result = subprocess.run(command, capture_output=True, check=False)
  if result.returncode:
    raise RuntimeError(f'kjv_en: {" ".join(command)} failed: {result.stderr.decode(errors="replace")}')
  text, _ = text_files.decode_utf8(result.stdout)
  verses = []
  for line in text.splitlines():
    m = _VERSE.match(line.strip())
    if m:
      verses.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()))
  return verses


def read_kjv_chapters() -> list[tuple[int, str, str]]:
  """(doc_id, 'Book n', text) per chapter in canonical order, one verse's sentences after another."""
  chapters: dict[tuple[str, int], list[str]] = {}
  for book, chapter, _, verse in read_kjv_verses():
    chapters.setdefault((book, chapter), []).append(verse)
  books = list(dict.fromkeys(book for book, _ in chapters))
  if len(books) != len(BOOKS):
    raise RuntimeError(f'kjv_en: expected {len(BOOKS)} books from `bible`, got {len(books)}')
  return [(doc_id, f'{BOOKS[books.index(book)]} {chapter}', text_files.document_text(verses))
          for doc_id, ((book, chapter), verses) in enumerate(chapters.items())]


# ----------------------------------------------------------------------------- builders

_READERS = {'linux_doc_en': read_linux_docs, 'gcide_en': read_gcide, 'kjv_en': read_kjv_chapters}
_DESCRIPTIONS = {
    'linux_doc_en': 'Linux 6.1 kernel documentation (Debian linux-doc-6.1), English .rst, markup stripped.',
    'gcide_en': 'GCIDE dictionary entries (Debian dict-gcide), markup stripped.',
    'kjv_en': 'King James Bible (Debian bible-kjv), one document per chapter.',
}


class _DebianBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One Debian-package corpus; subclasses name it. ~2 % of documents are validation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  SOURCE = ''
  code_path = None  # see sources.NO_CODE_PATH_WHY

  def _info(self) -> tfds.core.DatasetInfo:
    return sources.document_info(self, _DESCRIPTIONS[self.SOURCE])

  def _split_generators(self, dl_manager):
    del dl_manager
    docs = _READERS[self.SOURCE]()
    validation = splits.validation_keys([doc_id for doc_id, _, _ in docs], SPLIT_SEEDS[self.SOURCE])
    return {'train': self._generate_examples(docs, validation, False),
            'validation': self._generate_examples(docs, validation, True)}

  def _generate_examples(self, docs, validation: set[str], want_validation: bool):
    for doc_id, title, text in docs:
      if (str(doc_id) in validation) == want_validation:
        yield doc_id, {'text': text, 'doc_id': doc_id, 'title': title}


class LinuxDocEn(_DebianBuilder):
  SOURCE = 'linux_doc_en'


class GcideEn(_DebianBuilder):
  SOURCE = 'gcide_en'


class KjvEn(_DebianBuilder):
  SOURCE = 'kjv_en'


BUILDERS = {'linux_doc_en': LinuxDocEn, 'gcide_en': GcideEn, 'kjv_en': KjvEn}


def _factory(name: str):
  def make(data_dir: str):
    require(name)  # fail fast with the apt command, before tfds creates any directory
    return BUILDERS[name](data_dir=data_dir, file_format='array_record')
  return make


for _name in BUILDERS:
  sources.register(_name, _factory(_name))
