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
