"""Autoregressive generation with a KV cache: greedy, sampling (temperature / top-k / top-p) and
beam search with a length penalty, for `decoder` and `encdec` models, each one jitted
`lax.while_loop`.

  out = decoding.generate(model, params, {'tokens': t_BP, 'segment_ids': s_BP}, options)  # decoder
  out = decoding.generate(model, params, {'encoder_tokens': e_BL,
                                          'encoder_segment_ids': s_BL}, options)           # encdec
  # out['tokens'] [B, max_new_tokens] (pad after EOS), out['lengths'] [B], out['scores'] [B]

A decoder's inputs may carry `prefix_flags` `[B, P]` (1 on prompt tokens): a prefix LM's prompt
is then encoded bidirectionally in the prefill, and each generated token attends to every earlier
slot, exactly the prefix LM mask (Raffel et al. 2020).

Batches of prompts of different lengths (decoder family) are LEFT-padded (`left_pad`): every
row's last prompt token sits in the last column, so all rows write the same cache slot at each
step; a row's positions count its own tokens only (slot - padding), which is what learned and
rotary positions need, and its padding slots (segment id 0) are never attended. Encoder inputs
(encdec) are padded any way the `encoder_segment_ids` say; the encoder runs once and the decoder
starts from `model.config.decoder_start_id` at position 0.

The cache is the flax 'cache' collection (`ptm_jax.layers.attention`): `DecodeCache` keeps the
next slot and each slot's segment id / position, every attention layer its keys and values
(encoder keys/values projected once for cross-attention). The cache holds prompt + new tokens.

EOS: a row that emits one of `eos_ids` is finished; later columns hold `pad_id` and the loop
ends when every row is finished or after `max_new_tokens`. Beam search (Wu et al. 2016 / HF):
`num_beams` live hypotheses per row, 2 * num_beams candidates per step so that EOS candidates
move to a finished pool without starving the live ones (an EOS counts only from the top
`num_beams` candidates, as in HF, so one beam is exactly greedy); finished score = sum of
log-probs / (generated tokens, EOS included) ** `length_penalty`. It stops early once no live
beam can beat the worst finished one, and live beams compete with finished ones at the end.

Constraints (any strategy, as transformers' logits processors, applied after the log-softmax so
a ban never renormalises): `no_repeat_ngram_size` bans each token that would complete an n-gram
already in the row's output (compared over a static buffer of all start columns at once);
`min_new_tokens` bans EOS before that many tokens. Scores stay the model's log-probs of the
chosen tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STRATEGIES = ('greedy', 'sample', 'beam')


@dataclasses.dataclass(frozen=True)
class Options:
  """Generation settings (a static jit argument)."""

  max_new_tokens: int = 32
  strategy: str = 'greedy'  # 'greedy' | 'sample' | 'beam'
  temperature: float = 1.0  # sampling: logits / temperature
  top_k: int = 0  # sampling: keep the k most likely tokens (0 = all)
  top_p: float = 1.0  # sampling: keep the smallest set with probability >= top_p (1.0 = all)
  num_beams: int = 4
  length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0
  # > 0: no n-gram of this size occurs twice in a row's output (BART's summarisation decoding
  # uses 3): the generated tokens, after the decoder start token of an encoder-decoder (as in
  # transformers); a decoder's prompt is not part of it (transformers' is), so a prefix LM may
  # still copy its source.
  no_repeat_ngram_size: int = 0
  min_new_tokens: int = 0  # EOS is banned before this many tokens were generated

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f'unknown strategy {self.strategy!r}; known: {", ".join(STRATEGIES)}')
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
    if self.temperature <= 0:
      raise ValueError(f'temperature must be > 0 (use strategy=greedy for argmax), got '
                       f'{self.temperature}')
    if not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
      raise ValueError(f'top_p must be in (0, 1] and top_k >= 0, got {self.top_p}, {self.top_k}')
    if self.num_beams < 1:
      raise ValueError(f'num_beams must be >= 1, got {self.num_beams}')
    if self.no_repeat_ngram_size < 0:
      raise ValueError(f'no_repeat_ngram_size must be >= 0 (0 = off), got '
                       f'{self.no_repeat_ngram_size}')
    if not 0 <= self.min_new_tokens <= self.max_new_tokens:
      raise ValueError(f'min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got '
                       f'{self.min_new_tokens}')
    object.__setattr__(self, 'eos_ids', tuple(int(i) for i in self.eos_ids))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             bucket: int = 1) -> dict[str, np.ndarray]:
  """Token lists -> left-padded `tokens`/`segment_ids` `[B, P]` (P rounded up to `bucket`)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError('every prompt needs at least one token')
  width = -(-max(len(p) for p in prompts) // bucket) * bucket
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  segment_ids = np.zeros((len(prompts), width), np.int32)
  for row, p in enumerate(prompts):
    tokens[row, width - len(p):] = p
    segment_ids[row, width - len(p):] = 1
  return {'tokens': tokens, 'segment_ids': segment_ids}


def filter_logits(logits_BV: jnp.ndarray, *, top_k: int = 0, top_p: float = 1.0) -> jnp.ndarray:
  """Sets logits outside the top-k / the top-p nucleus to -inf (float32)."""
  logits_BV = logits_BV.astype(jnp.float32)
  neg_inf = jnp.full_like(logits_BV, -jnp.inf)
  if 0 < top_k < logits_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, neg_inf, logits_BV)
  if top_p < 1.0:
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # A token stays if the tokens more likely than it hold less than top_p: the smallest set
    # whose mass reaches top_p (the most likely token always stays).
    keep_BV = (jnp.cumsum(probs_BV, axis=-1) - probs_BV) < top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, neg_inf, logits_BV)
  return logits_BV


