"""Training throughput of our models against the HF transformers PyTorch reference, in one run.

  XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/throughput.py \
      --numerics --budget_s 540 --out results.json   # the GPU-session command: docs/benchmarks.md

Workloads (issue 7): `bert_base` (encoder base, MLM, T=512, B=32), `gpt2_small` (decoder small,
CLM, T=1024, B=16), `gpt2_medium` (decoder medium, CLM, T=1024, B=16). For each, side by side:
  * ours: `ptm_jax.steps.make_train_step` (on-device corruption, grad, clip, AdamW from
    `ptm_jax.optim`), bf16 compute / fp32 params, jit with the state donated, one device;
  * reference: `BertForMaskedLM` / `GPT2LMHeadModel` built from the same sizes, SDPA attention,
    bf16 autocast, fused AdamW, gradient clipping, eager and `torch.compile` (best of both).
Each measurement runs in its own child process (`throughput_ours.py`, `throughput_reference.py`):
JAX and torch never share the GPU at once, a crash or OOM costs one row, and `--budget_s` stops
launching children before the device call runs out. Results are written after every child.

Timing: `--warmup` steps (compilation included) are excluded; then `--windows` windows of
`--steps` steps, each closed by `jax.block_until_ready` / `torch.cuda.synchronize`; tokens/s is
the median window's. MFU uses model FLOPs, the same count for both sides (`flops_per_token`),
against 989 TFLOP/s (H100/H200 SXM dense bf16) and against a bf16 matmul measured in the run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
  if _p not in sys.path:
    sys.path.insert(0, _p)

# The --variants options (parsing, per-workload filtering, labels) live in their own module.
from throughput_variants import (VARIANT_KEYS, applied_options,  # noqa: E402
                                 parse_variants, variant_label)

WORKLOADS = {
    'bert_base': dict(family='encoder', variant='base', objective='mlm', seq_len=512, batch=32),
    'gpt2_small': dict(family='decoder', variant='small', objective='clm', seq_len=1024, batch=16),
    'gpt2_medium': dict(family='decoder', variant='medium', objective='clm', seq_len=1024,
                        batch=16),
}
# --tiny: the same code paths at CPU-smoke sizes (not a performance measurement).
TINY = dict(overrides=dict(num_layers=1, embed_dim=64, num_heads=2, mlp_dim=256, vocab_size=512),
            seq_len=64, batch=4)
# Dense bf16 tensor-core peak (no sparsity) by device name, TFLOP/s; the first match wins.
DATASHEET_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.0), ('H200', 989.0),
                    ('GH200', 989.0), ('A100', 312.0))


def model_dims(family: str, variant: str, overrides: dict) -> dict:
  """Sizes both sides are built from: layers, width, heads, head_dim, mlp, vocab, positions."""
  from ptm_jax import models  # imports jax but never touches a device
  module = models.get_family(family)
  cfg = module.Config(**{**module.VARIANTS[variant], **overrides})
  return dict(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim, num_heads=cfg.num_heads,
              head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim, vocab_size=cfg.vocab_size,
              max_positions=cfg.max_position_embeddings, layer_norm_eps=cfg.layer_norm_eps)


def flops_per_token(family: str, dims: dict, seq_len: int) -> tuple[float, int]:
  """Model training FLOPs per token, 6 N + 12 L T H_a, and N (the matmul weights counted).

  N = L (4 D H_a + 2 D F) + D V [+ D^2 for BERT's MLM transform]: every projection a dense
  implementation applies at each token, the tied output embedding counted once as the vocabulary
  projection (at every position, as HF computes it; ours scores only the MLM slab and gets no
  credit for it). Embedding lookups, biases, norms, softmax and the optimizer are not counted.
  12 L T H_a is Q K^T and A V (2 x 2 T H_a per layer forward, x3 for training) over all T keys:
  causal attention is not halved (the PaLM MFU convention). Remat recomputation is not counted.
  """
  d, ha, f, v = dims['embed_dim'], dims['num_heads'] * dims['head_dim'], dims['mlp_dim'], dims[
      'vocab_size']
  n = dims['num_layers'] * (4 * d * ha + 2 * d * f) + d * v + (d * d if family == 'encoder' else 0)
  return 6.0 * n + 12.0 * dims['num_layers'] * seq_len * ha, n


def datasheet_tflops(device_name: str | None) -> float | None:
  """Dense bf16 peak of a known accelerator, else None (CPU, unknown GPU)."""
  for key, tflops in DATASHEET_TFLOPS:
    if device_name and key in device_name:
      return tflops
  return None


def synthetic_tokens(seed: int, batch: int, seq_len: int, vocab: int):
  """The int32 `[batch, seq_len]` token ids both sides train on (uniform, no reserved ids < 5)."""
  import numpy as np
  return np.random.default_rng(seed).integers(5, vocab, size=(batch, seq_len), dtype=np.int32)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workloads', default='bert_base,gpt2_small,gpt2_medium',
                 help=f'comma list of {", ".join(WORKLOADS)}')
  p.add_argument('--batch', default='', help='per-workload batch overrides, e.g. gpt2_medium=32')
  p.add_argument('--steps', type=int, default=20, help='timed steps per window')
  p.add_argument('--windows', type=int, default=3, help='timed windows; the median is reported')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps first (compilation)')
  p.add_argument('--out', default='throughput.json')
  p.add_argument('--tiny', action='store_true', help='CPU smoke sizes (not a performance number)')
  p.add_argument('--skip_reference', action='store_true')
  p.add_argument('--reference_modes', default='eager,compile',
                 help='torch modes, one process each (compile is skipped off GPU)')
  p.add_argument('--attention_impl', default='auto',
                 help="comma list of none|xla|cudnn, one row each; auto = cudnn on GPU, none else")
  p.add_argument('--remat', action='store_true', help='ours: rematerialise each block')
  p.add_argument('--variants', default='default',
                 help="ours: ';'-separated option sets, one row each (x each --attention_impl), "
                      "e.g. 'default;mask=lengths;mask=lengths,loss_chunk=1024,vocab_pad=128'. "
                      f"Keys: {', '.join(VARIANT_KEYS)} (docs/benchmarks.md)")
  p.add_argument('--dropout', type=float, default=0.1, help='hidden dropout, both sides')
  p.add_argument('--checks', default='all', choices=('all', 'matmul'),
                 help="'matmul': only the matmul peak, not the (slow) cuDNN-vs-XLA attention check")
  p.add_argument('--numerics', action='store_true',
                 help='ours: loss and gradient in bf16 vs fp32 on one batch (first impl)')
  p.add_argument('--max_batch', action='store_true',
                 help='largest batch that fits (doubling, then one midpoint), ours vs eager torch')
  p.add_argument('--max_batch_limit', type=int, default=8, help='stop at this x the batch')
  p.add_argument('--budget_s', type=float, default=0.0,
                 help='stop launching children after this many seconds (0 = no limit)')
  p.add_argument('--child_timeout_s', type=float, default=420.0)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)
  p.add_argument('--child_out', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.steps < 1 or args.windows < 1 or args.warmup < 0:
    p.error('--steps and --windows must be >= 1 and --warmup >= 0')
  unknown = [w for w in args.workloads.split(',') if w not in WORKLOADS]
  if unknown:
    p.error(f'unknown workload(s) {unknown}; choose from {", ".join(WORKLOADS)}')
  try:
    args.variant_list = parse_variants(args.variants)
  except ValueError as e:
    p.error(str(e))
  return args


def _batch_overrides(text: str) -> dict[str, int]:
  out = {}
  for item in filter(None, text.split(',')):
    name, _, value = item.partition('=')
    if name not in WORKLOADS or not value.isdigit():
      raise SystemExit(f'--batch {item!r}: write NAME=INT with NAME one of {", ".join(WORKLOADS)}')
    out[name] = int(value)
  return out


def workload_spec(name: str, args, batch: int | None = None) -> dict:
  """Everything a child needs to build one workload, sizes resolved."""
  wl = dict(WORKLOADS[name], name=name, overrides={})
  if args.tiny:
    wl.update(TINY)
  wl['batch'] = batch or _batch_overrides(args.batch).get(name, wl['batch'])
  wl['dims'] = model_dims(wl['family'], wl['variant'], wl['overrides'])
  return wl


def _run_child(spec: dict, timeout_s: float, log_dir: str) -> list[dict]:
  """Runs one measurement in a fresh process; returns its records (also those of a killed child)."""
  fd, out_path = tempfile.mkstemp(suffix='.jsonl', dir=log_dir)
  os.close(fd)
  log_path = out_path.replace('.jsonl', '.log')
  cmd = [sys.executable, os.path.abspath(__file__), '--child', json.dumps(spec),
         '--child_out', out_path]
  t0 = time.time()
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
      rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)  # its own session: torch.compile workers go too
      proc.wait()
      rc = 'timeout'
  with open(out_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  if rc != 0:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    print(f'--- child {spec["kind"]} {spec.get("workload", {}).get("name", "")} exited {rc}; '
          f'log tail:\n{tail}\n---', flush=True)
    records.append(dict(kind='child_error', spec_kind=spec['kind'],
                        workload=spec.get('workload', {}).get('name'), exit=rc,
                        error=tail.strip().splitlines()[-1] if tail.strip() else str(rc),
                        wall_s=time.time() - t0))
  return records


def build_plan(args) -> list[dict]:
  """The children to run, most important first: the device checks; per workload ours and eager
  torch; the compiled references (slow to start); the numerics checks; the batch search."""
  common = dict(seed=args.seed, steps=args.steps, windows=args.windows, warmup=args.warmup,
                dropout=args.dropout, remat=args.remat, mode='throughput')
  plan = [dict(kind='checks', tiny=args.tiny, cudnn=args.checks == 'all')]
  names = args.workloads.split(',')
  impls = args.attention_impl.split(',')
  modes = [m for m in args.reference_modes.split(',') if m]
  compiled, numerics = [], []
  for name in names:
    wl = workload_spec(name, args)
    # One row per distinct applied option set: keys a workload lacks would otherwise repeat a row.
    options_list = list({variant_label(applied_options(wl, o)): applied_options(wl, o)
                         for o in args.variant_list}.values())
    plan += [dict(common, kind='ours', workload=wl, attention_impl=impl, options=options)
             for impl in impls for options in options_list]
    if not args.skip_reference:
      for i, mode in enumerate(modes):
        (plan if i == 0 else compiled).append(dict(common, kind='reference', workload=wl,
                                                   torch_mode=mode))
    if args.numerics:
      numerics.append(dict(common, kind='numerics', workload=wl, attention_impl=impls[0],
                           options=args.variant_list[0]))
  plan += compiled + numerics
  if args.max_batch:
    plan += [dict(kind='max_batch', workload=workload_spec(name, args)) for name in names]
  return plan


def _fits(spec: dict, side: str, batch: int, args, budget_left, log_dir) -> dict:
  wl = workload_spec(spec['workload']['name'], args, batch)
  child = dict(kind=side, mode='fit', workload=wl, seed=args.seed, steps=2, windows=1, warmup=1,
               dropout=args.dropout, remat=args.remat,
               attention_impl=args.attention_impl.split(',')[-1], torch_mode='eager',
               options=args.variant_list[-1])
  recs = _run_child(child, min(args.child_timeout_s, budget_left()), log_dir)
  ok = any(r.get('kind') == 'throughput' and not r.get('error') for r in recs)
  peak = next((r.get('peak_memory_bytes') for r in recs if r.get('kind') == 'throughput'), None)
  return dict(batch=batch, fits=ok, peak_memory_bytes=peak,
              error=None if ok else next((r.get('error') for r in recs if r.get('error')), None))


def max_batch_search(spec: dict, args, budget_left, log_dir) -> list[dict]:
  """Doubles the batch until a step fails (OOM), then tries one midpoint; per side."""
  out = []
  base = spec['workload']['batch']
  sides = ['ours'] + ([] if args.skip_reference else ['reference'])
  for side in sides:
    tries, ok, bad, b = [], None, None, base
    while b <= base * args.max_batch_limit and budget_left() > 30:
      tries.append(_fits(spec, side, b, args, budget_left, log_dir))
      if not tries[-1]['fits']:
        bad = b
        break
      ok, b = b, b * 2
    if ok and bad and bad - ok >= 2 and budget_left() > 30:
      tries.append(_fits(spec, side, (ok + bad) // 2, args, budget_left, log_dir))
      ok = tries[-1]['batch'] if tries[-1]['fits'] else ok
    out.append(dict(kind='max_batch', workload=spec['workload']['name'], side=side,
                    largest_fitting=ok, first_failing=bad, capped=bad is None, tries=tries))
  return out


def summarise(results: dict) -> None:
  """Adds FLOPs, MFU and speed-ups to the throughput rows, and one summary per workload."""
  checks = results.get('checks', {})
  measured = (checks.get('matmul') or {}).get('tflops_best')
  sheet = datasheet_tflops(checks.get('device_name'))
  results['peak_tflops'] = dict(datasheet=sheet, measured_matmul=measured)
  summary = []
  for name in dict.fromkeys(r['workload'] for r in results['rows']):
    rows = [r for r in results['rows'] if r['workload'] == name]
    for r in rows:
      fpt, n = flops_per_token(r['family'], r['dims'], r['seq_len'])
      r.update(flops_per_token=fpt, flops_n=n)
      tflops = fpt * r['tokens_per_s'] / 1e12 if r.get('tokens_per_s') else None
      r['model_tflops'] = tflops
      r['mfu_datasheet'] = tflops / sheet if tflops and sheet else None
      r['mfu_measured'] = tflops / measured if tflops and measured else None
    best = {}
    for side in ('ours', 'reference'):
      ok = [r for r in rows if r['side'] == side and r.get('tokens_per_s') and not r.get('error')]
      best[side] = max(ok, key=lambda r: r['tokens_per_s']) if ok else None
    ours, ref = best['ours'], best['reference']
    summary.append(dict(
        workload=name, ours_best=ours and ours['variant'], ours_tokens_per_s=ours and
        ours['tokens_per_s'], reference_best=ref and ref['variant'],
        reference_tokens_per_s=ref and ref['tokens_per_s'],
        speedup=(ours['tokens_per_s'] / ref['tokens_per_s']) if ours and ref else None,
        ours_mfu_datasheet=ours and ours['mfu_datasheet']))
  results['summary'] = summary


def _fmt(x, spec='.1f', scale=1.0, none='–') -> str:
  return none if x is None else format(x * scale, spec)


def _row_line(r: dict) -> str:
  result = (f"error: {r['error'][:60]}" if r.get('error') else _fmt(r.get('loss'), '.3f'))
  return (f"| {r['workload']} | {r['batch']}×{r['seq_len']} | {r['side']} | {r['variant']} | "
          f"{_fmt(r.get('tokens_per_s'), ',.0f')} | {_fmt(r.get('step_s'), '.1f', 1e3)} | "
          f"{_fmt(r.get('mfu_datasheet'), '.1%')} | {_fmt(r.get('mfu_measured'), '.1%')} | "
          f"{_fmt(r.get('peak_memory_bytes'), '.2f', 2.0 ** -30)} | "
          f"{_fmt((r.get('compile_s') or 0) + (r.get('warmup_s') or 0), '.0f')} | {result} |")


def _notes(results: dict) -> list[str]:
  """One bullet per check, batch search, skipped child and child error."""
  out = []
  for n in results.get('numerics', []):
    out.append(f"numerics {n['workload']} ({n['variant']}): " + (
        f"error {n['error'][:100]}" if n.get('error') else
        f"loss bf16 {n['loss_bf16']:.5f} vs fp32 {n['loss_fp32']:.5f}, relative loss diff "
        f"{n['rel_loss_diff']:.2e}, relative grad diff {n['rel_grad_diff']:.2e}"))
  cud = results.get('checks', {}).get('cudnn_vs_xla', {})
  if cud.get('skipped'):
    out.append(f"cuDNN vs XLA attention: skipped ({cud['skipped']})")
  for c in cud.get('cases', []) + cud.get('structured', []):
    out.append(f"cuDNN vs XLA attention [{c['mask']}]: " + (
        f"error {c['error'][:100]}" if c.get('error') else
        f"max |out diff| {c['out_max_abs_diff']:.2e}, max |grad diff| {c['grad_max_abs_diff']:.2e}"
        f"; vs fp32: cuDNN {c['out_err_cudnn']:.2e} / {c['grad_err_cudnn']:.2e}, XLA "
        f"{c['out_err_xla']:.2e} / {c['grad_err_xla']:.2e}; within tolerance: "
        f"{c['within_tolerance']}"))
  for m in results.get('max_batch', []):
    out.append(f"largest batch {m['workload']} {m['side']}: {m['largest_fitting']} " + (
        '(search cap reached)' if m['capped'] else f"(fails at {m['first_failing']})"))
  out += [f'skipped: {note}' for note in results.get('skipped', [])]
  out += [f"child error ({e.get('spec_kind')} {e.get('workload')}): {e.get('error')}"
          for e in results.get('errors', [])]
  return [f'- {line}' for line in out]


def markdown(results: dict) -> str:
  """The tables the docs quote: header, one row per measurement, per-workload speed-ups, notes."""
  meta, checks = results['meta'], results.get('checks', {})
  v, peak = meta.get('versions', {}), results.get('peak_tflops', {})
  tiny = ' · **--tiny smoke sizes: not a performance number**' if meta['tiny'] else ''
  lines = [f"**{checks.get('device_name', '?')}** · {meta['date']} · jax {v.get('jax')} · "
           f"torch {v.get('torch')} · transformers {v.get('transformers')}{tiny}",
           f"command: `{meta['command']}`",
           f"peak bf16: datasheet {_fmt(peak.get('datasheet'), '.0f')} TFLOP/s, measured matmul "
           f"{_fmt(peak.get('measured_matmul'), '.4g')} TFLOP/s", '',
           '| workload | B×T | side | variant | tokens/s | step ms | MFU datasheet | '
           'MFU measured | peak mem GiB | warm-up s | loss |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  lines += [_row_line(r) for r in results['rows']]
  lines += ['', '| workload | ours best | reference best | speed-up |', '|---|---|---|---|']
  for s in results.get('summary', []):
    lines.append(f"| {s['workload']} | {s['ours_best'] or '–'} "
                 f"{_fmt(s['ours_tokens_per_s'], ',.0f')} | {s['reference_best'] or '–'} "
                 f"{_fmt(s['reference_tokens_per_s'], ',.0f')} | {_fmt(s['speedup'], '.2f')}× |")
  notes = _notes(results)
  return '\n'.join(lines + ([''] + notes if notes else []))


def _versions() -> dict:
  from importlib import metadata
  out = {'python': sys.version.split()[0]}
  for pkg in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'transformers'):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def preflight(args) -> None:
  """Fails in one line, before any device time is spent, when a side lacks a package."""
  import importlib.util
  needed = ['jax', 'flax', 'optax', 'ml_collections'] + ([] if args.skip_reference else
                                                        ['torch', 'transformers'])
  missing = [name for name in needed if importlib.util.find_spec(name) is None]
  if missing:
    raise SystemExit(f'throughput.py: missing {", ".join(missing)}; on the GPU machine carry the '
                     'wheel (docs/benchmarks.md, "GPU session"), or pass --skip_reference for '
                     'torch/transformers')


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  if args.child:
    return _child_main(json.loads(args.child), args.child_out)
  preflight(args)
  # JAX and torch take turns on one GPU: JAX must not hold memory it does not use, and may grow
  # to most of the card (the default cap is 75 %) when alone, as torch may.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.95')
  t_start = time.time()
  budget_left = (lambda: args.budget_s - (time.time() - t_start)) if args.budget_s else (
      lambda: float('inf'))
  results = dict(meta=dict(
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command='python ' + ' '.join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO),
                                                             *(argv or sys.argv[1:])]),
      tiny=args.tiny, args=vars(args), versions=_versions(),
      env={k: os.environ.get(k) for k in ('XLA_FLAGS', 'XLA_PYTHON_CLIENT_PREALLOCATE',
                                          'XLA_PYTHON_CLIENT_MEM_FRACTION', 'JAX_PLATFORMS',
                                          'JAX_DEFAULT_PRNG_IMPL', 'CUDA_VISIBLE_DEVICES')}),
      rows=[], numerics=[], max_batch=[], errors=[], skipped=[])

  def write():
    summarise(results)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1, default=str)

  plan = build_plan(args)
  with tempfile.TemporaryDirectory() as log_dir:
    for spec in plan:
      label = ' '.join(str(x) for x in (spec['kind'], spec.get('workload', {}).get('name'),
                                         spec.get('torch_mode') or spec.get('attention_impl'),
                                         variant_label(spec.get('options') or {}).lstrip(','))
                       if x)
      if budget_left() < 30:
        results['skipped'].append(f'{label}: --budget_s {args.budget_s:.0f} s used up')
        print(f'skip {label}: budget used up', flush=True)
        continue
      backend = results.get('checks', {}).get('backend')
      if spec.get('torch_mode') == 'compile' and backend not in (None, 'gpu'):
        results['skipped'].append(f'{label}: torch.compile is timed on GPU only '
                                  f'(JAX sees {backend})')
        continue
      if spec['kind'] == 'max_batch':
        results['max_batch'] += max_batch_search(spec, args, budget_left, log_dir)
        write()
        continue
      t0 = time.time()
      records = _run_child(spec, min(args.child_timeout_s, budget_left()), log_dir)
      for rec in records:
        kind = rec.pop('kind')
        if kind == 'checks':
          results['checks'] = rec
        elif kind == 'throughput':
          results['rows'].append(rec)
        elif kind == 'numerics':
          results['numerics'].append(rec)
        elif kind == 'skipped':
          results['skipped'].append(rec['note'])
        else:
          results['errors'].append(rec)
      print(f'{label}: {time.time() - t0:.0f} s, '
            + '; '.join(f"{r.get('variant', '')} {_fmt(r.get('tokens_per_s'), ',.0f')} tok/s"
                        for r in records if 'tokens_per_s' in r), flush=True)
      write()
  write()
  print(markdown(results), flush=True)
  return results


def _child_main(spec: dict, out_path: str) -> None:
  """Child-process entry: runs one measurement and appends JSON records to `out_path`."""
  def emit(record: dict) -> None:
    with open(out_path, 'a') as f:
      f.write(json.dumps(record, default=str) + '\n')

  if spec['kind'] == 'reference':
    import throughput_reference
    throughput_reference.run(spec, emit)
  else:
    import throughput_ours
    {'checks': throughput_ours.run_checks, 'numerics': throughput_ours.run_numerics,
     'ours': throughput_ours.run}[spec['kind']](spec, emit)


if __name__ == '__main__':
  main()
