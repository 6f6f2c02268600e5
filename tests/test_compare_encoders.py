"""The equal-compute encoder comparison: FLOP accounting, the step plan, and the runlocal job."""
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import pytest

from ptm_jax import compare, configs, flops, objectives
from ptm_jax import compare_records as records
from ptm_jax.configs import base
from ptm_jax.objectives import electra, mlm, spanbert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, 'experiments', 'compare_encoders.py')
VOCAB = 2000


def _comparison(arg='runlocal', **overrides):
  return configs.load_experiment(f'{SPEC}:{arg}', overrides)


def _member(name, **model):
  cfg = compare.member_config(_comparison(), name)
  cfg.model.update(model)
  return cfg


def test_mlm_flops_match_the_hand_count():
  # runlocal: L=2, D=64 (1 head of 64), F=256, T=64, V=2000; K = ceil(9.6 + 6 sd + 1) = 28 slots.
  parts = flops.breakdown(_member('mlm'), vocab_size=VOCAB)
  blocks = 3 * 2 * (2 * 4 * 64 * 64 + 2 * 2 * 64 * 64 + 2 * 2 * 64 * 256)
  head = 3 * 28 / 64 * (2 * 64 * 64 + 2 * 64 * VOCAB)
  assert mlm.max_predictions(64, 0.15) == 28
  assert parts['blocks'] == pytest.approx(blocks)
  assert parts['mlm_head'] == pytest.approx(head)
  assert parts['total'] == pytest.approx(blocks + head)
  # The method's own count: the vocabulary projection at 15 % of the positions.
  expected = flops.breakdown(_member('mlm'), vocab_size=VOCAB, scored='expected')
  assert expected['mlm_head'] == pytest.approx(3 * 0.15 * (2 * 64 * 64 + 2 * 64 * VOCAB))
  dense = _member('mlm')
  dense.objective.sparse_logits = False
  assert flops.breakdown(dense, vocab_size=VOCAB)['mlm_head'] == pytest.approx(
      3 * (2 * 64 * 64 + 2 * 64 * VOCAB))
  # slab_rows=4: one slab of mean + 6 sd over 4 rows (K_4 = ceil(38.4 + 6 sd + 1) = 74 slots,
  # 18.5 per row instead of 28).
  shared = _member('mlm')
  shared.objective.slab_rows = 4
  assert mlm.max_predictions(256, 0.15) == 74
  assert flops.breakdown(shared, vocab_size=VOCAB)['mlm_head'] == pytest.approx(
      3 * 74 / 4 / 64 * (2 * 64 * 64 + 2 * 64 * VOCAB))
  # 6 N_blocks + 12 L T D: the Kaplan form of the same block count (no biases, one head).
  n_blocks = 2 * (4 * 64 * 64 + 2 * 64 * 256)
  assert parts['blocks'] == pytest.approx(6 * n_blocks + 12 * 2 * 64 * 64)


def test_electra_exceeds_mlm_by_the_generator_share():
  bert, el = _member('mlm'), _member('electra')
  p_bert = flops.breakdown(bert, vocab_size=VOCAB)
  p_el = flops.breakdown(el, vocab_size=VOCAB)
  # Generator: width 16 (1/4), 1 head, FFN 64, 2 layers; the shared 64-wide table projected to 16;
  # its MLM head (16 -> 64 -> V) at the same 28-slot slab.
  gen_fwd = (2 * (2 * 4 * 16 * 16 + 2 * 2 * 64 * 16 + 2 * 2 * 16 * 64) + 2 * 64 * 16
             + 28 / 64 * (2 * 16 * 64 + 2 * 64 * VOCAB))
  assert p_el['generator'] == pytest.approx(3 * gen_fwd)
  assert p_el['rtd_head'] == pytest.approx(3 * (2 * 64 * 64 + 2 * 64))
  assert p_el['blocks'] == pytest.approx(p_bert['blocks'])  # the discriminator is BERT's size
  assert p_el['total'] - p_bert['total'] == pytest.approx(
      p_el['generator'] + p_el['rtd_head'] - p_bert['mlm_head'])
  assert p_el['total'] > p_bert['total']
  assert p_el['total'] == pytest.approx(
      electra.flops_per_token(el.model, electra.Options(generator_width_fraction=0.25),
                              seq_len=64, vocab_size=VOCAB))


