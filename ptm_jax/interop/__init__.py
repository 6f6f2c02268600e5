"""Pretrained weights in and out: HF safetensors (BERT, RoBERTa, ALBERT, ELECTRA, DistilBERT,
RoFormer, GPT-2, Llama, T5, BART; `supported_architectures()`), GGUF (Llama).

  pre = load_pretrained('path/to/hf_dir' | 'model.gguf' | 'ptm_jax_dir' | 'pkg:<package>/<dir>')
  out = pre.model.apply({'params': pre.params}, tokens, segment_ids=..., positions=...)
  save_pretrained(pre.model, pre.params, 'hf_out', tokenizer=pre.tokenizer)   # -> transformers

CLI: `python -m ptm_jax.interop convert --src PATH --dst DIR [--to hf]`; see docs/interop.md.
"""
from __future__ import annotations

import os
from typing import Any

from ptm_jax.data import tokenizers as tokenizers_lib
from ptm_jax.interop import hf, maps, native
from ptm_jax.interop.pretrained import Pretrained

__all__ = ['Pretrained', 'load_pretrained', 'save_pretrained', 'supported_architectures',
           'convert']


def supported_architectures() -> list[str]:
  """HF class names that load_pretrained reads and save_pretrained writes."""
  return maps.supported_architectures()


def load_pretrained(path: str, *, seed: int = 0,
                    electra_network: str = 'discriminator') -> Pretrained:
  """HF directory, `.gguf` file, or ptm_jax checkpoint/run dir -> `Pretrained`.

  Heads the file has no tensors for (e.g. MLM/NSP of a `BertModel`) are initialised with `seed`
  and listed in `info['initialised']`. From an ELECTRA pretraining run, `electra_network` picks
  the discriminator (default) or the generator, each an `encoder`.
  """
  resolved = tokenizers_lib.resolve_path(path)
  if resolved.endswith('.gguf') and os.path.isfile(resolved):
    from ptm_jax.interop import gguf
    return gguf.load(resolved, seed=seed)
  if not os.path.isdir(resolved):
    raise FileNotFoundError(f'{path}: no such directory or .gguf file')
  if native.is_ptm_dir(resolved):
    return native.load(resolved, electra_network=electra_network)
  if hf.is_hf_dir(resolved):
    return hf.load(resolved, seed=seed)
  raise ValueError(f'{path}: not an HF checkpoint (config.json + model.safetensors), a .gguf file, '
                   'or a ptm_jax run/converted directory')


def save_pretrained(model_or_config: Any, params: dict, dst: str, *, tokenizer: Any = None,
                    architecture: str | None = None, info: dict | None = None) -> str:
  """Writes an HF directory (`config.json` + `model.safetensors` [+ tokenizer]) for transformers.

  `architecture` defaults by config: BertForPreTraining, RobertaForMaskedLM (position_offset > 0),
  ElectraForPreTraining (rtd_head or embedding_size < embed_dim), DistilBertForMaskedLM
  (type_vocab_size 0), RoFormerForMaskedLM (positions='rotary'), AlbertForPreTraining,
  GPT2LMHeadModel (learned positions) or LlamaForCausalLM (rotary + RMSNorm + SwiGLU).
  """
  config = getattr(model_or_config, 'config', model_or_config)
  family = _family_of(config)
  if isinstance(params, dict) and set(params) == {'params'}:
    params = params['params']
  return hf.save(config, family, params, dst, architecture=architecture, tokenizer=tokenizer,
                 info=info)


def _family_of(config: Any) -> str:
  from ptm_jax import models
  for name in models.FAMILIES:
    if isinstance(config, models.get_family(name).Config):
      return name
  raise ValueError(f'{type(config).__name__} is not the Config of a registered family')


def convert(src: str, dst: str, *, to: str = 'ptm_jax', architecture: str | None = None) -> str:
  """HF dir / .gguf -> ptm_jax checkpoint dir (`to='ptm_jax'`), or any of those -> HF (`to='hf'`)."""
  # From an ELECTRA run, asking for the MLM class exports the generator, else the discriminator.
  pre = load_pretrained(src, electra_network='generator' if architecture == 'ElectraForMaskedLM'
                        else 'discriminator')
  if to == 'ptm_jax':
    return native.save(pre, dst)
  if to == 'hf':
    info = {k: v for k, v in pre.info.items() if k in ('bos_id', 'eos_ids', 'add_bos',
                                                       'chat_template')}
    tok = pre.tokenizer if getattr(pre.tokenizer, 'backend', None) is not None else None
    recorded = pre.info.get('architecture')
    if recorded not in maps.supported_architectures():
      recorded = None  # e.g. a training run: the default for its config
    return save_pretrained(pre.config, pre.params, dst, tokenizer=tok, info=info,
                           architecture=architecture or recorded)
  raise ValueError(f"--to={to!r}: use 'ptm_jax' or 'hf'")

