"""Text generation with an imported (or trained) decoder or encoder–decoder, KV-cached.

  python -m ptm_jax.generate --pretrained PATH --prompt "What is the capital of France?" \
      [--max_new_tokens 64] [--no_chat_template] [--strategy greedy|sample|beam] \
      [--num_beams 4] [--length_penalty 1.0] [--temperature 1.0] [--top_k 0] [--top_p 1.0] \
      [--seed 0]

PATH is anything `ptm_jax.interop.load_pretrained` reads (HF dir, .gguf, ptm_jax dir). For a
decoder the prompt goes through the tokenizer's chat template when it has one; for an
encoder–decoder (T5, BART) the prompt is the encoder input and the decoder starts from the
model's `decoder_start_id`. Decoding is `ptm_jax.decoding` (one jitted `lax.while_loop` over a
KV cache); it stops at EOS or after `max_new_tokens`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import jax
import numpy as np

from ptm_jax import decoding

_BUCKET = 32  # prompt lengths are rounded up to this, so nearby lengths share a compile


def generate_ids(model, params, prompts: Sequence[Sequence[int]],
                 options: decoding.Options = decoding.Options(), *,
                 rng: jax.Array | None = None) -> list[list[int]]:
  """New ids for each prompt (the EOS included if reached); a batch shares one compile."""
  prompts = [[int(i) for i in p] for p in prompts]
  if not prompts or any(not p for p in prompts):
    raise ValueError('generation needs non-empty prompts')
  if decoding.is_encoder_decoder(model):
    width = -(-max(len(p) for p in prompts) // _BUCKET) * _BUCKET
    tokens = np.full((len(prompts), width), options.pad_id, np.int32)
    segment_ids = np.zeros_like(tokens)
    for row, p in enumerate(prompts):
      tokens[row, :len(p)], segment_ids[row, :len(p)] = p, 1
    inputs = {'encoder_tokens': tokens, 'encoder_segment_ids': segment_ids}
  else:
    inputs = decoding.left_pad(prompts, options.pad_id, bucket=_BUCKET)
  out = decoding.generate(model, params, inputs, options, rng=rng)
  tokens, lengths = np.asarray(out['tokens']), np.asarray(out['lengths'])
  return [[int(t) for t in tokens[row, :lengths[row]]] for row in range(len(prompts))]


def greedy_generate(model, params, prompt_ids: Sequence[int], *, max_new_tokens: int = 64,
                    eos_ids: Sequence[int] = (), pad_id: int = 0) -> list[int]:
  """Greedy continuation of `prompt_ids` (new ids only, the EOS included if reached)."""
  options = decoding.Options(max_new_tokens=max_new_tokens, eos_ids=tuple(eos_ids),
                             pad_id=pad_id)
  return generate_ids(model, params, [prompt_ids], options)[0]


def chat_prompt(pretrained, prompt: str, *, use_template: bool = True) -> list[int]:
  """Prompt ids: the chat template (when the tokenizer has one) rendered around a user message."""
  from ptm_jax.interop import tokenizer_files
  info, tok = pretrained.info, pretrained.tokenizer
  template = info.get('chat_template') if use_template else None
  if template:
    piece = lambda i: tok.id_to_piece(i) if i is not None else ''
    text = tokenizer_files.render_chat(
        template, [{'role': 'user', 'content': prompt}], add_generation_prompt=True,
        bos_token=piece(info.get('bos_id')),
        eos_token=piece((info.get('eos_ids') or [None])[0]))
  else:
    text = prompt
  ids = tok.encode(text)
  if info.get('add_bos') and info.get('bos_id') is not None and ids[:1] != [info['bos_id']]:
    ids = [info['bos_id']] + ids
  return ids


def generate(pretrained, prompt: str, *, max_new_tokens: int = 64,
             use_chat_template: bool = True, options: decoding.Options | None = None,
             seed: int = 0) -> str:
  """The decoded answer to `prompt` (special tokens and the final EOS removed).

  `options` (strategy, beams, sampling) defaults to greedy with `max_new_tokens`; its EOS ids
  and pad id default to the model's.
  """
  if pretrained.family not in ('decoder', 'encdec'):
    raise ValueError(f'generation needs a decoder or an encoder-decoder; '
                     f'{pretrained.info.get("source")} is a {pretrained.family}')
  eos = list(pretrained.info.get('eos_ids') or [])
  ids = chat_prompt(pretrained, prompt, use_template=use_chat_template)
  options = options or decoding.Options(max_new_tokens=max_new_tokens)
  if not options.eos_ids and eos:
    options = dataclasses.replace(options, eos_ids=tuple(eos))
  pad = getattr(pretrained.tokenizer.specials, 'pad', 0)
  options = dataclasses.replace(options, pad_id=pad)
  new = generate_ids(pretrained.model, pretrained.params, [ids], options,
                     rng=jax.random.key(seed))[0]
  if new and new[-1] in options.eos_ids:
    new = new[:-1]
  backend = getattr(pretrained.tokenizer, 'backend', None)
  if backend is not None:
    return backend.decode(new, skip_special_tokens=True)
  return pretrained.tokenizer.decode(new)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m ptm_jax.generate', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--pretrained', required=True, help='HF dir, .gguf file or ptm_jax dir')
  parser.add_argument('--prompt', required=True, action='append',
                      help='a prompt (repeat the flag for several)')
  parser.add_argument('--max_new_tokens', type=int, default=64)
  parser.add_argument('--no_chat_template', action='store_true')
  parser.add_argument('--strategy', default='greedy', choices=decoding.STRATEGIES)
  parser.add_argument('--num_beams', type=int, default=4)
  parser.add_argument('--length_penalty', type=float, default=1.0)
  parser.add_argument('--temperature', type=float, default=1.0)
  parser.add_argument('--top_k', type=int, default=0)
  parser.add_argument('--top_p', type=float, default=1.0)
  parser.add_argument('--no_repeat_ngram_size', type=int, default=0,
                      help='no n-gram of this size twice in the output (0 = off)')
  parser.add_argument('--min_new_tokens', type=int, default=0, help='no EOS before this many')
  parser.add_argument('--seed', type=int, default=0, help='sampling seed')
  args = parser.parse_args(argv)
  from ptm_jax import interop
  try:
    options = decoding.Options(
        max_new_tokens=args.max_new_tokens, strategy=args.strategy, num_beams=args.num_beams,
        length_penalty=args.length_penalty, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, no_repeat_ngram_size=args.no_repeat_ngram_size,
        min_new_tokens=args.min_new_tokens)
    pre = interop.load_pretrained(args.pretrained)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if pre.tokenizer is None:
    print(f'error: {args.pretrained} has no tokenizer', file=sys.stderr)
    return 1
  for prompt in args.prompt:
    answer = generate(pre, prompt, use_chat_template=not args.no_chat_template,
                      options=options, seed=args.seed)
    print(f'>>> {prompt}\n{answer}\n', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
