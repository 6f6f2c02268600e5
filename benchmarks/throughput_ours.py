"""Child side of `benchmarks/throughput.py` for our JAX models: train-step timing, bf16-vs-fp32
numerics, and the device checks (measured bf16 matmul peak, cuDNN-vs-XLA attention).

Runs in its own process (the parent starts it), so the peak-memory counter covers one workload.
"""
from __future__ import annotations

import math
import statistics
import time
import traceback

import numpy as np

from throughput import synthetic_tokens
from throughput_variants import applied_options, variant_label


def _resolve_impl(impl: str, backend: str) -> str | None:
  """'auto' -> cuDNN on GPU, the library default (XLA) elsewhere; 'none' -> None."""
  if impl == 'auto':
    return 'cudnn' if backend == 'gpu' else None
  return None if impl in ('none', '') else impl


def _error(exc: BaseException) -> str:
  lines = str(exc).strip().splitlines() or ['']
  return f'{type(exc).__name__}: {lines[0][:300]}'


def _peak_memory() -> int | None:
  import jax
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def _compiled_stats(compiled) -> dict:
  """XLA's own view of the step: FLOPs it counts (remat included) and its buffer sizes."""
  out = {}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out['xla_flops_per_step'] = float(cost['flops']) if cost and 'flops' in cost else None
  except Exception as e:  # not every backend implements it; say so in the JSON
    out['xla_flops_per_step'] = None
    out['xla_cost_error'] = _error(e)
  try:
    mem = compiled.memory_analysis()
    out['xla_memory_bytes'] = {k: int(getattr(mem, f'{k}_size_in_bytes'))
                               for k in ('argument', 'output', 'alias', 'temp')}
  except Exception as e:
    out['xla_memory_error'] = _error(e)
  return out


def init_params(model, seq_len: int, rng):
  """fp32 parameters as `ptm_jax.train` initialises them (unboxed, one device)."""
  import flax.linen as nn
  import jax.numpy as jnp
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return nn.unbox(model.init({'params': rng, 'dropout': rng}, tokens,
                             segment_ids=jnp.ones_like(tokens),
                             positions=jnp.arange(seq_len, dtype=jnp.int32)[None, :],
                             deterministic=True)['params'])


def init_state(model, tx, seq_len: int, seed: int):
  """TrainState as `ptm_jax.train.create_state` builds it, on one device (no mesh to shard over)."""
  import jax
  import jax.numpy as jnp
  from ptm_jax.state import TrainState

  def init(rng):
    params = init_params(model, seq_len, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.fold_in(rng, 1))
  return jax.jit(init)(jax.random.key(seed))


def make_batch(seed: int, batch: int, seq_len: int, vocab: int) -> dict:
  """One packed-format batch: a full document per row (no padding), as the loader yields it."""
  import jax.numpy as jnp
  tokens = jnp.asarray(synthetic_tokens(seed, batch, seq_len, vocab))
  return dict(tokens=tokens, segment_ids=jnp.ones_like(tokens),
              positions=jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32)[None, :],
                                         tokens.shape))


def _build(wl: dict, spec: dict, impl: str | None, dtype: str):
  from ptm_jax import models, objectives, steps
  from ptm_jax.data.vocab import SpecialIds
  opts = applied_options(wl, spec.get('options') or {})
  fast = {}
  if 'mask' in opts:
    fast['mask_form'] = opts['mask']
  if 'vocab_pad' in opts:
    fast['vocab_pad_multiple'] = opts['vocab_pad']
  if 'logits' in opts:
    fast['logits_dtype'] = opts['logits']
  if 'dropout' in opts:
    fast['dropout_impl'] = opts['dropout']
  if 'remat' in opts:
    fast['remat_policy'] = opts['remat']
  model = models.build(wl['family'], wl['variant'], **wl['overrides'], dtype=dtype,
                       param_dtype='float32', dropout_rate=spec['dropout'],
                       remat=spec['remat'] or 'remat' in opts,
                       attention_impl=impl, **fast)
  objective = objectives.get(wl['objective'])
  obj_options = objective.Options(
      **({'loss_chunk_size': opts['loss_chunk']} if 'loss_chunk' in opts else {}),
      **({'loss_grad_in_forward': opts['loss_grad'] == 'forward'} if 'loss_grad' in opts else {}),
      **({'slab_rows': opts['slab']} if 'slab' in opts else {}))
  loss_fn, corrupt_fn = steps.bind_objective(
      objective, model=model, options=obj_options,
      specials=SpecialIds(vocab_size=wl['dims']['vocab_size']))
  return model, loss_fn, corrupt_fn


