"""KV-cached decoding (`ptm_jax.decoding`, the 'cache' collection of `layers.attention`).

- Cached logits equal the full forward pass at every step (prefill of left-padded prompts, a
  2-token chunk, then single tokens) for GPT-2-style and Llama-style (rotary + GQA) decoders and
  for T5- and BART-style encoder–decoders (encoder padding included); a prefix LM's prompt
  (`prefix_flags`) is prefilled bidirectionally and greedy decoding equals the full forward pass
  under the prefix LM mask, token by token and in its scores.
- `generate`: greedy equals an argmax loop over full forward passes; EOS stops rows
  independently (pad afterwards, per-row lengths); beam search with one beam and sampling with
  top_k=1 equal greedy; beam search with enough beams finds the exhaustive best sequence (EOS,
  length penalty) on a tiny vocabulary (a decoder and an encoder-decoder), and with two beams scores at least as well as greedy.
- `filter_logits` keeps exactly the top-k / top-p nucleus; sampling follows the renormalised
  nucleus; bad inputs are one-line errors.
"""
from __future__ import annotations

import functools
import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import decoding, models

V = 48
SMALL = dict(embed_dim=32, num_heads=4, mlp_dim=48)


def _model(kind: str, vocab: int = V):
  if kind == 'gpt2':
    return models.build('decoder', 'runlocal', vocab_size=vocab, num_layers=2,
                        max_position_embeddings=64, dropout_rate=0.0, **SMALL)
  if kind == 'llama':
    return models.build('decoder', 'llama_runlocal', vocab_size=vocab, num_layers=2,
                        num_kv_heads=2, **SMALL)
  if kind == 'switch':  # top-2 of 4 experts in both layers; evaluation capacity E / k: no drops
    return models.build('decoder', 'runlocal', vocab_size=vocab, num_layers=2,
                        max_position_embeddings=64, dropout_rate=0.0, moe_experts=4, moe_every=1,
                        moe_top_k=2, moe_eval_capacity_factor=2.0, **SMALL)
  if kind == 'mixtral':  # Llama with 4 top-2 dropless experts in every layer (ragged_dot)
    return models.build('decoder', 'llama_runlocal', vocab_size=vocab, num_layers=2,
                        num_kv_heads=2, moe_experts=4, moe_every=1, moe_top_k=2,
                        moe_dropless=True, **SMALL)
  # switch_t5: T5 with 4 top-1 experts in the second layer of each stack; no drops at eval (E / k)
  extra = dict(moe_eval_capacity_factor=4.0) if kind == 'switch_t5' else {}
  variant = 'switch_runlocal' if kind == 'switch_t5' else f'{kind}_runlocal'
  return models.build('encdec', variant, vocab_size=vocab, num_encoder_layers=2,
                      num_decoder_layers=2, head_dim=8, max_position_embeddings=64, **extra,
                      **SMALL)


@functools.lru_cache(maxsize=None)
def _params(kind: str, vocab: int = V, seed: int = 0):
  model = _model(kind, vocab)
  tokens = jnp.ones((1, 4), jnp.int32)
  # Random weights drawn on the host from the shapes alone (compiling flax's init costs more
  # than the test): norm gains near 1, everything else N(0, 0.2), so misuse of any tensor shows.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, segment_ids=tokens,
                                             positions=jnp.arange(4)[None])['params'])
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = 0.2 * rng.standard_normal(x.shape).astype(np.float32)
    return jnp.asarray(noise + 1.0 if path[-1].key == 'scale' else noise)
  return jax.tree_util.tree_map_with_path(draw, flax.core.meta.unbox(shapes))


@functools.partial(jax.jit, static_argnames=('model',))
def _full_decoder_logits(model, params, tokens, segment_ids, positions):
  return model.apply({'params': params}, tokens, segment_ids=segment_ids,
                     positions=positions)['logits']


@functools.partial(jax.jit, static_argnames=('model',))
def _cached_decoder_logits(model, params, cache, tokens, segment_ids, positions):
  out, mutated = model.apply({'params': params, 'cache': cache}, tokens, segment_ids=segment_ids,
                             positions=positions, use_cache=True, mutable=['cache'])
  return out['logits'], mutated['cache']


