"""HF-format checkpoints (`config.json` + `model.safetensors`) in and out, through the family maps.

Tensors are read and written with the `safetensors` library as numpy arrays (never pickle). On
import, the names the map expects are derived by running its export direction under
`jax.eval_shape` on the model's params template, so missing, unexpected and mis-shaped tensors
are all reported (one line, up to 8 names) before any weight is converted.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

import jax
import numpy as np
from absl import logging
from safetensors import safe_open
from safetensors.numpy import save_file

from ptm_jax import models
from ptm_jax.interop import maps, tokenizer_files
from ptm_jax.interop.pretrained import (Pretrained, check_tree, fresh_init, make_config,
                                        params_template, short_list)

WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'


def is_hf_dir(path: str) -> bool:
  """A directory holding an HF config.json and safetensors weights."""
  return (os.path.isfile(os.path.join(path, 'config.json'))
          and (os.path.isfile(os.path.join(path, WEIGHTS))
               or os.path.isfile(os.path.join(path, INDEX))))


class SafetensorsDir:
  """Names and lazily read float32 tensors of `model.safetensors` (or its sharded index)."""

  def __init__(self, directory: str):
    index = os.path.join(directory, INDEX)
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f)['weight_map']
      files = {n: os.path.join(directory, s) for n, s in weight_map.items()}
    elif os.path.isfile(os.path.join(directory, WEIGHTS)):
      path = os.path.join(directory, WEIGHTS)
      with safe_open(path, framework='np') as f:
        files = {n: path for n in f.keys()}
    else:
      raise FileNotFoundError(f'{directory}: no {WEIGHTS} (pickled .bin checkpoints are not read; '
                              'convert them to safetensors first)')
    self.files = files
    self._handles = {}

  @property
  def names(self) -> list[str]:
    return list(self.files)

  def _handle(self, path: str):
    if path not in self._handles:
      self._handles[path] = safe_open(path, framework='np')
    return self._handles[path]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(self.files[name]).get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    return np.asarray(self._handle(self.files[name]).get_tensor(name), dtype=np.float32)


def _canonical(name: str, amap: maps.ArchMap) -> str:
  """Adds the base prefix to names saved by bare classes (BertModel, sentence-transformers)."""
  outside = [p for p in amap.heads.values() if not p.startswith(amap.base_prefix)]
  if name.startswith(amap.base_prefix) or any(name.startswith(p) for p in outside):
    return name
  if any(name == s for s in amap.ignore_suffixes) or name.startswith('lm_head.'):
    return name
  return amap.base_prefix + name


def expected_tensors(amap: maps.ArchMap, config, template: dict) -> dict[str, tuple[int, ...]]:
  """Every HF name (prefixed) and shape the map produces for our model, heads included."""
  shapes = jax.eval_shape(lambda p: amap.params_to_hf(p, config), template)
  return {k: tuple(v.shape) for k, v in shapes.items()}


def params_from_tensors(amap: maps.ArchMap, config, names: Iterable[str],
                        shape_of: Callable[[str], tuple], get: Callable[[str], np.ndarray], *,
                        model=None, seed: int = 0) -> tuple[dict, list[str]]:
  """HF tensors -> our params; returns (params, our head modules initialised fresh)."""
  model = model or models.get_family(amap.family).Model(config)
  template = params_template(model)
  expected = expected_tensors(amap, config, template)
  file_name = {_canonical(n, amap): n for n in names}
  present = set(file_name)
  absent_heads = [h for h, prefix in amap.heads.items()
                  if h in template and not any(n.startswith(prefix) for n in present)]
  absent_heads += [h for h in amap.unmapped if h in template]
  absent_prefixes = tuple(amap.heads[h] for h in absent_heads if h in amap.heads)
  needed = {n for n in expected if not n.startswith(absent_prefixes or ('\0',))}
  # A head prefix our model has no module for (e.g. lm_head of a tied model) holds a tied copy.
  tied = tuple(p for h, p in amap.heads.items() if h not in template)
  ignored = {n for n in present - set(expected)
             if n.endswith(amap.ignore_suffixes) or (tied and n.startswith(tied))}
  missing, extra = needed - present, present - set(expected) - ignored
  if missing:
    raise ValueError(f'checkpoint is missing {len(missing)} tensor(s) for {amap.model_type}: '
                     f'{short_list(missing)}')
  if extra:
    raise ValueError(f'checkpoint has {len(extra)} unexpected tensor(s) for {amap.model_type}: '
                     f'{short_list(extra)}')
  bad = [f'{n} {shape_of(file_name[n])} != {expected[n]}' for n in sorted(needed)
         if tuple(shape_of(file_name[n])) != expected[n]]
  if bad:
    raise ValueError(f'checkpoint tensor shapes do not match the config: {short_list(bad)}')

  def getter(name: str) -> np.ndarray:
    if name in needed:
      return get(file_name[name])
    return np.zeros(expected[name], np.float32)  # an absent head, replaced below

  params = amap.params_from_hf(getter, config)
  for h in absent_heads:
    params[h] = fresh_init(template[h], config.initializer_range, seed)
  dtype = np.dtype(config.param_dtype)
  params = jax.tree.map(lambda x: np.ascontiguousarray(np.asarray(x, dtype)), params)
  check_tree(params, template, f'{amap.model_type} import')
  if absent_heads:
    logging.info('%s: no tensors for %s; initialised fresh', amap.model_type, absent_heads)
  return params, absent_heads


def tensors_from_params(amap: maps.ArchMap, architecture: str, config, params: dict
                        ) -> dict[str, np.ndarray]:
  """Our params -> the HF tensors `architecture` stores (its heads only; bare names if bare)."""
  if architecture not in amap.architectures:
    raise ValueError(f'architecture {architecture!r} is not a {amap.model_type} class; choose one '
                     f'of {", ".join(amap.architectures)}')
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  tensors = amap.params_to_hf(params, config)
  keep = amap.architectures[architecture]
  drop = tuple(p for h, p in amap.heads.items() if h not in keep)
  out = {}
  for name, value in tensors.items():
    if drop and name.startswith(drop):
      continue
    if amap.is_bare(architecture) and name.startswith(amap.base_prefix):
      name = name[len(amap.base_prefix):]
    out[name] = np.ascontiguousarray(np.asarray(value, np.float32))
  return out


def read_config(directory: str) -> dict:
  with open(os.path.join(directory, 'config.json')) as f:
    return json.load(f)


def arch_of(hf_config: dict) -> tuple[maps.ArchMap, str]:
  """(map, architecture) for an HF config.json; one-line error for an unsupported one."""
  archs = hf_config.get('architectures') or []
  supported = maps.supported_architectures()
  for a in archs:
    if a in supported:
      return maps.for_architecture(a), a
  if archs:
    raise ValueError(f'unsupported architecture {archs[0]!r}; supported: {", ".join(supported)}')
  amap = maps.for_architecture(None, hf_config.get('model_type'))
  return amap, amap.default_architecture


def load(directory: str, *, seed: int = 0, config_overrides: dict | None = None) -> Pretrained:
  """An HF checkpoint directory -> `Pretrained` (model, params, config, tokenizer).

  `config_overrides` sets fields HF files do not carry, e.g. `vocab_pad_multiple=128` (the
  decoder maps then pad the vocabulary tables) or `mask_form`.
  """
  hf_config = read_config(directory)
  amap, architecture = arch_of(hf_config)
  st = SafetensorsDir(directory)
  fields = amap.config_from_hf(hf_config)
  if amap.config_from_names is not None:
    fields = amap.config_from_names(fields, set(st.names))
  fields.update(config_overrides or {})
  config = make_config(amap.family, fields)
  model = models.get_family(amap.family).Model(config)
  params, initialised = params_from_tensors(amap, config, st.names, st.shape, st.get,
                                            model=model, seed=seed)
  tokenizer, tok_info = tokenizer_files.from_hf_dir(directory, hf_config)
  info = dict(tok_info, source=os.path.abspath(directory), architecture=architecture,
              initialised=initialised)
  return Pretrained(model, params, config, tokenizer, amap.family, info)


def save(config, family: str, params: dict, dst: str, *, architecture: str | None = None,
         tokenizer=None, info: dict | None = None) -> str:
  """Writes `config.json` + `model.safetensors` (+ tokenizer files) loadable by transformers."""
  if getattr(config, 'moe_experts', 0) and not any(
      m.family == family and m.matches(config) for m in maps.all_maps()):
    raise ValueError(f'a mixture-of-experts {family} exports only as Mixtral (decoder: rotary, '
                     'RMSNorm, SwiGLU) or SwitchTransformers (encdec: T5 v1.0 layers); this one '
                     f'has positions={config.positions}, norm={config.norm}, mlp={config.mlp}')
  amap = maps.for_architecture(architecture) if architecture else maps.for_config(config, family)
  if amap.family != family:
    raise ValueError(f'architecture {architecture!r} is a {amap.family}, not a {family}')
  if not amap.matches(config):
    raise ValueError(f'this {family} config is not a {amap.model_type} model ({config})')
  architecture = architecture or amap.default_architecture
  # The config first: a config HF cannot represent fails in one line before any tensor or file.
  hf_config = dict(amap.config_to_hf(config), architectures=[architecture], dtype='float32')
  tensors = tensors_from_params(amap, architecture, config, params)
  os.makedirs(dst, exist_ok=True)
  save_file(tensors, os.path.join(dst, WEIGHTS), metadata={'format': 'pt'})
  info = info or {}
  if info.get('bos_id') is not None:
    hf_config['bos_token_id'] = info['bos_id']
  if info.get('eos_ids'):
    eos = info['eos_ids']
    hf_config['eos_token_id'] = eos[0] if len(eos) == 1 else list(eos)
  with open(os.path.join(dst, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  if tokenizer is not None:
    tokenizer_files.save(tokenizer, dst, info)
  return dst
