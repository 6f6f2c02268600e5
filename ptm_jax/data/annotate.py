"""Word, phrase and entity structure of documents as int32 id arrays aligned with the tokens.

Whole-word masking, ERNIE knowledge masking and SpanBERT spans run on device and need to know
which tokens belong together. With `data.annotations` set (any of 'words', 'phrases',
'entities'), the loader tokenizes each document word by word and adds, next to `tokens`,
`word_ids` / `phrase_ids` / `entity_ids` `[B, L]`: tokens of one unit share an id, 0 elsewhere
(padding, [CLS]/[SEP], tokens outside any phrase/entity); 'sentences' adds `sentence_ids`
(BART sentence permutation: one id per sentence as `sentences_of` splits it). After packing, ids are renumbered
1..n along each row (grain's packer copies extra features verbatim, so two documents of a row
would otherwise share ids), so ids are unique within a row and never exceed its length.

Where the words come from:
  * a document with a `words` feature (people_daily_zh: one sentence per line, tokens `word/tag`,
    compounds `[中国/ns 政府/n]nt`): its segmentation. Each word is tokenized on its own, so a
    piece never straddles two words; the lone '▁' piece sentencepiece puts in front of every
    encoded word is dropped except at a sentence start, where text encoding has it too.
  * otherwise: whitespace words of `text`. For sentencepiece (whitespace pre-split) encoding word
    by word gives exactly the ids of encoding the text, and a word is a '▁'-initial piece plus
    its continuation pieces (punctuation attached to a word belongs to it).
Entities:
  * Chinese (`words`): `nr`/`ns`/`nt` words, a bracketed compound with such an outer tag, and
    consecutive `nr` words (surname 江/nr + given name 泽民/nr) as one person.
  * English: maximal runs of Capitalised words (first letter upper-case; "I" excluded), allowing
    the lower-case connectors of `_NAME_CONNECTORS` between two Capitalised words ("Bank of
    England"); a run never continues past a word ending in punctuation, and a sentence-initial
    word is not evidence of a name, so it is dropped from the run that starts the sentence
    ("The Fed said" -> "Fed"; "Obama said" at a sentence start -> none).
Phrases:
  * Chinese: bracketed compounds, and maximal runs of >= 2 words with nominal / modifier tags
    (`_ZH_PHRASE_TAGS`: nouns, names, adjectives, numerals, measure words, time words, idioms,
    abbreviations), cut into chunks of at most `MAX_PHRASE_WORDS` words.
  * English: collocations of a lexicon mined once from the train split (`mine_collocations`:
    lower-cased word bigrams/trigrams inside sentences, not across punctuation, first and last
    word not a stop word, count >= `LEXICON_MIN_COUNT`, normalised PMI
    log(p(w1..wn) / prod p(wi)) / ((n - 1) * -log p(w1..wn)) >= `LEXICON_MIN_NPMI`), cached under
    `<data_dir>/lexicons/<key>/collocations.json` keyed by the source fingerprint, the tokenizer
    and these constants; matched greedily, longest first.
Entity and phrase ids skip punctuation pieces at the edges of each word ("England," masks
"England" only).
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import unicodedata

import grain
import numpy as np

from ptm_jax.data import cache_lock, packing

ANNOTATIONS = ('words', 'phrases', 'entities', 'sentences')
KEYS = {'words': 'word_ids', 'phrases': 'phrase_ids', 'entities': 'entity_ids',
        'sentences': 'sentence_ids'}
ENTITY_TAGS = ('nr', 'ns', 'nt')
MAX_PHRASE_WORDS = 4
LEXICON_MIN_COUNT = 5
LEXICON_MIN_NPMI = 0.5
LEXICON_MAX_CHARS = 3_000_000
_LEXICON_VERSION = 1
_ZH_PHRASE_TAGS = frozenset(('n', 'nr', 'ns', 'nt', 'nz', 'nx', 'vn', 'an', 'a', 'b', 'f', 's', 't',
                             'm', 'q', 'j', 'l', 'i', 'h', 'k', 'Ng', 'Tg', 'Ag', 'Mg'))
_NAME_CONNECTORS = frozenset(('of', 'de', 'van', 'von', 'der', 'da', 'du', 'la', 'al', 'bin'))
_STOPWORDS = frozenset("""a an the of to in on at by for from with and or but if as is are was were be
been being it its this that these those he she they we you i his her their our your my me him them us
not no so than then there here which who whom what when where why how all any some each more most
other such only own same too very can will just do does did has have had would should could may might
must shall into over after before about against between through during under again further once
also said says""".split())
_SENTENCE_END = re.compile(r'[.!?:;]["\'”’)\]]*$')
_PARAGRAPH_ID = re.compile(r'^\d{8}-\d{2}-\d{3}-\d{3}$')  # PKU paragraph ids, if a file keeps them


def _is_punct(text: str) -> bool:
  return bool(text) and all(unicodedata.category(c)[0] in 'PS' for c in text)


# ----------------------------------------------------------------------------- words of a document


def parse_tagged_line(line: str) -> list[tuple[str, str, int, str]]:
  """`word/tag` tokens of one `words` line -> (word, tag, compound index (0 = none), outer tag)."""
  out, compound, start = [], 0, None
  for token in line.split():
    word, _, tag = token.rpartition('/')
    if not word:
      word, tag = token, ''
    if start is None and word.startswith('[') and len(word) > 1:
      compound, start, word = compound + 1, len(out), word[1:]
    tag, closing, outer = tag.partition(']')
    if start is None and not out and _PARAGRAPH_ID.match(word):
      continue
    out.append((word, tag, compound if start is not None else 0, ''))
    if start is not None and closing:  # '...]nt': the outer tag applies to the whole compound
      out[start:] = [(w, t, c, outer) for w, t, c, _ in out[start:]]
      start = None
  return out


def sentences_of(example: dict) -> tuple[list[list[tuple[str, str, int, str]]], bool]:
  """Sentences as (word, tag, compound, outer tag) lists, and whether words come from `words`."""
  words = example.get('words') or ''
  if isinstance(words, bytes):
    words = words.decode('utf-8')
  if words.strip():
    return [s for s in (parse_tagged_line(l) for l in words.split('\n')) if s], True
  out = []
  for line in example['text'].split('\n'):
    sentence: list[tuple[str, str, int, str]] = []
    for word in line.split():
      sentence.append((word, '', 0, ''))
      if _SENTENCE_END.search(word):  # a sentence ends inside the line
        out.append(sentence)
        sentence = []
    if sentence:
      out.append(sentence)
  return out, False


# ----------------------------------------------------------------------------- groups of words


def entity_groups_zh(sentence) -> list[int]:
  """Per word: 1-based entity index within the sentence (0 = none) from nr/ns/nt tags."""
  groups, n, prev_tag, prev_compound = [], 0, '', 0
  for word, tag, compound, outer in sentence:
    kind = outer if compound else tag
    if kind in ENTITY_TAGS:
      same = (compound and compound == prev_compound) or (
          kind == 'nr' and prev_tag == 'nr' and not compound and not prev_compound)
      if not same:
        n += 1
      groups.append(n)
    else:
      groups.append(0)
    prev_tag, prev_compound = kind if kind in ENTITY_TAGS else '', compound
  return groups


def phrase_groups_zh(sentence) -> list[int]:
  """Per word: phrase index (0 = none): compounds and runs of >= 2 nominal/modifier words."""
  groups, n, run = [0] * len(sentence), 0, []

  def close():
    nonlocal n, run
    for start in range(0, len(run), MAX_PHRASE_WORDS):
      chunk = run[start:start + MAX_PHRASE_WORDS]
      if len(chunk) >= 2:
        n += 1
        for i in chunk:
          groups[i] = n
    run = []

  i = 0
  while i < len(sentence):
    compound = sentence[i][2]
    if compound:  # an annotated multi-word chunk is one phrase, whatever its length
      close()
      n += 1
      while i < len(sentence) and sentence[i][2] == compound:
        groups[i] = n
        i += 1
      continue
    if sentence[i][1] in _ZH_PHRASE_TAGS:
      run.append(i)
    else:
      close()
    i += 1
  close()
  return groups


def _capitalised(word: str) -> bool:
  core = word.strip('"\'“”‘’()[]{}«»')
  return bool(core) and core[0].isupper() and core != 'I'


def entity_groups_en(sentence) -> list[int]:
  """Per word: entity index (0 = none): runs of Capitalised words not at the sentence start."""
  words = [w for w, *_ in sentence]
  groups, n, i = [0] * len(words), 0, 0
  while i < len(words):
    if not _capitalised(words[i]):
      i += 1
      continue
    run = [i]
    j = i
    while not _is_punct(words[j][-1]) and j + 1 < len(words):
      if _capitalised(words[j + 1]):
        j += 1
      elif (words[j + 1] in _NAME_CONNECTORS and j + 2 < len(words) and _capitalised(words[j + 2])):
        j += 2
      else:
        break
      run = list(range(i, j + 1))
    if run[0] == 0:  # sentence-initial capital is no evidence of a name
      run = run[1:]
      while run and words[run[0]] in _NAME_CONNECTORS:
        run = run[1:]
    if run:
      n += 1
      for k in run:
        groups[k] = n
    i = j + 1
  return groups


def _norm(word: str) -> str:
  return word.lower().strip(''.join(c for c in word if _is_punct(c)) or ' ')


def _ngram_ok(raw: list[str]) -> bool:
  """A candidate collocation: no punctuation inside, content words at both ends."""
  if any(_is_punct(w[-1]) for w in raw[:-1]):
    return False
  normed = [_norm(w) for w in raw]
  return all(normed) and normed[0] not in _STOPWORDS and normed[-1] not in _STOPWORDS


def mine_collocations(sentences, *, min_count: int = LEXICON_MIN_COUNT,
                      min_npmi: float = LEXICON_MIN_NPMI, max_n: int = 3) -> dict[str, float]:
  """{'w1 w2[ w3]': npmi} of the bigrams/trigrams of an iterable of whitespace sentences."""
  unigrams, ngrams, total = collections.Counter(), collections.Counter(), 0
  for sentence in sentences:
    raw = sentence.split()
    normed = [_norm(w) for w in raw]
    unigrams.update(w for w in normed if w)
    total += len(raw)
    for n in range(2, max_n + 1):
      for i in range(len(raw) - n + 1):
        if _ngram_ok(raw[i:i + n]):
          ngrams[tuple(normed[i:i + n])] += 1
  lexicon = {}
  for gram, count in ngrams.items():
    if count < min_count:
      continue
    log_p = math.log(count / total)
    pmi = log_p - sum(math.log(unigrams[w] / total) for w in gram)
    npmi = pmi / ((len(gram) - 1) * -log_p)
    if npmi >= min_npmi:
      lexicon[' '.join(gram)] = round(npmi, 4)
  return lexicon


def phrase_groups_en(sentence, lexicon: dict[str, float] | frozenset, max_n: int = 3) -> list[int]:
  """Per word: phrase index (0 = none), greedy longest match of the lexicon's collocations."""
  words = [w for w, *_ in sentence]
  groups, n, i = [0] * len(words), 0, 0
  while i < len(words):
    for size in range(max_n, 1, -1):
      raw = words[i:i + size]
      if len(raw) == size and _ngram_ok(raw) and ' '.join(_norm(w) for w in raw) in lexicon:
        n += 1
        groups[i:i + size] = [n] * size
        i += size
        break
    else:
      i += 1
  return groups