def _left_positions(segment_ids):
  segment_ids = np.asarray(segment_ids)
  pad = (segment_ids == 0).sum(axis=1, keepdims=True)
  return np.maximum(np.arange(segment_ids.shape[1])[None, :] - pad, 0).astype(np.int32)


@pytest.mark.parametrize('kind', ['gpt2', 'llama', 'switch', 'mixtral'])
def test_cached_decoder_equals_full_forward(kind):
  model, params = _model(kind), _params(kind)
  rng = np.random.default_rng(0)
  inputs = decoding.left_pad([list(rng.integers(3, V, 5)), list(rng.integers(3, V, 2))])
  tokens, seg = inputs['tokens'], inputs['segment_ids']
  fed = rng.integers(3, V, (2, 4)).astype(np.int32)
  lengths = seg.sum(axis=1)
  cache = decoding.init_cache(model, params, 2, tokens.shape[1] + fed.shape[1])
  logits, cache = _cached_decoder_logits(model, params, cache, tokens, seg, _left_positions(seg))
  full = _full_decoder_logits(model, params, tokens, seg, _left_positions(seg))
  valid = seg.astype(bool)
  np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(full)[valid], atol=1e-5)
  done = 0
  for chunk in (2, 1, 1):  # a 2-token chunk, then single tokens
    part = fed[:, done:done + chunk]
    pos = (lengths[:, None] + done + np.arange(chunk)[None, :]).astype(np.int32)
    logits, cache = _cached_decoder_logits(model, params, cache, part, np.ones_like(part), pos)
    done += chunk
    all_tokens = np.concatenate([tokens, fed[:, :done]], axis=1)
    all_seg = np.concatenate([seg, np.ones((2, done), np.int32)], axis=1)
    full = _full_decoder_logits(model, params, all_tokens, all_seg, _left_positions(all_seg))
    np.testing.assert_allclose(logits, np.asarray(full)[:, -chunk:], atol=1e-5)


@functools.partial(jax.jit, static_argnames=('model',))
def _full_prefix_logits(model, params, tokens, segment_ids, positions, prefix_flags):
  return model.apply({'params': params}, tokens, segment_ids=segment_ids, positions=positions,
                     prefix_flags=prefix_flags)['logits']


@pytest.mark.parametrize('kind', ['gpt2', 'llama'])
def test_cached_prefix_lm_equals_full_forward(kind):
  # A prefix LM prompt (prefix_flags) is encoded bidirectionally by the prefill; generated tokens
  # attend to every earlier slot. Every step equals the full forward under the prefix LM mask.
  model, params = _model(kind), _params(kind)
  rng = np.random.default_rng(1)
  inputs = decoding.left_pad([list(rng.integers(3, V, 5)), list(rng.integers(3, V, 3))])
  tokens, seg = inputs['tokens'], inputs['segment_ids']
  flags = seg.copy()
  n = 4
  out = decoding.generate(model, params, {**inputs, 'prefix_flags': flags},
                          decoding.Options(max_new_tokens=n))
  all_tokens, all_seg, all_flags = tokens, seg, flags
  for i in range(n):
    full = np.asarray(_full_prefix_logits(model, params, all_tokens, all_seg,
                                          _left_positions(all_seg), all_flags))
    if i == 0:  # the flags matter: a causal prompt predicts differently
      causal = np.asarray(_full_decoder_logits(model, params, tokens, seg, _left_positions(seg)))
      assert np.abs(full[:, -1] - causal[:, -1]).max() > 1e-2
    chosen = full[:, -1].argmax(-1).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(out['tokens'])[:, i], chosen)
    all_tokens = np.concatenate([all_tokens, chosen[:, None]], axis=1)
    all_seg = np.concatenate([all_seg, np.ones((2, 1), np.int32)], axis=1)
    all_flags = np.concatenate([all_flags, np.zeros((2, 1), np.int32)], axis=1)
  # The scores are the cached log-probs of those tokens: equal to the full forward's.
  full = np.asarray(_full_prefix_logits(model, params, all_tokens[:, :-1], all_seg[:, :-1],
                                        _left_positions(all_seg[:, :-1]), all_flags[:, :-1]))
  logp = jax.nn.log_softmax(full[:, -n:], axis=-1)
  expected = np.take_along_axis(np.asarray(logp), all_tokens[:, -n:, None], axis=-1).sum((1, 2))
  np.testing.assert_allclose(np.asarray(out['scores']), expected, atol=1e-4)
  with pytest.raises(ValueError, match='flag prompt tokens only'):
    decoding.generate(model, params, {**inputs, 'prefix_flags': np.ones_like(flags)},
                      decoding.Options(max_new_tokens=n))


