"""Untied MLM output table (`tie_embeddings=False`): input vectors of unseen words get no gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptm_jax import models
from ptm_jax.interop import maps


def _mlm_grads(tie: bool):
  model = models.build('encoder', 'runlocal', vocab_size=30, num_layers=1, dropout_rate=0.0,
                       tie_embeddings=tie)
  tokens = jnp.asarray([[2, 5, 6, 4, 3]], jnp.int32)  # ids 7..29 never appear in the input
  seg = jnp.ones_like(tokens)
  pos = jnp.arange(5, dtype=jnp.int32)[None]
  params = model.init(jax.random.key(0), tokens, segment_ids=seg, positions=pos)['params']

  def loss(p):
    logits = model.apply({'params': p}, tokens, segment_ids=seg, positions=pos)['logits']
    return optax.softmax_cross_entropy_with_integer_labels(logits[0, 3], jnp.asarray(9)).mean()

  return params, jax.grad(loss)(params)


def test_untied_head_leaves_unseen_input_embeddings_alone():
  params, grads = _mlm_grads(tie=False)
  g_in = np.asarray(jax.tree.leaves(grads['token_embed'])[0])
  assert np.abs(g_in[7:]).max() == 0.0  # only the softmax touches unseen words, through mlm_decoder
  assert np.abs(g_in[[2, 5, 6, 4, 3]]).max() > 0.0
  g_out = np.asarray(jax.tree.leaves(grads['mlm_decoder'])[0])
  assert np.abs(g_out[7:]).min() > 0.0  # every output row takes part in the softmax
  assert jax.tree.leaves(params['mlm_decoder'])[0].shape == (30, 128)


def test_tied_head_moves_every_input_embedding():
  params, grads = _mlm_grads(tie=True)
  g_in = np.asarray(jax.tree.leaves(grads['token_embed'])[0])
  assert np.abs(g_in[7:]).min() > 0.0
  assert 'mlm_decoder' not in params


def test_untied_encoder_has_no_hf_bert_mapping():
  cfg = models.get_family('encoder').Config(vocab_size=30, tie_embeddings=False)
  with pytest.raises(ValueError, match='no HF architecture matches'):
    maps.for_config(cfg, 'encoder')


def test_pre_norm_encoder_normalises_its_output_and_has_no_hf_mapping():
  cfg = models.get_family('encoder').Config(vocab_size=30, embed_dim=16, num_layers=2, num_heads=2,
                                            mlp_dim=32, pre_norm=True, dropout_rate=0.0)
  model = models.get_family('encoder').Model(cfg)
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % 30
  seg = jnp.ones_like(tokens)
  pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))
  variables = model.init(jax.random.key(0), tokens, segment_ids=seg, positions=pos)
  assert 'final_norm' in variables['params']
  out = model.apply(variables, tokens, segment_ids=seg, positions=pos, output_hidden_states=True)
  hidden = np.asarray(out['hidden'])
  # Pre-LN: the last block's residual stream only goes through the final LayerNorm (scale 1, bias 0).
  np.testing.assert_allclose(hidden.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(hidden.std(-1), 1.0, atol=1e-3)
  np.testing.assert_allclose(np.asarray(out['hidden_states'][-1]), hidden)
  with pytest.raises(ValueError, match='no HF architecture matches'):
    maps.for_config(cfg, 'encoder')
