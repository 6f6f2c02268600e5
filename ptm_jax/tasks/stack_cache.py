"""KV-cached title generation for the encoder-stack forms of news_headline: UniLM and GLM.

Both forms train one encoder stack under a mask in which a target slot sees the source and the
target slots up to its own (UniLM's seq2seq mask; GLM's Part B), so the keys and values of every
written slot never change once written, and decoding can keep them in the encoder's KV cache
(`models.encoder`, `encode(use_cache=True)`) instead of re-running the stack over the whole row
for every token (`generation._stack_generate`, which this equals; tests/test_news_headline.py):

  * prefill: the row's first slots (`generation.start_rows`: the source, then UniLM's [MASK] or
    GLM's [START]), right-aligned in the row width so that every row writes the same cache slot
    at every step, under the form's own mask; the first prediction is read at the last slot;
  * GLM step: the chosen token goes to the next slot (its 2-D position: the blank's position in
    Part A, the index inside the blank) and predicts the next one;
  * UniLM step: a chunk of two, the chosen token at the slot its [MASK] held and a new [MASK]
    after it (causal inside the chunk), read at the [MASK]; the cache index then steps back one,
    so that the next chunk overwrites that [MASK] with the token chosen there (the scheme of
    UniLM's reference decoder, which keeps each layer's states of the earlier slots).

The per-slot features (positions, token types, block positions) of the generated slots are
read from the `start_rows` arrays, exactly those the re-reading decoder and training use.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax import decoding
from ptm_jax.layers import masks
from ptm_jax.objectives import glm, unilm

FORMS = ('unilm', 'glm')


def supports(model, form: str) -> bool:
  """Whether `form` decodes through the cache on `model` (the encoder family keeps one)."""
  from ptm_jax.models import encoder  # pylint: disable=g-import-not-at-top
  return form in FORMS and isinstance(model.config, encoder.Config)


def prefill_rows(start: dict[str, np.ndarray], form: str) -> dict[str, np.ndarray]:
  """The prefill chunk: each row's first prompt_len + 1 slots of `start` (`start_rows`' arrays),
  right-aligned in the row width, segment 0 (never attended) to their left."""
  if form not in FORMS:
    raise ValueError(f'prefill_rows: {form!r} is not one of {", ".join(FORMS)}')
  tokens = start['tokens']
  width = tokens.shape[1]
  first_B = np.asarray(start['prompt_len']) + 1  # + UniLM's [MASK] / GLM's [START]
  source_slot_BL = np.arange(width)[None, :] - (width - first_B)[:, None]
  inside_BL = source_slot_BL >= 0
  out = {k: np.where(inside_BL, np.take_along_axis(v, np.maximum(source_slot_BL, 0), axis=1), 0)
         .astype(np.int32) for k, v in start.items() if np.ndim(v) == 2}
  out['segment_ids'] = inside_BL.astype(np.int32)
  return out


def _rewind(cache: dict) -> dict:
  """The cache with its next slot one back (UniLM's [MASK] slot is overwritten next)."""
  index = cache['decode_cache']['index']
  return {**cache, 'decode_cache': {**cache['decode_cache'], 'index': index - 1}}


@functools.partial(jax.jit, static_argnames=('model', 'form', 'options', 'mask_id'))
def _generate(model, params, prefill, start, form: str, options: decoding.Options, mask_id: int,
              rng):
  num_rows, width = prefill['tokens'].shape
  typed = form == 'unilm' and getattr(model.config, 'type_vocab_size', 0) >= 6

  def apply(cache, tokens, positions, extra, chunk_mask, at, segment_ids=None):
    out, mutated = model.apply(
        {'params': params, 'cache': cache}, tokens,
        segment_ids=jnp.ones_like(tokens) if segment_ids is None else segment_ids,
        positions=positions, attention_mask=chunk_mask, logits_positions=at, use_cache=True,
        mutable=['cache'], **extra)
    return out['logits'][:, 0], mutated['cache']

  # Buffers for the row, the generated tokens and UniLM's look-ahead [MASK].
  size = width + options.max_new_tokens + 1

  def sizing():
    dummy = jnp.zeros((num_rows, size), jnp.int32)
    _, variables = model.apply({'params': params}, dummy, segment_ids=jnp.ones_like(dummy),
                               positions=jnp.zeros_like(dummy), use_cache=True, mutable=['cache'])
    return variables['cache']

  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(sizing))
  if form == 'unilm':
    mode_B = jnp.full((num_rows,), unilm.SEQ2SEQ, jnp.int32)
    chunk_mask = unilm.attention_mask(mode_B, prefill['source_flags'] != 0)
  else:
    chunk_mask = glm.attention_mask(prefill['part_b'])
  last = jnp.full((num_rows, 1), width - 1, jnp.int32)
  extra = {}
  if form == 'glm':
    extra = {'block_positions': prefill['block_positions']}
  elif typed:
    extra = {'token_types': prefill['token_types']}
  logits, cache = apply(cache, prefill['tokens'], prefill['positions'], extra, chunk_mask, last,
                        prefill['segment_ids'])
  if form == 'unilm':
    cache = _rewind(cache)

  def step(cache, tokens_B, slot_B, rows):
    at_B = jnp.clip(slot_B, 0, width - 1)  # the loop's last, discarded step may run past the row
    take = lambda name, s: jnp.take_along_axis(rows[name], s[:, None], axis=1)  # noqa: E731
    if form == 'glm':
      extra = {'block_positions': take('block_positions', at_B)}
      return apply(cache, tokens_B[:, None], take('positions', at_B), extra, None,
                   jnp.zeros_like(at_B)[:, None])
    next_B = jnp.clip(slot_B + 1, 0, width - 1)
    chunk = jnp.stack([tokens_B, jnp.full_like(tokens_B, mask_id)], axis=1)
    positions = jnp.concatenate([take('positions', at_B), take('positions', next_B)], axis=1)
    extra = {'token_types': jnp.concatenate([take('token_types', at_B),
                                             take('token_types', next_B)], axis=1)} if typed else {}
    causal = jnp.broadcast_to(masks.causal_mask(2), (tokens_B.shape[0], 1, 2, 2))
    logits, cache = apply(cache, chunk, positions, extra, causal, jnp.ones_like(at_B)[:, None])
    return logits, _rewind(cache)

  # The slot the next chosen token is written to, in the row's own layout (as the re-read).
  slot_B = start['prompt_len'] + (1 if form == 'glm' else 0)
  rows = {k: v for k, v in start.items() if v.ndim == 2}
  # pylint: disable=protected-access
  if options.strategy == 'beam':
    return decoding._beam_search(logits, cache, slot_B, step, rows, options)
  return decoding._sample_loop(logits, cache, slot_B, step, rows, options, rng)


def generate(model, params, start: dict[str, np.ndarray], form: str, options: decoding.Options,
             mask_id: int, rng: jax.Array) -> dict[str, jax.Array]:
  """`decoding`'s output dict for the `start_rows` of a UniLM or GLM batch."""
  prefill = {k: jnp.asarray(v) for k, v in prefill_rows(start, form).items()}
  start = {k: jnp.asarray(v) for k, v in start.items()}
  return _generate(model, params, prefill, start, form, options, mask_id, rng)