def _teacher_forced(module, enc, enc_seg, dec, dec_seg):
  return module(enc, dec, encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg)['logits']


def _cached_step(module, tokens, encoded, enc_seg, seg, positions):
  hidden = module.decode(tokens, encoded, encoder_segment_ids=enc_seg, segment_ids=seg,
                         positions=positions, use_cache=True)
  return module.lm_logits(hidden)


@pytest.mark.parametrize('kind', ['t5', 'bart', 'switch_t5'])
def test_cached_encdec_equals_full_forward(kind):
  model, params = _model(kind), _params(kind)
  rng = np.random.default_rng(1)
  enc = rng.integers(3, V, (2, 6)).astype(np.int32)
  enc_seg = np.array([[1] * 6, [1] * 3 + [0] * 3], np.int32)
  dec = rng.integers(3, V, (2, 5)).astype(np.int32)
  full = jax.jit(lambda p: model.apply({'params': p}, enc, enc_seg, dec, np.ones_like(dec),
                                       method=_teacher_forced))(params)
  encoded = model.apply({'params': params}, enc, segment_ids=enc_seg, method='encode')
  cache = decoding.init_cache(model, params, 2, dec.shape[1], encoded=encoded,
                              encoder_segment_ids=enc_seg)
  step = jax.jit(lambda p, c, t, pos: model.apply(
      {'params': p, 'cache': c}, t, encoded, enc_seg, jnp.ones_like(t), pos,
      method=_cached_step, mutable=['cache']))
  done = 0
  for chunk in (1, 2, 1, 1):
    pos = np.broadcast_to(np.arange(done, done + chunk, dtype=np.int32), (2, chunk))
    logits, mutated = step(params, cache, dec[:, done:done + chunk], pos)
    cache = mutated['cache']
    np.testing.assert_allclose(logits, np.asarray(full)[:, done:done + chunk], atol=1e-5)
    done += chunk


def _argmax_loop(model, params, inputs, n):
  """Greedy continuation by full forward passes (no cache), one row at a time.

  Each row lives in a fixed-size buffer (one compile): causal attention makes the unfilled
  tail irrelevant to the logits read at the last filled position.
  """
  rows = []
  if 'tokens' in inputs:
    width = inputs['tokens'].shape[1] + n
    for tokens, seg in zip(inputs['tokens'], inputs['segment_ids']):
      buf = np.zeros((1, width), np.int32)
      end = int(seg.sum())
      buf[0, :end] = tokens[seg != 0]
      for _ in range(n):
        logits = _full_decoder_logits(model, params, buf, np.ones_like(buf),
                                      np.arange(width, dtype=np.int32)[None])
        buf[0, end] = int(jnp.argmax(logits[0, end - 1]))
        end += 1
      rows.append(buf[0, end - n:end])
    return np.asarray(rows)
  fwd = jax.jit(lambda p, e, es, d: model.apply({'params': p}, e, es, d, jnp.ones_like(d),
                                                method=_teacher_forced))
  for enc, seg in zip(inputs['encoder_tokens'], inputs['encoder_segment_ids']):
    buf = np.zeros((1, n + 1), np.int32)
    buf[0, 0] = model.config.decoder_start_id
    for i in range(n):
      logits = fwd(params, enc[None], seg[None], buf)
      buf[0, i + 1] = int(jnp.argmax(logits[0, i]))
    rows.append(buf[0, 1:])
  return np.asarray(rows)


def _inputs(kind: str, seed: int = 2):
  rng = np.random.default_rng(seed)
  if kind in ('gpt2', 'llama'):
    return decoding.left_pad([list(rng.integers(3, V, 4)), list(rng.integers(3, V, 7))])
  enc = rng.integers(3, V, (2, 6)).astype(np.int32)
  return {'encoder_tokens': enc, 'encoder_segment_ids': np.array([[1] * 6, [1] * 4 + [0] * 2])}


def _cut_at_eos(row, eos, pad=0):
  row = list(row)
  if eos in row:
    end = row.index(eos) + 1
    return row[:end] + [pad] * (len(row) - end), end
  return row, len(row)


