"""The equal-compute seq2seq comparison: the FLOP model against hand counts, the step plan across
families, and the runlocal job end to end (pretraining, news_headline fine-tunes, ROUGE table)."""
import json
import math
import os

import numpy as np
import pytest

from ptm_jax import compare, configs, flops
from ptm_jax.configs import base
from ptm_jax.data.sources import news_headline
from ptm_jax.tasks import generation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, 'experiments', 'compare_seq2seq.py')
V = 2000  # runlocal: D = 64 (2 heads of 32), F = 128, rows of T = 64 tokens, 1 + 1 / 2 layers


def _comparison(arg='runlocal', **overrides):
  return configs.load_experiment(f'{SPEC}:{arg}', overrides)


def _member(name):
  return compare.member_config(_comparison(), name)


def _block(keys, d=64, h=64, f=128):
  return 2 * d * 4 * h + 2 * 2 * keys * h + 2 * 2 * d * f


def test_encoder_decoder_flops_match_the_hand_count():
  # T5 span corruption at T = 64: 10 noise tokens in 3 spans -> 58 encoder, 14 decoder slots.
  parts = flops.breakdown(_member('t5'), vocab_size=V, scored='expected')
  enc = 58 * _block(58)
  dec = 14 * (_block(14) + 2 * 2 * 64 * 64 + 2 * 2 * 58 * 64) + 58 * 2 * 2 * 64 * 64
  head = 14 * 2 * 64 * V
  assert parts['encoder'] == pytest.approx(3 * enc / 64)
  assert parts['decoder'] == pytest.approx(3 * dec / 64)
  assert parts['lm_head'] == pytest.approx(3 * head / 64)
  assert parts['total'] == pytest.approx(3 * (enc + dec + head) / 64)
  # i.i.d. noise (span length 1): 10 spans -> 65 encoder and 21 decoder slots, more FLOPs.
  iid = flops.breakdown(_member('t5_iid'), vocab_size=V, scored='expected')
  assert iid['lm_head'] == pytest.approx(3 * 21 * 2 * 64 * V / 64)
  assert iid['total'] > parts['total']
  # BART reconstructs the row: decoder and vocabulary projection at all 64 slots.
  bart = flops.breakdown(_member('bart'), vocab_size=V, scored='expected')
  assert bart['lm_head'] == pytest.approx(3 * 2 * 64 * V)
  assert bart['decoder'] == pytest.approx(
      3 * (64 * (_block(64) + 2 * 2 * 64 * 64 + 2 * 2 * 64 * 64) + 64 * 2 * 2 * 64 * 64) / 64)
  # MASS: the method needs the decoder on its 50 % fragment only; this code runs all 64 slots.
  mass = _member('mass')
  assert flops.breakdown(mass, vocab_size=V, scored='expected')['lm_head'] == pytest.approx(
      3 * 32 * 2 * 64 * V / 64)
  assert flops.breakdown(mass, vocab_size=V, scored='slab')['decoder'] == pytest.approx(
      bart['decoder'])


def test_single_stack_flops_match_the_hand_count():
  prefix = flops.breakdown(_member('prefix_lm'), vocab_size=V, scored='expected')
  assert prefix['blocks'] == pytest.approx(3 * 2 * _block(64))  # 2 layers at all 64 slots
  assert prefix['lm_head'] == pytest.approx(3 * 2 * 64 * V) and prefix['encoder'] == 0
  unilm = flops.breakdown(_member('unilm'), vocab_size=V, scored='expected')
  assert unilm['blocks'] == pytest.approx(prefix['blocks'])
  assert unilm['lm_head'] == pytest.approx(3 * 0.15 * (2 * 64 * 64 + 2 * 64 * V))
  glm = flops.breakdown(_member('glm'), vocab_size=V, scored='expected')
  mean_span = 3 / (1 - math.exp(-3))  # Poisson(3) given >= 1
  part_b = 0.15 * 64 * (1 + 1 / mean_span)
  slots = 64 + part_b
  assert glm['blocks'] == pytest.approx(3 * slots * 2 * _block(slots) / 64, rel=1e-4)
  assert glm['lm_head'] == pytest.approx(3 * part_b * (2 * 64 * 64 + 2 * 64 * V) / 64, rel=1e-4)
  # What the code runs: GLM's static Part B bound is larger than its expected length.
  assert flops.breakdown(_member('glm'), vocab_size=V)['blocks'] > glm['blocks']
  cfg = _member('prefix_lm')
  cfg.objective = base.objective_config('span_corruption')
  with pytest.raises(ValueError, match="span_corruption needs model.family=encdec, got 'decoder'"):
    flops.breakdown(cfg, vocab_size=V)


