"""Reusable config presets (model sizes, mesh, optimizer, data) that experiment files compose."""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping


def load_experiment(spec: str, overrides: Mapping[str, Any] | None = None):
  """`experiments/bert.py:runlocal` -> its ConfigDict, with dotted `overrides` applied."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_ptm_experiment", path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"experiment file {path!r} not found (try experiments/bert.py)")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for dotted, value in (overrides or {}).items():
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config
