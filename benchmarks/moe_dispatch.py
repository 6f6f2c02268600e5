"""The two mixture-of-experts paths of `ptm_jax/layers/moe.py` side by side, as the row grows.

  python benchmarks/moe_dispatch.py --lengths 512,2048,4096 --json $OUT/moe_dispatch.json

One `MoeMlp` layer (Mixtral-shaped by default: 8 SwiGLU experts, top-2, no biases), forward +
backward of a sum of squares, jitted, on rows of each length:
  * `capacity`: the one-hot dispatch/combine einsums at capacity factor E / k, i.e. every expert's
    capacity is the whole row: no token dropped (what a dropless model costs on this path; its
    `[B, L, E, C]` dispatch tensor holds k * factor * L^2 entries per row);
  * `capacity_1.25`: the same path at Switch's training factor 1.25 (drops tokens; the usual
    training cost, for scale);
  * `dropless`: tokens sorted by expert and `jax.lax.ragged_dot` (`moe_dropless=True`).
Prints per path the compiled step's temporary memory (XLA's memory analysis), the median step
time over `--repeats` runs, and for `dropless` the largest output difference from `capacity`
(the two compute the same function). Any backend; the device is printed with the results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax.layers import moe

PATHS = ('capacity', 'capacity_1.25', 'dropless')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--lengths', default='512,2048,4096', help='row lengths L, comma-separated')
  p.add_argument('--rows', type=int, default=1, help='rows per batch B')
  p.add_argument('--experts', type=int, default=8)
  p.add_argument('--top_k', type=int, default=2)
  p.add_argument('--width', type=int, default=256, help='model width D')
  p.add_argument('--mlp_dim', type=int, default=512, help='each expert\'s hidden width F')
  p.add_argument('--dtype', default='float32', help='compute dtype (params stay float32)')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--paths', default=','.join(PATHS), help=f'subset of {", ".join(PATHS)}')
  p.add_argument('--json', default='', help='also write the results here')
  return p.parse_args(argv)


def _layer(path: str, args) -> moe.MoeMlp:
  whole_row = args.experts / args.top_k
  factor = 1.25 if path == 'capacity_1.25' else whole_row
  return moe.MoeMlp(args.experts, args.mlp_dim, top_k=args.top_k, capacity_factor=factor,
                    eval_capacity_factor=factor, dropless=path == 'dropless', mlp='swiglu',
                    activation='silu', use_bias=False, dtype=jnp.dtype(args.dtype))


def measure(path: str, length: int, args) -> dict:
  layer = _layer(path, args)
  rng = np.random.default_rng(length)
  x = jnp.asarray(rng.standard_normal((args.rows, length, args.width)), jnp.float32)
  valid = jnp.ones((args.rows, length), bool)
  shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, valid))
  params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype),
                        shapes)

  def loss(p, x):
    y, aux = layer.apply(p, x.astype(layer.dtype), valid)
    return jnp.sum(jnp.square(y.astype(jnp.float32))), (y, aux['dropped_fraction'])

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  compiled = step.lower(params, x).compile()
  memory = compiled.memory_analysis()
  (_, (y, dropped)), _ = step(params, x)
  jax.block_until_ready(y)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params, x))
    times.append(time.perf_counter() - start)
  return dict(path=path, length=length, step_ms=1e3 * statistics.median(times),
              temp_mib=(memory.temp_size_in_bytes / 2**20) if memory is not None else None,
              dropped_fraction=float(dropped), output=np.asarray(y, np.float32))


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  paths = [p for p in args.paths.split(',') if p]
  unknown = sorted(set(paths) - set(PATHS))
  if unknown:
    raise SystemExit(f'unknown paths {unknown}; known: {", ".join(PATHS)}')
  device = jax.devices()[0]
  print(f'device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; '
        f'E={args.experts}, k={args.top_k}, D={args.width}, F={args.mlp_dim}, B={args.rows}, '
        f'{args.dtype}')
  print(f'{"L":>6} {"path":>14} {"step ms":>9} {"temp MiB":>9} {"dropped":>8} {"max |dy|":>9}')
  results = []
  for length in (int(v) for v in args.lengths.split(',')):
    outputs = {}
    for path in paths:
      r = measure(path, length, args)
      outputs[path] = r.pop('output')
      if path == 'dropless' and 'capacity' in outputs:
        r['max_abs_diff_vs_capacity'] = float(np.abs(outputs[path] - outputs['capacity']).max())
      results.append(r)
      diff = r.get('max_abs_diff_vs_capacity')
      print(f'{length:>6} {path:>14} {r["step_ms"]:>9.1f} '
            f'{r["temp_mib"] if r["temp_mib"] is not None else float("nan"):>9.1f} '
            f'{r["dropped_fraction"]:>8.3f} {"" if diff is None else f"{diff:.1e}":>9}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(device=device.device_kind, backend=jax.default_backend(),
                     args=vars(args), results=results), f, indent=1)
  return results


if __name__ == '__main__':
  main()