def test_albert_flops_equal_bert_while_params_differ():
  shared, unshared = _member('albert'), _member('albert', share='none')
  f_shared = flops.breakdown(shared, vocab_size=VOCAB)
  assert f_shared == flops.breakdown(unshared, vocab_size=VOCAB)  # a shared layer runs L times
  p_shared = compare.encoder_params(shared, VOCAB)
  p_unshared = compare.encoder_params(unshared, VOCAB)
  assert p_shared < p_unshared
  # At E = H, ALBERT + SOP costs what BERT + NSP costs, plus only its E -> H projection.
  albert_eh, bert = _member('albert', embedding_size=64), _member('mlm_nsp')
  f_albert, f_bert = (flops.breakdown(c, vocab_size=VOCAB) for c in (albert_eh, bert))
  for part in ('blocks', 'mlm_head', 'pair_head'):
    assert f_albert[part] == pytest.approx(f_bert[part])
  assert f_albert['total'] - f_bert['total'] == pytest.approx(3 * 2 * 64 * 64)
  assert compare.encoder_params(albert_eh, VOCAB) < compare.encoder_params(bert, VOCAB)


def test_spanbert_counts_its_sbo_head():
  cfg = _member('spanbert')
  parts = flops.breakdown(cfg, vocab_size=VOCAB)
  options = objectives.build_options(spanbert, cfg.objective)
  slots = flops.scored_positions('spanbert', options, 64)
  assert slots == spanbert.max_span_predictions(64, options) > mlm.max_predictions(64, 0.15)
  assert parts['sbo_head'] == pytest.approx(
      3 * slots / 64 * (2 * (2 * 64 + 200) * 64 + 2 * 64 * 64 + 2 * 64 * VOCAB))
  cfg = _member('mlm')
  cfg.objective = base.objective_config('classify')
  with pytest.raises(ValueError, match='no FLOP model'):
    flops.breakdown(cfg, vocab_size=VOCAB)
  cfg.objective = base.objective_config('clm')  # counted, but only for a decoder
  with pytest.raises(ValueError, match="clm needs model.family=decoder, got 'encoder'"):
    flops.breakdown(cfg, vocab_size=VOCAB)


def test_members_share_size_corpus_tokenizer_and_budget():
  config = _comparison()
  members, budget = compare.plan(config, VOCAB)
  assert [m.name for m in members] == list(config.comparison.members)
  assert len(members) == 8
  for m in members:
    c = m.config
    assert (c.model.num_layers, c.model.embed_dim, c.model.mlp_dim) == (2, 64, 256)
    assert c.data.source == 'news_en' and c.data.seq_len == 64
    assert c.data.tokenizer.to_dict() == config.data.tokenizer.to_dict()
    assert c.train.batch_size == config.train.batch_size and c.train.steps == m.steps
    assert c.optim.to_dict() == {**config.optim.to_dict(), 'warmup_steps': c.optim.warmup_steps}
    # Equal compute: the largest step count within the budget.
    assert m.flops <= budget * (1 + 1e-9) and budget - m.flops < m.flops_per_step
  by = {m.name: m for m in members}
  assert by['albert'].config.model.family == 'albert' and by['albert'].config.model.share == 'all'
  assert by['roberta'].config.data.cross_document and by['mlm_nsp'].config.data.pairs == 'nsp'
  assert by['roberta'].config.model.max_position_embeddings == 128 + 2
  assert by['mlm'].steps == config.comparison.reference_steps
  # Cheaper steps, more of them: ALBERT (E = 16 head) > MLM > ELECTRA, SpanBERT (+ SBO).
  assert by['albert'].steps > by['mlm'].steps > max(by['electra'].steps, by['spanbert'].steps)
  ordered = sorted(members, key=lambda m: m.flops_per_step)
  assert all(a.steps >= b.steps for a, b in zip(ordered, ordered[1:]))
  # Counting the static slab instead (what this code runs) costs SpanBERT more steps.
  slab = dict((m.name, m.steps) for m in compare.plan(
      _comparison(**{'comparison.scored_positions': 'slab'}), VOCAB)[0])
  assert slab['spanbert'] < by['spanbert'].steps and slab['mlm'] == by['mlm'].steps
  with pytest.raises(ValueError, match='reference'):
    compare.plan(_comparison(**{'comparison.reference': 'gpt'}), VOCAB)


