"""Tokenizers of imported models: HF tokenizer files, GGUF metadata, and chat templates.

Every loader returns a ptm_jax `Tokenizer` (`data/tokenizers.py`) whose `.backend` is the
underlying `tokenizers.Tokenizer`, plus an info dict (`bos_id`, `eos_ids`, `add_bos`,
`chat_template`) that generation needs and the vocabulary does not say.
"""
from __future__ import annotations

import json
import os
from typing import Any

import tokenizers as hf_tokenizers
from tokenizers import decoders, models as tok_models, pre_tokenizers

from ptm_jax.data import tokenizers as tokenizers_lib

# llama.cpp's `tokenizer.ggml.pre` names -> the pre-tokenizer the matching HF tokenizer.json uses.
_DIGITS_THEN_GPT2 = ('smollm', 'starcoder', 'refact', 'codeshell', 'command-r', 'exaone', 'minerva')
_GPT2 = ('default', 'gpt2', 'mpt', 'olmo', 'jais')
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def wrap(raw: hf_tokenizers.Tokenizer, name: str) -> tokenizers_lib.Tokenizer:
  """A ptm_jax Tokenizer over a `tokenizers.Tokenizer`, keeping the latter as `.backend`."""
  raw.no_padding()
  raw.no_truncation()
  tok = tokenizers_lib.from_hf(raw, name)
  tok.backend = raw
  return tok


def _json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _token_id(raw: hf_tokenizers.Tokenizer, token: Any) -> int | None:
  if isinstance(token, dict):  # tokenizer_config.json may store AddedToken dicts
    token = token.get('content')
  return raw.token_to_id(token) if isinstance(token, str) else None


def from_hf_dir(directory: str, hf_config: dict | None = None
                ) -> tuple[tokenizers_lib.Tokenizer | None, dict[str, Any]]:
  """tokenizer.json, or vocab.txt (WordPiece), or vocab.json + merges.txt (byte-level BPE)."""
  tcfg = _json(os.path.join(directory, 'tokenizer_config.json'))
  path = lambda name: os.path.join(directory, name)
  if os.path.isfile(path('tokenizer.json')):
    raw = hf_tokenizers.Tokenizer.from_file(path('tokenizer.json'))
  elif os.path.isfile(path('vocab.txt')):
    raw = hf_tokenizers.BertWordPieceTokenizer(
        path('vocab.txt'), lowercase=tcfg.get('do_lower_case', True))._tokenizer
  elif os.path.isfile(path('vocab.json')) and os.path.isfile(path('merges.txt')):
    raw = hf_tokenizers.ByteLevelBPETokenizer(path('vocab.json'), path('merges.txt'))._tokenizer
  else:
    return None, {}
  hf_config = hf_config or {}
  info: dict[str, Any] = {}
  chat = tcfg.get('chat_template')
  if chat is None and os.path.isfile(path('chat_template.jinja')):
    with open(path('chat_template.jinja')) as f:
      chat = f.read()
  if isinstance(chat, str):
    info['chat_template'] = chat
  bos = _token_id(raw, tcfg.get('bos_token'))
  bos = hf_config.get('bos_token_id') if bos is None else bos
  if bos is not None:
    info['bos_id'] = int(bos)
  eos = hf_config.get('eos_token_id')
  eos = eos if isinstance(eos, list) else ([] if eos is None else [eos])
  named = _token_id(raw, tcfg.get('eos_token'))
  info['eos_ids'] = sorted({int(e) for e in eos} | ({named} if named is not None else set()))
  info['add_bos'] = bool(tcfg.get('add_bos_token', False))
  return wrap(raw, f'hf:{os.path.basename(os.path.normpath(directory))}'), info


