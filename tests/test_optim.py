"""optim: layer-wise LR decay multipliers by parameter path, and the update they scale."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptm_jax import models, optim
from ptm_jax.configs import base
from ptm_jax.objectives import classify
from ptm_jax.tasks import finetune

FIELDS = dict(vocab_size=64, num_layers=3, embed_dim=32, num_heads=2, mlp_dim=64,
              max_position_embeddings=16, dropout_rate=0.0)


def _classifier_params():
  options = classify.Options(num_classes=2, pooling='mean', dropout_rate=0.0)
  model = classify.build_model('encoder', 'runlocal', dict(FIELDS), options)
  tokens = jnp.ones((2, 8), jnp.int32)
  return model.init(jax.random.key(0), tokens, segment_ids=jnp.ones_like(tokens),
                    positions=jnp.tile(jnp.arange(8), (2, 1)))['params']


def _by_module(tree):
  """{'backbone/layers_0': {multipliers of its leaves}, ...} at module depth 2 (or 1 for heads)."""
  out = {}
  for path, v in jax.tree_util.tree_leaves_with_path(tree):
    names = [str(getattr(k, 'key', k)) for k in path]
    key = '/'.join(names[:2]) if names[0] == 'backbone' else names[0]
    out.setdefault(key, set()).add(float(v))
  return out


def test_multipliers_follow_depth_in_a_task_model():
  d = 0.5
  scales = _by_module(optim.layer_depth_multipliers(_classifier_params(), d))
  # Three blocks: the top block d**1, the bottom d**3, every embedding part d**4, heads 1.
  assert scales['backbone/layers_2'] == {d ** 1}
  assert scales['backbone/layers_1'] == {d ** 2}
  assert scales['backbone/layers_0'] == {d ** 3}
  for name in ('token_embed', 'position_embed', 'embed_norm'):
    assert scales[f'backbone/{name}'] == {d ** 4}, name
  heads = {k: v for k, v in scales.items() if not k.startswith('backbone/')}
  assert heads and all(v == {1.0} for v in heads.values()), heads


def test_decoder_blocks_get_the_same_rule():
  model = models.build('decoder', 'runlocal', vocab_size=64, num_layers=2, embed_dim=32,
                       num_heads=2, mlp_dim=64, max_position_embeddings=16)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = model.init(jax.random.key(0), tokens, segment_ids=jnp.ones_like(tokens),
                      positions=jnp.arange(8)[None])['params']
  scales = _by_module({'backbone': optim.layer_depth_multipliers(params, 0.8)})
  one = lambda name: scales[f'backbone/{name}'].pop()  # noqa: E731  (one value per module)
  assert one('layers_1') == pytest.approx(0.8) and one('layers_0') == pytest.approx(0.64)
  assert one('token_embed') == pytest.approx(0.8 ** 3) and one('final_norm') == 1.0


def test_adamw_updates_are_scaled_by_exactly_the_multipliers():
  """The decay acts after AdamW, so update(decay) = multiplier * update(no decay), weight decay
  included, on every leaf (second step: non-trivial Adam moments; the same params are fed to both
  steps, since the decoupled weight decay reads them)."""
  params = _classifier_params()
  cfg = optim.default_optim_config()
  cfg.update(learning_rate=1e-3, warmup_steps=0, weight_decay=0.1)
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape),
                       params)
  updates = {}
  for decay in (1.0, 0.6):
    cfg.layerwise_lr_decay = decay
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    state = tx.init(params)
    for step in range(2):
      u, state = tx.update(jax.tree.map(lambda g: g * (1 + step), grads), state, params)
    updates[decay] = u
  scales = optim.layer_depth_multipliers(params, 0.6)
  jax.tree.map(lambda a, b, s: np.testing.assert_allclose(b, s * a, rtol=1e-5, atol=1e-9),
               updates[1.0], updates[0.6], scales)
  assert min(jax.tree.leaves(scales)) == pytest.approx(0.6 ** 4)


def test_bad_decay_and_models_without_blocks_are_one_line_errors():
  cfg = optim.default_optim_config()
  cfg.layerwise_lr_decay = 0.0
  with pytest.raises(ValueError, match=r'layerwise_lr_decay must be in \(0, 1\]'):
    optim.make_optimizer(cfg, 10)
  with pytest.raises(ValueError, match='layers_'):
    optim.layer_depth_multipliers({'dense': {'kernel': np.zeros((2, 2))}}, 0.9)


def test_finetune_config_carries_the_decay():
  config = base.base_config('encoder', 'runlocal', 'mlm')
  config.downstream = ml_collections.ConfigDict({**finetune.DEFAULTS, 'tasks': ('rt_sentiment',),
                                                 'layerwise_lr_decay': 0.7})
  tok = ml_collections.ConfigDict({'kind': 'sentencepiece', 'path': 'unused/sp.model'})
  ft = finetune.finetune_config(config, 'rt_sentiment', 'pretrained', 0, '/pretrained', tok)
  assert ft.optim.layerwise_lr_decay == 0.7
  assert optim.default_optim_config().layerwise_lr_decay == 1.0