# ---- model adapters: prefill (cache + first logits) and one cached step ----------------------

def is_encoder_decoder(model) -> bool:
  """Whether `model` is of the encdec family (encoder input + decoder start) or a decoder."""
  from ptm_jax.models import encdec
  return isinstance(model.config, encdec.Config)


def _decoder_logits(module, tokens, segment_ids, positions, prefix_flags=None):
  x_BLD = module.embed(tokens, positions=positions)
  hidden_BLD, _, _ = module.decode(x_BLD, segment_ids=segment_ids, positions=positions,
                                   prefix_flags=prefix_flags, use_cache=True)
  return module.lm_logits(hidden_BLD[:, -1:])[:, 0]


def _encdec_logits(module, tokens, encoded, encoder_segment_ids, segment_ids, positions):
  hidden_BLD = module.decode(tokens, encoded, encoder_segment_ids=encoder_segment_ids,
                             segment_ids=segment_ids, positions=positions, use_cache=True)
  return module.lm_logits(hidden_BLD[:, -1:])[:, 0]


def _arange(batch: int, length: int) -> jnp.ndarray:
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def init_cache(model, params, batch_size: int, max_length: int, *, encoded=None,
               encoder_segment_ids=None) -> dict:
  """An empty 'cache' collection for `max_length` decoder tokens (encdec: needs the encoder output,
  whose keys/values every cross-attention layer projects and keeps)."""
  dummy = jnp.zeros((batch_size, max_length), jnp.int32)
  ones, positions = jnp.ones_like(dummy), _arange(batch_size, max_length)
  if encoded is None:
    def sizing():
      return model.apply({'params': params}, dummy, ones, positions, method=_decoder_logits,
                         mutable=['cache'])[1]['cache']
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(sizing))
  # Self-attention buffers are created zeroed; cross-attention keys/values are real.
  return model.apply({'params': params}, dummy, encoded, encoder_segment_ids, ones, positions,
                     method=_encdec_logits, mutable=['cache'])[1]['cache']


def _prefill(model, params, inputs: dict, options: Options):
  """(first logits `[B, V]`, cache, next positions `[B]`, step, extras).

  `step(cache, tokens_B, positions_B, extras) -> (logits_BV, cache)` feeds one token per row;
  `extras` are per-row arrays the step reads (the encoder output), repeated for beams.
  """
  n = options.max_new_tokens
  if is_encoder_decoder(model):
    enc_tokens, enc_seg = inputs['encoder_tokens'], inputs['encoder_segment_ids']
    b = enc_tokens.shape[0]
    encoded = model.apply({'params': params}, enc_tokens, segment_ids=enc_seg, method='encode')

    def step(cache, tokens_B, positions_B, extras):
      logits, mutated = model.apply(
          {'params': params, 'cache': cache}, tokens_B[:, None], *extras,
          jnp.ones((tokens_B.shape[0], 1), jnp.int32), positions_B[:, None],
          method=_encdec_logits, mutable=['cache'])
      return logits, mutated['cache']

    # The start token and n - 1 generated tokens are fed (+ 1: the last step's discarded feed).
    cache = init_cache(model, params, b, n + 1, encoded=encoded, encoder_segment_ids=enc_seg)
    start = jnp.full((b,), model.config.decoder_start_id, jnp.int32)
    logits, cache = step(cache, start, jnp.zeros((b,), jnp.int32), (encoded, enc_seg))
    return logits, cache, jnp.ones((b,), jnp.int32), step, (encoded, enc_seg)

  tokens, seg = inputs['tokens'], inputs['segment_ids']
  b, p = tokens.shape
  lengths_B = jnp.sum(seg != 0, axis=1).astype(jnp.int32)
  positions = jnp.maximum(_arange(b, p) - (p - lengths_B)[:, None], 0)

  def step(cache, tokens_B, positions_B, extras):
    del extras
    logits, mutated = model.apply(
        {'params': params, 'cache': cache}, tokens_B[:, None],
        jnp.ones((tokens_B.shape[0], 1), jnp.int32), positions_B[:, None],
        method=_decoder_logits, mutable=['cache'])
    return logits, mutated['cache']

  cache = init_cache(model, params, b, p + n)
  # A prefix LM's prompt attends to itself both ways; the generated tokens (fed one per step,
  # no flags) attend to every earlier slot, which is the prefix LM's mask.
  logits, mutated = model.apply({'params': params, 'cache': cache}, tokens, seg, positions,
                                inputs.get('prefix_flags'), method=_decoder_logits,
                                mutable=['cache'])
  return logits, mutated['cache'], lengths_B, step, ()


