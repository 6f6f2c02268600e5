"""A decoder training step under each remat policy, and with autodiff's LayerNorm backward.

  python benchmarks/remat_policies.py --layers 6 --rows 8 --length 512 --json $OUT/remat.json

GPT-2 small's width (12 heads, D 768, F 3072), `--layers` blocks, bf16 compute, the chunked CLM
loss, one jitted value-and-grad per row:
  * `none`, `full`, `dots`, `dots_all`: `model.remat` off, then on with each `remat_policy`
    (layers/blocks.py REMAT_POLICIES);
  * `none,autodiff_norm`: no remat, LayerNorm differentiated by autodiff instead of the
    library's hand-written backward (layers/norms.py), for what that backward saves.
Prints XLA's FLOP count of the compiled step (what each policy recomputes), its temporary memory
(the CPU backend's buffer assignment shows little of remat's saving; a GPU's does) and the median
step time over `--repeats`. Any backend; the device is printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax import models
from ptm_jax.data.vocab import SpecialIds
from ptm_jax.layers import norms
from ptm_jax.objectives import clm

ROWS = ('none', 'full', 'dots', 'dots_all', 'none,autodiff_norm')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--layers', type=int, default=6)
  p.add_argument('--rows', type=int, default=8, help='batch B')
  p.add_argument('--length', type=int, default=512, help='row length T')
  p.add_argument('--vocab', type=int, default=8192)
  p.add_argument('--width', type=int, default=768, help='D (heads = D / 64, F = 4 D)')
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--json', default='')
  return p.parse_args(argv)


def _autodiff_layer_norm(x, scale, bias, epsilon, dtype, centre=True):
  """The norms' forward as plain jnp, differentiated by autodiff (the library's before 12-06)."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, -1, keepdims=True) if centre else 0.0
  var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
  y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + epsilon)) * norms._lift(scale, x.ndim)
  return (y if bias is None else y + norms._lift(bias, x.ndim)).astype(dtype)


def measure(row: str, args, batch, params=None) -> tuple[dict, object]:
  policy, *extra = row.split(',')
  model = models.build('decoder', 'small', num_layers=args.layers, vocab_size=args.vocab,
                       embed_dim=args.width, num_heads=args.width // 64, mlp_dim=4 * args.width,
                       dtype=jnp.bfloat16, dropout_rate=0.0, remat=policy != 'none',
                       remat_policy='full' if policy == 'none' else policy)
  if params is None:
    params = jax.jit(model.init)(jax.random.key(0), batch['inputs'],
                                 segment_ids=batch['segment_ids'],
                                 positions=batch['positions'])['params']
  options = clm.Options(loss_chunk_size=256)
  norm = _autodiff_layer_norm if 'autodiff_norm' in extra else norms.layer_norm
  with mock.patch.object(norms, 'layer_norm', norm):  # looked up when the step is traced
    step = jax.jit(jax.value_and_grad(
        lambda p: clm.loss(p, batch, None, model=model, options=options)[0]))
    compiled = step.lower(params).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  jax.block_until_ready(compiled(params))
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params))
    times.append(time.perf_counter() - start)
  return dict(row=row, tflop=float(cost.get('flops', 0.0)) / 1e12,
              temp_mib=memory.temp_size_in_bytes / 2**20 if memory else None,
              step_ms=1e3 * statistics.median(times)), params


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  rng = np.random.default_rng(0)
  shape = (args.rows, args.length)
  tokens = jnp.asarray(rng.integers(5, args.vocab, shape), jnp.int32)
  batch = clm.corrupt(None, dict(tokens=tokens, segment_ids=jnp.ones(shape, jnp.int32),
                                 positions=jnp.broadcast_to(jnp.arange(args.length), shape)),
                      specials=SpecialIds(vocab_size=args.vocab))
  device = jax.devices()[0]
  print(f'device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; '
        f'{args.layers} layers of width {args.width}, {args.rows} x {args.length} tokens, bf16')
  print(f'{"row":>20} {"TFLOP":>8} {"temp MiB":>9} {"step ms":>9}')
  results, params = [], None
  for row in ROWS:
    r, params = measure(row, args, batch, params)
    results.append(r)
    print(f'{row:>20} {r["tflop"]:>8.3f} {r["temp_mib"]:>9.1f} {r["step_ms"]:>9.1f}', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(device=device.device_kind, backend=jax.default_backend(), args=vars(args),
                     results=results), f, indent=1)
  return results


if __name__ == '__main__':
  main()
