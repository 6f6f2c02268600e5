"""ELECTRA's context-only control (`replacement='shuffle'`): replacements are the batch's own
selected originals, drawn uniformly over the selected slots, and the generator's samples go unused;
on text where only the context gives a replacement away, the discriminator learns to find it."""
from __future__ import annotations

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import electra

V = 80
SPECIALS = SpecialIds(V)
FIELDS = dict(vocab_size=V, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
              max_position_embeddings=32, dropout_rate=0.0)


def test_shuffled_originals_draw_every_selected_slot_alike_and_nothing_else():
  targets = jnp.arange(12, dtype=jnp.int32).reshape(3, 4) + 100  # one distinct token per slot
  weights = jnp.asarray([[1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]], jnp.float32)
  draws = np.asarray(jax.vmap(lambda k: electra.shuffled_originals(k, targets, weights))(
      jax.random.split(jax.random.key(0), 4000)))
  assert draws.shape == (4000, 3, 4)
  counts = collections.Counter(draws.ravel().tolist())
  pool = set(np.asarray(targets)[np.asarray(weights) > 0].tolist())
  assert set(counts) == pool  # only selected originals, each of them drawn
  n = draws.size
  for token in pool:  # uniform over the 5 selected slots: 9,600 draws each, sd ~ 88
    assert abs(counts[token] - n / 5) < 5 * np.sqrt(n * 0.2 * 0.8), (token, counts[token])


def test_options_name_the_allowed_replacements():
  with pytest.raises(ValueError, match="'generator', 'shuffle'"):
    electra.Options(replacement='uniform')


def test_shuffle_ignores_the_generator_and_replaces_with_batch_originals(monkeypatch):
  options = electra.Options(replacement='shuffle')
  model = electra.build_model('encoder', 'runlocal', FIELDS, options)
  rng = np.random.default_rng(0)
  b, length = 8, 32
  tokens = rng.integers(5, V, size=(b, length)).astype(np.int32)
  tokens[:, 0] = SPECIALS.cls
  batch = {'tokens': tokens, 'segment_ids': np.ones((b, length), np.int32),
           'positions': np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy()}
  params = nn.unbox(model.init(jax.random.key(0), batch['tokens'], segment_ids=batch['segment_ids'],
                               positions=batch['positions'])['params'])
  corrupted = electra.corrupt(jax.random.key(1), batch, specials=SPECIALS, options=options)

  seen = {}

  def spy(tokens_BL, sampled, weights, positions_BK=None, _real=electra.replace_tokens):
    seen['sampled'], seen['weights'] = sampled, weights
    return _real(tokens_BL, sampled, weights, positions_BK)

  def run(p):
    _, disc_loss, metrics = electra.loss_terms(p, corrupted, jax.random.key(2), model=model,
                                               options=options)
    return float(disc_loss), float(metrics['replaced_fraction'])

  monkeypatch.setattr(electra, 'replace_tokens', spy)
  plain = run(params)
  sampled, weights = np.asarray(seen['sampled']), np.asarray(seen['weights'])
  # A generator forced to put all its mass on token 7 changes nothing: its samples are unused.
  forced = jax.tree.map(lambda x: x, params)
  forced['generator']['mlm_head']['bias'] = params['generator']['mlm_head']['bias'].at[7].set(1e4)
  assert run(forced) == plain
  selected = weights > 0
  originals = np.asarray(corrupted['mlm_targets'])[selected]
  assert selected.sum() > 20
  assert set(sampled[selected].tolist()) <= set(originals.tolist())
  assert 0 < plain[1] < selected.sum() / tokens.size  # some draws equal their slot's original


@pytest.mark.runtime_bound  # 600 steps of one program; ~40 s on 2 cores, most of it compiling
def test_discriminator_learns_context_only_cues():
  """Rows are runs of consecutive ids (5 + (s + i) mod 70, s random): every id is equally common,
  so a shuffled-in replacement differs from an original only in not continuing its neighbours. The
  discriminator must read the context through attention to find it: AUC well above 0.5 shows that
  path works (on news text at the encoder comparison's `cpu` size it stays ~0.54, docs/compare_encoders.md)."""
  options = electra.Options(replacement='shuffle')
  fields = dict(FIELDS, embed_dim=64, mlp_dim=128, max_position_embeddings=64)
  model = electra.build_model('encoder', 'runlocal', fields, options)
  b, length = 32, 32
  rng = np.random.default_rng(0)

  def progression_rows():
    tokens = (5 + (rng.integers(0, 70, size=(b, 1)) + np.arange(length)) % 70).astype(np.int32)
    return {'tokens': tokens, 'segment_ids': np.ones((b, length), np.int32),
            'positions': np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy()}

  first = progression_rows()
  params = nn.unbox(model.init(jax.random.key(0), first['tokens'], segment_ids=first['segment_ids'],
                               positions=first['positions'])['params'])
  tx = optax.adamw(1e-3)

  @jax.jit
  def step(params, opt_state, batch, key):
    corrupted = electra.corrupt(jax.random.fold_in(key, 1), batch, specials=SPECIALS,
                                options=options)
    grads, metrics = jax.grad(lambda p: electra.loss(p, corrupted, jax.random.fold_in(key, 2),
                                                     model=model, options=options), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state, aucs = tx.init(params), []
  for i in range(600):
    params, opt_state, metrics = step(params, opt_state, progression_rows(), jax.random.key(i))
    aucs.append(metrics['disc_auc'])  # read back once, after the loop
  aucs = np.asarray(jax.device_get(aucs))
  assert aucs[:50].mean() < 0.6, aucs[:50]  # the token alone tells nothing
  assert aucs[-50:].mean() > 0.8, aucs[-50:]  # the context does (0.91 at step 600 when written)