def test_members_share_the_position_scheme():
  rotary = {m.name: m.config.model for m in
            compare.plan(_comparison(**{'model.positions': 'rotary'}), VOCAB)[0]}
  assert {mc.family for mc in rotary.values()} == {'encoder', 'albert'}
  assert all(mc.positions == 'rotary' for mc in rotary.values())
  assert all(m.config.model.positions == 'learned' for m in compare.plan(_comparison(), VOCAB)[0])


@pytest.mark.parametrize('arg', ['cpu', 'gpu'])
def test_larger_sizes_plan(arg):
  config = _comparison(arg)
  members, _ = compare.plan(config, 8000)
  steps = {m.name: m.steps for m in members}
  assert steps['mlm'] == config.comparison.reference_steps
  assert steps['electra'] < steps['mlm'] < steps['albert']
  # Every member pretrains on the one corpus (the cpu size: news + the task's unlabelled text).
  assert {m.config.data.source for m in members} == {config.data.source}
  assert ('rt_sentiment' in config.data.source) == (arg == 'cpu')


def test_compilation_cache_block_writes_there_and_restores(tmp_path):
  """With no cache set (a user's run), the block caches in `path` and leaves the config as it was."""
  from jax.experimental.compilation_cache import compilation_cache as cc
  suite = jax.config.jax_compilation_cache_dir  # the suite's own cache (tests/conftest.py)
  jax.config.update('jax_compilation_cache_dir', None)
  cc.reset_cache()
  try:
    with compare.compilation_cache(str(tmp_path / 'c')):
      assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'c')
      jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0)(jnp.ones(11))
    assert os.listdir(tmp_path / 'c') and jax.config.jax_compilation_cache_dir is None
    with compare.compilation_cache(None):
      assert jax.config.jax_compilation_cache_dir is None
  finally:
    jax.config.update('jax_compilation_cache_dir', suite)
    cc.reset_cache()


def test_time_budget_starts_a_unit_only_if_the_longest_so_far_still_fits():
  now = [0.0]
  clock = records.TimeBudget(100.0, clock=lambda: now[0])
  now[0] = 150.0
  assert clock.may_start()  # nothing finished yet in this run: always make progress
  now[0] = 0.0
  clock = records.TimeBudget(100.0, clock=lambda: now[0])
  now[0] = 30.0
  clock.unit_done(30.0)
  assert clock.may_start()  # 30 used + 30 for the next <= 100
  now[0] = 75.0
  clock.unit_done(45.0)
  assert not clock.may_start()  # 75 + 45 > 100
  assert records.TimeBudget(0.0, clock=lambda: now[0]).may_start()  # 0 = no budget


