"""Label placement and loss tests of the causal LM objective."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax import objectives
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import clm, common

jax.config.update('jax_numpy_rank_promotion', 'raise')

SPECIALS = SpecialIds(vocab_size=64)


def packed_example():
  """Row 0: document A (4 tokens) + document B (3 tokens) + 1 pad; row 1: one full document."""
  tokens = np.array([[10, 11, 12, 13, 20, 21, 22, 0],
                     [30, 31, 32, 33, 34, 35, 36, 37]], np.int32)
  segment_ids = np.array([[1, 1, 1, 1, 2, 2, 2, 0],
                          [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
  positions = np.array([[0, 1, 2, 3, 0, 1, 2, 0],
                        [0, 1, 2, 3, 4, 5, 6, 7]], np.int32)
  return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions}


def test_worked_example_two_packed_segments():
  out = jax.jit(functools.partial(clm.corrupt, specials=SPECIALS, options=clm.Options()))(
      jax.random.PRNGKey(0), packed_example())
  np.testing.assert_array_equal(out['inputs'], packed_example()['tokens'])
  np.testing.assert_array_equal(out['targets'], [[11, 12, 13, 20, 21, 22, 0, 0],
                                                 [31, 32, 33, 34, 35, 36, 37, 0]])
  # 13 -> 20 crosses the packing boundary, 22 -> pad leaves the document, pad predicts nothing.
  np.testing.assert_array_equal(out['weights'], [[1, 1, 1, 0, 1, 1, 0, 0],
                                                 [1, 1, 1, 1, 1, 1, 1, 0]])
  assert out['weights'].dtype == jnp.float32


def test_properties_on_random_packing():
  rs = np.random.RandomState(0)
  segment_ids = np.sort(rs.randint(0, 5, size=(32, 128)), axis=1)[:, ::-1].astype(np.int32)
  tokens = np.where(segment_ids == 0, 0, rs.randint(5, 64, size=(32, 128))).astype(np.int32)
  batch = {'tokens': tokens, 'segment_ids': segment_ids, 'positions': np.zeros_like(tokens)}
  out = jax.device_get(clm.corrupt(None, batch, specials=SPECIALS))
  np.testing.assert_array_equal(out['targets'][:, :-1], tokens[:, 1:])
  w = out['weights'] > 0
  assert not w[:, -1].any() and not (w & (segment_ids == 0)).any()
  last_of_segment = np.concatenate(
      [segment_ids[:, :-1] != segment_ids[:, 1:], np.ones((32, 1), bool)], axis=1)
  assert not (w & last_of_segment).any()
  np.testing.assert_array_equal(w, (segment_ids != 0) & ~last_of_segment)


class TinyLM(nn.Module):
  """Stand-in model: logits straight from an embedding table."""

  vocab_size: int

  @nn.compact
  def __call__(self, tokens, *, segment_ids=None, positions=None, token_types=None,
               deterministic=True):
    return {'logits': nn.Embed(self.vocab_size, self.vocab_size)(tokens).astype(jnp.float32)}


@pytest.mark.parametrize('z_loss', [0.0, 1e-2])
def test_loss_matches_hand_computed(z_loss):
  batch = clm.corrupt(None, packed_example(), specials=SPECIALS)
  model = TinyLM(64)
  params = model.init(jax.random.PRNGKey(0), batch['inputs'])['params']
  opts = objectives.build_options(clm, {'z_loss': z_loss})
  value, metrics = jax.jit(functools.partial(clm.loss, model=model, specials=SPECIALS,
                                             options=opts))(params, batch, None)
  logits = np.asarray(model.apply({'params': params}, batch['inputs'])['logits'], np.float64)
  targets, weights = np.asarray(batch['targets']), np.asarray(batch['weights'])
  lse = np.log(np.exp(logits).sum(-1))
  nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0] + z_loss * lse ** 2
  expected = (nll * weights).sum() / weights.sum()
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert 0.0 <= metrics['accuracy'] <= 1.0
  assert metrics['num_targets'] == weights.sum() == 12
  assert ('z_loss' in metrics) == bool(z_loss)


def test_label_smoothing_and_registry():
  assert objectives.get('clm') is clm
  logits = jnp.array([[[2.0, 0.0, -1.0, 0.5]]])
  targets, weights = jnp.array([[0]]), jnp.ones((1, 1))
  smoothed, _, _ = common.weighted_cross_entropy(logits, targets, weights, label_smoothing=0.1)
  logp = np.asarray(jax.nn.log_softmax(logits))[0, 0]
  soft = np.full(4, 0.1 / 4) + np.array([0.9, 0, 0, 0])
  np.testing.assert_allclose(smoothed, -(soft * logp).sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown option 'zloss'.*z_loss"):
    objectives.build_options(clm, {'zloss': 1e-4})


def test_argmax_hits_equals_argmax_with_its_tie_rule():
  # Integer-valued logits over a small vocabulary: many ties, where argmax takes the lowest index.
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 3, size=(4, 50, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(4, 50)).astype(np.int32)
  expected = (np.argmax(logits, -1) == targets).astype(np.float32)
  assert 0 < expected.sum() < expected.size
  for dtype in (jnp.float32, jnp.bfloat16):
    got = jax.jit(common.argmax_hits)(jnp.asarray(logits, dtype), jnp.asarray(targets))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), expected)
  # A tied maximum counts only at its first index, never at a later one.
  tied = jnp.array([[[1.0, 3.0, 3.0, 0.0]]])
  assert float(common.argmax_hits(tied, jnp.array([[1]]))[0, 0]) == 1.0
  assert float(common.argmax_hits(tied, jnp.array([[2]]))[0, 0]) == 0.0