# ---- greedy and sampling -----------------------------------------------------------------------

def _is_eos(tokens, eos_ids: tuple[int, ...]) -> jnp.ndarray:
  if not eos_ids:
    return jnp.zeros(tokens.shape, bool)
  eos = jnp.asarray(eos_ids, jnp.int32).reshape((1,) * tokens.ndim + (-1,))
  return jnp.any(tokens[..., None] == eos, axis=-1)


def _banned_ngram_ends(seqs_XN: jnp.ndarray, i, size: int, vocab: int) -> jnp.ndarray:
  """`[X, V]` True where a token would complete an n-gram (n = `size`) already in the row.

  `seqs_XN` holds the generated tokens in columns < i. An n-gram starting at column j (its
  last token at j + size - 1 < i) whose first size - 1 tokens equal the row's last size - 1
  bans its last token; all starts are compared at once (static shapes under jit).
  """
  x, n = seqs_XN.shape
  padded = jnp.pad(seqs_XN, ((0, 0), (0, size)))
  starts = jnp.arange(n)
  match = (starts + size - 1 < i)[None, :] & (i >= size - 1)
  for t in range(size - 1):  # column t of each window against the row's (t+1)-th last token
    last = jax.lax.dynamic_index_in_dim(padded, jnp.maximum(i - size + 1 + t, 0), axis=1)
    match = match & (padded[:, t:t + n] == last)
  ends = padded[:, size - 1:size - 1 + n]
  rows = jnp.broadcast_to(jnp.arange(x)[:, None], (x, n))
  return jnp.zeros((x, vocab), bool).at[rows, ends].max(match)


def _constrain(logp_XV: jnp.ndarray, seqs_XN: jnp.ndarray, i, options: Options,
               start_id: int | None = None) -> jnp.ndarray:
  """Logits or log-probs with the banned continuations at -inf (transformers' logits processors
  `no_repeat_ngram_size` and `min_new_tokens`): repeated n-grams, and EOS too early.

  An encoder-decoder's history starts with its decoder start token (`start_id`), as in
  transformers and fairseq: its first input is part of the n-grams."""
  if options.no_repeat_ngram_size:
    history, filled = seqs_XN, i
    if start_id is not None:
      history = jnp.concatenate([jnp.full_like(seqs_XN[:, :1], start_id), seqs_XN], axis=1)
      filled = i + 1
    banned = _banned_ngram_ends(history, filled, options.no_repeat_ngram_size,
                                logp_XV.shape[-1])
    logp_XV = jnp.where(banned, -jnp.inf, logp_XV)
  if options.min_new_tokens and options.eos_ids:
    eos_V = jnp.zeros((logp_XV.shape[-1],), bool).at[jnp.asarray(options.eos_ids)].set(True)
    logp_XV = jnp.where(eos_V[None, :] & (i < options.min_new_tokens), -jnp.inf, logp_XV)
  return logp_XV