def test_records_are_refused_when_unreadable_or_from_another_config(tmp_path):
  config = _comparison()
  store = records.Store(str(tmp_path / 'work'), str(tmp_path / 'rec'))
  key = records.key(config, 1e12, VOCAB)
  assert store.get('mlm', key) is None
  row = {'task': 'rt_sentiment', 'workdir': str(tmp_path / 'work' / 'mlm' / 'rt_sentiment')}
  store.put('mlm', key, {'steps': 3}, [row], str(tmp_path / 'work'))
  assert store.get('mlm', key)['rows'][0]['workdir'] == os.path.join('mlm', 'rt_sentiment')
  assert os.path.exists(tmp_path / 'work' / 'records' / 'mlm.json')  # kept beside the run too
  # A record made before records_dir was set is found beside the run and copied there.
  later = records.Store(str(tmp_path / 'work'), str(tmp_path / 'later'))
  assert later.get('mlm', key)['result'] == {'steps': 3}
  assert os.path.exists(tmp_path / 'later' / 'mlm.json')
  # Where the data lives or how the devices are laid out does not change the numbers ...
  moved = _comparison(**{'data.data_dir': '/elsewhere', 'mesh.preset': 'fsdp'})
  assert records.fingerprint(moved, 1e12, VOCAB) == key.fingerprint
  # ... the optimizer, the budget and the vocabulary do.
  other = _comparison(**{'optim.learning_rate': 1e-2})
  for changed in (records.key(other, 1e12, VOCAB), records.key(config, 2e12, VOCAB),
                  records.key(config, 1e12, VOCAB + 1)):
    assert changed.fingerprint != key.fingerprint
    with pytest.raises(ValueError, match='another configuration'):
      store.get('mlm', changed)
  (tmp_path / 'rec' / 'mlm.json').write_text('{"unit": "ml')
  with pytest.raises(ValueError, match=r'mlm\.json is unreadable .*delete it'):
    store.get('mlm', key)


def test_a_record_with_fewer_seeds_is_extended_not_refused(tmp_path):
  """More downstream.seeds than a record holds: the record is the planned unit's, lacking seeds
  (returned to run); seeds that are not a superset, or any other change beside them, are refused.
  `extend` merges the new rows in task and seed order and keeps where the record was made."""
  store = records.Store(str(tmp_path / 'work'))
  short = records.key(_comparison(**{'downstream.seeds': (0, 1)}), 1e12, VOCAB)
  rows = [{'task': t, 'seed': s, 'workdir': str(tmp_path / 'work' / 'mlm' / t / f'seed{s}')}
          for t in ('rt_sentiment', 'news_source') for s in (0, 1)]
  probe = {'task': 'rt_sentiment', 'seed': 0, 'metric': 'probe', 'layer': 'mix'}
  store.put('mlm', short, {'steps': 3}, [*rows, probe], str(tmp_path / 'work'))
  planned = records.key(_comparison(**{'downstream.seeds': (0, 1, 2, 3)}), 1e12, VOCAB)
  record = store.get('mlm', planned)
  assert record['seeds_to_add'] == [2, 3] and store.get('mlm', short).get('seeds_to_add') is None
  for refused in ({'downstream.seeds': (1, 2)},
                  {'downstream.seeds': (0, 1, 2), 'optim.learning_rate': 1e-2}):
    with pytest.raises(ValueError, match='another configuration'):
      store.get('mlm', records.key(_comparison(**refused), 1e12, VOCAB))
  new = [{'task': t, 'seed': s, 'workdir': str(tmp_path / 'work' / 'mlm' / t / f'seed{s}')}
         for t in ('rt_sentiment', 'news_source') for s in (2, 3)]
  extended = store.extend('mlm', planned, record, new, str(tmp_path / 'work'))
  assert [(r['task'], r['seed']) for r in extended['rows'][:-1]] == [
      (t, s) for t in ('rt_sentiment', 'news_source') for s in range(4)]
  assert extended['rows'][-1] == probe  # probes are per unit, not per seed: kept once
  assert extended['rows'][2]['workdir'] == os.path.join('mlm', 'rt_sentiment', 'seed2')
  assert extended['made'] == record['made'] and extended['extended'][0]['seeds'] == [2, 3]
  assert extended['result'] == {'steps': 3} and 'seeds_to_add' not in extended
  reread = store.get('mlm', planned)
  assert 'seeds_to_add' not in reread and reread['rows'] == extended['rows']


