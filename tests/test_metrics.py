"""Run-output tests: metrics.jsonl round trip, resume truncation, TensorBoard events, plots."""
import glob
import json
import os

import jax.numpy as jnp
import numpy as np

from ptm_jax import metrics


def test_jsonl_round_trip_and_tensorboard(tmp_path):
  with metrics.MetricWriter(tmp_path) as w:
    for step in range(1, 6):
      w.write(step, {'loss': jnp.float32(5.0 / step), 'learning_rate': np.float64(1e-3),
                     'tokens_per_s': 1234})
    w.write(5, {'eval/loss': 2.5, 'eval/accuracy': jnp.array(0.4)})
  records = metrics.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 5]
  assert records[1]['loss'] == 2.5 and isinstance(records[1]['loss'], float)
  assert records[-1] == {'step': 5, 'eval/loss': 2.5, 'eval/accuracy': np.float32(0.4).item()}
  events = glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  assert events and os.path.getsize(events[0]) > 0


def test_resume_truncates_and_appends(tmp_path):
  with metrics.MetricWriter(tmp_path, tensorboard=False) as w:
    for step in range(1, 11):
      w.write(step, {'loss': 1.0})
  # A crash mid-write leaves a torn last line; resuming from the step-6 checkpoint drops 7..10.
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 11, "lo')
  with metrics.MetricWriter(tmp_path, resume_step=6, tensorboard=False) as w:
    for step in range(7, 9):
      w.write(step, {'loss': 0.5})
  records = metrics.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6, 7, 8]
  assert [r['loss'] for r in records[-3:]] == [1.0, 0.5, 0.5]
  # Reopening without resume_step just appends.
  with metrics.MetricWriter(tmp_path, tensorboard=False) as w:
    w.write(9, {'loss': 0.25})
  assert len(metrics.read_jsonl(tmp_path / 'metrics.jsonl')) == 9


def test_disabled_writer_writes_nothing(tmp_path):
  w = metrics.MetricWriter(tmp_path / 'run', enabled=False)
  w.write(1, {'loss': 1.0})
  w.close()
  assert not (tmp_path / 'run').exists()


def test_plot_curves_png(tmp_path):
  run_a = tmp_path / 'a'
  with metrics.MetricWriter(run_a, tensorboard=False) as w:
    for step in range(1, 21):
      w.write(step, {'loss': 3.0 / step})
      if step % 10 == 0:
        w.write(step, {'eval/loss': 3.5 / step})
  png = metrics.plot_curves(run_a / 'metrics.jsonl', tmp_path / 'out' / 'curves.png')
  data = open(png, 'rb').read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 1000
  # Several runs, records given directly, and a key with no data at all.
  records = [{'step': s, 'loss': 1.0 / s} for s in range(1, 5)]
  png2 = metrics.plot_curves([run_a / 'metrics.jsonl', records], tmp_path / 'multi.png',
                             keys=('loss', 'eval/loss', 'missing'), logy=True)
  assert open(png2, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  png3 = metrics.plot_curves([], tmp_path / 'empty.png')
  assert os.path.getsize(png3) > 0


def test_progress_bar_updates(capsys):
  bar = metrics.ProgressBar(total=10, initial=2, disable=False)
  bar.update(5, loss=jnp.float32(1.23456), tokens_per_s=1e5)
  bar.update(10, loss=0.5)
  assert bar._bar.n == 10
  bar.close()
  err = capsys.readouterr().err
  assert 'loss=' in err
  silent = metrics.ProgressBar(total=10)  # pytest's stderr is not a TTY.
  assert silent.disabled
  silent.update(3, loss=1.0)
  silent.close()


def test_read_jsonl_rejects_corrupt_middle_line(tmp_path):
  path = tmp_path / 'm.jsonl'
  path.write_text(json.dumps({'step': 1}) + '\n{bad\n' + json.dumps({'step': 2}) + '\n')
  try:
    metrics.read_jsonl(path)
  except json.JSONDecodeError:
    return
  raise AssertionError('a corrupt middle line must not be skipped silently')
