"""`--variants` of benchmarks/throughput.py: the library's fast-path options a row applies.

Parsed from `'default;mask=lengths,loss_chunk=1024'`; each workload keeps only the keys it has
(`applied_options`), and a row's variant column names them (`variant_label`).
"""
from __future__ import annotations


# --variants keys -> what they set (the means of docs/benchmarks.md "Means implemented"):
# mask: Config.mask_form (both families); loss_chunk: clm.Options.loss_chunk_size (CLM only);
# vocab_pad: decoder Config.vocab_pad_multiple (decoder only); prng: the key implementation the
# child sets before making any key (jax_default_prng_impl: dropout masks and MLM corruption are
# drawn from it); reduce: how the loss's vocabulary reductions run
# (objectives.common.set_vocab_reduction; 'auto' = one_pass off CPU); logits: decoder
# Config.logits_dtype ('compute' = bf16 logits; every family); dropout: Config.dropout_impl
# ('hash' = masks hashed from the element index, layers/dropout.py; every family); slab:
# mlm.Options.slab_rows (MLM only: that many rows share one scored slab); loss_grad:
# clm.Options.loss_grad_in_forward ('forward' = the output layer's gradient formed in the forward
# pass; CLM only, with loss_chunk); remat: every block rematerialised keeping what the policy
# says (Config.remat_policy, layers.blocks.REMAT_POLICIES; both families; --remat is 'full').
# Keys a workload lacks are ignored.
VARIANT_KEYS = ('mask', 'loss_chunk', 'vocab_pad', 'prng', 'reduce', 'logits', 'dropout', 'slab',
                'loss_grad', 'remat')
PRNG_IMPLS = ('threefry2x32', 'rbg', 'unsafe_rbg')
REDUCTIONS = ('auto', 'one_pass', 'two_pass')
LOGITS = ('float32', 'compute')
# The keys that take a name; the others (loss_chunk, vocab_pad, slab) take a non-negative integer.
CHOICES = {'mask': ('dense', 'lengths', 'packed'), 'prng': PRNG_IMPLS, 'reduce': REDUCTIONS,
           'logits': LOGITS, 'dropout': ('bits', 'hash'), 'loss_grad': ('recompute', 'forward'),
           'remat': ('full', 'dots', 'dots_all')}


def parse_variants(text: str) -> list[dict]:
  """'default;mask=lengths,loss_chunk=1024' -> [{}, {'mask': 'lengths', 'loss_chunk': 1024}]."""
  out = []
  for item in text.split(';'):
    item = item.strip()
    opts = {}
    for pair in filter(None, item.split(',') if item not in ('', 'default') else []):
      key, _, value = pair.partition('=')
      if key not in VARIANT_KEYS:
        raise ValueError(f'--variants: unknown key {key!r} in {item!r}; keys: '
                         f'{", ".join(VARIANT_KEYS)}')
      if key in CHOICES:
        if value not in CHOICES[key]:
          raise ValueError(f'--variants: {key}={value!r}; use one of {", ".join(CHOICES[key])}')
        opts[key] = value
      elif value.isdigit():
        opts[key] = int(value)
      else:
        raise ValueError(f'--variants: {key}={value!r} must be a non-negative integer')
    out.append(opts)
  return out


def applied_options(wl: dict, options: dict) -> dict:
  """The --variants options this workload has (vocab_pad: decoder; loss_chunk, loss_grad: CLM;
  slab: MLM)."""
  keep = {'mask', 'prng', 'reduce', 'logits', 'dropout', 'remat'}
  keep |= {'vocab_pad'} if wl['family'] == 'decoder' else set()
  keep |= {'loss_chunk', 'loss_grad'} if wl['objective'] == 'clm' else set()
  keep |= {'slab'} if wl['objective'] == 'mlm' else set()
  return {k: v for k, v in options.items() if k in keep}


def variant_label(options: dict) -> str:
  """',mask=lengths,loss_chunk=1024' for a row's variant column ('' for the defaults)."""
  return ''.join(f',{k}={options[k]}' for k in VARIANT_KEYS if k in options)
