"""ptm_jax checkpoint directories: what `convert` writes and what `--config.init_from` reads.

Layout of a converted directory (also accepted: any training `--workdir`):
  config.json          {"model": {"family": ..., <Config fields>}, "interop": {source, eos_ids, ...}}
  tokenizer.json       the imported tokenizer (+ tokenizer_config.json), when there is one
  checkpoints/0/       Orbax, item `state` = {"params": ...}: `checkpoint.restore_params(DIR)` reads it
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from ptm_jax import checkpoint, models
from ptm_jax.data import tokenizers as tokenizers_lib
from ptm_jax.interop import tokenizer_files
from ptm_jax.interop.pretrained import Pretrained, config_to_dict, make_config


def is_ptm_dir(path: str) -> bool:
  """A converted directory or a run workdir (a config.json with a `model` section)."""
  cfg = os.path.join(path, 'config.json')
  if not os.path.isfile(cfg):
    return False
  with open(cfg) as f:
    return 'model' in json.load(f)


def save(pretrained: Pretrained, dst: str) -> str:
  """Writes params (Orbax, step 0), config.json and the tokenizer files under `dst`."""
  os.makedirs(dst, exist_ok=True)
  info = {k: v for k, v in pretrained.info.items() if k != 'initialised'}
  config = {'model': {'family': pretrained.family, 'variant': None,
                      **config_to_dict(pretrained.config)},
            'interop': {**info, 'initialised': list(pretrained.info.get('initialised', []))}}
  params = jax.tree.map(np.asarray, pretrained.params)
  manager = checkpoint.make_manager(os.path.join(dst, 'checkpoints'), max_to_keep=1,
                                    async_save=False)
  checkpoint.save(manager, 0, {'params': params}, None, config, force=True)
  manager.wait_until_finished()
  manager.close()
  with open(os.path.join(dst, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2)
  if pretrained.tokenizer is not None and getattr(pretrained.tokenizer, 'backend', None):
    tokenizer_files.save(pretrained.tokenizer, dst, info)
  return dst


def _run_tokenizer(run_config: dict):
  """The tokenizer a training run used, when it can be found without training one."""
  tok = (run_config.get('data') or {}).get('tokenizer') or {}
  kind, path = tok.get('kind', 'sentencepiece'), tok.get('path')
  try:
    if kind != 'sentencepiece' and path:
      return tokenizers_lib.load_vocab_file(kind, path, lowercase=tok.get('lowercase', True))
    if path:
      with open(tokenizers_lib.resolve_path(path), 'rb') as f:
        return tokenizers_lib.from_sentencepiece(f.read(), os.path.basename(path))
  except (OSError, ValueError):
    return None
  return None


ELECTRA_NETWORKS = ('discriminator', 'generator')


def _electra_network(run_config: dict, fields: dict, params: dict, network: str):
  """An ELECTRA pretraining run's tree -> (encoder Config, params, HF class) of one network."""
  from ptm_jax import objectives  # pylint: disable=g-import-not-at-top
  from ptm_jax.interop.maps import electra as electra_map  # pylint: disable=g-import-not-at-top
  from ptm_jax.objectives import electra  # pylint: disable=g-import-not-at-top
  if network not in ELECTRA_NETWORKS:
    raise ValueError(f'electra_network={network!r}: use one of {", ".join(ELECTRA_NETWORKS)}')
  disc_cfg = make_config('encoder', fields)
  if network == 'discriminator':
    return (*electra_map.discriminator_part(params, disc_cfg), 'ElectraForPreTraining')
  gen_cfg = electra.generator_config(disc_cfg,
                                     objectives.build_options(electra, run_config['objective']))
  return (*electra_map.generator_part(params, disc_cfg, gen_cfg), 'ElectraForMaskedLM')


def load(path: str, *, electra_network: str = 'discriminator') -> Pretrained:
  """A converted directory or a run workdir -> `Pretrained` (params via `restore_params`).

  An ELECTRA pretraining run holds two networks: `electra_network` picks the discriminator (what
  transfers; written as ElectraForPreTraining) or the generator (ElectraForMaskedLM).
  """
  with open(os.path.join(path, 'config.json')) as f:
    run_config = json.load(f)
  fields = dict(run_config['model'])
  family = fields.pop('family')
  fields.pop('variant', None)
  params = jax.tree.map(np.asarray, checkpoint.restore_params(path))
  electra_run = (run_config.get('objective') or {}).get('name') == 'electra'
  if not fields.get('vocab_size'):  # runs store 0 = "from the tokenizer"
    table = params['discriminator'] if electra_run else params
    fields['vocab_size'] = int(table['token_embed']['embedding'].shape[0])
  info = dict(run_config.get('interop') or {})
  if electra_run:
    config, params, architecture = _electra_network(run_config, fields, params, electra_network)
    info['architecture'] = architecture
  else:
    config = make_config(family, fields)
  info.setdefault('source', os.path.abspath(path))
  tokenizer = None
  if os.path.isfile(os.path.join(path, 'tokenizer.json')):
    tokenizer, tok_info = tokenizer_files.from_hf_dir(path)
    for k, v in tok_info.items():
      info.setdefault(k, v)
  else:
    tokenizer = _run_tokenizer(run_config)
  return Pretrained(models.get_family(family).Model(config), params, config, tokenizer, family, info)