def load_or_mine_lexicon(source, tokenizer, data_dir: str) -> dict[str, float]:
  """The source's collocation lexicon, mined from its train split once and cached."""
  fields = dict(source=source.fingerprint, tokenizer=tokenizer.name, version=_LEXICON_VERSION,
                min_count=LEXICON_MIN_COUNT, min_npmi=LEXICON_MIN_NPMI, max_chars=LEXICON_MAX_CHARS)
  key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(data_dir, 'lexicons', key, 'collocations.json')

  def mine():
    lexicon = mine_collocations(source.texts('train', LEXICON_MAX_CHARS))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump({'fields': fields, 'collocations': lexicon}, f, ensure_ascii=False, indent=0)
    os.replace(tmp, path)

  cache_lock.build_once(data_dir, f'lexicon-{key}', lambda: os.path.exists(path), mine)
  with open(path, encoding='utf-8') as f:
    return json.load(f)['collocations']


# ----------------------------------------------------------------------------- tokens + ids


class Annotator:
  """Document -> {'tokens', 'word_ids'[, 'phrase_ids', 'entity_ids']} int32 arrays (pure numpy)."""

  def __init__(self, tokenizer, annotations=ANNOTATIONS, lexicon=None):
    unknown = sorted(set(annotations) - set(ANNOTATIONS))
    if unknown:
      raise ValueError(f'unknown data.annotations {unknown}; choose from {list(ANNOTATIONS)}')
    self.tokenizer, self.annotations = tokenizer, tuple(annotations)
    self.lexicon = lexicon or {}
    self._pieces: dict[int, tuple[bool, bool]] = {}

  def _piece(self, i: int) -> tuple[bool, bool]:
    """(is the lone word-start piece '▁', is it punctuation (or '▁') at a word's edge)."""
    if i not in self._pieces:
      piece = self.tokenizer.id_to_piece(i) or ''
      core = piece.replace('▁', '').replace('##', '')
      self._pieces[i] = (piece == '▁', piece == '▁' or _is_punct(core))
    return self._pieces[i]

  def __call__(self, example: dict) -> dict[str, np.ndarray]:
    sentences, tagged = sentences_of(example)
    flat = [w for s in sentences for w in s]
    ids_per_word = self.tokenizer.encode_batch([w for w, *_ in flat]) if flat else []
    tokens, word_of_token, edge, sentence_of_token = [], [], [], []
    k = 0
    for sentence_index, s in enumerate(sentences):
      for j in range(len(s)):
        ids = list(ids_per_word[k])
        if tagged and j > 0 and len(ids) > 1 and self._piece(ids[0])[0]:
          ids = ids[1:]  # no space between words of unsegmented text
        is_edge = [self._piece(i)[1] for i in ids]
        # Punctuation pieces at either end of a word stay out of phrases and entities.
        inner = [not e for e in is_edge]
        if any(inner):
          first, last = inner.index(True), len(inner) - 1 - inner[::-1].index(True)
          inner = [first <= t <= last for t in range(len(ids))]
        tokens += ids
        word_of_token += [k] * len(ids)
        sentence_of_token += [sentence_index] * len(ids)
        edge += [not x for x in inner]
        k += 1
    tokens_T = np.asarray(tokens, np.int32)
    word_T = np.asarray(word_of_token, np.int64)
    edge_T = np.asarray(edge, bool)
    out = {'tokens': tokens_T}
    if 'words' in self.annotations:
      out['word_ids'] = (word_T + 1).astype(np.int32)
    if 'sentences' in self.annotations:
      out['sentence_ids'] = np.asarray(sentence_of_token, np.int32) + 1
    for name, fn in (('phrases', self._phrases), ('entities', self._entities)):
      if name in self.annotations:
        per_word, offset = [], 0
        for s in sentences:
          g = np.asarray(fn(s, tagged), np.int64)
          per_word.append(np.where(g > 0, g + offset, 0))
          offset += int(g.max(initial=0))
        groups = np.concatenate(per_word) if per_word else np.zeros((0,), np.int64)
        ids = groups[word_T] if len(word_T) else np.zeros((0,), np.int64)
        out[KEYS[name]] = np.where(edge_T, 0, ids).astype(np.int32)
    return out

  def _phrases(self, sentence, tagged):
    return phrase_groups_zh(sentence) if tagged else phrase_groups_en(sentence, self.lexicon)

  def _entities(self, sentence, tagged):
    return entity_groups_zh(sentence) if tagged else entity_groups_en(sentence)


