"""PPMI-SVD token-table initialisation (ptm_jax/embedding_init.py) and its train-loop hook."""
import numpy as np
import pytest

from ptm_jax import embedding_init


def _row(tokens, segments):
  return {'tokens': np.asarray([tokens], np.int32), 'segment_ids': np.asarray([segments], np.int32)}


def test_counts_stay_inside_segments_and_weight_by_distance():
  # Two packed documents [1 2 3] and [4 5], then padding: no pair crosses 3|4 or touches padding.
  rows = [_row([1, 2, 3, 4, 5, 0], [1, 1, 1, 2, 2, 0])]
  counts, seen = embedding_init.cooccurrence_counts(rows, 6, window=2, max_tokens=100)
  assert seen == 5
  np.testing.assert_allclose(counts, counts.T)
  assert counts[1, 2] == 1.0 and counts[2, 3] == 1.0 and counts[1, 3] == 0.5 and counts[4, 5] == 1.0
  assert counts[3, 4] == 0 and counts[2, 4] == 0 and counts[:, 0].sum() == 0
  assert counts.sum() == 2 * (1 + 1 + 0.5 + 1)


def test_max_tokens_stops_reading():
  rows = iter([_row([1, 2, 3, 4], [1, 1, 1, 1])] * 10)
  _, seen = embedding_init.cooccurrence_counts(rows, 5, window=1, max_tokens=8)
  assert seen == 8 and len(list(rows)) == 8  # two rows read, the rest left untouched


def test_ppmi_is_nonnegative_and_zero_where_never_seen():
  counts = np.array([[0, 4, 1], [4, 0, 0], [1, 0, 2]], np.float64)
  p = embedding_init.ppmi(counts)
  assert (p >= 0).all() and p[1, 2] == 0 and p[1, 1] == 0 and p[0, 1] > 0
  with pytest.raises(ValueError, match='no co-occurrences'):
    embedding_init.ppmi(np.zeros((3, 3)))


def test_randomized_svd_matches_exact_on_a_low_rank_matrix():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(60, 5)) @ np.diag([9, 7, 5, 3, 1.0]) @ rng.normal(size=(5, 60))
  u, s = embedding_init.randomized_svd(a, 3)
  s_exact = np.linalg.svd(a, compute_uv=False)[:3]
  np.testing.assert_allclose(s, s_exact, rtol=1e-8)
  np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-10)


def test_words_sharing_contexts_end_up_close():
  # Ids 10-19 only ever appear among themselves, ids 20-29 likewise: two "topics".
  rng = np.random.default_rng(0)
  rows = []
  for r in range(400):
    base = 10 if r % 2 else 20
    rows.append(_row(rng.integers(base, base + 10, 16), np.ones(16)))
  table, info = embedding_init.ppmi_svd_embeddings(rows, 40, 4, init_stddev=0.02, window=3,
                                                   max_tokens=10**6)
  assert table.shape == (40, 4) and table.dtype == np.float32 and info['initialised_rows'] == 20
  unit = table / np.linalg.norm(table, axis=1, keepdims=True)
  cos = unit @ unit.T
  within = np.mean([cos[i, j] for i in range(10, 20) for j in range(10, 20) if i != j])
  across = np.mean([cos[i, j] for i in range(10, 20) for j in range(20, 30)])
  assert within > 0.5 and across < within - 0.5
  np.testing.assert_allclose(table[10:30].std(), 0.02, rtol=1e-5)
  # Ids never seen keep a random N(0, 0.02) row.
  assert 0.01 < table[30:].std() < 0.03


def test_too_little_text_is_a_one_line_error():
  rows = [_row([1, 2, 1, 2], [1, 1, 1, 1])]
  with pytest.raises(ValueError, match='only 2 distinct tokens co-occur.*embedding_init_tokens'):
    embedding_init.ppmi_svd_embeddings(rows, 8, 4, init_stddev=0.02)


def test_train_hook_fills_the_encoder_table_and_refuses_other_families(data_dir):
  from ptm_jax import models, train
  from ptm_jax.configs import load_experiment
  from ptm_jax.data import tokenizers
  config = load_experiment('experiments/bert.py:runlocal', {'train.embedding_init': 'ppmi_svd',
                                                             'train.embedding_init_tokens': 20_000})
  tokenizer = tokenizers.load_or_train(config.data.tokenizer, config.data)
  model = models.build('encoder', 'runlocal', vocab_size=tokenizer.vocab_size)
  params = train.count_based_embeddings(config, tokenizer, model)
  table = params['token_embed']['embedding']
  assert table.shape == (tokenizer.vocab_size, model.config.embed_dim)
  assert abs(float(table.std()) - model.config.initializer_range) < 0.005
  decoder = models.build('decoder', 'runlocal', vocab_size=tokenizer.vocab_size)
  with pytest.raises(ValueError, match='encoder family'):
    train.count_based_embeddings(config, tokenizer, decoder)
  config.train.embedding_init = 'glove'
  with pytest.raises(ValueError, match="use 'ppmi_svd'"):
    train.count_based_embeddings(config, tokenizer, model)


def _encoder_and_params(**fields):
  import flax
  import jax
  import jax.numpy as jnp
  from ptm_jax import models
  model = models.build('encoder', 'runlocal', vocab_size=64, num_layers=1, embed_dim=32, num_heads=2,
                       mlp_dim=64, max_position_embeddings=16, dropout_rate=0.0, **fields)
  tokens = jnp.tile(jnp.arange(3, 11), (2, 1))
  kwargs = dict(segment_ids=jnp.ones_like(tokens), positions=jnp.tile(jnp.arange(8), (2, 1)))
  params = flax.core.meta.unbox(model.init(jax.random.key(0), tokens, **kwargs)['params'])
  # A "pretrained" table: 3x the init scale plus a common direction, as tied MLM leaves it.
  params = jax.tree.map(np.asarray, params)
  params['token_embed']['embedding'] = params['token_embed']['embedding'] * 3 + 0.05
  run = lambda p: np.asarray(model.apply({'params': p}, tokens, **kwargs)['hidden'])  # noqa: E731
  return params, run


@pytest.mark.parametrize('fields', [{}, {'embedding_size': 16}], ids=['bert', 'factorised'])
def test_rescaled_tables_keep_the_encoder_function_and_hit_the_rms(fields):
  params, run = _encoder_and_params(**fields)
  rescaled = embedding_init.rescale_tables({'backbone': params}, 0.02)['backbone']
  table = rescaled['token_embed']['embedding']
  assert np.sqrt(np.mean(table.astype(np.float64) ** 2)) == pytest.approx(0.02, rel=1e-5)
  factor = 0.02 / np.sqrt(np.mean(params['token_embed']['embedding'].astype(np.float64) ** 2))
  for name in ('position_embed', 'type_embed'):  # every input of embed_norm, by the same factor
    np.testing.assert_allclose(rescaled[name]['embedding'], params[name]['embedding'] * factor,
                               rtol=1e-6)
  for k, v in params['embed_norm'].items():  # the LayerNorm itself is untouched
    np.testing.assert_array_equal(rescaled['embed_norm'][k], v)
  np.testing.assert_allclose(run(rescaled), run(params), atol=2e-4)  # LayerNorm eps aside


def test_rescale_refuses_tables_without_a_layernorm_and_bad_rms():
  with pytest.raises(ValueError, match='embed_norm'):
    embedding_init.rescale_tables({'token_embed': {'embedding': np.ones((4, 2))}}, 0.02)
  with pytest.raises(ValueError, match='init_embedding_rms must be > 0'):
    embedding_init.rescale_tables({}, 0.0)