@pytest.mark.parametrize('kind', ['llama', 'bart'])
def test_greedy_eos_beam1_and_topk1(kind):
  model, params, inputs, n = _model(kind), _params(kind), _inputs(kind), 6
  ref = np.asarray(decoding.generate(model, params, inputs,
                                     decoding.Options(max_new_tokens=n))['tokens'])
  np.testing.assert_array_equal(ref, _argmax_loop(model, params, inputs, n))
  # An EOS that row 0 emits at its 2nd step: row 0 stops there, row 1 is unaffected until its own.
  eos = int(ref[0, 1])
  want = [_cut_at_eos(r, eos) for r in ref]
  opts = decoding.Options(max_new_tokens=n, eos_ids=(eos,))
  greedy = decoding.generate(model, params, inputs, opts)
  np.testing.assert_array_equal(greedy['tokens'], [w[0] for w in want])
  np.testing.assert_array_equal(greedy['lengths'], [w[1] for w in want])
  assert want[0][1] <= 2
  beam = decoding.generate(model, params, inputs, decoding.Options(
      max_new_tokens=n, eos_ids=(eos,), strategy='beam', num_beams=1, length_penalty=0.0))
  np.testing.assert_array_equal(beam['tokens'], greedy['tokens'])
  np.testing.assert_allclose(beam['scores'], greedy['scores'], atol=1e-4)
  sample = decoding.generate(model, params, inputs, decoding.Options(
      max_new_tokens=n, eos_ids=(eos,), strategy='sample', top_k=1, temperature=0.7),
      rng=jax.random.key(7))
  np.testing.assert_array_equal(sample['tokens'], greedy['tokens'])


def _enumerated(kind: str, vocab: int, n: int, seed: int, prompts, encoder_rows):
  """Every continuation of n tokens over a tiny vocabulary, and per row of the batch each
  continuation's token log-probs from full forward passes: (model, params, inputs, conts, lps)."""
  model, params = _model(kind, vocab), _params(kind, vocab, seed=seed)
  conts = np.asarray(list(itertools.product(range(vocab), repeat=n)), np.int32)
  if kind == 'llama':
    inputs = decoding.left_pad(prompts)
  else:
    width = max(map(len, encoder_rows))
    inputs = {'encoder_tokens': np.array([r + [0] * (width - len(r)) for r in encoder_rows],
                                         np.int32),
              'encoder_segment_ids': np.array([[1] * len(r) + [0] * (width - len(r))
                                               for r in encoder_rows], np.int32)}
    start = np.full((len(conts), 1), model.config.decoder_start_id, np.int32)
    forced = jax.jit(lambda p, e, es, d: model.apply(
        {'params': p}, e, es, d, jnp.ones_like(d), method=_teacher_forced))
  lps = []
  for row in range(2):
    if kind == 'llama':
      prompt = prompts[row]
      seqs = np.concatenate([np.tile(prompt, (len(conts), 1)), conts], axis=1).astype(np.int32)
      logits = _full_decoder_logits(model, params, seqs, np.ones_like(seqs),
                                    np.broadcast_to(np.arange(seqs.shape[1]), seqs.shape))
      logp = np.asarray(jax.nn.log_softmax(logits[:, len(prompt) - 1:-1]))
    else:
      tile = lambda x: np.tile(x[row], (len(conts), 1))  # noqa: E731
      logits = forced(params, tile(inputs['encoder_tokens']), tile(inputs['encoder_segment_ids']),
                      np.concatenate([start, conts[:, :-1]], axis=1))
      logp = np.asarray(jax.nn.log_softmax(logits))
    lps.append(np.take_along_axis(logp, conts[:, :, None], axis=2)[:, :, 0])
  return model, params, inputs, conts, lps