def _variant(impl: str | None, wl: dict, spec: dict) -> str:
  options = applied_options(wl, spec.get('options') or {})
  remat = ',remat' if spec.get('remat') else ''
  return f"attn={impl or 'default'}" + variant_label(options) + remat


def build_training(wl: dict, spec: dict, impl: str | None):
  """(jitted train step, initial state, batch): the step every row times and profile_step traces.

  The optimizer every experiment gets by default (clip 1.0 -> AdamW with the decay mask, warmup),
  the state donated; a `prng` option is applied first, before any key exists (dropout and the
  MLM corruption draw from that implementation).
  """
  import jax
  from ptm_jax import optim, steps
  applied = applied_options(wl, spec.get('options') or {})
  if applied.get('prng'):
    jax.config.update('jax_default_prng_impl', applied['prng'])
  if applied.get('reduce'):
    from ptm_jax.objectives import common
    common.set_vocab_reduction(applied['reduce'])
  model, loss_fn, corrupt_fn = _build(wl, spec, impl, 'bfloat16')
  tx, schedule = optim.make_optimizer(optim.default_optim_config(), 10_000)
  state = init_state(model, tx, wl['seq_len'], spec['seed'])
  batch = make_batch(spec['seed'], wl['batch'], wl['seq_len'], wl['dims']['vocab_size'])
  step = jax.jit(steps.make_train_step(loss_fn, corrupt_fn, tx, schedule), donate_argnums=(0,))
  return step, state, batch


def run(spec: dict, emit) -> None:
  """Times the real train step on one workload (mode 'throughput'), or only checks it fits."""
  import jax

  wl, backend = spec['workload'], jax.default_backend()
  b, t = wl['batch'], wl['seq_len']
  impl = _resolve_impl(spec['attention_impl'], backend)
  row = dict(kind='throughput', workload=wl['name'], family=wl['family'], side='ours',
             variant=_variant(impl, wl, spec),
             options=applied_options(wl, spec.get('options') or {}),
             attention_impl=impl, remat=spec['remat'], batch=b, seq_len=t, dims=wl['dims'],
             backend=backend, device=jax.devices()[0].device_kind, mode=spec['mode'])
  try:
    step, state, batch = build_training(wl, spec, impl)
    row['num_params'] = int(sum(x.size for x in jax.tree.leaves(state.params)))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    row['compile_s'] = time.perf_counter() - t0
    row.update(_compiled_stats(compiled))
    t0 = time.perf_counter()
    for _ in range(spec['warmup']):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    row['warmup_s'] = time.perf_counter() - t0
    windows = []
    for _ in range(spec['windows']):
      t0 = time.perf_counter()
      for _ in range(spec['steps']):
        state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      windows.append(time.perf_counter() - t0)
    step_s = statistics.median(windows) / spec['steps']
    row.update(window_s=windows, step_s=step_s, tokens_per_s=b * t / step_s,
               loss=float(metrics['loss']), peak_memory_bytes=_peak_memory())
    if not math.isfinite(row['loss']):
      row['error'] = f"non-finite loss {row['loss']}"
  except Exception as e:
    row.update(error=_error(e), traceback=traceback.format_exc()[-3000:])
    traceback.print_exc()
  emit(row)


