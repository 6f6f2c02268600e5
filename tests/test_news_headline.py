"""news_headline: ROUGE against hand counts, the split hold-out from news_en pretraining, the row
forms, single-stack decoding = step-by-step recompute (prefix LM, UniLM and GLM through a KV
cache = the uncached re-read, greedy and beam), each form's fine-tuning loss, and
a tiny generation fine-tune end to end (pretrained and random rows, ROUGE in [0, 1])."""
import dataclasses
import json
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ptm_jax import configs, decoding, models
from ptm_jax import metrics as metrics_lib
from ptm_jax import run as run_lib
from ptm_jax import steps as steps_lib
from ptm_jax.data import sources
from ptm_jax.data.sources import downstream, news_en, news_headline
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.objectives import seq2seq, seq2seq_finetune
from ptm_jax.tasks import finetune, generation, redecode, source_reliance, stack_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = SpecialIds(300, extra=(5, 6))


class HashTokenizer:
  """One id per whitespace word; decode writes the ids back as words."""

  specials = SPECIALS
  vocab_size = 300

  def encode(self, text):
    return [7 + sum(map(ord, w)) % 293 for w in text.split()]

  def decode(self, ids):
    return ' '.join(f'w{i}' for i in ids)


# ----------------------------------------------------------------------------- ROUGE


def test_rouge_matches_hand_counts():
  # 1: 5 of 6 unigrams shared, 3 of 5 bigrams, LCS "the cat on the mat" = 5.
  # 2: Porter stems make "Running dogs" = "run dog".
  # 3: 2 shared of 3 / 6 unigrams: F = 2 (2/3)(1/3) / (2/3 + 1/3) = 4/9; bigram "police arrest"
  #    1 of 2 / 5: F = 2 (1/2)(1/5) / (7/10) = 2/7; LCS 2 -> 4/9 ("man" is not "men").
  # 4: an empty prediction scores 0.
  cases = [('the cat sat on the mat', 'the cat was on the mat', (5 / 6, 3 / 5, 5 / 6)),
           ('Running dogs', 'run dog', (1.0, 1.0, 1.0)),
           ('police arrest man', 'Police arrest two men in London', (4 / 9, 2 / 7, 4 / 9)),
           ('', 'Trump visits Paris', (0.0, 0.0, 0.0))]
  for pred, ref, expected in cases:
    got = generation.rouge([pred], [ref])
    np.testing.assert_allclose([got[k] for k in generation.ROUGE_KEYS], expected, atol=1e-9)
  mean = generation.rouge([c[0] for c in cases], [c[1] for c in cases])
  np.testing.assert_allclose(mean['rouge2'], np.mean([c[2][1] for c in cases]), atol=1e-9)
  with pytest.raises(ValueError, match='2 predictions for 1 references'):
    generation.rouge(['a', 'b'], ['a'])


# ----------------------------------------------------------------------------- split and hold-out


def test_splits_hold_test_titles_and_texts_out_of_pretraining(data_dir):
  builder = downstream.get_task_builder('news_headline')
  assert downstream.split_sizes('news_headline') == {'train': 2973, 'validation': 371, 'test': 395}
  examples = {s: list(builder.as_data_source(s)) for s in downstream.TASK_SPLITS}
  ids = {s: {int(ex['example_id']) for ex in v} for s, v in examples.items()}
  assert not (ids['train'] & ids['test'] or ids['validation'] & ids['test']
              or ids['train'] & ids['validation'])
  for split, exs in examples.items():
    assert all(news_en.news_split(int(ex['example_id'])) == split for ex in exs)
    assert all(ex['title'] and ex['text'] for ex in exs)
  assert ids['test'] <= set(news_en.news_en_test_holdout_ids())
  # What news_en pretraining reads: none of the test articles, titles or texts.
  pretraining = sources.get_source('news_en')
  docs = [ex for split in sources.SPLITS for part in pretraining.parts(split) for ex in part]
  assert len(docs) == 3824 - len(news_en.news_en_test_holdout_ids())
  assert not ({ex['doc_id'] for ex in docs} & ids['test'])
  seen_text = '\n'.join(ex['text'] for ex in docs)
  seen_titles = {ex['title'] for ex in docs}
  for ex in examples['test']:
    title, text = ex['title'].decode('utf-8'), ex['text'].decode('utf-8')
    assert title not in seen_text and title not in seen_titles and text not in seen_text
  refs = news_headline.titles('', 'test')
  assert len(refs) == 395 and all(refs.values())