def test_records_outlive_fields_added_at_their_defaults(tmp_path):
  """A record keeps its settings; one made before a field existed (the library grows between the
  sessions a comparison spans) still matches while the planned unit leaves that field at its
  default, and is refused, naming the field, once it does not; any other difference is named."""
  import json
  config = _comparison()
  store = records.Store(str(tmp_path / 'work'))
  planned = records.key(config, 1e12, VOCAB)
  assert planned.fingerprint == records.fingerprint(config, 1e12, VOCAB)
  store.put('mlm', planned, {'steps': 3}, [], str(tmp_path / 'work'))
  assert store.get('mlm', planned)['result'] == {'steps': 3}
  # The record as an older library wrote it: no remat_policy, no objective field slab_rows.
  path = tmp_path / 'work' / 'records' / 'mlm.json'
  record = json.loads(path.read_text())
  assert record['settings']['config']['model']['remat_policy'] == 'full'
  del record['settings']['config']['model']['remat_policy']
  del record['settings']['config']['objective']['slab_rows']
  record['fingerprint'] = 'older'
  path.write_text(json.dumps(record))
  assert store.get('mlm', planned)['result'] == {'steps': 3}
  with pytest.raises(ValueError, match=r"1 differing: config\.model\.remat_policy: "
                                       r"\(no such field\) -> 'dots'"):
    store.get('mlm', records.key(_comparison(**{'model.remat_policy': 'dots'}), 1e12, VOCAB))
  with pytest.raises(ValueError, match=r'config\.optim\.learning_rate: 0\.001 -> 0\.01'):
    store.get('mlm', records.key(_comparison(**{'optim.learning_rate': 1e-2}), 1e12, VOCAB))
  with pytest.raises(ValueError, match=r'budget: 1000000000000\.0 -> 2000000000000\.0'):
    store.get('mlm', records.key(config, 2e12, VOCAB))


def test_records_of_smoothed_fine_tunes_made_before_unsmoothed_evaluation_are_refused(tmp_path):
  """Fine-tunes with label smoothing report unsmoothed dev/test losses since 2026-12-06: a record of
  such a unit made before (no `eval_loss` in its settings) is refused, naming the field; a unit
  without smoothing, whose numbers did not change, keeps matching its older record."""
  import json
  store = records.Store(str(tmp_path / 'work'))
  for smoothing in (0.0, 0.1):
    config = _comparison(**{'downstream.label_smoothing': smoothing})
    planned = records.key(config, 1e12, VOCAB)
    assert ('eval_loss' in planned.settings) == (smoothing > 0)
    store.put('mlm', planned, {'steps': 3}, [], str(tmp_path / 'work'))
    path = tmp_path / 'work' / 'records' / 'mlm.json'
    record = json.loads(path.read_text())
    record['settings'].pop('eval_loss', None)  # as the library wrote it before
    record['fingerprint'] = 'older'
    path.write_text(json.dumps(record))
    if smoothing:
      with pytest.raises(ValueError, match=r"eval_loss: \(no such field\) -> 'cross-entropy "
                                           r"without label smoothing'"):
        store.get('mlm', planned)
    else:
      assert store.get('mlm', planned)['result'] == {'steps': 3}
  # A pretraining objective with smoothing (BART's, MASS's option) is marked the same way.
  smoothed_objective = _comparison()
  smoothed_objective.objective.label_smoothing = 0.1
  assert 'eval_loss' in records.key(smoothed_objective, 1e12, VOCAB).settings