@pytest.mark.parametrize('kind', ['llama', 't5'])
def test_beam_search_finds_exhaustive_best(kind):
  # 125 beams reorder the cache every step (an encoder-decoder's cross-attention keys/values are
  # the same for a row's beams and are not gathered); the result is the exhaustive best.
  vocab, n, eos, alpha = 5, 3, 0, 1.0
  model, params, inputs, conts, lps = _enumerated(kind, vocab, n, 3, [[1, 2, 3], [4, 1]],
                                                  [[1, 2, 3, 4], [4, 1, 2]])
  beam = decoding.generate(model, params, inputs, decoding.Options(
      max_new_tokens=n, eos_ids=(eos,), strategy='beam', num_beams=vocab ** n,
      length_penalty=alpha))
  for row, token_lp in enumerate(lps):
    best = {}
    for c, lp in zip(conts, token_lp):
      cut, length = _cut_at_eos(c, eos)
      best[tuple(cut)] = lp[:length].sum() / length ** alpha
    want = max(best, key=best.get)
    np.testing.assert_array_equal(beam['tokens'][row], want)
    np.testing.assert_allclose(beam['scores'][row], best[want], atol=1e-4)
  # Two beams, no EOS, no length penalty: never worse than greedy's total log-probability.
  greedy = decoding.generate(model, params, inputs, decoding.Options(max_new_tokens=n))
  two = decoding.generate(model, params, inputs, decoding.Options(
      max_new_tokens=n, strategy='beam', num_beams=2, length_penalty=0.0))
  assert np.all(np.asarray(two['scores']) >= np.asarray(greedy['scores']) - 1e-5)


def _repeats_ngram(row, size: int) -> bool:
  grams = [tuple(row[j:j + size]) for j in range(len(row) - size + 1)]
  return len(grams) != len(set(grams))


@pytest.mark.parametrize('kind', ['llama', 'bart'])
def test_no_repeat_ngram_and_min_new_tokens_constrain_every_strategy(kind):
  # The unconstrained greedy titles repeat a bigram (the tiny random model loops); constrained,
  # no strategy repeats one, beam 1 and top-k 1 still equal greedy, and EOS comes no earlier
  # than `min_new_tokens`.
  model, params, inputs, n = _model(kind), _params(kind), _inputs(kind), 16
  free = np.asarray(decoding.generate(model, params, inputs,
                                      decoding.Options(max_new_tokens=n))['tokens'])
  assert any(_repeats_ngram(list(r), 2) for r in free), free
  eos = int(free[0, 1])  # row 0's second token: min_new_tokens=4 must push it back
  opts = dict(max_new_tokens=n, eos_ids=(eos,), no_repeat_ngram_size=2, min_new_tokens=4)
  greedy = decoding.generate(model, params, inputs, decoding.Options(**opts))
  beam1 = decoding.generate(model, params, inputs, decoding.Options(
      **opts, strategy='beam', num_beams=1, length_penalty=0.0))
  beam4 = decoding.generate(model, params, inputs, decoding.Options(
      **opts, strategy='beam', num_beams=4, length_penalty=0.6))
  top1 = decoding.generate(model, params, inputs, decoding.Options(
      **opts, strategy='sample', top_k=1), rng=jax.random.key(3))
  sampled = decoding.generate(model, params, inputs, decoding.Options(
      **opts, strategy='sample', temperature=1.5), rng=jax.random.key(4))
  np.testing.assert_array_equal(beam1['tokens'], greedy['tokens'])
  np.testing.assert_array_equal(top1['tokens'], greedy['tokens'])
  for out in (greedy, beam4, sampled):
    for row, length in zip(np.asarray(out['tokens']), np.asarray(out['lengths'])):
      row = list(row[:length])
      assert not _repeats_ngram(row, 2), row
      assert eos not in row[:4] and length >= min(5, n), row
  # A chosen token is never banned and bans do not renormalise: beam 1's constrained log-probs
  # sum to greedy's score, the model's own log-probs of its tokens.
  np.testing.assert_allclose(beam1['scores'], greedy['scores'], atol=1e-4)