def test_plan_shares_width_and_budget_across_families():
  config = _comparison()
  members, budget = compare.plan(config, V)
  by = {m.name: m for m in members}
  assert list(by) == ['t5', 't5_iid', 'bart', 'mass', 'prefix_lm', 'unilm', 'glm']
  for m in members:
    mc = m.config.model
    assert (mc.embed_dim, mc.num_heads, mc.mlp_dim) == (64, 2, 128)
    if mc.family == 'encdec':
      assert (mc.num_encoder_layers, mc.num_decoder_layers) == (1, 1)
    else:
      assert mc.num_layers == 2
    assert m.config.data.seq_len == 64 and m.config.data.source == 'news_en'
    assert m.config.data.tokenizer.to_dict() == config.data.tokenizer.to_dict()
    assert m.flops <= budget * (1 + 1e-9) and budget - m.flops < m.flops_per_step
  assert by['t5_iid'].config.objective.mean_noise_span_length == 1.0
  assert by['t5'].config.objective.mean_noise_span_length == 3.0
  assert by['glm'].config.model.block_position_embeddings
  assert by['unilm'].config.model.type_vocab_size == 6
  assert by['bart'].config.data.annotations == ('sentences',)
  # Shorter targets, cheaper steps: span corruption runs the most steps, BART (full row) few.
  assert by['t5'].steps == 20 > by['t5_iid'].steps > by['mass'].steps > by['bart'].steps
  with pytest.raises(ValueError, match='has no field'):
    compare.plan(_comparison(**{'comparison.member_model': {'t5': {'num_layers': 4}}}), V)
  # Positions are each family's own here: T5 relative buckets, BART/GLM/UniLM learned tables.
  assert by['t5'].config.model.positions == 'relative'
  assert by['bart'].config.model.positions == 'learned'
  assert by['glm'].config.model.positions == by['unilm'].config.model.positions == 'learned'


def test_unilm_records_are_marked_with_its_next_token_evaluation():
  """UniLM's title loss is scored as decoded since 2026-12-06 (no longer its training cloze): its
  unit's settings say so, so that its records made before are refused; the other members keep
  the label-smoothing marker alone."""
  from ptm_jax import compare_records as records
  config = _comparison(**{'downstream.label_smoothing': 0.1})
  members, budget = compare.plan(config, V)
  marks = {m.name: records.key(m.config, budget, V).settings.get('eval_loss') for m in members}
  assert marks.pop('unilm') == records.EVAL_LOSS_UNILM_NEXT_TOKEN
  assert set(marks.values()) == {records.EVAL_LOSS_UNSMOOTHED}
  unsmoothed, _ = compare.plan(_comparison(**{'downstream.label_smoothing': 0.0}), V)
  marks = {m.name: records.key(m.config, budget, V).settings.get('eval_loss') for m in unsmoothed}
  assert marks.pop('unilm') == records.EVAL_LOSS_UNILM_NEXT_TOKEN
  assert set(marks.values()) == {None}


