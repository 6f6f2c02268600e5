"""Packed classification rows (data.pack_examples): layout and labels, every eval example once and
the same steps on every process, resumable train stream; packed logits equal unpacked ones for every
pooling and backbone, and no packed example gets a gradient from another's tokens."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptm_jax.data.sources import downstream
from ptm_jax.data.sources import task_packing
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import classify


class WordTokenizer:
  """One id per whitespace word: exact, fast, and independent of any trained model."""

  specials = SpecialIds(500)
  vocab_size = 500

  def encode(self, text):
    return [5 + sum(map(ord, w)) % 495 for w in text.split()]


def _cfg(pack, seq_len=64, source='rt_sentiment'):
  return ml_collections.ConfigDict(dict(source=source, seq_len=seq_len, data_dir='', num_threads=2,
                                        pack_examples=pack))


def _by_id(split):
  src = downstream.get_task_builder('rt_sentiment').as_data_source(split)
  return {int(ex['example_id']): ex for ex in src}


def _check_row_layout(batch, examples, seq_len, pack):
  tok = WordTokenizer()
  for r in range(len(batch['tokens'])):
    seg, pos, tokens = batch['segment_ids'][r], batch['positions'][r], batch['tokens'][r]
    n = int(batch['label_weight'][r].sum())
    assert n <= pack and (batch['label_weight'][r, :n] == 1).all()
    assert (batch['example_id'][r, n:] == -1).all() and (batch['label_weight'][r, n:] == 0).all()
    real = seg[seg > 0]
    assert (np.diff(real) >= 0).all() and set(real.tolist()) == set(range(1, n + 1))
    assert (tokens[seg == 0] == tok.specials.pad).all()
    for k in range(n):
      ex = examples[int(batch['example_id'][r, k])]
      want = [tok.specials.cls, *tok.encode(ex['text'].decode('utf-8'))[:seq_len - 2],
              tok.specials.sep]
      assert tokens[seg == k + 1].tolist() == want  # the slot's example, whole and in order
      assert (pos[seg == k + 1] == np.arange(len(want))).all()
      assert batch['label'][r, k] == int(ex['label'])


def test_train_rows_hold_whole_labelled_examples_and_resume(data_dir):
  train = _by_id('train')
  it = downstream.make_task_iterator(_cfg(4), WordTokenizer(), split='train', global_batch_size=8,
                                     seed=0)
  batches = [next(it) for _ in range(4)]
  for b in batches:
    assert b['tokens'].shape == (8, 64) and b['label'].shape == (8, 4)
    _check_row_layout(b, train, 64, 4)
  # Packing fills rows: more than one snippet per row and far less padding than one per row.
  assert task_packing.mean_examples_per_row(batches) > 1.5
  unpacked = next(downstream.make_task_iterator(_cfg(0), WordTokenizer(), split='train',
                                                global_batch_size=8, seed=0))
  fill = lambda b: float((b['segment_ids'] > 0).mean())  # noqa: E731
  assert np.mean([fill(b) for b in batches]) > 1.5 * fill(unpacked)
  state = it.get_state()
  after = [next(it)['example_id'] for _ in range(2)]
  it.set_state(state)
  assert all((a == next(it)['example_id']).all() for a in after)


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_rows_cover_every_example_once_with_equal_steps_per_process(data_dir, process_count):
  val = _by_id('validation')
  per_process = [list(downstream.make_task_iterator(
      _cfg(3, seq_len=48), WordTokenizer(), split='validation', global_batch_size=16, seed=0,
      repeat=False, process_index=p, process_count=process_count)) for p in range(process_count)]
  assert len({len(b) for b in per_process}) == 1  # the same number of eval steps everywhere
  ids = []
  for batches in per_process:
    for b in batches:
      assert b['tokens'].shape == (16 // process_count, 48)
      _check_row_layout(b, val, 48, 3)
      ids += b['example_id'][b['label_weight'] > 0].tolist()
  assert sorted(ids) == sorted(val)
  if process_count == 2:  # the two processes' rows are the single process's batches, split
    whole = list(downstream.make_task_iterator(_cfg(3, seq_len=48), WordTokenizer(),
                                               split='validation', global_batch_size=16, seed=0,
                                               repeat=False))
    for b, (p0, p1) in zip(whole, zip(*per_process)):
      np.testing.assert_array_equal(b['example_id'], np.concatenate([p0['example_id'],
                                                                     p1['example_id']]))


def test_only_classification_tasks_pack(data_dir):
  with pytest.raises(ValueError, match='pack_examples=4 packs classification tasks only') as e:
    downstream.make_task_iterator(_cfg(4, source='pd_ner_zh'), WordTokenizer(), split='train',
                                  global_batch_size=8, seed=0)
  assert '\n' not in str(e.value)


# ------------------------------------------------------------------ the model on packed rows

FIELDS = dict(vocab_size=64, num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64,
              max_position_embeddings=32, dropout_rate=0.0)
LENGTHS = (5, 9, 3, 7, 6, 4)  # six examples; packed 3 + 3 into two rows of 24
L = 24


def _examples():
  # Each example has its own token ids (example j uses 10j .. 10j + 9), so a gradient that reaches
  # another example's embedding rows can only have come through attention across examples.
  r = np.random.default_rng(0)
  return [r.integers(10 * j + 4, 10 * j + 14, size=n).astype(np.int32) % 64
          for j, n in enumerate(LENGTHS)]


def _unpacked(examples):
  tokens = np.zeros((len(examples), L), np.int32)
  seg = np.zeros_like(tokens)
  pos = np.zeros_like(tokens)
  for i, ex in enumerate(examples):
    tokens[i, :len(ex)], seg[i, :len(ex)], pos[i, :len(ex)] = ex, 1, np.arange(len(ex))
  return tokens, seg, pos


def _packed(examples, per_row=3, slots=4):
  rows = [examples[i:i + per_row] for i in range(0, len(examples), per_row)]
  tokens = np.zeros((len(rows), L), np.int32)
  seg, pos = np.zeros_like(tokens), np.zeros_like(tokens)
  for r, row in enumerate(rows):
    at = 0
    for k, ex in enumerate(row):
      tokens[r, at:at + len(ex)], seg[r, at:at + len(ex)] = ex, k + 1
      pos[r, at:at + len(ex)] = np.arange(len(ex))
      at += len(ex)
  return tokens, seg, pos, slots


CASES = [('encoder', 'cls', 'encoder'), ('encoder', 'mean', 'encoder'),
         ('decoder', 'cls', 'decoder'), ('decoder', 'mean', 'decoder'),
         ('albert', 'cls', 'encoder')]


def _classifier(family, pooling, backbone):
  options = classify.Options(num_classes=3, pooling=pooling, dropout_rate=0.0, backbone=backbone)
  model = classify.build_model(family, 'runlocal', dict(FIELDS), options)
  tokens, seg, pos = _unpacked(_examples())
  params = model.init(jax.random.key(0), tokens, segment_ids=seg, positions=pos)['params']
  return model, nn.unbox(params)


@pytest.mark.parametrize('family,pooling,backbone', CASES)
def test_packed_logits_equal_unpacked(family, pooling, backbone):
  model, params = _classifier(family, pooling, backbone)
  examples = _examples()
  tokens, seg, pos = _unpacked(examples)
  alone = np.asarray(model.apply({'params': params}, tokens, segment_ids=seg,
                                 positions=pos)['logits'])
  ptok, pseg, ppos, slots = _packed(examples)
  packed = np.asarray(model.apply({'params': params}, ptok, segment_ids=pseg, positions=ppos,
                                  num_slots=slots)['logits'])
  assert packed.shape == (2, slots, 3)
  np.testing.assert_allclose(packed[:, :3].reshape(6, 3), alone, atol=2e-5, rtol=1e-4)
  assert np.abs(alone).max() > 1e-3  # a real comparison, not two vectors of zeros


@pytest.mark.parametrize('family,pooling,backbone', CASES[:3])
def test_no_gradient_between_packed_examples(family, pooling, backbone):
  model, params = _classifier(family, pooling, backbone)
  examples = _examples()
  ptok, pseg, ppos, slots = _packed(examples)
  label = jnp.zeros((2, slots), jnp.int32)
  for k in range(3):  # the loss of slot k of row 0 alone
    weight = jnp.zeros((2, slots), jnp.float32).at[0, k].set(1.0)
    batch = {'inputs': jnp.asarray(ptok), 'segment_ids': jnp.asarray(pseg),
             'positions': jnp.asarray(ppos), 'targets': label, 'weights': weight}
    grads = jax.grad(lambda p: classify.loss(p, batch, None, model=model)[0])(params)  # noqa: B023
    table = np.abs(np.asarray(grads['backbone']['token_embed']['embedding'])).sum(-1)
    own = np.unique(examples[k])
    others = np.setdiff1d(np.concatenate(examples), own)
    assert (table[own] > 0).all()
    assert (table[others] == 0).all(), (family, pooling, k)


def test_weight_zero_slots_are_inert():
  model, params = _classifier('encoder', 'mean', 'encoder')
  ptok, pseg, ppos, slots = _packed(_examples())
  batch = {'inputs': jnp.asarray(ptok), 'segment_ids': jnp.asarray(pseg),
           'positions': jnp.asarray(ppos), 'targets': jnp.ones((2, slots), jnp.int32),
           'weights': jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32)}
  loss, metrics = classify.loss(params, batch, None, model=model)
  changed = {**batch, 'targets': batch['targets'].at[:, 3].set(2)}
  loss2, _ = classify.loss(params, changed, None, model=model)
  assert float(metrics['num_targets']) == 6.0 and float(loss) == float(loss2)
