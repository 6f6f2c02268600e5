"""Where one train step's device time goes: a profiler trace of the benchmark's step, summarised.

  XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/profile_step.py --workload gpt2_small \
      --variant mask=lengths,prng=rbg,vocab_pad=128,loss_chunk=256 --out_dir $OUT/profile

Builds exactly the step `throughput_ours.run` times (same model, objective, optimizer, batch),
runs `--warmup` steps, traces `--steps` steps with `jax.profiler` (a Perfetto JSON trace), and
prints the device kernels' total time grouped into categories (matmul, attention, random bits,
fusions by their leading op, optimizer, copies) and the top kernels, per step. The sum is device
busy time: where it is far below the step's wall time, the device is waiting on the host or on
launches. Works on CPU too (the trace then holds host threads only: a smoke test of the script).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.dirname(HERE), HERE) if p not in sys.path]

# First matching pattern names a kernel's category (lower-cased kernel names; cuBLAS/cuDNN/XLA).
CATEGORIES = (
    ('attention (cuDNN)', r'cudnn|fmha|flash|sdpa|fprop.*attn|dgrad.*attn'),
    ('matmul', r'gemm|cublas|cutlass|sm90_xmma|nvjet|wgmma|triton_gemm|__dot|dot_general'),
    ('random bits', r'threefry|rng|philox|random'),
    ('reduction fusions', r'reduce|loop_reduce|input_reduce'),
    ('copies / transposes', r'copy|transpose|memcpy|memset'),
    ('other fusions', r'fusion|loop_|input_|triton'),
)


def categorise(name: str) -> str:
  low = name.lower()
  for label, pattern in CATEGORIES:
    if re.search(pattern, low):
      return label
  return 'other'


def summarise_trace(path: str, steps: int) -> dict:
  """Per-step device time by category and top kernels from a Perfetto/Chrome JSON trace."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  # Device lanes: processes named after a GPU; on them, the stream threads hold the kernels (the
  # derived "XLA Ops" / "XLA Modules" / "Steps" lines repeat the same time and are left out).
  names = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  threads = {(e['pid'], e.get('tid')): e.get('args', {}).get('name', '') for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  device_pids = {pid for pid, n in names.items() if re.search(r'/device:gpu|gpu', n, re.I)}
  on_device = [e for e in events if e.get('ph') == 'X' and e.get('pid') in device_pids
               and 'dur' in e]
  streams = [e for e in on_device if re.search(r'stream', threads.get((e['pid'], e.get('tid')),
                                                                      ''), re.I)]
  derived = re.compile(r'xla ops|xla modules|steps|source', re.I)
  kernels = streams or [e for e in on_device
                        if not derived.search(threads.get((e['pid'], e.get('tid')), ''))]
  by_cat, by_name = collections.Counter(), collections.Counter()
  for e in kernels:
    by_cat[categorise(e['name'])] += e['dur']
    by_name[e['name']] += e['dur']
  total = sum(by_cat.values())
  per = lambda us: round(us / 1000.0 / max(steps, 1), 3)  # microseconds in all -> ms per step
  lanes = sorted({threads.get((e['pid'], e.get('tid')), '') for e in kernels})
  return dict(device_lanes=[names[p] for p in sorted(device_pids)], streams=lanes[:8],
              kernels=len(kernels),
              busy_ms_per_step=per(total),
              categories={k: per(v) for k, v in by_cat.most_common()},
              top_kernels=[(n[:120], per(v)) for n, v in by_name.most_common(60)])


def main(argv=None) -> dict:
  import jax
  import throughput
  import throughput_ours

  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workload', default='gpt2_small', choices=sorted(throughput.WORKLOADS))
  p.add_argument('--variant', default='default', help="one --variants option set of throughput.py")
  p.add_argument('--attention_impl', default='auto')
  p.add_argument('--dropout', type=float, default=0.1)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--tiny', action='store_true', help='CPU smoke sizes (not a measurement)')
  p.add_argument('--out_dir', default='profile')
  args = p.parse_args(argv)

  options = throughput.parse_variants(args.variant)[0]
  bench_args = throughput.parse_args(['--tiny'] if args.tiny else [])
  wl = throughput.workload_spec(args.workload, bench_args)
  options = throughput.applied_options(wl, options)
  impl = throughput_ours._resolve_impl(args.attention_impl, jax.default_backend())
  spec = dict(options=options, dropout=args.dropout, remat=False, seed=0)
  step, state, batch = throughput_ours.build_training(wl, spec, impl)
  step = step.lower(state, batch).compile()
  os.makedirs(args.out_dir, exist_ok=True)
  # The optimised HLO names every fusion the trace lists (kernels inside command buffers carry
  # no op name): grep a top kernel's name in it to see what it computes.
  with gzip.open(os.path.join(args.out_dir, 'step_hlo.txt.gz'), 'wt') as f:
    f.write(step.as_text())
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  with jax.profiler.trace(args.out_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
  wall = (time.perf_counter() - t0) / args.steps
  traces = sorted(glob.glob(os.path.join(args.out_dir, '**', '*.trace.json.gz'), recursive=True)
                  + glob.glob(os.path.join(args.out_dir, '**', 'perfetto_trace.json.gz'),
                              recursive=True))
  label = f"{args.workload} attn={impl or 'default'}{throughput.variant_label(options)}"
  out = dict(workload=label, dropout=args.dropout, traced_wall_ms_per_step=round(wall * 1e3, 2),
             device=jax.devices()[0].device_kind, traces=traces)
  if traces:
    out.update(summarise_trace(traces[-1], args.steps))
  with open(os.path.join(args.out_dir, 'summary.json'), 'w') as f:
    json.dump(out, f, indent=1)
  print(f"\n## {label} (dropout {args.dropout}) on {out['device']}: wall "
        f"{out['traced_wall_ms_per_step']} ms/step traced, device busy "
        f"{out.get('busy_ms_per_step')} ms/step in {out.get('kernels')} kernel launches")
  for k, v in (out.get('categories') or {}).items():
    print(f'  {k:24s} {v:8.3f} ms')
  for n, v in (out.get('top_kernels') or [])[:15]:
    print(f'    {v:8.3f} ms  {n}')
  return out


if __name__ == '__main__':
  main()