@pytest.mark.parametrize('kind', ['llama', 't5'])
def test_constrained_beam_search_finds_constrained_exhaustive_best(kind):
  # With a beam per sequence, beam search under the constraints returns the best-scoring
  # sequence among those that keep them (scores: the model's log-probs, as transformers scores
  # them after its logits processors), found by enumeration.
  vocab, n, eos, alpha, size, least = 4, 4, 0, 1.0, 2, 2
  model, params, inputs, conts, lps = _enumerated(kind, vocab, n, 5, [[1, 2, 3], [3, 1]],
                                                  [[1, 2, 3, 1], [3, 1, 2]])
  beam = decoding.generate(model, params, inputs, decoding.Options(
      max_new_tokens=n, eos_ids=(eos,), strategy='beam', num_beams=vocab ** n,
      length_penalty=alpha, no_repeat_ngram_size=size, min_new_tokens=least))
  unconstrained_best = []
  for row, token_lp in enumerate(lps):
    best, kept = {}, {}
    for c, lp in zip(conts, token_lp):
      cut, length = _cut_at_eos(c, eos)
      best[tuple(cut)] = lp[:length].sum() / length ** alpha
      # An encoder-decoder's n-grams include its decoder start token (as transformers').
      history = ([] if kind == 'llama' else [model.config.decoder_start_id]) + cut[:length]
      if not _repeats_ngram(history, size) and eos not in cut[:least]:
        kept[tuple(cut)] = best[tuple(cut)]
    want = max(kept, key=kept.get)
    np.testing.assert_array_equal(beam['tokens'][row], want)
    np.testing.assert_allclose(beam['scores'][row], kept[want], atol=1e-4)
    unconstrained_best.append(max(best, key=best.get) != want)
  assert any(unconstrained_best)  # the constraints changed at least one row's answer


def test_filter_logits_keeps_top_k_and_nucleus():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
  kept = lambda **kw: np.isfinite(np.asarray(decoding.filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_p=0.8) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8
  assert kept(top_p=0.81) == [False, True, True, True]
  assert kept(top_p=0.4) == [False, True, False, False]  # the most likely token always stays
  assert kept(top_k=3) == [False, True, True, True]
  assert kept(top_k=3, top_p=0.6) == [False, True, False, True]
  draws = jax.random.categorical(jax.random.key(0), decoding.filter_logits(logits, top_p=0.8),
                                 shape=(20_000,))
  freq = np.bincount(np.asarray(draws), minlength=4) / 20_000
  np.testing.assert_allclose(freq, [0.0, 0.625, 0.0, 0.375], atol=0.015)


def test_bad_inputs_are_one_line_errors():
  model, params = _model('gpt2'), _params('gpt2')
  right_padded = {'tokens': np.array([[5, 6, 0]]), 'segment_ids': np.array([[1, 1, 0]])}
  with pytest.raises(ValueError, match='left-padded'):
    decoding.generate(model, params, right_padded)
  with pytest.raises(ValueError, match='exceeds the model'):
    decoding.generate(model, params, decoding.left_pad([[5, 6]]),
                      decoding.Options(max_new_tokens=63))
  with pytest.raises(ValueError, match='needs an rng'):
    decoding.generate(model, params, decoding.left_pad([[5]]), decoding.Options(strategy='sample'))
  with pytest.raises(ValueError, match='unknown strategy'):
    decoding.Options(strategy='nucleus')
  with pytest.raises(ValueError, match='no_repeat_ngram_size must be >= 0'):
    decoding.Options(no_repeat_ngram_size=-1)
  with pytest.raises(ValueError, match='min_new_tokens must be in'):
    decoding.Options(max_new_tokens=4, min_new_tokens=5)


def test_generate_cli_passes_the_constraints_and_refuses_bad_ones(capsys, monkeypatch):
  import types  # pylint: disable=g-import-not-at-top
  from ptm_jax import generate, interop  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(interop, 'load_pretrained', lambda path: types.SimpleNamespace(tokenizer=1))
  monkeypatch.setattr(generate, 'generate', lambda pre, prompt, **kw: seen.append(kw) or 'out')
  assert generate.main(['--pretrained', 'm', '--prompt', 'x', '--strategy', 'beam',
                        '--no_repeat_ngram_size', '3', '--min_new_tokens', '2']) == 0
  options = seen[0]['options']
  assert (options.strategy, options.no_repeat_ngram_size, options.min_new_tokens) == ('beam', 3, 2)
  assert '>>> x\nout' in capsys.readouterr().out
  # Options are checked before any model is read: a bad value is one line and exit status 1.
  assert generate.main(['--pretrained', 'nowhere', '--prompt', 'x', '--max_new_tokens', '4',
                        '--min_new_tokens', '5']) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: min_new_tokens must be in') and err.count('\n') == 1
  assert generate.main(['--pretrained', 'nowhere', '--prompt', 'x',
                        '--no_repeat_ngram_size', '-2']) == 1
  assert 'no_repeat_ngram_size must be >= 0' in capsys.readouterr().err
  with pytest.raises(ValueError, match='at least one token'):
    decoding.left_pad([[1], []])