def _sample_loop(logits, cache, positions, step, extras, options: Options, rng,
                 start_id: int | None = None):
  b, n = logits.shape[0], options.max_new_tokens

  def choose(logits_BV, key):
    if options.strategy == 'greedy':
      return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits_BV / options.temperature, top_k=options.top_k,
                             top_p=options.top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

  def cond(state):
    i, done = state[0], state[5]
    return (i < n) & ~jnp.all(done)

  def body(state):
    i, out, logits, cache, positions, done, lengths, scores, rng = state
    rng, key = jax.random.split(rng)
    # Bans act on the logits (-inf there is -inf after any temperature or filter); the score
    # stays the model's own log-prob of the chosen token.
    token = choose(_constrain(logits.astype(jnp.float32), out, i, options, start_id), key)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), token[:, None],
                               axis=-1)[:, 0]
    token = jnp.where(done, options.pad_id, token)
    out = out.at[:, i].set(token)
    scores = scores + jnp.where(done, 0.0, logp)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | _is_eos(token, options.eos_ids)
    logits, cache = step(cache, token, positions, extras)
    return i + 1, out, logits, cache, positions + 1, done, lengths, scores, rng

  init = (jnp.int32(0), jnp.full((b, n), options.pad_id, jnp.int32), logits, cache, positions,
          jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.float32), rng)
  _, out, *_, lengths, scores, _ = jax.lax.while_loop(cond, body, init)
  return {'tokens': out, 'lengths': lengths, 'scores': scores}


# ---- beam search -------------------------------------------------------------------------------

def _follows_beam(path, x) -> bool:
  """Whether a cache leaf is reordered with its beam: not the scalar index, and not the
  cross-attention keys/values, which are the same for every beam of a row (a parent is always a
  beam of the same row), so gathering them each step would only copy the encoder output."""
  last = path[-1]
  return x.ndim > 0 and getattr(last, 'key', None) not in ('cross_key', 'cross_value')


def _beam_search(logits, cache, positions, step, extras, options: Options,
                 start_id: int | None = None):
  k, n, alpha = options.num_beams, options.max_new_tokens, options.length_penalty
  b, v = logits.shape
  neg_inf = jnp.float32(-jnp.inf)
  # Every beam starts as a copy of the row; only beam 0 is live at first (no duplicates).
  repeat = lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x
  logits, cache, positions = repeat(logits), jax.tree.map(repeat, cache), repeat(positions)
  extras = jax.tree.map(repeat, extras)  # beams of a row read the same encoder output
  alive_lp = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (k - 1), jnp.float32), (b, 1))

  def penalty(length):
    return jnp.asarray(length, jnp.float32) ** alpha

  def cond(state):
    i, alive_lp, fin_score = state[0], state[2], state[4]
    # Best reachable score of a live beam: log-probs only fall, the length term is at its
    # kindest at the longest (alpha >= 0) or the current (alpha < 0) length.
    bound = alive_lp[:, 0] / jnp.where(alpha >= 0, penalty(n), penalty(i + 1))
    can_improve = jnp.any(bound > fin_score[:, -1])
    return (i < n) & can_improve

  def body(state):
    i, alive_seq, alive_lp, fin_seq, fin_score, logits, cache, positions = state
    logp_BKV = _constrain(jax.nn.log_softmax(logits.astype(jnp.float32)),
                          alive_seq.reshape(b * k, n), i, options, start_id).reshape(b, k, v)
    cand_BC = (alive_lp[:, :, None] + logp_BKV).reshape(b, k * v)
    cand_lp, cand_idx = jax.lax.top_k(cand_BC, 2 * k)
    parent, token = cand_idx // v, (cand_idx % v).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seq, parent[:, :, None], axis=1).at[:, :, i].set(token)
    eos = _is_eos(token, options.eos_ids)
    # Finished pool: the best k of (old finished, new EOS candidates). As in HF, an EOS only
    # finishes a hypothesis from the top k candidates (so one beam is exactly greedy).
    finishes = eos & (jnp.arange(2 * k) < k)[None, :]
    new_score = jnp.where(finishes, cand_lp / penalty(i + 1), neg_inf)
    pool_score = jnp.concatenate([fin_score, new_score], axis=1)
    fin_score, pick = jax.lax.top_k(pool_score, k)
    fin_seq = jnp.take_along_axis(jnp.concatenate([fin_seq, seqs], axis=1), pick[:, :, None],
                                  axis=1)
    # Live beams: the best k non-EOS candidates.
    alive_lp, pick = jax.lax.top_k(jnp.where(eos, neg_inf, cand_lp), k)
    alive_seq = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
    rows = (jnp.arange(b)[:, None] * k + jnp.take_along_axis(parent, pick, axis=1)).reshape(-1)
    cache = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.take(x, rows, axis=0) if _follows_beam(path, x) else x, cache)
    fed = jnp.take_along_axis(token, pick, axis=1).reshape(-1)
    logits, cache = step(cache, fed, positions, extras)
    return i + 1, alive_seq, alive_lp, fin_seq, fin_score, logits, cache, positions + 1

  seq0 = jnp.full((b, k, n), options.pad_id, jnp.int32)
  init = (jnp.int32(0), seq0, alive_lp, seq0, jnp.full((b, k), neg_inf), logits, cache,
          positions)
  steps, alive_seq, alive_lp, fin_seq, fin_score, *_ = jax.lax.while_loop(cond, body, init)
  # Live beams compete with the finished ones at their current length.
  score = jnp.concatenate([fin_score, alive_lp / penalty(jnp.maximum(steps, 1))], axis=1)
  score, pick = jax.lax.top_k(score, k)
  seqs = jnp.take_along_axis(jnp.concatenate([fin_seq, alive_seq], axis=1), pick[:, :, None],
                             axis=1)
  ended = jnp.cumsum(_is_eos(seqs, options.eos_ids).astype(jnp.int32), axis=-1)
  # A token counts until (and including) the first EOS; afterwards only padding was written.
  lengths = jnp.sum((ended - _is_eos(seqs, options.eos_ids)) == 0, axis=-1)
  lengths = jnp.minimum(lengths, steps).astype(jnp.int32)
  return {'tokens': seqs[:, 0], 'lengths': lengths[:, 0], 'scores': score[:, 0],
          'beam_tokens': seqs, 'beam_scores': score, 'beam_lengths': lengths}