def from_gguf_metadata(meta: dict[str, Any], name: str
                       ) -> tuple[tokenizers_lib.Tokenizer, dict[str, Any]]:
  """Byte-level BPE from `tokenizer.ggml.*` (the layout of GPT-2-style GGUF vocabularies)."""
  kind = meta.get('tokenizer.ggml.model')
  if kind != 'gpt2':
    raise ValueError(f"GGUF tokenizer.ggml.model={kind!r} is not supported; supported: 'gpt2' "
                     '(byte-level BPE)')
  tokens = list(meta['tokenizer.ggml.tokens'])
  merges = [tuple(m.split(' ', 1)) for m in meta.get('tokenizer.ggml.merges', [])]
  bpe = tok_models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                       fuse_unk=False, byte_fallback=False)
  raw = hf_tokenizers.Tokenizer(bpe)
  pre = meta.get('tokenizer.ggml.pre', 'default')
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGITS_THEN_GPT2:
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  elif pre in _GPT2:
    raw.pre_tokenizer = byte_level
  elif pre in ('llama-bpe', 'llama3'):
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(hf_tokenizers.Regex(_LLAMA3_REGEX), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  else:
    raise ValueError(f'GGUF tokenizer.ggml.pre={pre!r} is not supported; supported: '
                     f'{", ".join(_GPT2 + _DIGITS_THEN_GPT2 + ("llama-bpe",))}')
  raw.decoder = decoders.ByteLevel()
  # Control (3) and user-defined (4) tokens are matched whole, before pre-tokenization.
  types = list(meta.get('tokenizer.ggml.token_type', [1] * len(tokens)))
  raw.add_special_tokens([hf_tokenizers.AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty == 3])
  raw.add_tokens([hf_tokenizers.AddedToken(t, special=False, normalized=False)
                  for t, ty in zip(tokens, types) if ty == 4])
  info: dict[str, Any] = {'add_bos': bool(meta.get('tokenizer.ggml.add_bos_token', False))}
  if 'tokenizer.ggml.bos_token_id' in meta:
    info['bos_id'] = int(meta['tokenizer.ggml.bos_token_id'])
  eos = [int(meta[k]) for k in ('tokenizer.ggml.eos_token_id', 'tokenizer.ggml.eot_token_id')
         if k in meta]
  info['eos_ids'] = sorted(set(eos))
  if 'tokenizer.chat_template' in meta:
    info['chat_template'] = str(meta['tokenizer.chat_template'])
  return wrap(raw, name), info


def save(tokenizer: Any, directory: str, info: dict[str, Any]) -> list[str]:
  """Writes tokenizer.json (+ tokenizer_config.json for HF) ; returns the files written."""
  raw = tokenizer if isinstance(tokenizer, hf_tokenizers.Tokenizer) else getattr(
      tokenizer, 'backend', None)
  if raw is None:
    raise ValueError(f'cannot save tokenizer {tokenizer!r}: only `tokenizers`-backed tokenizers '
                     '(imported ones) can be written as tokenizer.json')
  os.makedirs(directory, exist_ok=True)
  raw.save(os.path.join(directory, 'tokenizer.json'))
  tcfg: dict[str, Any] = {'tokenizer_class': 'PreTrainedTokenizerFast',
                          'add_bos_token': bool(info.get('add_bos', False))}
  if info.get('bos_id') is not None:
    tcfg['bos_token'] = raw.id_to_token(info['bos_id'])
  if info.get('eos_ids'):
    tcfg['eos_token'] = raw.id_to_token(info['eos_ids'][0])
  if info.get('chat_template'):
    tcfg['chat_template'] = info['chat_template']
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
    json.dump(tcfg, f, indent=2)
  return ['tokenizer.json', 'tokenizer_config.json']


def render_chat(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                **special_tokens: str) -> str:
  """Renders a (HF/GGUF) Jinja chat template the way transformers does (sandboxed, trimmed)."""
  import jinja2.sandbox  # a dependency of transformers; see requirements.txt

  def raise_exception(message):
    raise ValueError(f'chat template: {message}')

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=['jinja2.ext.loopcontrols'])
  env.filters['tojson'] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
  env.globals['raise_exception'] = raise_exception
  return env.from_string(template).render(messages=messages,
                                          add_generation_prompt=add_generation_prompt,
                                          **special_tokens)
