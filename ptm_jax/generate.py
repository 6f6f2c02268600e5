"""Greedy decoding with an imported (or trained) decoder.

  python -m ptm_jax.generate --pretrained PATH --prompt "What is the capital of France?" \
      [--max_new_tokens 64] [--no_chat_template]

PATH is anything `ptm_jax.interop.load_pretrained` reads (HF dir, .gguf, ptm_jax dir). The prompt
goes through the tokenizer's chat template when it has one. Decoding is one jitted
`lax.while_loop` over a static `[1, L]` token buffer that recomputes the full forward pass at each
step (no KV cache yet) and stops at EOS or after `max_new_tokens`.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_BUCKET = 32  # buffer lengths are rounded up to this, so nearby prompt lengths share a compile


def _next_logits(module, tokens_BL, index):
  """Float32 logits `[B, V]` of the token after position `index` (one-position LM head)."""
  positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1], dtype=jnp.int32), tokens_BL.shape)
  x_BLD = module.embed(tokens_BL, positions=positions_BL)
  hidden_BLD, _ = module.decode(x_BLD, segment_ids=jnp.ones_like(tokens_BL), positions=positions_BL)
  last_B1D = jax.lax.dynamic_slice_in_dim(hidden_BLD, index, 1, axis=1)
  return module.lm_logits(last_B1D)[:, 0]


@functools.partial(jax.jit, static_argnames=('model',))
def _greedy(model, params, tokens_1L, prompt_len, max_len, eos_ids_E):
  """Fills `tokens_1L` from `prompt_len` to at most `max_len` (exclusive) greedily; returns (buffer, end)."""

  def cond(state):
    _, cur, done = state
    return jnp.logical_and(cur < max_len, jnp.logical_not(done))

  def body(state):
    tokens, cur, _ = state
    # Causal attention: positions >= cur (still padding) cannot influence position cur - 1.
    logits_1V = model.apply({'params': params}, tokens, cur - 1, method=_next_logits)
    nxt = jnp.argmax(logits_1V[0]).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt.reshape(1, 1), (0, cur))
    return tokens, cur + 1, jnp.any(nxt == eos_ids_E)

  tokens, end, _ = jax.lax.while_loop(cond, body, (tokens_1L, prompt_len, jnp.array(False)))
  return tokens, end


def greedy_generate(model, params, prompt_ids: Sequence[int], *, max_new_tokens: int = 64,
                    eos_ids: Sequence[int] = (), pad_id: int = 0) -> list[int]:
  """Greedy continuation of `prompt_ids` (new ids only, the EOS included if reached)."""
  prompt_ids = [int(i) for i in prompt_ids]
  if not prompt_ids:
    raise ValueError('greedy_generate needs a non-empty prompt')
  n = len(prompt_ids)
  total = n + max_new_tokens
  limit = getattr(model.config, 'max_position_embeddings', total)
  if getattr(model.config, 'positions', 'learned') == 'learned' and total > limit:
    raise ValueError(f'prompt ({n}) + max_new_tokens ({max_new_tokens}) exceeds the model\'s '
                     f'{limit} positions')
  length = -(-total // _BUCKET) * _BUCKET
  buf = np.full((1, length), pad_id, np.int32)
  buf[0, :n] = prompt_ids
  eos = np.asarray(list(eos_ids) or [-1], np.int32)
  tokens, end = _greedy(model, params, jnp.asarray(buf), jnp.int32(n), jnp.int32(total),
                        jnp.asarray(eos))
  return [int(t) for t in np.asarray(tokens)[0, n:int(end)]]


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
             use_chat_template: bool = True) -> str:
  """The decoded greedy answer to `prompt` (special tokens and the final EOS removed)."""
  if pretrained.family != 'decoder':
    raise ValueError(f'generation needs a decoder; {pretrained.info.get("source")} is a '
                     f'{pretrained.family}')
  eos = list(pretrained.info.get('eos_ids') or [])
  ids = chat_prompt(pretrained, prompt, use_template=use_chat_template)
  new = greedy_generate(pretrained.model, pretrained.params, ids, max_new_tokens=max_new_tokens,
                        eos_ids=eos, pad_id=pretrained.tokenizer.specials.pad)
  if new and new[-1] in eos:
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
  args = parser.parse_args(argv)
  from ptm_jax import interop
  try:
    pre = interop.load_pretrained(args.pretrained)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if pre.tokenizer is None:
    print(f'error: {args.pretrained} has no tokenizer', file=sys.stderr)
    return 1
  for prompt in args.prompt:
    answer = generate(pre, prompt, max_new_tokens=args.max_new_tokens,
                      use_chat_template=not args.no_chat_template)
    print(f'>>> {prompt}\n{answer}\n', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
