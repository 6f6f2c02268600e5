"""`text:<glob>` and `jsonl:<glob>` builders over the user's own files, plus the sentence splitter."""
from __future__ import annotations

import bz2
import codecs
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator

from absl import logging
import tensorflow_datasets as tfds

from ptm_jax.data import sources
from ptm_jax.data.sources import splits

SPLIT_SEED = 20170207  # stored in the builder: changing it changes which documents are validation

# A boundary is terminal punctuation (plus closing quotes/brackets), whitespace, then an upper-case
# letter or digit; a tiny regex instead of punkt/spaCy keeps the data stack dependency-free.
_BOUNDARY = re.compile(r'([.!?]["\'\u201d\u2019)\]]*)\s+(?=["\'\u201c\u2018(\[]?[A-Z0-9])')
# "Mr. Smith", "U.S. President", "Jan. 5": a period after these does not end a sentence.
_ABBREVIATION = re.compile(
    r'(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Gen|Sen|Rep|Gov|Lt|Col|Capt|Sgt|Rev|vs|etc|No|Inc|Ltd|Co'
    r'|Corp|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|e\.g|i\.e|approx)|\b[A-Z])\.$')


def split_sentences(paragraph: str) -> list[str]:
  """Splits one paragraph into whitespace-normalised sentences."""
  paragraph = ' '.join(paragraph.split())
  out, start = [], 0
  for m in _BOUNDARY.finditer(paragraph):
    candidate = paragraph[start:m.end(1)]
    if _ABBREVIATION.search(candidate):
      continue
    out.append(candidate)
    start = m.end()
  out.append(paragraph[start:])
  return [s.strip() for s in out if s.strip()]


def document_text(paragraphs) -> str:
  """Sentences of all paragraphs, one per line: the `text` feature of every source."""
  return '\n'.join(s for p in paragraphs for s in split_sentences(p))


_BAD = threading.local()


def _count_and_replace(err: UnicodeDecodeError):
  _BAD.count += err.end - err.start
  return '\ufffd', err.end


codecs.register_error('ptm_jax_count', _count_and_replace)


def decode_utf8(raw: bytes) -> tuple[str, int]:
  """Decodes UTF-8, replacing invalid bytes by U+FFFD; returns (text, number of bytes replaced)."""
  _BAD.count = 0  # thread-local, so grain/tfds worker threads do not share the counter
  text = raw.decode('utf-8', errors='ptm_jax_count')
  return text, _BAD.count


def _read_bytes(path: str) -> bytes:
  opener = gzip.open if path.endswith('.gz') else bz2.open if path.endswith('.bz2') else open
  with opener(path, 'rb') as f:
    return f.read()


def iter_documents(paths, fmt: str) -> Iterator[tuple[str, dict, int]]:
  """Yields (split key, example without doc_id, non-UTF-8 bytes of the file on its first document)."""
  for path in paths:
    text, bad = decode_utf8(_read_bytes(path))
    if fmt == 'jsonl':
      for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
          body = obj['text']
        except (ValueError, KeyError, TypeError):
          raise ValueError(f"{path}:{lineno}: expected a JSON object with a string 'text' field") from None
        doc = document_text(str(body).split('\n'))
        if doc:
          yield str(obj.get('id', f'{path}:{lineno}')), {'text': doc, 'title': str(obj.get('title', ''))}, bad
          bad = 0
    else:
      # BERT's corpus convention: documents are separated by blank lines.
      for block_index, block in enumerate(re.split(r'\n[ \t\r\f\v]*\n', text)):
        doc = document_text([block])
        if doc:
          yield f'{path}:{block_index}', {'text': doc, 'title': os.path.basename(path)}, bad
          bad = 0


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """Which files (resolved at get_source time) and how to read them."""

  pattern: str = ''
  fmt: str = 'text'
  paths: tuple[str, ...] = ()


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Plain-text (blank-line separated documents) or JSONL (`text`, optional `title`/`id`) files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  code_path = None  # see sources.NO_CODE_PATH_WHY

  def _info(self) -> tfds.core.DatasetInfo:
    return sources.document_info(self, 'User-supplied text files.')

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config
    keys, bad, bad_files = [], 0, 0
    for key, _, file_bad in iter_documents(config.paths, config.fmt):
      keys.append(key)
      bad, bad_files = bad + file_bad, bad_files + bool(file_bad)
    if not keys:
      raise ValueError(f"no text in the {len(config.paths)} file(s) matching '{config.pattern}': "
                       'add text or fix the glob')
    if bad:
      logging.warning('%s:%s: replaced %d non-UTF-8 bytes in %d file(s) by U+FFFD', config.fmt,
                      config.pattern, bad, bad_files)
    self.info.metadata.update({'non_utf8_bytes': bad, 'num_documents': len(keys)})
    validation = splits.validation_keys(keys, SPLIT_SEED)
    return {'train': self._generate_examples(validation, False),
            'validation': self._generate_examples(validation, True)}

  def _generate_examples(self, validation: set[str], want_validation: bool):
    for doc_id, (key, example, _) in enumerate(iter_documents(self.builder_config.paths,
                                                              self.builder_config.fmt)):
      if (key in validation) == want_validation:
        yield doc_id, {**example, 'doc_id': doc_id}


def files_builder(fmt: str, data_dir: str, pattern: str) -> TextFiles:
  """A builder whose directory is keyed by a hash of the matched files' names, sizes and mtimes."""
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"{fmt}:{pattern} matches no files: fix the glob (relative to "
                            f"the working directory; ** needs recursive dirs)")
  h = hashlib.sha256(f'{fmt}|{SPLIT_SEED}'.encode())
  for p in paths:
    st = os.stat(p)
    h.update(f'|{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}'.encode())
  # tfds config names become directory names: text_files/<fmt>_<hash>/1.0.0, so new files never
  # overwrite data prepared from old ones.
  config = TextFilesConfig(name=f'{fmt}_{h.hexdigest()[:16]}', pattern=pattern, fmt=fmt,
                           paths=tuple(paths))
  return TextFiles(config=config, data_dir=data_dir, file_format='array_record')


sources.register('text', lambda data_dir, arg: files_builder('text', data_dir, arg), prefix=True)
sources.register('jsonl', lambda data_dir, arg: files_builder('jsonl', data_dir, arg), prefix=True)
