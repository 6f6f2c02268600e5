"""The tagging objective: BIO chunking, entity-level counts / F1, loss masking, and a pd_ner_zh fine-tune."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptm_jax.configs import load_experiment
from ptm_jax.objectives import tag
from ptm_jax.tasks import finetune

# NER_TAGS order: O, B-PER, I-PER, B-LOC, I-LOC, B-ORG, I-ORG.
O, BP, IP, BL, IL, BO, IO = range(7)


def _chunks(tags):
  """Reference conlleval chunking in plain Python: set of (start, end, type)."""
  out, start, kind = set(), None, 0
  for i, t in enumerate(list(tags) + [O]):
    t_kind = (t + 1) // 2
    begins = t_kind and (t % 2 == 1 or t_kind != kind)
    if kind and (t_kind != kind or begins):
      out.add((start, i - 1, kind))
      kind = 0
    if begins:
      start, kind = i, t_kind
  return out


def test_chunk_flags_worked_example():
  # B-PER I-PER | O | I-LOC (an I- after O starts a chunk) | B-LOC B-LOC (adjacent same type) | B-ORG
  tags = jnp.asarray([[BP, IP, O, IL, BL, BL, BO]])
  kind, start, end = tag.chunk_flags(tags)
  np.testing.assert_array_equal(kind[0], [1, 1, 0, 2, 2, 2, 3])
  np.testing.assert_array_equal(start[0], [1, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(end[0], [0, 1, 0, 1, 1, 1, 1])


def test_entity_counts_match_reference_chunking():
  rng = np.random.default_rng(0)
  for _ in range(30):
    gold = rng.integers(0, 7, size=(4, 12))
    pred = np.where(rng.random((4, 12)) < 0.7, gold, rng.integers(0, 7, size=(4, 12)))
    weights = np.ones((4, 12), np.float32)
    weights[:, 0] = 0  # [CLS]: outside on both sides
    counts = jax.device_get(tag.entity_counts(jnp.asarray(pred), jnp.asarray(gold), jnp.asarray(weights)))
    n_pred = n_gold = n_correct = 0
    for p_row, g_row in zip(pred, gold):
      p_row, g_row = p_row.copy(), g_row.copy()
      p_row[0] = g_row[0] = O
      pc, gc = _chunks(p_row), _chunks(g_row)
      n_pred, n_gold, n_correct = n_pred + len(pc), n_gold + len(gc), n_correct + len(pc & gc)
    assert counts['num_pred_entities'] == n_pred
    assert counts['num_gold_entities'] == n_gold
    assert counts['num_correct_entities'] == n_correct


def test_partial_overlap_is_not_correct():
  gold = jnp.asarray([[O, BP, IP, IP, O]])
  pred = jnp.asarray([[O, BP, IP, O, O]])  # right start and type, wrong end
  counts = tag.entity_counts(pred, gold, jnp.ones((1, 5)))
  assert float(counts['num_correct_entities']) == 0.0
  derived = tag.derive_metrics({k: float(v) for k, v in counts.items()})
  assert derived['f1'] == 0.0
  same = tag.derive_metrics({k: float(v) for k, v in tag.entity_counts(gold, gold, jnp.ones((1, 5))).items()})
  assert same == {'precision': 1.0, 'recall': 1.0, 'f1': 1.0}


def test_f1_from_summed_batches_equals_whole_split():
  rng = np.random.default_rng(1)
  gold = rng.integers(0, 7, size=(8, 10))
  pred = np.where(rng.random((8, 10)) < 0.6, gold, rng.integers(0, 7, size=(8, 10)))
  w = np.ones((8, 10), np.float32)
  whole = tag.entity_counts(jnp.asarray(pred), jnp.asarray(gold), jnp.asarray(w))
  halves = [tag.entity_counts(jnp.asarray(pred[i:i + 4]), jnp.asarray(gold[i:i + 4]),
                              jnp.asarray(w[i:i + 4])) for i in (0, 4)]
  summed = {k: float(halves[0][k] + halves[1][k]) for k in whole}
  assert tag.derive_metrics(summed) == pytest.approx(
      tag.derive_metrics({k: float(v) for k, v in whole.items()}))


def test_loss_ignores_untagged_positions():
  options = tag.Options(num_tags=7, dropout_rate=0.0)
  model = tag.build_model('encoder', 'runlocal', dict(vocab_size=50, num_layers=1), options)
  tokens = jnp.asarray([[2, 10, 11, 12, 3, 0]], jnp.int32)
  seg = jnp.asarray([[1, 1, 1, 1, 1, 0]], jnp.int32)
  pos = jnp.asarray([[0, 1, 2, 3, 4, 0]], jnp.int32)
  params = model.init(jax.random.key(0), tokens, segment_ids=seg, positions=pos)['params']
  batch = {'tokens': tokens, 'segment_ids': seg, 'positions': pos,
           'tag_labels': jnp.asarray([[0, BP, IP, O, 0, 0]], jnp.int32),
           'tag_weights': jnp.asarray([[0, 1, 1, 1, 0, 0]], jnp.float32)}
  corrupted = tag.corrupt(None, batch)
  loss, metrics = tag.loss(params, corrupted, None, model=model)
  assert float(metrics['num_targets']) == 3.0
  # Changing a label at an untagged position changes nothing.
  other = dict(corrupted, targets=corrupted['targets'].at[0, 0].set(BO).at[0, 4].set(IO))
  loss2, _ = tag.loss(params, other, None, model=model)
  assert float(loss) == pytest.approx(float(loss2))
  logits = model.apply({'params': params}, tokens, segment_ids=seg, positions=pos)['logits']
  logp = jax.nn.log_softmax(logits[0, 1:4])
  expected = -float(jnp.mean(logp[jnp.arange(3), jnp.asarray([BP, IP, O])]))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert set(params) == {'backbone', 'head'}


def test_bad_num_tags_is_one_line_error():
  with pytest.raises(ValueError, match='BIO'):
    tag.Options(num_tags=6)


@pytest.mark.usefixtures('data_dir')
def test_pd_ner_zh_finetune_end_to_end(data_dir, tmp_path):
  """A tiny ERNIE-zh pretraining, then pd_ner_zh tagging from it and from random init (entity F1)."""
  config = load_experiment('experiments/ernie.py:runlocal:zh:ner')
  # A small tokenizer and short rows: the stages and the F1 bookkeeping are under test, not quality.
  config.data.tokenizer.update(vocab_size=4000, max_train_chars=300_000)
  config.data.seq_len = 64
  config.train.update(steps=4, eval_every=4, eval_batches=1, checkpoint_every=4, log_every=2)
  config.downstream.update(seeds=(0,), steps=6, eval_every=6, batch_size=8, eval_batch_size=64)
  from ptm_jax import run
  summary = run.run(config, str(tmp_path))
  rows = summary['downstream']['rows']
  assert {(r['task'], r['init']) for r in rows} == {('pd_ner_zh', 'pretrained'), ('pd_ner_zh', 'random')}
  for r in rows:
    assert r['metric'] == 'f1'
    assert 0.0 <= r['dev_score'] <= 1.0 and 0.0 <= r['test_score'] <= 1.0
  report = (tmp_path / 'report.md').read_text()
  assert '| pd_ner_zh | pretrained | 1 | f1 |' in report
  assert finetune.selection_metric('pd_ner_zh') == 'f1'