def renumber_row(ids_L: np.ndarray, segment_ids_L: np.ndarray) -> np.ndarray:
  """Ids made unique within a packed row: 1..n in order of (segment, id); 0 stays 0."""
  keep = (ids_L > 0) & (segment_ids_L > 0)
  key = segment_ids_L.astype(np.int64) * (int(ids_L.max(initial=0)) + 1) + ids_L
  _, dense = np.unique(key[keep], return_inverse=True)
  out = np.zeros(ids_L.shape, np.int32)
  out[keep] = dense.reshape(-1) + 1
  return out


class ChunkAnnotated(grain.experimental.FlatMapTransform):
  """Like packing.ChunkDocuments, cutting the annotation arrays alongside (bos/eos get id 0)."""

  max_fan_out = 4096

  def __init__(self, seq_len: int, bos: int | None, eos: int | None, keys: tuple[str, ...]):
    self.seq_len, self.bos, self.eos, self.keys = seq_len, bos, eos, keys

  def flat_map(self, element):
    chunks = packing.chunk_document(element['tokens'], self.seq_len, self.bos, self.eos)
    room = self.seq_len - (self.bos is not None) - (self.eos is not None)
    head = np.zeros((int(self.bos is not None),), np.int32)
    tail = np.zeros((int(self.eos is not None),), np.int32)
    out = []
    for c, chunk in enumerate(chunks):
      row = {'tokens': chunk}
      for key in self.keys:
        row[key] = np.concatenate([head, element[key][c * room:(c + 1) * room], tail]).astype(np.int32)
      out.append(row)
    return out


