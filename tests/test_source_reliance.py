"""tasks/source_reliance.py: the `other` pass pairs every title with another article (each article
once), the gain -- title loss after another article minus after its own -- is exactly 0 for a
decoder that does not read its source and not 0 for one that does, in every fine-tuning form, and
an encoder-decoder's encoder spread is ~0 when its output is one vector at every position.
(The end-to-end fine-tune in test_news_headline.py checks `own` = the recorded test loss.)"""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptm_jax import models
from ptm_jax.data.sources import news_headline
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.tasks import source_reliance

SPECIALS = SpecialIds(300, extra=(5, 6))
FORMS = {
    'encdec': ('encdec', dict(num_encoder_layers=1, num_decoder_layers=1)),
    'prefix_lm': ('decoder', dict(num_layers=1)),
    'unilm': ('encoder', dict(num_layers=1, type_vocab_size=6)),
    'glm': ('encoder', dict(num_layers=1, type_vocab_size=0, block_position_embeddings=True)),
}


class HashTokenizer:
  """One id per whitespace word."""

  specials = SPECIALS
  vocab_size = 300

  def encode(self, text):
    return [7 + sum(map(ord, w)) % 293 for w in text.split()]


def _ft(form: str) -> ml_collections.ConfigDict:
  """The parts of a fine-tune config that the measurement reads."""
  return ml_collections.ConfigDict(dict(
      data=dict(source='news_headline', data_dir='', generation_form=form, seq_len=24,
                target_len=8, bos=True, eos=True),
      train=dict(batch_size=8, eval_batch_size=128),
      objective=dict(name='seq2seq_finetune', form=form)))


def _model(form: str):
  family, fields = FORMS[form]
  model = models.build(family, 'runlocal', vocab_size=300, embed_dim=32, num_heads=2, head_dim=16,
                       mlp_dim=64, dropout_rate=0.0, max_position_embeddings=64, **fields)
  t = jnp.zeros((2, 32), jnp.int32)
  params = model.init(jax.random.key(0), t, segment_ids=jnp.ones_like(t),
                      positions=jnp.broadcast_to(jnp.arange(32), t.shape))['params']
  rng = np.random.default_rng(0)

  def draw(path, x):  # N(0, 0.2): at init scale the tiny model's output hardly reads any context
    noise = 0.2 * rng.standard_normal(x.shape).astype(np.float32)
    return jnp.asarray(noise + 1.0 if path[-1].key == 'scale' else noise)
  return model, jax.tree_util.tree_map_with_path(draw, flax.core.meta.unbox(params))


def test_other_article_is_a_derangement():
  for n in range(2, 60):
    paired = [source_reliance.other_article(i, n) for i in range(n)]
    assert sorted(paired) == list(range(n)), n  # every article read once
    assert all(j != i for i, j in enumerate(paired)), n  # no title meets its own


