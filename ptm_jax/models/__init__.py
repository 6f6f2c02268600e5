"""Model families and the registry: `get_family(name)`, `build(family, variant, **overrides)`."""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

import flax.linen as nn

# family name -> module path; each module exports Config, Model and VARIANTS.
FAMILIES: dict[str, str] = {
    'encoder': 'ptm_jax.models.encoder',
    'decoder': 'ptm_jax.models.decoder',
    'albert': 'ptm_jax.models.albert',
    'encdec': 'ptm_jax.models.encdec',
}


def get_family(name: str) -> ModuleType:
  """Returns the family module (`Config`, `Model`, `VARIANTS`) for `name`."""
  if name not in FAMILIES:
    raise ValueError(f'unknown model family {name!r}; known families: {", ".join(FAMILIES)}')
  return importlib.import_module(FAMILIES[name])


def build(family: str, variant: str, **overrides) -> nn.Module:
  """`Model(Config(**VARIANTS[variant], **overrides))` for a named family and size."""
  module = get_family(family)
  if variant not in module.VARIANTS:
    raise ValueError(f'unknown variant {variant!r} of family {family!r}; '
                     f'known variants: {", ".join(module.VARIANTS)}')
  fields = {f.name for f in dataclasses.fields(module.Config)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'unknown {family} Config field(s) {", ".join(unknown)}; '
                     f'known fields: {", ".join(sorted(fields))}')
  return module.Model(module.Config(**{**module.VARIANTS[variant], **overrides}))
