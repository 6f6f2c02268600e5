"""The chunked LM loss head alone: its gradient recomputed in the backward vs formed in the forward.

  python benchmarks/loss_head.py --tokens 2048 --width 768 --vocab 50257 --pad 128 \
      --chunk 256 --dtype bfloat16 --json $OUT/loss_head.json

What a decoder's training step spends after its last block: the tied output layer (the table
`[V, D]` cast to the compute dtype, `layers.embeddings.vocab_logits`, the vocabulary padded to a
multiple of `--pad` as GPT-2's benchmark row does) and the chunked cross-entropy
(`objectives.common.chunked_lm_loss_and_metrics`, `--chunk` positions at a time), forward +
backward w.r.t. the hidden states and the float32 table, jitted. Two modes, timed interleaved:
  * `recompute`: the backward recomputes each chunk's logits (one more vocabulary matmul);
  * `forward`: `grad_in_forward=True`, the gradient formed while the logits are at hand.
Prints the median step time over `--repeats` windows of `--steps` steps, the vocabulary matmul
FLOPs each mode runs (2·N·D·V per matmul: 4 vs 3 matmuls), the compiled temporary memory, and the
largest difference between the two modes' gradients. Any backend; the device is printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax.layers import embeddings
from ptm_jax.objectives import common

MODES = ('recompute', 'forward')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--tokens', type=int, default=2048, help='positions per step (B x T)')
  p.add_argument('--rows', type=int, default=2, help='B (the positions are B rows of T)')
  p.add_argument('--width', type=int, default=768, help='model width D')
  p.add_argument('--vocab', type=int, default=50257, help='vocabulary V')
  p.add_argument('--pad', type=int, default=128, help='pad V to a multiple (0 = off)')
  p.add_argument('--chunk', type=int, default=256, help='loss_chunk_size (positions per chunk)')
  p.add_argument('--dtype', default='bfloat16', help='compute dtype (the table stays float32)')
  p.add_argument('--logits', default='float32', choices=('float32', 'compute'),
                 help="logits dtype ('compute' = the compute dtype, logits_dtype='compute')")
  p.add_argument('--z_loss', type=float, default=0.0)
  p.add_argument('--steps', type=int, default=5, help='steps per timed window')
  p.add_argument('--repeats', type=int, default=3, help='timed windows per mode (interleaved)')
  p.add_argument('--json', default='', help='also write the results here')
  return p.parse_args(argv)


def _problem(args):
  if args.tokens % args.rows:
    raise SystemExit(f'--tokens {args.tokens} must be a multiple of --rows {args.rows}')
  padded = -(-args.vocab // args.pad) * args.pad if args.pad else args.vocab
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(args.dtype)
  shape = (args.rows, args.tokens // args.rows)
  hidden = jnp.asarray(rng.standard_normal(shape + (args.width,)), dtype)
  table = jnp.asarray(0.02 * rng.standard_normal((padded, args.width)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, args.vocab, size=shape), jnp.int32)
  weights = jnp.asarray(rng.random(shape) > 0.05, jnp.float32)  # a few unscored positions
  out_dtype = dtype if args.logits == 'compute' else jnp.float32

  def step(mode):
    def loss(h, w):
      project = lambda x: embeddings.vocab_logits(x, w.astype(dtype), 'vd', padded, out_dtype)
      return common.chunked_lm_loss_and_metrics(
          h, project, targets, weights, chunk_size=args.chunk, z_loss=args.z_loss,
          valid_vocab=args.vocab if padded > args.vocab else None,
          grad_in_forward=mode == 'forward')
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

  return hidden, table, {mode: step(mode) for mode in MODES}, padded


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  hidden, table, steps, padded = _problem(args)
  device = jax.devices()[0]
  matmul_flops = 2.0 * args.tokens * args.width * padded
  print(f'device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; '
        f'N={args.tokens} (B={args.rows}), D={args.width}, V={args.vocab} (padded {padded}), '
        f'chunk {args.chunk}, {args.dtype}, logits {args.logits}')
  grads, results = {}, {}
  for mode, step in steps.items():
    compiled = step.lower(hidden, table).compile()
    memory = compiled.memory_analysis()
    (value, _), grads[mode] = jax.block_until_ready(step(hidden, table))
    results[mode] = dict(mode=mode, loss=float(value), windows_ms=[],
                         vocab_matmuls=4 if mode == 'recompute' else 3,
                         temp_mib=(memory.temp_size_in_bytes / 2**20) if memory else None)
  for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both modes
    for mode, step in steps.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        out = step(hidden, table)
      jax.block_until_ready(out)
      results[mode]['windows_ms'].append(1e3 * (time.perf_counter() - start) / args.steps)
  diff = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
             for a, b in zip(grads['forward'], grads['recompute']))
  print(f'{"mode":>10} {"step ms":>9} {"windows":>24} {"vocab TFLOP":>11} {"temp MiB":>9} '
        f'{"loss":>8}')
  for r in results.values():
    r['step_ms'] = statistics.median(r['windows_ms'])
    r['vocab_tflop'] = r['vocab_matmuls'] * matmul_flops / 1e12
    windows = ' '.join(f'{t:.1f}' for t in r['windows_ms'])
    print(f'{r["mode"]:>10} {r["step_ms"]:>9.1f} {windows:>24} {r["vocab_tflop"]:>11.3f} '
          f'{r["temp_mib"] if r["temp_mib"] is not None else float("nan"):>9.1f} '
          f'{r["loss"]:>8.4f}')
  speedup = results['recompute']['step_ms'] / results['forward']['step_ms']
  print(f'forward / recompute: {speedup:.2f}x faster; largest gradient difference {diff:.2e}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(device=device.device_kind, backend=jax.default_backend(),
                     jax=jax.__version__, args=vars(args), speedup=speedup,
                     max_abs_grad_diff=diff, results=list(results.values())), f, indent=1)
  return list(results.values())


if __name__ == '__main__':
  main()