# ----------------------------------------------------------------------------- row forms


def _rows(form, **data):
  cfg = ml_collections.ConfigDict(dict(seq_len=12, target_len=6, generation_form=form, bos=True,
                                       eos=True, **data))
  encode = news_headline.encode_fn(cfg, HashTokenizer())
  examples = [{'text': ' '.join(f'word{i}' for i in range(n)), 'title': ' '.join(
      f'head{i}' for i in range(k)), 'example_id': 100 + n} for n, k in ((4, 3), (30, 9))]
  rows = [encode(ex) for ex in examples] + [encode({})]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_row_forms_lay_out_source_and_target():
  tok, sp = HashTokenizer(), SPECIALS
  title = tok.encode('head0 head1 head2') + [sp.eos]
  short_text = tok.encode('word0 word1 word2 word3')
  rows = _rows('encdec')
  np.testing.assert_array_equal(rows['tokens'][0, :6], [sp.cls, *short_text, sp.sep])
  np.testing.assert_array_equal(rows['targets'][0, :4], title)
  np.testing.assert_array_equal(rows['weights'].sum(1), [4, 6, 0])  # title cut to 5 + EOS
  assert rows['targets'][1, 5] == sp.eos and rows['segment_ids'][1].sum() == 12
  assert rows['label_weight'].tolist() == [1, 1, 0] and rows['example_id'].tolist() == [104, 130, -1]

  rows = _rows('prefix_lm')
  n = 6  # [CLS] 4 words [SEP]
  assert rows['tokens'].shape == (3, 18) and rows['prompt_len'].tolist() == [6, 12, 0]
  np.testing.assert_array_equal(rows['tokens'][0, :n + 4], [sp.cls, *short_text, sp.sep, *title])
  np.testing.assert_array_equal(rows['prefix_flags'][0], np.arange(18) < n)
  w = rows['weights'][0] > 0
  np.testing.assert_array_equal(np.flatnonzero(w), np.arange(n - 1, n + 3))
  np.testing.assert_array_equal(rows['targets'][0][w], title)  # slot t predicts t + 1

  rows = _rows('unilm')
  np.testing.assert_array_equal(rows['token_types'][0, :n + 5], [4] * n + [5] * 4 + [0])
  np.testing.assert_array_equal(rows['targets'][0][rows['weights'][0] > 0], title)
  np.testing.assert_array_equal(rows['target_flags'][0], rows['weights'][0])

  rows = _rows('glm')
  a = 7  # [CLS] 4 words [MASK] [SEP]
  np.testing.assert_array_equal(rows['tokens'][0, :a + 4],
                                [sp.cls, *short_text, sp.mask, sp.sep, sp.extra[0], *title[:-1]])
  np.testing.assert_array_equal(rows['targets'][0, a:a + 4], title)
  np.testing.assert_array_equal(rows['positions'][0, :a + 4], [*range(a), *[a - 2] * 4])
  np.testing.assert_array_equal(rows['block_positions'][0, :a + 5], [0] * a + [1, 2, 3, 4, 0])
  np.testing.assert_array_equal(rows['part_b'][0], (np.arange(18) >= a) & (np.arange(18) < a + 4))

  with pytest.raises(ValueError, match='generation_form'):
    _rows('t5')
  cfg = ml_collections.ConfigDict(dict(seq_len=12, target_len=6, generation_form='glm'))
  tok_no_extra = HashTokenizer()
  tok_no_extra.specials = SpecialIds(300)
  with pytest.raises(ValueError, match='extra_ids >= 1'):
    news_headline.encode_fn(cfg, tok_no_extra)


# ----------------------------------------------------------------------------- decoding and loss

