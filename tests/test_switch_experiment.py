"""experiments/switch.py: its sizes (Switch-Base-8 = T5-Base + experts: 619M), its dense twins,
runlocal runs on real text (the GPT form with causal LM, the T5 form with span corruption) that
lower the loss with the router losses logged, and a Switch GPT (not Mixtral-shaped) refused by the
HF export in one line."""
import os

import jax
import jax.numpy as jnp
import pytest

from ptm_jax import configs, flops, models
from ptm_jax.interop import hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCH = os.path.join(REPO, 'experiments', 'switch.py')
RUNLOCAL = {'mesh.num_devices': 1, 'train.steps': 30, 'train.batch_size': 8, 'train.log_every': 5,
            'train.eval_every': 0, 'train.checkpoint_every': 30, 'data.seq_len': 64,
            'data.num_threads': 1, 'data.tokenizer.vocab_size': 800,
            'data.tokenizer.max_train_chars': 300_000, 'optim.warmup_steps': 5}


def _params(config, vocab_size):
  fields = {k: v for k, v in config.model.items() if k not in ('family', 'variant')}
  model = models.build(config.model.family, config.model.variant,
                       **dict(fields, vocab_size=vocab_size))
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, segment_ids=tokens + 1,
                                             positions=tokens))
  return model, sum(x.size for x in jax.tree.leaves(shapes))


def test_sizes_and_dense_twins():
  sparse = configs.load_experiment(SWITCH + ':small', {})
  dense = configs.load_experiment(SWITCH + ':dense_small', {})
  assert (sparse.model.moe_experts, dense.model.moe_experts) == (8, 0)
  assert sparse.model.moe_every == 2 and sparse.model.moe_capacity_factor == 1.25
  # GPT-2 small (124,439,808 at its 50,257 vocabulary) + 7 more MLPs in 6 layers + 6 routers.
  _, n_dense = _params(dense, 50257)
  _, n_sparse = _params(sparse, 50257)
  mlp = 2 * 768 * 3072 + 3072 + 768
  assert n_dense == 124_439_808 and n_sparse == n_dense + 6 * (7 * mlp + 768 * 8)
  with pytest.raises(ValueError, match='dense_<size>'):
    configs.load_experiment(SWITCH + ':huge', {})


def test_switch_base_8_is_t5_base_with_experts():
  sparse = configs.load_experiment(SWITCH + ':t5_base', {})
  dense = configs.load_experiment(SWITCH + ':dense_t5_base', {})
  assert sparse.objective.name == dense.objective.name == 'span_corruption'
  assert (sparse.model.family, sparse.model.variant, dense.model.moe_experts) == (
      'encdec', 't5_base', 0)
  # T5-Base (222,903,552) + 7 more MLPs and a router in 6 layers of each stack: Switch-Base-8.
  _, n_dense = _params(dense, 32128)
  _, n_sparse = _params(sparse, 32128)
  assert n_dense == 222_903_552 and n_sparse == n_dense + 12 * (7 * 2 * 768 * 3072 + 768 * 8)
  assert n_sparse == 619_339_008


def test_flops_per_token_count_the_router_capacity_and_dispatch():
  # runlocal GPT: D = 128, F = 512, 2 heads of 64, T = 128, V = 8000, 2 layers, layer 2 routed
  # over E = 8 experts, top-1, capacity factor 1.25 -> C = ceil(128 * 1.25 / 8) = 20 slots each.
  sparse = configs.load_experiment(SWITCH + ':runlocal', {})
  dense = configs.load_experiment(SWITCH + ':dense_runlocal', {})
  ffn = 2 * 2 * 128 * 512
  block = 2 * 128 * 4 * 128 + 2 * 2 * 128 * 128 + ffn
  dense_total = 3 * (2 * block + 2 * 128 * 8000)
  assert flops.per_token(dense, vocab_size=8000) == pytest.approx(dense_total)
  # The method's cost: the token's one expert + the router (Switch: the dense model's FLOPs).
  expected = flops.per_token(sparse, vocab_size=8000, scored='expected')
  assert expected == pytest.approx(dense_total + 3 * 2 * 128 * 8)
  # What runs: 8 x 20 = 160 expert slots per 128 tokens + the one-hot dispatch and combine
  # einsums, each 2 E C D per token (a row's L x E x C x D multiply-adds).
  ran = flops.per_token(sparse, vocab_size=8000)
  assert ran == pytest.approx(dense_total + 3 * (2 * 128 * 8 + (160 / 128 - 1) * ffn
                                                 + 2 * (2 * 160 * 128)))
  # Dropless (sorted tokens + ragged_dot) runs exactly the method's cost.
  dropless = configs.load_experiment(SWITCH + ':runlocal', {'model.moe_dropless': True})
  assert flops.per_token(dropless, vocab_size=8000) == pytest.approx(expected)
  # The T5 form routes the second layer of each stack over its own slots (encoder 128, decoder
  # 29 at T = 141): both stacks' routed FFNs are counted, the cross-attention unchanged.
  t5 = configs.load_experiment(SWITCH + ':t5_runlocal', {})
  t5_dense = configs.load_experiment(SWITCH + ':dense_t5_runlocal', {})
  parts = flops.breakdown(t5, vocab_size=8000)
  parts_dense = flops.breakdown(t5_dense, vocab_size=8000)
  for stack, slots in (('encoder', 128), ('decoder', 29)):
    c = -(-slots * 5 // 32)  # ceil(slots * 1.25 / 8)
    extra = slots * (2 * 128 * 8 + (8 * c / slots - 1) * ffn + 2 * (2 * 8 * c * 128))
    assert parts[stack] - parts_dense[stack] == pytest.approx(3 * extra / 141)
  assert parts['lm_head'] == parts_dense['lm_head']


def test_hf_export_refuses_a_mixture_of_experts(tmp_path):
  config = configs.load_experiment(SWITCH + ':runlocal', {})
  model, _ = _params(config, 97)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = model.init(jax.random.key(0), tokens, segment_ids=tokens + 1, positions=tokens)
  with pytest.raises(ValueError, match='mixture-of-experts'):
    hf.save(model.config, 'decoder', params['params'], str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('variant', ['runlocal', 't5_runlocal'])
def test_runlocal_loss_falls_and_logs_the_router(variant, data_dir, tmp_path):
  from ptm_jax import metrics as metrics_lib
  from ptm_jax import train
  overrides = dict(RUNLOCAL)
  if variant.startswith('t5'):  # rows of 64 tokens -> 57 encoder inputs, 14 targets
    overrides.update({'data.seq_len': 64, 'data.tokenizer.extra_ids': 20})
  cfg = configs.load_experiment(f'{SWITCH}:{variant}', overrides)
  train.train(cfg, str(tmp_path))
  records = [r for r in metrics_lib.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
             if 'loss' in r]
  losses = [r['loss'] for r in records]
  assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses
  routed = 2 if variant.startswith('t5') else 1  # layer 1 of each stack / of the decoder
  for r in records:  # the balance loss is ~1 when balanced, E = 8 when collapsed
    assert 0.9 < r['moe_balance_loss'] < 8.0 and 0.0 <= r['moe_dropped_fraction'] < 1.0, r
    assert abs(r['aux_loss'] - 0.01 * routed * r['moe_balance_loss']) < 1e-5, r
