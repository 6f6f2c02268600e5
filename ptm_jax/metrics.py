"""Run outputs: metrics.jsonl + TensorBoard scalars, a tqdm progress bar, and loss-curve plots."""
from __future__ import annotations

import json
import math
import numbers
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

JSONL_NAME = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads one JSON object per line; a torn last line (crash mid-write) is dropped."""
  with open(path, encoding='utf-8') as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise
  return records


def _to_python(value: Any) -> Any:
  """Converts jax/numpy scalars to plain int/float so that json and TensorBoard take them."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    value = np.asarray(value)
    if value.size != 1:
      return value.tolist()
    value = value.item()
  return value


class MetricWriter:
  """Appends `{step, **scalars}` to DIR/metrics.jsonl and TensorBoard; only process 0 writes."""

  def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None,
               tensorboard: bool = True, enabled: bool | None = None):
    self.path = os.path.join(os.fspath(workdir), JSONL_NAME)
    # Every host computes the same (replicated) metrics; one writer avoids N copies of each line.
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(os.fspath(workdir), exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      self._truncate(resume_step)
    self._file = open(self.path, 'a', encoding='utf-8')
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      # purge_step hides the events a crashed run wrote after the checkpoint it resumes from.
      purge = None if resume_step is None else resume_step + 1
      self._tb = tensorboardX.SummaryWriter(
          os.path.join(os.fspath(workdir), TENSORBOARD_DIR), purge_step=purge)

  def _truncate(self, resume_step: int) -> None:
    """Drops entries logged after `resume_step`, atomically, so a resumed run has no duplicates."""
    kept = [r for r in read_jsonl(self.path) if r.get('step', -1) <= resume_step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs one step: a JSONL line and one TensorBoard scalar per numeric value."""
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _to_python(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()  # one line per log interval: cheap, and lets users `tail -f` a run
    if self._tb is not None:
      for key, value in record.items():
        if key != 'step' and isinstance(value, numbers.Real) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))

  def flush(self) -> None:
    """Pushes buffered lines and events to disk."""
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both outputs; further writes are an error."""
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self.enabled = False

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class ProgressBar:
  """tqdm bar over training steps with a loss / tokens-per-second postfix.

  Off a TTY (CI logs, `make run > log`) the bar is replaced by one plain line per update on
  stdout, so long runs still show progress without carriage-return noise; other hosts are silent.
  """

  def __init__(self, total: int, initial: int = 0, *, desc: str = 'train',
               disable: bool | None = None, plain_lines: bool | None = None):
    is_chief = jax.process_index() == 0
    if disable is None:
      disable = not sys.stderr.isatty() or not is_chief
    if plain_lines is None:
      plain_lines = disable and is_chief and not sys.stderr.isatty()
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    self._bar = tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True)
    self._step = initial
    self._plain = plain_lines
    self._desc, self._total = desc, total

  @property
  def disabled(self) -> bool:
    return bool(self._bar.disable)

  def update(self, step: int, **postfix: Any) -> None:
    """Moves the bar to `step` and shows the given values (floats compactly formatted)."""
    shown = {}
    for key, value in postfix.items():
      value = _to_python(value)
      shown[key] = f'{value:.4g}' if isinstance(value, float) else value
    if shown:
      self._bar.set_postfix(shown, refresh=False)
    self._bar.update(int(step) - self._step)
    self._step = int(step)
    if self._plain:
      values = '  '.join(f'{k} {v}' for k, v in shown.items())
      print(f'{self._desc}  step {self._step}/{self._total}  {values}', flush=True)

  def close(self) -> None:
    """Closes the bar."""
    self._bar.close()


def _as_runs(sources) -> list[tuple[str, list[dict[str, Any]]]]:
  """Normalises a path, a record list, or a list of either into (label, records) runs."""
  if isinstance(sources, (str, os.PathLike)):
    sources = [sources]
  elif isinstance(sources, Sequence) and sources and isinstance(sources[0], Mapping):
    sources = [sources]
  runs = []
  for i, src in enumerate(sources):
    if isinstance(src, (str, os.PathLike)):
      path = os.fspath(src)
      label = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
      runs.append((label, read_jsonl(path)))
    else:
      runs.append((f'run{i}', list(src)))
  return runs


def plot_curves(sources, out_png: str | os.PathLike,
                keys: Iterable[str] = ('loss', 'eval/loss'), *, title: str | None = None,
                logy: bool = False) -> str:
  """Plots each key against step for every run (metrics.jsonl paths or record lists) into a PNG."""
  # Figure + Agg canvas, not pyplot: no global backend switch, no figure leaks in long runs.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  runs = _as_runs(sources)
  keys = list(keys)
  fig = Figure(figsize=(7, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  plotted = 0
  for label, records in runs:
    for key in keys:
      points = [(r['step'], float(r[key])) for r in records
                if 'step' in r and isinstance(r.get(key), numbers.Real) and math.isfinite(r[key])]
      if not points:
        continue
      steps, values = zip(*sorted(points))
      name = key if len(runs) == 1 else f'{label} {key}'
      # Eval points are sparse: markers make a single evaluation visible.
      ax.plot(steps, values, label=name, marker='o' if key.startswith('eval/') else None,
              markersize=3, linestyle='--' if key.startswith('eval/') else '-')
      plotted += 1
  ax.set_xlabel('step')
  ax.set_ylabel(keys[0] if len(keys) == 1 else 'value')
  if logy and plotted:
    ax.set_yscale('log')
  if plotted:
    ax.legend(fontsize='small')
  else:
    ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
  ax.set_title(title or ', '.join(keys))
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  out_png = os.fspath(out_png)
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, format='png')
  return out_png