def pack(chunks: grain.IterDataset, seq_len: int, num_bins: int, pad_id: int,
         keys: tuple[str, ...]) -> grain.IterDataset:
  """packing.pack carrying the annotation arrays, renumbered to be unique within each row."""
  names = ('tokens',) + keys
  packed = grain.experimental.FirstFitPackIterDataset(
      chunks, length_struct={k: seq_len for k in names}, num_packing_bins=max(1, num_bins),
      shuffle_bins=False, padding_struct={k: (pad_id if k == 'tokens' else 0) for k in names})

  def finish(row):
    segments = row['tokens_segment_ids'].astype(np.int32)
    out = {'tokens': row['tokens'].astype(np.int32), 'segment_ids': segments,
           'positions': row['tokens_positions'].astype(np.int32)}
    for key in keys:
      out[key] = renumber_row(row[key].astype(np.int64), segments)
    return out

  return packed.map(finish)


def make_dataset(data_cfg, tokenizer, docs: grain.MapDataset, *, source, batch_size: int,
                 repeat: bool, threads: int) -> grain.IterDataset:
  """loader.make_dataset's pipeline with annotation arrays: annotate -> chunk -> pack -> batch."""
  from ptm_jax.data import sources  # the loader imports this module lazily; no cycle
  annotations = tuple(data_cfg.annotations)
  keys = tuple(KEYS[a] for a in ANNOTATIONS if a in annotations)
  lexicon = None
  if 'phrases' in annotations:
    lexicon = load_or_mine_lexicon(source, tokenizer,
                                   sources.resolve_data_dir(data_cfg.get('data_dir', '')))
  annotator = Annotator(tokenizer, annotations, lexicon)
  specials = tokenizer.specials
  ds = docs.map(annotator).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(16, 4 * threads)))
  chunker = ChunkAnnotated(data_cfg.seq_len, specials.bos if data_cfg.get('bos', True) else None,
                           specials.eos if data_cfg.get('eos', True) else None, keys)
  chunker.flat_map({'tokens': np.zeros((0,), np.int32), **{k: np.zeros((0,), np.int32) for k in keys}})
  ds = grain.experimental.FlatMapIterDataset(ds, chunker)
  ds = pack(ds, data_cfg.seq_len, batch_size, specials.pad, keys)
  ds = ds.batch(batch_size, drop_remainder=repeat)
  if not repeat:
    ds = ds.map(lambda b: packing.pad_batch(b, batch_size, specials.pad))
  return ds