def run_numerics(spec: dict, emit) -> None:
  """Loss and gradient of one batch under bf16 compute vs fp32 (highest matmul precision).

  Freshly initialised parameters, the first min(B, 8) rows of the workload's batch, one fixed
  corruption, no dropout; the same fp32 parameters feed both models.
  """
  import jax
  import optax
  wl = spec['workload']
  impl = _resolve_impl(spec['attention_impl'], jax.default_backend())
  rec = dict(kind='numerics', workload=wl['name'], variant=_variant(impl, wl, dict(spec, remat=0)),
             rows=min(wl['batch'], 8))
  try:
    model, loss_bf16, corrupt_fn = _build(wl, spec, impl, 'bfloat16')
    _, loss_fp32, _ = _build(wl, spec, impl, 'float32')
    params = jax.jit(lambda: init_params(model, wl['seq_len'], jax.random.key(spec['seed'])))()
    batch = make_batch(spec['seed'], wl['batch'], wl['seq_len'], wl['dims']['vocab_size'])
    rows = {k: v[:rec['rows']] for k, v in batch.items()}
    corrupted = jax.jit(corrupt_fn)(jax.random.key(spec['seed'] + 1), rows)

    def value_and_grad(fn):
      return jax.jit(jax.value_and_grad(lambda p, bt: fn(p, bt, None)[0]))

    l16, g16 = value_and_grad(loss_bf16)(params, corrupted)
    with jax.default_matmul_precision('highest'):  # no TF32 in the fp32 reference
      l32, g32 = value_and_grad(loss_fp32)(params, corrupted)
    diff = optax.tree.norm(jax.tree.map(lambda a, c: a - c, g16, g32))
    rec.update(loss_bf16=float(l16), loss_fp32=float(l32),
               rel_loss_diff=abs(float(l16) - float(l32)) / abs(float(l32)),
               rel_grad_diff=float(diff / optax.tree.norm(g32)))
  except Exception as e:
    rec.update(error=_error(e), traceback=traceback.format_exc()[-3000:])
    traceback.print_exc()
  emit(rec)


def matmul_peak(sizes: tuple[int, ...], calls: int = 10, windows: int = 5) -> dict:
  """Best bf16 `a @ b` rate over square sizes: `calls` products per timed window, best window."""
  import jax
  import jax.numpy as jnp
  out = dict(dtype='bfloat16', sizes={})
  f = jax.jit(lambda a, b: a @ b)
  for n in sizes:
    ka, kb = jax.random.split(jax.random.key(n))
    # Random data, never zeros: zeros run measurably faster on tensor cores.
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    for _ in range(3):
      c = f(a, b)
    jax.block_until_ready(c)
    times = []
    for _ in range(windows):
      t0 = time.perf_counter()
      for _ in range(calls):
        c = f(a, b)
      jax.block_until_ready(c)
      times.append((time.perf_counter() - t0) / calls)
    out['sizes'][n] = dict(best_tflops=2 * n ** 3 / min(times) / 1e12,
                           median_tflops=2 * n ** 3 / statistics.median(times) / 1e12)
  out['tflops_best'] = max(s['best_tflops'] for s in out['sizes'].values())
  return out


