"""GGUF import (llama.cpp files) for the Llama architecture, through the Llama name map.

`gguf.GGUFReader` memory-maps the file; tensors (F32/F16/Q8_0/Q4_0/Q4_1/... anything
`gguf.quants.dequantize` knows) are dequantized to float32, renamed to HF Llama names, and the Q/K
rows are un-permuted: llama.cpp's converter permutes HF's rotate-half rows into its interleaved
(adjacent-pair) rotary layout, `permute_rows` below; `unpermute_rows` is its inverse. The config
comes from the `llama.*` metadata and the tokenizer from `tokenizer.ggml.*`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from ptm_jax import models
from ptm_jax.interop import hf, maps, tokenizer_files
from ptm_jax.interop.pretrained import Pretrained, make_config, short_list

SUPPORTED = ('llama',)
_LAYER = {
    'attn_norm.weight': 'input_layernorm.weight',
    'ffn_norm.weight': 'post_attention_layernorm.weight',
    'attn_q.weight': 'self_attn.q_proj.weight', 'attn_q.bias': 'self_attn.q_proj.bias',
    'attn_k.weight': 'self_attn.k_proj.weight', 'attn_k.bias': 'self_attn.k_proj.bias',
    'attn_v.weight': 'self_attn.v_proj.weight', 'attn_v.bias': 'self_attn.v_proj.bias',
    'attn_output.weight': 'self_attn.o_proj.weight', 'attn_output.bias': 'self_attn.o_proj.bias',
    'ffn_gate.weight': 'mlp.gate_proj.weight', 'ffn_up.weight': 'mlp.up_proj.weight',
    'ffn_down.weight': 'mlp.down_proj.weight',
}
_GLOBAL = {'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight': 'model.norm.weight',
           'output.weight': 'lm_head.weight'}


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's `permute` (convert_hf_to_gguf.py): HF rotate-half rows -> interleaved pairs."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of `permute_rows`: GGUF interleaved q/k rows -> HF rotate-half rows."""
  return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


@dataclasses.dataclass
class GGUFContents:
  """A GGUF file as HF Llama pieces: config.json dict, float32 tensors by HF name, metadata."""

  hf_config: dict
  tensors: dict[str, np.ndarray]
  metadata: dict[str, Any]


def read_metadata(reader) -> dict[str, Any]:
  """Every key-value field as a Python value (strings decoded, arrays as lists)."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith('GGUF.'):
      continue
    try:
      out[key] = field.contents()
    except Exception:  # noqa: BLE001 - an exotic field we do not need must not stop the import
      continue
  return out


def hf_config_from_metadata(meta: dict[str, Any], tensor_names: set[str]) -> dict:
  """`llama.*` metadata -> an HF LlamaConfig dict."""
  arch = meta.get('general.architecture')
  if arch not in SUPPORTED:
    raise ValueError(f'unsupported GGUF architecture {arch!r}; supported: {", ".join(SUPPORTED)}')
  g = lambda k, default=None: meta.get(f'{arch}.{k}', default)
  heads = int(g('attention.head_count'))
  width = int(g('embedding_length'))
  head_dim = int(g('attention.key_length', width // heads))
  rope_dims = int(g('rope.dimension_count', head_dim))
  maps.require(rope_dims == head_dim, f'partial rotary (rope.dimension_count={rope_dims} < '
               f'head_dim={head_dim}) is not supported')
  maps.require(g('rope.scaling.type', 'none') in ('none', None) and 'rope_freqs.weight'
               not in tensor_names, 'GGUF rope scaling is not supported')
  vocab = g('vocab_size') or len(meta['tokenizer.ggml.tokens'])
  theta = float(g('rope.freq_base', 10_000.0))
  return dict(
      architectures=['LlamaForCausalLM'], model_type='llama', vocab_size=int(vocab),
      hidden_size=width, num_hidden_layers=int(g('block_count')), num_attention_heads=heads,
      num_key_value_heads=int(g('attention.head_count_kv', heads)), head_dim=head_dim,
      intermediate_size=int(g('feed_forward_length')),
      max_position_embeddings=int(g('context_length', 2048)),
      rms_norm_eps=float(g('attention.layer_norm_rms_epsilon', 1e-6)), rope_theta=theta,
      rope_parameters={'rope_type': 'default', 'rope_theta': theta}, hidden_act='silu',
      attention_bias='blk.0.attn_q.bias' in tensor_names, mlp_bias=False,
      tie_word_embeddings='output.weight' not in tensor_names,
      bos_token_id=meta.get('tokenizer.ggml.bos_token_id'),
      eos_token_id=meta.get('tokenizer.ggml.eos_token_id'))


def hf_name(name: str) -> str:
  """GGUF tensor name -> HF Llama name; one-line error for a tensor we do not know."""
  if name in _GLOBAL:
    return _GLOBAL[name]
  m = re.fullmatch(r'blk\.(\d+)\.(.+)', name)
  if m and m.group(2) in _LAYER:
    return f'model.layers.{m.group(1)}.{_LAYER[m.group(2)]}'
  raise ValueError(f'unexpected GGUF tensor {name!r} for a llama model')


def read(path: str) -> GGUFContents:
  """Reads, dequantizes (float32), renames and un-permutes every tensor of a llama GGUF file."""
  import gguf  # the PyPI `gguf` package (requirements.txt)

  reader = gguf.GGUFReader(path)
  meta = read_metadata(reader)
  names = {t.name for t in reader.tensors}
  hf_config = hf_config_from_metadata(meta, names)
  unknown = [n for n in names if n not in _GLOBAL and not (
      re.fullmatch(r'blk\.\d+\.(.+)', n) and re.fullmatch(r'blk\.\d+\.(.+)', n).group(1) in _LAYER)]
  if unknown:
    raise ValueError(f'GGUF file has {len(unknown)} tensor(s) with no llama mapping: '
                     f'{short_list(unknown)}')
  n_head, n_kv = hf_config['num_attention_heads'], hf_config['num_key_value_heads']
  tensors = {}
  for t in reader.tensors:
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    # GGUF lists dims fastest-first; numpy order is the reverse (= torch's [out, in]).
    w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
    name = hf_name(t.name)
    if '.q_proj.' in name:
      w = unpermute_rows(w, n_head)
    elif '.k_proj.' in name:
      w = unpermute_rows(w, n_kv)
    tensors[name] = w
  return GGUFContents(hf_config, tensors, meta)


def load(path: str, *, seed: int = 0) -> Pretrained:
  """A llama GGUF file -> `Pretrained` (float32 params, config, byte-level BPE tokenizer)."""
  return from_contents(read(path), path, seed=seed)


def from_contents(contents: GGUFContents, path: str, *, seed: int = 0) -> Pretrained:
  """`Pretrained` from what `read` returned (lets a caller keep the HF-named tensors too)."""
  amap = maps.for_architecture('LlamaForCausalLM')
  config = make_config(amap.family, amap.config_from_hf(contents.hf_config))
  tensors = contents.tensors
  params, initialised = hf.params_from_tensors(
      amap, config, tensors, lambda n: tensors[n].shape, tensors.__getitem__, seed=seed)
  tokenizer, info = tokenizer_files.from_gguf_metadata(contents.metadata, os.path.basename(path))
  info.update(source=os.path.abspath(path), architecture='LlamaForCausalLM', initialised=initialised,
              gguf_name=contents.metadata.get('general.name'))
  return Pretrained(models.get_family(amap.family).Model(config), params, config, tokenizer,
                    amap.family, info)
