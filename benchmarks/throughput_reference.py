"""Child side of `benchmarks/throughput.py` for the HF transformers PyTorch reference.

`BertForMaskedLM` / `GPT2LMHeadModel` built from the workload's sizes (for the full workloads
these are `BertConfig()` and `GPT2Config()` / GPT-2 medium), SDPA attention, attention-probability
dropout 0 as ours (which keeps the fused kernel), hidden dropout as ours. One training step:
forward under bf16 autocast, backward, `clip_grad_norm_(1.0)`, fused AdamW (lr 1e-4, betas
0.9/0.999, eps 1e-6, decay 0.01 on matrices only, as `ptm_jax.optim`) with a warmup LambdaLR.
Modes: eager and `torch.compile(model)` (default mode), each in its own process.

MLM masking (15 %, 80/10/10) is drawn on the host ahead of time (4 batches, cycled), as a data
collator does outside the step; ours draws it on device inside the timed step.
Importable without CUDA: on CPU there is no autocast, no fused AdamW, no compile, one thread.
"""
from __future__ import annotations

import contextlib
import statistics
import time
import traceback

import numpy as np

from throughput import synthetic_tokens

MASK_ID = 4  # any non-random id: the tokens are synthetic


def build_model(wl: dict, dropout: float):
  """The HF model of the workload's family and sizes, SDPA attention, fp32 parameters."""
  import transformers
  d = wl['dims']
  if wl['family'] == 'encoder':
    cfg = transformers.BertConfig(
        vocab_size=d['vocab_size'], hidden_size=d['embed_dim'], num_hidden_layers=d['num_layers'],
        num_attention_heads=d['num_heads'], intermediate_size=d['mlp_dim'],
        max_position_embeddings=d['max_positions'], layer_norm_eps=d['layer_norm_eps'],
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0)
    return transformers.AutoModelForMaskedLM.from_config(cfg, attn_implementation='sdpa')
  cfg = transformers.GPT2Config(
      vocab_size=d['vocab_size'], n_positions=d['max_positions'], n_embd=d['embed_dim'],
      n_layer=d['num_layers'], n_head=d['num_heads'], n_inner=d['mlp_dim'],
      layer_norm_epsilon=d['layer_norm_eps'], resid_pdrop=dropout, embd_pdrop=dropout,
      attn_pdrop=0.0, bos_token_id=d['vocab_size'] - 1, eos_token_id=d['vocab_size'] - 1)
  return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation='sdpa')


def make_batches(wl: dict, seed: int, device) -> list[dict]:
  """The same tokens as ours; MLM: 4 host-masked variants (labels -100 where not selected)."""
  import torch
  tokens = synthetic_tokens(seed, wl['batch'], wl['seq_len'], wl['dims']['vocab_size'])
  as_t = lambda x: torch.as_tensor(x, dtype=torch.long, device=device)
  if wl['objective'] == 'clm':
    return [dict(input_ids=as_t(tokens), labels=as_t(tokens))]  # HF shifts the labels itself
  rng = np.random.default_rng(seed + 2)
  out = []
  for _ in range(4):
    selected = rng.random(tokens.shape) < 0.15
    action = rng.random(tokens.shape)
    random_ids = rng.integers(5, wl['dims']['vocab_size'], tokens.shape)
    inputs = np.where(selected & (action < 0.8), MASK_ID, tokens)
    inputs = np.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    out.append(dict(input_ids=as_t(inputs), labels=as_t(np.where(selected, tokens, -100))))
  return out


def _optimizer(model, cuda: bool):
  import torch
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.01),
                           dict(params=no_decay, weight_decay=0.0)],
                          lr=1e-4, betas=(0.9, 0.999), eps=1e-6, fused=cuda)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
  return opt, sched


def measure(spec: dict, mode: str, device, cuda: bool) -> dict:
  """One mode ('eager' | 'compile') on a fresh model: warm-up, then timed windows."""
  import torch
  wl = spec['workload']
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
  model = build_model(wl, spec['dropout']).to(device).train()
  row = dict(num_params=sum(p.numel() for p in model.parameters()),
             attn_implementation=model.config._attn_implementation, autocast_bf16=cuda,
             fused_adamw=cuda)
  opt, sched = _optimizer(model, cuda)
  fn = torch.compile(model) if mode == 'compile' else model
  params = list(model.parameters())
  autocast = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if cuda else (
      contextlib.nullcontext)
  batches = make_batches(wl, spec['seed'], device)

  def step(i: int):
    with autocast():
      loss = fn(**batches[i % len(batches)]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss

  i = 0
  t0 = time.perf_counter()
  for _ in range(spec['warmup']):
    step(i)
    i += 1
  sync()
  row['warmup_s'] = time.perf_counter() - t0  # includes torch.compile's compilation
  windows = []
  for _ in range(spec['windows']):
    t0 = time.perf_counter()
    for _ in range(spec['steps']):
      loss = step(i)
      i += 1
    sync()
    windows.append(time.perf_counter() - t0)
  step_s = statistics.median(windows) / spec['steps']
  row.update(window_s=windows, step_s=step_s,
             tokens_per_s=wl['batch'] * wl['seq_len'] / step_s, loss=float(loss.item()),
             peak_memory_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None)
  return row


def run(spec: dict, emit) -> None:
  """One torch mode of one workload ('eager' | 'compile'), one row; compile needs CUDA here."""
  import torch
  import transformers
  cuda = torch.cuda.is_available()
  wl, mode = spec['workload'], spec['torch_mode']
  if mode == 'compile' and not cuda:
    emit(dict(kind='skipped', note=f"reference {wl['name']} compile: torch.compile is timed on "
                                   'GPU only (no CUDA here)'))
    return
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True  # the reference's best settings
    torch.backends.cudnn.allow_tf32 = True
  else:
    # CPU runs are smoke tests: OpenMP workers spin-waiting on a shared, loaded CPU made a tiny
    # step take seconds; one thread keeps them quick (CPU numbers are no performance claim).
    torch.set_num_threads(1)
  row = dict(kind='throughput', workload=wl['name'], family=wl['family'], side='reference',
             variant=mode, batch=wl['batch'], seq_len=wl['seq_len'], dims=wl['dims'],
             device=torch.cuda.get_device_name() if cuda else 'cpu', mode=spec['mode'],
             torch=torch.__version__, transformers=transformers.__version__,
             cpu_threads=None if cuda else torch.get_num_threads())
  try:
    row.update(measure(spec, mode, torch.device('cuda' if cuda else 'cpu'), cuda))
  except Exception as e:
    lines = str(e).strip().splitlines() or ['']
    row.update(error=f'{type(e).__name__}: {lines[0][:300]}',
               traceback=traceback.format_exc()[-3000:])
    traceback.print_exc()
  emit(row)