def test_runlocal_comparison_end_to_end(data_dir, tmp_path):
  from ptm_jax import run as run_lib
  # Three members with three different FLOPs per step (the plan and FLOP tests above cover all
  # eight without training) and one task keep this end-to-end run to about a minute.
  shared = {'mesh.num_devices': 1, 'comparison.members': ('mlm', 'albert', 'electra'),
            'downstream.tasks': ('rt_sentiment',), 'comparison.records_dir': str(tmp_path / 'rec')}
  # Split over two "machines", as a lent GPU's ten-minute calls do: the first runs two units ...
  first = run_lib.run(_comparison(**shared, **{'comparison.run_only': ('random', 'mlm')}),
                      str(tmp_path / 'machine_a'))  # run.run dispatches a `comparison` config
  assert first['missing'] == ['albert', 'electra'] and first['preempted']
  assert 'incomplete: no result yet for albert, electra' in first['markdown']
  assert sorted(os.listdir(tmp_path / 'rec')) == ['mlm.json', 'random.json']
  # ... the second starts bare (no checkpoint of the first) and runs only what has no record.
  config = _comparison(**shared)
  workdir = str(tmp_path / 'machine_b')
  summary = run_lib.run(config, workdir)
  assert not summary['missing'] and not summary['preempted']
  assert not os.path.exists(os.path.join(workdir, 'mlm')), 'a recorded unit ran again'
  assert not os.path.exists(os.path.join(workdir, 'random'))
  assert sorted(os.listdir(tmp_path / 'rec')) == [f'{n}.json' for n in
                                                  ('albert', 'electra', 'mlm', 'random')]
  assert [r for r in summary['rows'] if r['member'] in ('random', 'mlm')] == first['rows']
  device = jax.devices()[0].device_kind
  assert summary['made']['mlm']['device'] == device
  assert f'Run on {device} (jax ' in summary['markdown']
  with open(tmp_path / 'rec' / 'mlm.json') as f:
    record = json.load(f)
  assert record['rows'][0]['workdir'] == os.path.join('mlm', 'rt_sentiment', 'pretrained', 'seed0')
  # A record of another configuration is refused, naming its file; nothing is trained first.
  with pytest.raises(ValueError, match=r'rec/random\.json was made with another configuration'):
    run_lib.run(_comparison(**shared, **{'optim.learning_rate': 5e-4}), str(tmp_path / 'machine_c'))
  names = list(config.comparison.members)
  tasks = list(config.downstream.tasks)
  for suffix in ('md', 'png', 'json'):
    assert os.path.getsize(os.path.join(workdir, f'compare_encoders.{suffix}')) > 0
  with open(os.path.join(workdir, 'compare_encoders.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(workdir, 'compare_encoders.json')) as f:
    saved = json.load(f)
  members = saved['members']
  assert set(members) == {*names, 'random'}
  budget = members['mlm']['budget']
  for name in names:
    r = members[name]
    assert r['steps'] == r['planned_steps'] >= 1
    assert r['flops'] <= budget * (1 + 1e-9) and budget - r['flops'] < r['flops_per_step']
    assert math.isfinite(r['train_loss'])
    for task in tasks:
      acc = saved['accuracy'][name][task]
      assert acc['n'] == 1 and 0.0 <= acc['mean'] <= 1.0
  for task in tasks:
    assert 0.0 <= saved['accuracy']['random'][task]['mean'] <= 1.0
  # Each member's budget in epochs over the train split (steps x batch x row length / its tokens).
  rows_tokens = config.train.batch_size * config.data.seq_len
  assert saved['corpus_train_tokens'] > 0
  for name in names:
    assert saved['epochs'][name] == pytest.approx(
        members[name]['planned_steps'] * rows_tokens / saved['corpus_train_tokens'])
    assert f'| {members[name]["steps"]} | {saved["epochs"][name]:.1f} |' in summary['markdown']
  assert f'the train split holds {saved["corpus_train_tokens"]:,} tokens' in summary['markdown']
  # Steps differ where the FLOPs per step differ.
  per_step = {n: members[n]['flops_per_step'] for n in names}
  steps = {n: members[n]['steps'] for n in names}
  for a in names:
    for b in names:
      if per_step[a] < per_step[b] * 0.9:
        assert steps[a] > steps[b], (a, b, steps)
  # One fine-tune per (member or baseline, task, seed); the baseline is trained once per task.
  assert len(saved['rows']) == len(tasks) * (len(names) + 1)
  assert sum(r['member'] == 'random' for r in saved['rows']) == len(tasks)
  assert all(r['init'] == 'pretrained' for r in saved['rows'] if r['member'] != 'random')
  text = summary['markdown']
  for name in names:
    assert config.comparison.labels[name] in text
  assert 'random init (baseline)' in text and '![accuracy by objective](compare_encoders.png)' in text
  # The fine-tunes' shared compilations: in workdir/xla_cache, or in the cache the suite set.
  suite_cache = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  assert os.listdir(suite_cache or os.path.join(workdir, 'xla_cache'))
  assert os.path.exists(os.path.join(workdir, 'xla_cache')) != bool(suite_cache)
  # One more seed: only the new fine-tunes run, from each unit's pretrained checkpoint, and the
  # records are extended. mlm was pretrained on the other "machine": the one-line error names
  # the fix (the baseline, which needs no checkpoint, is extended before it) ...
  seeds2 = _comparison(**shared, **{'downstream.seeds': (0, 1)})
  with pytest.raises(ValueError, match=r"mlm's record lacks seeds \[1\].*copy the pretrain"):
    run_lib.run(seeds2, workdir)
  shutil.copytree(tmp_path / 'machine_a' / 'mlm' / 'pretrain', tmp_path / 'machine_b' / 'mlm' /
                  'pretrain')
  pretrain_logs = {n: (tmp_path / 'machine_b' / n / 'pretrain' / 'metrics.jsonl').read_text()
                   for n in ('mlm', 'albert', 'electra')}
  # ... and once it is there the same command goes on.
  extended = run_lib.run(seeds2, workdir)
  assert not extended['missing']
  for n, log in pretrain_logs.items():  # no pretraining ran again
    assert (tmp_path / 'machine_b' / n / 'pretrain' / 'metrics.jsonl').read_text() == log
  assert sorted((r['member'], r['seed']) for r in extended['rows']) == sorted(
      (n, s) for n in ('random', 'mlm', 'albert', 'electra') for s in (0, 1))
  seed0 = [r for r in extended['rows'] if r['seed'] == 0]
  assert seed0 == [dict(r) for r in summary['rows']]  # the recorded seed-0 rows, unchanged
  with open(tmp_path / 'rec' / 'albert.json') as f:
    assert [r['seed'] for r in json.load(f)['rows']] == [0, 1]
  assert all(v['rt_sentiment']['n'] == 2 for v in extended['accuracy'].values())
  # Feature-based transfer of the same checkpoints (downstream.probe, no fine-tuning): each unit's
  # frozen encoder gets a linear probe per layer and on the scalar mix -- the baseline the
  # reference architecture at random init, ALBERT its shared stack, ELECTRA its discriminator.
  probed = _comparison(**{**shared, 'comparison.records_dir': str(tmp_path / 'rec_probe'),
                          'downstream.probe': True, 'downstream.finetune': False,
                          'downstream.probe_steps': 50})
  # Its own workdir (the fine-tune records beside the first run are another configuration), with
  # the pretrained checkpoints copied there: a probe-only run of finished pretrainings.
  probe_dir = tmp_path / 'machine_d'
  for name in names:  # mlm pretrained on the first "machine", albert and electra on the second
    ran_on = tmp_path / ('machine_a' if name == 'mlm' else 'machine_b')
    shutil.copytree(ran_on / name / 'pretrain', probe_dir / name / 'pretrain')
  logs = {n: (probe_dir / n / 'pretrain' / 'metrics.jsonl').read_text() for n in names}
  summary = run_lib.run(probed, str(probe_dir))
  assert not summary['missing']
  for name in names:  # no pretraining ran again
    assert (probe_dir / name / 'pretrain' / 'metrics.jsonl').read_text() == logs[name]
  probes = summary['rows']
  assert {r['metric'] for r in probes} == {'probe'} and {r['task'] for r in probes} == set(tasks)
  layers = {'random': 3, 'mlm': 3, 'albert': 3, 'electra': 3}  # embeddings + 2 layers
  for unit, count in layers.items():
    mine = [r for r in probes if r['member'] == unit]
    assert [r['layer'] for r in mine] == [*map(str, range(count)), 'mix'], unit
    assert {r['init'] for r in mine} == {'random' if unit == 'random' else 'pretrained'}
    assert all(0.0 <= r['test_score'] <= 1.0 and 0.0 <= r['dev_score'] <= 1.0 for r in mine)
    mix = mine[-1]
    assert summary['accuracy'][unit][f'{tasks[0]}:probe']['mean'] == mix['test_score']
    assert len(mix['mix_weights']) == count
  text = summary['markdown']
  assert f'| {tasks[0]} (linear probe) |' in text
  assert '| task | objective | emb | L1 | L2 | scalar mix |' in text
  assert 'fine-tuning steps' not in text  # nothing was fine-tuned
