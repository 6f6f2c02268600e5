"""Objective registry: `get(name)` returns the objective module, `build_options` its Options."""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
from typing import Any, Mapping

# Imported lazily so that importing the package never pays for every objective's dependencies.
_MODULES = {
    'mlm': 'ptm_jax.objectives.mlm',
    'clm': 'ptm_jax.objectives.clm',
    'classify': 'ptm_jax.objectives.classify',
    'tag': 'ptm_jax.objectives.tag',
    # The encoder objective zoo (issue 4); each module is one paper's recipe.
    'mlm_nsp': 'ptm_jax.objectives.mlm_nsp',
    'mlm_sop': 'ptm_jax.objectives.mlm_sop',
    'wwm': 'ptm_jax.objectives.wwm',
    'ernie': 'ptm_jax.objectives.ernie',
    'spanbert': 'ptm_jax.objectives.spanbert',
    'electra': 'ptm_jax.objectives.electra',
    # Seq2seq and unified objectives (issue 5).
    'prefix_lm': 'ptm_jax.objectives.prefix_lm',
    'unilm': 'ptm_jax.objectives.unilm',
    'span_corruption': 'ptm_jax.objectives.span_corruption',
    'bart': 'ptm_jax.objectives.bart',
    'mass': 'ptm_jax.objectives.mass',
    'glm': 'ptm_jax.objectives.glm',
    # Fine-tuning on a generation task (news_headline), in each family's seq2seq form.
    'seq2seq_finetune': 'ptm_jax.objectives.seq2seq_finetune',
}


def names() -> tuple[str, ...]:
  """Names of the registered objectives."""
  return tuple(sorted(_MODULES))


def get(name: str) -> types.ModuleType:
  """Returns the objective module registered under `name` (exports Options, corrupt, loss)."""
  if name not in _MODULES:
    close = difflib.get_close_matches(str(name), names(), n=3)
    hint = f' (did you mean {", ".join(map(repr, close))}?)' if close else ''
    raise ValueError(f'unknown objective {name!r}{hint}; known: {", ".join(names())}')
  return importlib.import_module(_MODULES[name])


def build_options(module: types.ModuleType, cfg: Mapping[str, Any] | None = None) -> Any:
  """Turns a config dict (config.objective; a 'name' key is ignored) into `module.Options`."""
  cfg = {} if cfg is None else dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
  cfg.pop('name', None)
  valid = [f.name for f in dataclasses.fields(module.Options)]
  for key in cfg:
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=3) or valid
      raise ValueError(f'unknown option {key!r} for objective {module.__name__.rsplit(".", 1)[-1]!r}; '
                       f'nearest valid: {", ".join(close)}')
  # Lists from config files become tuples so that Options stays hashable (a static jit argument).
  cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
  return module.Options(**cfg)