_FAMILIES = {
    'encdec': ('encdec', dict(num_encoder_layers=1, num_decoder_layers=1)),
    'prefix_lm': ('decoder', dict(num_layers=2)),
    'unilm': ('encoder', dict(num_layers=2, type_vocab_size=6)),
    'glm': ('encoder', dict(num_layers=2, type_vocab_size=0, block_position_embeddings=True)),
}


def _model(form, **overrides):
  family, fields = _FAMILIES[form]
  model = models.build(family, 'runlocal', vocab_size=300, embed_dim=32, num_heads=2, head_dim=16,
                       mlp_dim=64, dropout_rate=0.0, max_position_embeddings=64,
                       **{**fields, **overrides})
  t = jnp.zeros((2, 18), jnp.int32)
  params = model.init(jax.random.key(0), t, segment_ids=jnp.ones_like(t),
                      positions=jnp.broadcast_to(jnp.arange(18), t.shape))['params']
  return model, params


def _strong(params, seed=0):
  """Weights redrawn N(0, 0.2) (norm gains near 1): at init scale (0.02) the tiny models' next
  token hardly depends on the context, so a wrong mask or cache would go unseen."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = 0.2 * rng.standard_normal(x.shape).astype(np.float32)
    return jnp.asarray(noise + 1.0 if path[-1].key == 'scale' else noise)
  return jax.tree_util.tree_map_with_path(draw, flax.core.meta.unbox(params))


@pytest.mark.parametrize('form', ['prefix_lm', 'unilm', 'glm'])
def test_stack_decoding_equals_step_by_step_recompute(form):
  model, params = _model(form)
  params = _strong(params)
  rows = _rows(form)
  greedy = decoding.Options(max_new_tokens=6, strategy='greedy', eos_ids=(SPECIALS.eos,))
  out = generation.generate_batch(model, params, rows, form, greedy, SPECIALS)
  # The reference: the full forward pass at each step, the chosen token written back.
  start = generation.start_rows(rows, form, SPECIALS)
  prompt = start.pop('prompt_len')
  tokens = start['tokens'].copy()
  first = {'prefix_lm': prompt - 1, 'unilm': prompt, 'glm': prompt}[form]
  write = prompt + (1 if form == 'glm' else 0)
  b = np.arange(3)
  full = jax.jit(lambda p, batch: seq2seq_finetune.stack_logits(model, p, batch, form))
  for i in range(6):
    batch = {**{k: jnp.asarray(v) for k, v in start.items()}, 'inputs': jnp.asarray(tokens)}
    logits = full(params, batch)
    chosen = np.asarray(jnp.argmax(logits[b, first + i], axis=-1))
    for row in range(2):  # rows before their EOS agree token by token
      if SPECIALS.eos not in out[row, :i]:
        assert out[row, i] == chosen[row], (form, row, i)
    tokens[b, np.minimum(write + i, 17)] = chosen
    if form == 'unilm':
      tokens[b, np.minimum(write + i + 1, 17)] = SPECIALS.mask
  # One beam without length normalisation is greedy (with it, a live beam may outscore an EOS).
  beam1 = decoding.Options(max_new_tokens=6, strategy='beam', num_beams=1, length_penalty=0.0,
                           eos_ids=(SPECIALS.eos,))
  np.testing.assert_array_equal(generation.generate_batch(model, params, rows, form, beam1,
                                                          SPECIALS)[:2], out[:2])
  beam4 = decoding.Options(max_new_tokens=6, strategy='beam', num_beams=4, length_penalty=0.6,
                           eos_ids=(SPECIALS.eos,))
  # generate_batch decodes through a KV cache: the prefix LM's prompt left-padded and flagged as
  # the prefix (a decoder), UniLM and GLM with the encoder's cache (tasks/stack_cache.py).
  # Re-reading the whole row at each step is the reference, reordered beams included.
  stacked = {k: jnp.asarray(v) for k, v in generation.start_rows(rows, form, SPECIALS).items()}
  reread_fn = generation._stack_generate  # pylint: disable=protected-access
  for options in (greedy, beam4):
    reread = reread_fn(model, params, stacked, form, options, int(SPECIALS.mask), jax.random.key(0))
    cached = generation.generate_batch(model, params, rows, form, options, SPECIALS)
    np.testing.assert_array_equal(cached[:2], np.asarray(reread['tokens'])[:2])
  if form == 'prefix_lm':
    prompts = generation.prefix_lm_prompts(rows, SPECIALS)
    np.testing.assert_array_equal(prompts['prefix_flags'].sum(1), [6, 12, 1])
    np.testing.assert_array_equal(prompts['tokens'][0, -6:], rows['tokens'][0, :6])
  else:  # the prefill: source + [MASK] (UniLM) / [START] (GLM), right-aligned
    start = generation.start_rows(rows, form, SPECIALS)
    prefill = stack_cache.prefill_rows(start, form)
    used = start['prompt_len'] + 1
    np.testing.assert_array_equal(prefill['segment_ids'].sum(1), used)
    np.testing.assert_array_equal(prefill['tokens'][:2, -1],
                                  [SPECIALS.mask if form == 'unilm' else SPECIALS.extra[0]] * 2)
    np.testing.assert_array_equal(prefill['tokens'][0, -used[0]:], start['tokens'][0, :used[0]])
    np.testing.assert_array_equal(prefill['positions'][1, -used[1]:],
                                  start['positions'][1, :used[1]])


@pytest.mark.parametrize('form', ['unilm', 'glm'])
def test_cached_encoder_decoding_with_rotary_positions_and_pre_norm(form):
  # The encoder's cache rotates keys before caching them; a pre-LN stack ends in its final norm.
  model, params = _model(form, positions='rotary', pre_norm=True)
  params, rows = _strong(params, seed=1), _rows(form)
  beam4 = decoding.Options(max_new_tokens=6, strategy='beam', num_beams=4, length_penalty=0.6,
                           eos_ids=(SPECIALS.eos,))
  stacked = {k: jnp.asarray(v) for k, v in generation.start_rows(rows, form, SPECIALS).items()}
  reread_fn = generation._stack_generate  # pylint: disable=protected-access
  reread = reread_fn(model, params, stacked, form, beam4, int(SPECIALS.mask), jax.random.key(0))
  cached = generation.generate_batch(model, params, rows, form, beam4, SPECIALS)
  np.testing.assert_array_equal(cached[:2], np.asarray(reread['tokens'])[:2])


def test_ids_to_text_stops_at_eos_and_drops_reserved_ids():
  tok = HashTokenizer()
  assert generation.ids_to_text([9, SPECIALS.mask, 11, SPECIALS.eos, 12], tok) == 'w9 w11'
  assert generation.ids_to_text([SPECIALS.pad] * 3, tok) == ''


@pytest.mark.parametrize('form', list(_FAMILIES))
def test_each_form_fits_a_batch(form):
  model, params = _model(form)
  rows = {k: jnp.asarray(v) for k, v in _rows(form).items()}
  options = seq2seq_finetune.Options(form=form, label_smoothing=0.1)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    batch = seq2seq_finetune.corrupt(rng, rows, specials=SPECIALS, options=options)
    (value, metrics), grads = jax.value_and_grad(seq2seq_finetune.loss, has_aux=True)(
        params, batch, rng, model=model, specials=SPECIALS, options=options)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value, metrics

  losses = []
  for i in range(30):
    params, opt_state, value, metrics = step(params, opt_state, jax.random.key(i))
    losses.append(float(value))
  assert metrics['num_targets'] > 0
  # Two titles (4 and 6 target tokens, UniLM masks 70 % of them) are memorised.
  assert losses[-1] < 0.5 * losses[0], (form, losses)


@pytest.mark.parametrize('form', ['encdec', 'prefix_lm'])
def test_evaluation_loss_is_the_unsmoothed_negative_log_likelihood(form):
  """Training minimises the label-smoothed loss; the eval step (train.py's) reports -mean log p of
  the real target tokens, computed here by hand from the logits."""
  model, params = _model(form)
  params = _strong(params)
  rows = {k: jnp.asarray(v) for k, v in _rows(form).items()}
  options = seq2seq_finetune.Options(form=form, label_smoothing=0.1)
  assert steps_lib.evaluation_options(options) == dataclasses.replace(options, label_smoothing=0.0)
  plain = seq2seq_finetune.Options(form=form)
  assert steps_lib.evaluation_options(plain) is plain

  def eval_loss(opts):
    loss_fn, corrupt_fn = steps_lib.bind_objective(seq2seq_finetune, model=model,
                                                   specials=SPECIALS, options=opts)
    return float(steps_lib.make_eval_step(loss_fn, corrupt_fn)(params, rows,
                                                               jax.random.key(0))['loss'])

  batch = seq2seq_finetune.corrupt(None, rows, specials=SPECIALS, options=options)
  if form == 'encdec':
    decoder_inputs = seq2seq.shift_right(batch['targets'], batch['target_segment_ids'],
                                         seq2seq.decoder_start_id(model, SPECIALS))
    logits = model.apply({'params': params}, batch['inputs'], decoder_inputs,
                         encoder_segment_ids=batch['input_segment_ids'],
                         decoder_segment_ids=batch['target_segment_ids'],
                         encoder_positions=batch['input_positions'],
                         decoder_positions=batch['target_positions'])['logits']
  else:
    logits = seq2seq_finetune.stack_logits(model, params, batch, form)
  log_p_BLV = jax.nn.log_softmax(logits.astype(jnp.float32))
  log_p = jnp.take_along_axis(log_p_BLV, batch['targets'][..., None], axis=-1)[..., 0]
  weights, total = batch['weights'], jnp.sum(batch['weights'])
  nll = float(-jnp.sum(log_p * weights) / total)
  smoothed = float(-jnp.sum((0.9 * log_p + 0.1 * log_p_BLV.mean(-1)) * weights) / total)
  assert abs(smoothed - nll) > 1e-3
  assert eval_loss(steps_lib.evaluation_options(options)) == pytest.approx(nll, rel=1e-5)
  assert eval_loss(options) == pytest.approx(smoothed, rel=1e-5)  # what training minimises


def test_unilm_evaluation_scores_each_title_token_as_decoding_reads_it():
  """UniLM trains on a cloze of 70 % of the title; its dev/test loss is each title token's NLL at
  a [MASK] after the real tokens before it (what decoding computes), in one pass over the row
  doubled with [MASK] copies. The reference here re-reads the row once per target slot t, slot t
  a [MASK] and every later slot a random token (which the mask must hide)."""
  model, params = _model('unilm')
  params = _strong(params)
  rows = {k: jnp.asarray(v) for k, v in _rows('unilm').items()}
  options = seq2seq_finetune.Options(form='unilm', label_smoothing=0.1)
  evaluation = steps_lib.evaluation_options(options)
  assert (evaluation.score, evaluation.label_smoothing, options.score) == ('next_token', 0.0,
                                                                           'cloze')
  for form in ('encdec', 'prefix_lm', 'glm'):  # the other forms score as they train
    assert seq2seq_finetune.Options(form=form).for_evaluation().score == 'cloze'
  loss_fn, corrupt_fn = steps_lib.bind_objective(seq2seq_finetune, model=model,
                                                 specials=SPECIALS, options=evaluation)
  metrics = steps_lib.make_eval_step(loss_fn, corrupt_fn)(params, rows, jax.random.key(0))

  tokens, target = np.asarray(rows['tokens']), np.asarray(rows['target_flags']) > 0
  garbage = np.random.default_rng(0).integers(7, 300, tokens.shape)
  log_p, hits = [], []
  full = jax.jit(lambda batch: seq2seq_finetune.stack_logits(model, params, batch, 'unilm'))
  for b, t in zip(*np.nonzero(target)):
    inputs = tokens.copy()
    inputs[b, t] = SPECIALS.mask
    inputs[b, t + 1:] = garbage[b, t + 1:]
    logits = np.asarray(full({**rows, 'inputs': jnp.asarray(inputs)}))[b, t]
    log_p.append(jax.nn.log_softmax(logits)[tokens[b, t]])
    hits.append(np.argmax(logits) == tokens[b, t])
  assert metrics['num_targets'] == len(log_p) == 4 + 6
  assert float(metrics['loss']) == pytest.approx(-np.mean(log_p), rel=1e-5)
  assert float(metrics['accuracy']) == pytest.approx(np.mean(hits))
  # Training's cloze loss is another number (70 % of the title masked at once).
  cloze_fn, cloze_corrupt = steps_lib.bind_objective(seq2seq_finetune, model=model,
                                                     specials=SPECIALS, options=options)
  cloze = steps_lib.make_eval_step(cloze_fn, cloze_corrupt)(params, rows, jax.random.key(0))
  assert abs(float(cloze['loss']) - float(metrics['loss'])) > 1e-3


def test_form_for_each_family_and_errors():
  assert seq2seq_finetune.form_for('encdec', {}) == 'encdec'
  assert seq2seq_finetune.form_for('decoder', {}) == 'prefix_lm'
  assert seq2seq_finetune.form_for('encoder', {'block_position_embeddings': True}) == 'glm'
  assert seq2seq_finetune.form_for('encoder', {'block_position_embeddings': False}) == 'unilm'
  with pytest.raises(ValueError, match='no seq2seq fine-tuning form'):
    seq2seq_finetune.form_for('albert', {})
  with pytest.raises(ValueError, match='form must be one of'):
    seq2seq_finetune.Options(form='t5')


# ----------------------------------------------------------------------------- end to end


def test_generation_finetune_end_to_end(data_dir, tmp_path, monkeypatch):
  config = configs.load_experiment(os.path.join(REPO, 'experiments/t5.py:runlocal'), {
      'mesh.num_devices': 1, 'train.steps': 6, 'train.batch_size': 8, 'train.log_every': 3,
      'train.eval_every': 0, 'data.seq_len': 64, 'data.tokenizer.vocab_size': 800,
      'data.tokenizer.max_train_chars': 300_000})
  config.model.update(embed_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
                      num_decoder_layers=1)
  config.downstream = ml_collections.ConfigDict({**finetune.DEFAULTS, **dict(
      tasks=('news_headline',), steps=6, eval_every=3, batch_size=8, learning_rate=1e-3,
      warmup_steps=1, seq_len=48, target_len=12, eval_batch_size=16, generation_examples=16,
      decode_strategy='greedy', label_smoothing=0.1)})
  # The loop trains on the label-smoothed loss and evaluates (dev/test loss) without smoothing.
  bound = {'train': [], 'eval': []}

  def recording(kind):
    make = getattr(steps_lib, f'make_{kind}_step')

    def make_step(loss_fn, *args, **kwargs):
      bound[kind].append(loss_fn.keywords['options'])
      return make(loss_fn, *args, **kwargs)
    return make_step

  for kind in bound:
    monkeypatch.setattr(steps_lib, f'make_{kind}_step', recording(kind))
  workdir = str(tmp_path)
  summary = run_lib.run(config, workdir)
  finetunes = [o for o in bound['train'] if isinstance(o, seq2seq_finetune.Options)]
  assert len(finetunes) == 2 and {o.label_smoothing for o in finetunes} == {0.1}
  assert [o.label_smoothing for o in bound['eval'][-2:]] == [0.0, 0.0]
  rows = summary['downstream']['rows']
  assert [r['init'] for r in rows] == ['pretrained', 'random']
  for r in rows:
    assert r['form'] == 'encdec' and r['best_step'] in (3, 6) and r['examples'] == 16
    for split in ('dev', 'test'):
      for key in generation.ROUGE_KEYS:
        assert 0.0 <= r[f'{split}_{key}'] <= 1.0
    assert r['test_score'] == r['test_rougeL'] and np.isfinite(r['dev_loss'])
    # The teacher-forced test loss is the one read at the selected (lowest dev loss) evaluation;
    # the test split is read only at evaluations that set a new best dev loss.
    with open(os.path.join(r['workdir'], metrics_lib.JSONL_NAME)) as f:
      evals = [e for e in map(json.loads, f) if 'eval/loss' in e]
    assert [e['step'] for e in evals] == [3, 6]
    selected = next(e for e in evals if e['step'] == r['best_step'])
    assert r['test_loss'] == selected['test/loss'] > 0.0 and selected['test/num_targets'] > 0
    assert r['test_token_accuracy'] == selected['test/accuracy']
    assert ('test/loss' in evals[1]) == (evals[1]['eval/loss'] < evals[0]['eval/loss'])
    with open(os.path.join(r['workdir'], 'generations_test.jsonl')) as f:
      generated = [json.loads(line) for line in f]
    assert len(generated) == 16 and all(g['reference'] for g in generated)
    # The selected checkpoint is kept for decoding.
    assert os.path.isdir(os.path.join(r['workdir'], 'checkpoints', str(r['best_step'])))
  with open(os.path.join(workdir, 'downstream.json')) as f:
    assert len(json.load(f)) == 2
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '## Generation' in report and 'test ROUGE-L' in report and 'test loss' in report
  # A rerun reuses the decoded scores (generation.json) instead of decoding again.
  again = run_lib.run(config, workdir)['downstream']['rows']
  assert [r['test_rougeL'] for r in again] == [r['test_rougeL'] for r in rows]
  # The source gain (tasks/source_reliance.py) in each row and the report; the tool's `own` pass
  # over the test split at the selected step is the loss the training loop recorded there.
  assert 'source gain' in report
  measured = source_reliance.run(workdir)
  for m, r in zip(json.load(open(os.path.join(workdir, 'source_reliance.json')))['rows'], rows):
    assert r['test_other_source_loss'] == pytest.approx(r['test_loss'] + r['test_source_gain'])
    assert m['own'] == pytest.approx(r['test_loss'], rel=1e-5)
    assert m['recorded_loss'] == r['test_loss']
    assert m['gain'] == pytest.approx(r['test_source_gain'], abs=1e-6) and m['examples'] == 395
  assert '| pretrained |' in measured and '**' in measured
  # tasks/redecode.py: with nothing changed, the selected checkpoints decode the recorded ROUGE
  # again; with a change, the new titles go beside the originals, which stay as they were.
  originals = [open(os.path.join(r['workdir'], 'generations_test.jsonl')).read() for r in rows]
  table = redecode.run(workdir, {})
  same = json.load(open(os.path.join(workdir, 'redecode_same.json')))['rows']
  assert [r['init'] for r in same] == ['pretrained', 'random'] and '| pretrained |' in table
  for r in same:
    assert all(r[f'after_{k}'] == r[f'before_{k}'] for k in generation.ROUGE_KEYS), r
    assert r['after_distinct'] == r['before_distinct'] and r['examples'] == 16
  redecode.run(workdir, {'no_repeat_ngram_size': 1, 'min_new_tokens': 4})
  changed = json.load(open(os.path.join(workdir, 'redecode_nrng1_min4.json')))['rows']
  for r, row, original in zip(changed, rows, originals):
    assert 'no_repeat_ngram_size=1, min_new_tokens=4' in r['options']
    assert open(os.path.join(row['workdir'], 'generations_test.jsonl')).read() == original
    with open(os.path.join(row['workdir'], 'generations_test.nrng1_min4.jsonl')) as f:
      titles = [json.loads(line) for line in f]
    assert len(titles) == 16
    scored = generation.rouge([t['prediction'] for t in titles], [t['reference'] for t in titles])
    assert all(r[f'after_{k}'] == scored[k] for k in generation.ROUGE_KEYS)
  with pytest.raises(FileNotFoundError, match='compare_seq2seq.json, downstream.json'):
    redecode.run(str(tmp_path / 'nothing'), {})


def test_positions_too_short_is_a_one_line_error():
  config = configs.load_experiment(os.path.join(REPO, 'experiments/prefix_lm.py:runlocal'))
  config.model.max_position_embeddings = 64
  config.data.tokenizer.path = 'unused.model'  # a pinned tokenizer: no training
  config.downstream = ml_collections.ConfigDict({**finetune.DEFAULTS, **dict(
      tasks=('news_headline',), seq_len=64, target_len=16)})
  with pytest.raises(ValueError, match='need 80 positions but model.max_position_embeddings=64'):
    finetune.finetune_config(config, 'news_headline', 'random', 0, '', config.data.tokenizer)
