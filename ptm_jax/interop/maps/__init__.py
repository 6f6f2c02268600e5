"""Per-family name maps between HF checkpoints and our parameter trees, and their registry.

One module per HF model family (`bert.py` also holds RoBERTa, `gpt2.py`, `llama.py`, `mixtral.py`);
each exports `MAPS: list[ArchMap]`. To add a family (ALBERT, ELECTRA, DistilBERT, T5, BART, ...):
write `maps/<name>.py` exporting `MAPS`, add its module path to `MODULES` below, and add the
round-trip case to `tests/test_interop.py`. Nothing else in `interop/` changes.

Conventions every map follows:
- HF tensor names are written in their *prefixed* form (`bert.encoder...`, `model.layers...`);
  bare classes (`BertModel`, `LlamaModel`, sentence-transformers files) are saved without
  `base_prefix`, which `hf.py` adds on import and strips on export.
- `params_to_hf` uses only `.T`, `.reshape` and `jnp` ops, so `hf.py` can run it under
  `jax.eval_shape` on a params template to get every expected name and shape without weights.
- Head modules (`pooler`, `mlm_head`, `nsp_head`, `lm_head`) may be absent from a file: they are
  then freshly initialised and listed in `Pretrained.info['initialised']`.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# A getter returns the float32 numpy tensor stored under an HF name (prefixed form).
Getter = Callable[[str], np.ndarray]

MODULES: tuple[str, ...] = (
    'ptm_jax.interop.maps.bert',
    'ptm_jax.interop.maps.gpt2',
    'ptm_jax.interop.maps.llama',
    'ptm_jax.interop.maps.mixtral',
    'ptm_jax.interop.maps.albert',
    'ptm_jax.interop.maps.electra',
    'ptm_jax.interop.maps.distilbert',
    'ptm_jax.interop.maps.roformer',
    'ptm_jax.interop.maps.t5',
    'ptm_jax.interop.maps.switch_transformers',
    'ptm_jax.interop.maps.bart',
)


@dataclasses.dataclass(frozen=True)
class ArchMap:
  """How one HF model type maps onto one of our families (both directions)."""

  model_type: str  # HF config.json `model_type`
  family: str  # our family (`ptm_jax.models.FAMILIES`)
  base_prefix: str  # attribute of the base model inside HF head classes, e.g. 'bert.'
  # HF class name -> our head modules that class carries (the rest of its tensors are the base).
  architectures: Mapping[str, tuple[str, ...]]
  # Our head module -> the HF name prefix its tensors live under (used to detect presence).
  heads: Mapping[str, str]
  config_from_hf: Callable[[dict], dict]  # HF config.json -> our Config fields
  config_to_hf: Callable[[Any], dict]  # our Config -> HF config.json (without `architectures`)
  params_from_hf: Callable[[Getter, Any], dict]  # HF tensors -> our params (full tree)
  params_to_hf: Callable[[dict, Any], dict]  # our params -> HF tensors (every head we have)
  matches: Callable[[Any], bool]  # whether one of our Configs is this HF model type
  default_architecture: str
  # Names HF may store but that carry no weights of their own (buffers, tied copies).
  ignore_suffixes: tuple[str, ...] = ()
  # Our head modules with no HF counterpart at all (always freshly initialised on import).
  unmapped: tuple[str, ...] = ()
  # Config fields that only the file's tensor names tell (T5: a stored `lm_head` means untied).
  config_from_names: Callable[[dict, set[str]], dict] | None = None

  def is_bare(self, architecture: str) -> bool:
    """Bare base classes (`BertModel`) save their tensors without `base_prefix`."""
    return architecture.endswith('Model') and not any(
        architecture.endswith(s) for s in ('LMHeadModel', 'ForCausalLM'))


def _load() -> list[ArchMap]:
  return [m for path in MODULES for m in importlib.import_module(path).MAPS]


def all_maps() -> list[ArchMap]:
  """Every registered map."""
  return _load()


def supported_architectures() -> list[str]:
  """HF class names we read and write."""
  return [a for m in _load() for a in m.architectures]


def for_architecture(architecture: str | None, model_type: str | None = None) -> ArchMap:
  """The map for an HF class name (or, failing that, a `model_type`); one-line error otherwise."""
  maps = _load()
  for m in maps:
    if architecture in m.architectures:
      return m
  if architecture is None:
    for m in maps:
      if model_type == m.model_type:
        return m
  raise ValueError(f'unsupported architecture {architecture or model_type!r}; supported: '
                   f'{", ".join(supported_architectures())}')


def for_config(config: Any, family: str) -> ArchMap:
  """The map that can express one of our Configs (e.g. encoder + position_offset -> RoBERTa)."""
  for m in _load():
    if m.family == family and m.matches(config):
      return m
  raise ValueError(f'no HF architecture matches this {family} config ({config}); supported: '
                   f'{", ".join(supported_architectures())}')


# ---- small helpers the family maps share ---------------------------------------------------------

def activation_from_hf(name: str) -> str:
  """HF `hidden_act` -> our activation name (`layers.mlp.ACTIVATIONS`)."""
  aliases = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'gelu_pytorch_tanh': 'gelu_new',
             'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
  if name not in aliases:
    raise ValueError(f'unsupported activation {name!r}; supported: {", ".join(aliases)}')
  return aliases[name]


def factorised(cfg) -> bool:
  """An encoder config with ALBERT/ELECTRA's factorised embedding (E-wide tables, E != H)."""
  return cfg.resolved_embedding_size != cfg.embed_dim


def require(condition: bool, message: str) -> None:
  """Raises a one-line ValueError for a config we cannot represent faithfully."""
  if not condition:
    raise ValueError(message)


def ln(get: Getter, name: str) -> dict:
  """A LayerNorm (`weight`, `bias`) -> our {'scale', 'bias'}."""
  return {'scale': get(name + '.weight'), 'bias': get(name + '.bias')}


def ln_out(p: dict, name: str) -> dict:
  """Our LayerNorm params -> HF `weight`, `bias`."""
  return {name + '.weight': p['scale'], name + '.bias': p['bias']}


def dense(get: Getter, name: str, bias: bool = True) -> dict:
  """A torch Linear ([out, in]) -> our Dense {'kernel' [in, out], 'bias'}."""
  out = {'kernel': get(name + '.weight').T}
  if bias:
    out['bias'] = get(name + '.bias')
  return out


def dense_out(p: dict, name: str) -> dict:
  """Our Dense -> torch Linear weight [out, in] (+ bias)."""
  out = {name + '.weight': p['kernel'].T}
  if 'bias' in p:
    out[name + '.bias'] = p['bias']
  return out