def _attention_rows(t: int) -> tuple[np.ndarray, np.ndarray]:
  """Segment ids `[4, t]`: right-padded single documents, and packed documents + padding."""
  lengths = np.array([t, (4 * t) // 5, t // 2 + 1, t // 5])
  pos = np.arange(t)
  valid = pos[None, :] < lengths[:, None]
  padded = valid.astype(np.int32)
  packed = np.where(valid, 1 + (pos >= t // 3) + (pos >= (2 * t) // 3), 0).astype(np.int32)
  return padded, packed


def _attention_cases(t: int) -> dict:
  """The masks the models build: padding, causal + padding, causal + packed documents."""
  from ptm_jax.layers import masks
  padded, packed = _attention_rows(t)
  own = lambda seg: masks.combine(masks.padding_mask(seg), masks.segment_mask(seg, seg))
  return {'padding': own(padded),
          'causal+padding': masks.combine(masks.causal_mask(t), own(padded)),
          'causal+packed': masks.combine(masks.causal_mask(t), own(packed))}


def _structured_cases(t: int) -> dict:
  """The same masks as `masks.SegmentMask` in the forms of `Config.mask_form` (--variants mask=)."""
  from ptm_jax.layers import masks
  padded, packed = _attention_rows(t)
  return {f'{"causal+" if causal else ""}{rows} [{form}]':
          masks.SegmentMask(seg, causal=causal, form=form, max_segments=4)
          for causal in (False, True)
          for rows, seg, forms in (('padding', padded, ('lengths', 'packed')),
                                   ('packed', packed, ('packed',)))
          for form in forms}


def cudnn_check(seed: int, b: int = 4, t: int = 512, n: int = 12, h: int = 64,
                candidate: str = 'cudnn') -> dict:
  """`jax.nn.dot_product_attention` cuDNN vs XLA, both bf16, each against an fp32 XLA reference.

  Outputs and gradients (q, k, v under a random cotangent) are compared with the model's own
  treatment of query rows that see no key (zeroed, `layers.attention.dot_product_attention`).
  within_tolerance: cuDNN's error against fp32 is at most twice XLA-bf16's (+1e-3), for outputs
  and for gradients. `cases`: dense masks on both sides; `structured`: the candidate gets the
  `SegmentMask` forms (lengths / packed offsets), XLA the equivalent dense mask. `candidate` is
  'cudnn' except in the CPU test of this function.
  """
  import jax
  import jax.numpy as jnp
  from ptm_jax.layers import attention
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v, ct = (jax.random.normal(kk, (b, t, n, h), jnp.float32) for kk in keys)
  out = dict(shape=dict(batch=b, length=t, heads=n, head_dim=h), candidate=candidate, cases=[],
             structured=[])
  mad = lambda a, c: float(jnp.max(jnp.abs(a - c)))
  gmad = lambda a, c: max(mad(x, y) for x, y in zip(a, c))

  def run(impl, dtype, mask):
    def attend(q, k, v):
      q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
      if impl == 'cudnn' and getattr(mask, 'form', None) == 'packed':
        # The models refuse this form on cuDNN (NaN gradients); the check keeps measuring it.
        o = attention.zero_queries_without_keys(
            attention._cudnn_packed(q, k, v, mask, None, None), mask)
      else:
        o = attention.dot_product_attention(q, k, v, mask, implementation=impl)
      return o.astype(jnp.float32)

    def both(q, k, v):
      grads = jax.grad(lambda *a: jnp.sum(attend(*a) * ct), argnums=(0, 1, 2))(q, k, v)
      return attend(q, k, v), grads
    return jax.jit(both)(q, k, v)

  cases = [('cases', name, mask, mask) for name, mask in _attention_cases(t).items()]
  cases += [('structured', name, spec.dense(), spec)
            for name, spec in _structured_cases(t).items()]
  for group, name, dense, candidate_mask in cases:
    case = dict(mask=name)
    try:
      with jax.default_matmul_precision('highest'):
        ref_o, ref_g = run('xla', jnp.float32, dense)
      xla_o, xla_g = run('xla', jnp.bfloat16, dense)
      cud_o, cud_g = run(candidate, jnp.bfloat16, candidate_mask)
      case.update(out_max_abs_diff=mad(cud_o, xla_o), grad_max_abs_diff=gmad(cud_g, xla_g),
                  out_err_cudnn=mad(cud_o, ref_o), out_err_xla=mad(xla_o, ref_o),
                  grad_err_cudnn=gmad(cud_g, ref_g), grad_err_xla=gmad(xla_g, ref_g))
      case['within_tolerance'] = bool(
          case['out_err_cudnn'] <= 2 * case['out_err_xla'] + 1e-3
          and case['grad_err_cudnn'] <= 2 * case['grad_err_xla'] + 1e-3)
    except Exception as e:
      case.update(error=_error(e), traceback=traceback.format_exc()[-2000:])
    out[group].append(case)
  return out


def run_checks(spec: dict, emit) -> None:
  """Device facts, the measured matmul peak and (GPU only) the cuDNN attention check."""
  import jax
  backend = jax.default_backend()
  rec = dict(kind='checks', backend=backend, device_name=jax.devices()[0].device_kind,
             device_count=jax.device_count(), jax_environment=jax.print_environment_info(True))
  try:
    rec['matmul'] = matmul_peak((8192, 16384) if backend == 'gpu' else (512,))
  except Exception as e:
    rec['matmul'] = dict(error=_error(e))
  if backend == 'gpu' and spec.get('cudnn', True):
    rec['cudnn_vs_xla'] = cudnn_check(seed=0)
  elif backend == 'gpu':
    rec['cudnn_vs_xla'] = dict(skipped='--checks matmul')
  else:
    rec['cudnn_vs_xla'] = dict(skipped=f'no GPU (JAX backend {backend!r}); cuDNN attention '
                                       'needs one: run this script on the GPU machine')
  emit(rec)