@pytest.mark.parametrize('arg', ['cpu', 'gpu'])
def test_larger_sizes_plan(arg):
  members, _ = compare.plan(_comparison(arg), 8000)
  steps = {m.name: m.steps for m in members}
  assert steps['t5'] == _comparison(arg).comparison.reference_steps
  assert steps['t5'] > steps['t5_iid'] > steps['bart']
  # The gpu size's fine-tunes stop early only from step 500 on (a plateau is not an end).
  from ptm_jax.tasks import finetune
  config = _comparison(arg)
  ft = finetune.finetune_config(config, 'news_headline', 'pretrained', 0, '/p',
                                config.data.tokenizer)
  assert (ft.train.early_stop_patience, ft.train.early_stop_min_steps) == (
      3, 500 if arg == 'gpu' else 0)


def test_runlocal_comparison_end_to_end(data_dir, tmp_path):
  from ptm_jax import run as run_lib
  # An encoder-decoder member and a single-stack one with its own generation form (GLM's blank
  # infilling); the other members' objectives run end to end in tests/test_objectives_seq2seq.py and
  # their generation forms in tests/test_news_headline.py and tests/test_decoding.py. Suite time:
  # 170 s with four members on 2 idle cores.
  config = _comparison(**{'mesh.num_devices': 1, 'comparison.members': ('t5', 'glm')})
  workdir = str(tmp_path / 'cmp')
  summary = run_lib.run(config, workdir)
  names = list(config.comparison.members)
  for suffix in ('md', 'png', 'json'):
    assert os.path.getsize(os.path.join(workdir, f'compare_seq2seq.{suffix}')) > 0
  with open(os.path.join(workdir, 'compare_seq2seq.json')) as f:
    saved = json.load(f)
  members = saved['members']
  assert set(members) == {*names, 'random'}
  for name in names:
    r = members[name]
    assert r['steps'] == r['planned_steps'] >= 1 and math.isfinite(r['train_loss'])
  # One generation fine-tune per member and one random-init baseline (the t5 architecture).
  rows = saved['rows']
  assert len(rows) == len(names) + 1
  forms = {r['member']: r['form'] for r in rows}
  assert forms == {'random': 'encdec', 't5': 'encdec', 'glm': 'glm'}
  for name in ['random', *names]:
    score = saved['accuracy'][name]['news_headline']
    assert score['n'] == 1 and score['metric'] == 'rougeL'
    for key in ('rouge1', 'rouge2', 'rougeL'):
      assert 0.0 <= score[key]['mean'] <= 1.0
    # The teacher-forced test loss of the titles (a vocabulary of 2,000: below log V = 7.6 + the
    # smoothing term once trained a little, and positive).
    assert 0.0 < score['loss']['mean'] < 10.0
    # And how much the article lowers it (source_reliance.py: another article's minus its own).
    assert np.isfinite(score['source_gain']['mean'])
  assert np.all([r['examples'] == 32 for r in rows])
  text = summary['markdown']
  for name in names:
    assert config.comparison.labels[name] in text
  for header in ('news_headline ROUGE-1', 'news_headline ROUGE-2', 'news_headline ROUGE-L',
                 'news_headline test loss', 'news_headline source gain'):
    assert header in text
  assert '1+1-layer encoder-decoder (t5)' in text
  assert '![ROUGE by objective](compare_seq2seq.png)' in text
  # The extractive LEAD reference: each test article's first n words, n = the median train title
  # length in words, scored against its title by the same ROUGE.
  lead = saved['lead_baseline']
  examples = news_headline.split_examples('', 'test')
  words = int(round(np.median([len(t.split()) for _, _, t in news_headline.split_examples(
      '', 'train')])))
  assert lead['words'] == words and lead['examples'] == len(examples) > 0
  first = generation.rouge([' '.join(x.split()[:words]) for _, x, _ in examples],
                           [t for _, _, t in examples])
  assert {k: lead[k] for k in first} == pytest.approx(first) and 0.0 < lead['rouge1'] < 1.0
  assert f'the first {words} words of each test article' in text
  assert f'ROUGE-1 {lead["rouge1"]:.3f}' in text