@functools.partial(jax.jit, static_argnames=('model', 'options'))
def _generate(model, params, inputs, options: Options, rng):
  logits, cache, positions, step, extras = _prefill(model, params, inputs, options)
  start_id = model.config.decoder_start_id if is_encoder_decoder(model) else None
  if options.strategy == 'beam':
    return _beam_search(logits, cache, positions, step, extras, options, start_id)
  return _sample_loop(logits, cache, positions, step, extras, options, rng, start_id)


def generate(model, params, inputs: dict[str, Any], options: Options = Options(),
             rng: jax.Array | None = None) -> dict[str, jnp.ndarray]:
  """Generates up to `options.max_new_tokens` tokens per row (see the module doc for `inputs`).

  Returns `tokens` `[B, N]` (pad after EOS), `lengths` `[B]` (generated tokens, EOS included),
  `scores` `[B]` (greedy/sample: sum of the model's log-probs of the chosen tokens; beam: the
  length-penalised score), and for beam search `beam_tokens`/`beam_scores`/`beam_lengths`
  over all `num_beams` final hypotheses, best first.
  """
  if isinstance(params, dict) and set(params) == {'params'}:
    params = params['params']
  encdec = is_encoder_decoder(model)
  want = ('encoder_tokens', 'encoder_segment_ids') if encdec else ('tokens', 'segment_ids')
  missing = [k for k in want if k not in inputs]
  if missing:
    raise ValueError(f'generate needs inputs {", ".join(want)}; missing {", ".join(missing)}')
  if not encdec and 'prefix_flags' in inputs:
    flags = np.asarray(inputs['prefix_flags'])
    if flags.shape != np.shape(inputs['tokens']) or np.any((flags != 0) & (
        np.asarray(inputs['segment_ids']) == 0)):
      raise ValueError('prefix_flags must have the prompts\' shape and flag prompt tokens only '
                       '(segment_ids != 0)')
    want += ('prefix_flags',)
  inputs = {k: jnp.asarray(inputs[k], jnp.int32) for k in want}
  cfg = model.config
  if encdec:
    if cfg.positions == 'learned' and options.max_new_tokens + 1 > cfg.max_position_embeddings:
      raise ValueError(f'max_new_tokens={options.max_new_tokens} exceeds the decoder\'s '
                       f'{cfg.max_position_embeddings} positions')
  else:
    seg = np.asarray(inputs['segment_ids'])
    if np.any(seg[:, -1] == 0) or np.any(np.diff((seg != 0).astype(np.int8), axis=1) < 0):
      raise ValueError('decoder prompts must be left-padded (segment_ids 0 then 1); use '
                       'decoding.left_pad')
    total = int(seg.sum(axis=1).max()) + options.max_new_tokens
    if cfg.positions == 'learned' and total > cfg.max_position_embeddings:
      raise ValueError(f'prompt + max_new_tokens = {total} exceeds the model\'s '
                       f'{cfg.max_position_embeddings} positions; lower max_new_tokens')
  if options.strategy == 'sample' and rng is None:
    raise ValueError('strategy=sample needs an rng (jax.random.key(seed))')
  return _generate(model, params, inputs, options,
                   jax.random.key(0) if rng is None else rng)