def test_rows_pair_each_title_with_another_article(data_dir):
  ft, tok = _ft('encdec'), HashTokenizer()
  examples = news_headline.split_examples('', 'test')
  own = source_reliance.rows(ft, tok, 'test', other=False)
  other = source_reliance.rows(ft, tok, 'test', other=True)
  n = len(examples)
  assert len(own) == len(other) == n == 395
  encode = news_headline.encode_fn(ft.data, tok)
  for i in (0, 1, n // 2, n - 1):
    example_id, text, title = examples[i]
    j = source_reliance.other_article(i, n)
    assert j != i
    np.testing.assert_array_equal(own[i]['tokens'], encode(
        {'text': text, 'title': title, 'example_id': example_id})['tokens'])
    # The same title (targets, weights), the other article's text in the source slots.
    np.testing.assert_array_equal(other[i]['targets'], own[i]['targets'])
    np.testing.assert_array_equal(other[i]['weights'], own[i]['weights'])
    np.testing.assert_array_equal(other[i]['tokens'], own[j]['tokens'])
    assert other[i]['example_id'] == own[i]['example_id']


@pytest.mark.parametrize('form', list(FORMS))
def test_gain_is_zero_exactly_when_the_decoder_cannot_read_the_source(data_dir, form):
  model, params = _model(form)
  ft, tok = _ft(form), HashTokenizer()
  reading = source_reliance.title_losses_with(model, params, ft, tok, 'test')
  assert reading['examples'] == 395 and reading['tokens'] > 395
  assert np.isfinite([reading['own'], reading['other']]).all()
  # Random strong weights read the source, so another article changes the titles' loss (a random
  # model does not prefer the right article: the mean moves by a little, either way, not 0).
  assert abs(reading['gain']) > 1e-5, reading
  if form != 'encdec':
    return
  # The decoder's cross-attention output zeroed: the titles' loss no longer depends on the
  # article (the encoder still runs), so the two passes agree to float rounding.
  blind = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if 'cross_attention' in jax.tree_util.keystr(path)
      and path[-2].key == 'out' else x, params)
  assert any('cross_attention' in jax.tree_util.keystr(p)
             for p, _ in jax.tree_util.tree_leaves_with_path(params))
  ignoring = source_reliance.title_losses_with(model, blind, ft, tok, 'test')
  assert abs(ignoring['gain']) < 1e-6, ignoring
  assert abs(ignoring['own'] - reading['own']) > 1e-3
  # The encoder's spread over positions: a fresh encoder's output varies along the article; with
  # every token embedding the same vector its output is one vector at every position.
  assert 0.3 < reading['spread'] < 2.0, reading
  same = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.broadcast_to(x[:1], x.shape) if 'token_embed' in
      jax.tree_util.keystr(path) else x, params)
  collapsed = source_reliance.title_losses_with(model, same, ft, tok, 'test')
  assert collapsed['spread'] < 1e-3 and abs(collapsed['gain']) < 1e-5, collapsed


def test_a_split_of_one_example_is_a_one_line_error(monkeypatch):
  monkeypatch.setattr(news_headline, 'split_examples', lambda data_dir, split: [(1, 'a b', 'c')])
  with pytest.raises(ValueError, match='needs at least 2'):
    source_reliance.rows(_ft('encdec'), HashTokenizer(), 'test', other=False)


def test_command_lines_refuse_a_workdir_without_a_finished_run_in_one_line(tmp_path, capsys):
  from ptm_jax.tasks import redecode
  for main in (source_reliance.main, redecode.main):
    assert main(['--workdir', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'has none of compare_seq2seq.json, downstream.json' in err


def test_rows_recorded_elsewhere_are_skipped_and_named(tmp_path, capsys):
  """A comparison that read `records_dir` lists units whose runs (and checkpoints) are on another
  machine: both tools measure the rows whose run directories are here and name the others."""
  import json
  from ptm_jax.tasks import redecode
  row = dict(metric='rougeL', best_step=100, init='pretrained', seed=0)
  rows = [dict(row, member='t5', workdir='t5/news_headline/pretrained/seed0'),
          dict(row, member='bart', workdir='bart/news_headline/pretrained/seed0')]
  (tmp_path / 'compare_seq2seq.json').write_text(json.dumps({'rows': rows, 'members': {}}))
  for main in (source_reliance.main, redecode.main):  # no run directory at all: one line
    assert main(['--workdir', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'none of the 2 finished fine-tunes' in err, err
  run_dir = tmp_path / rows[0]['workdir']
  run_dir.mkdir(parents=True)
  (run_dir / 'config.json').write_text('{}')
  here, _, elsewhere = redecode.read_rows(str(tmp_path))
  assert [r['member'] for r in here] == ['t5'] and elsewhere == ['bart seed 0']
  assert 'skipped bart seed 0' in capsys.readouterr().out
  assert redecode.skipped_note(elsewhere).strip() == (
      'Not measured (recorded elsewhere, no run directory here): bart seed 0.')
  assert redecode.skipped_note([]) == ''
