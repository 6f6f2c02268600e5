"""The base ConfigDict every experiment starts from; every field here can be overridden by flag."""
from __future__ import annotations

import dataclasses

import ml_collections

from ptm_jax import models, objectives, optim
from ptm_jax.data import loader as data_loader


def model_config(family: str, variant: str, **overrides) -> ml_collections.ConfigDict:
  """All Config fields of a family at a named size, so each is a typed, overridable flag."""
  module = models.get_family(family)
  if variant not in module.VARIANTS:
    raise ValueError(f"unknown {family} variant {variant!r}; known: {sorted(module.VARIANTS)}")
  fields = {}
  defaults = module.Config(vocab_size=1) if _needs_vocab(module) else module.Config()
  for f in dataclasses.fields(module.Config):
    value = getattr(defaults, f.name)
    if f.name in module.VARIANTS[variant]:
      value = module.VARIANTS[variant][f.name]
    if f.name in ("dtype", "param_dtype"):
      value = _dtype_name(value)
    if value is None:  # a typed placeholder, so `--config.model.head_dim=64` can still set it
      value = ml_collections.config_dict.placeholder(_optional_type(f.type))
    fields[f.name] = value
  fields["vocab_size"] = 0  # 0 = take it from the tokenizer
  fields.update(overrides)
  unknown = set(overrides) - {f.name for f in dataclasses.fields(module.Config)}
  if unknown:
    raise ValueError(f"unknown {family} Config fields {sorted(unknown)}")
  return ml_collections.ConfigDict({"family": family, "variant": variant, **fields})


def _optional_type(annotation) -> type:
  """`int | None` -> int (annotations are strings under `from __future__ import annotations`)."""
  text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
  for name, kind in (("int", int), ("float", float), ("bool", bool), ("str", str)):
    if name in text:
      return kind
  return object


def _needs_vocab(module) -> bool:
  f = {x.name: x for x in dataclasses.fields(module.Config)}["vocab_size"]
  return f.default is dataclasses.MISSING


def _dtype_name(value) -> str:
  import numpy as np
  return np.dtype(value).name if not isinstance(value, str) else value


def objective_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The objective's Options defaults as config fields (+ its name)."""
  module = objectives.get(name)
  fields = {f.name: f.default for f in dataclasses.fields(module.Options)}
  fields.update(overrides)
  objectives.build_options(module, fields)  # validates the overrides now, not at step 0
  return ml_collections.ConfigDict({"name": name, **fields})


def train_config(**overrides) -> ml_collections.ConfigDict:
  """Loop fields: steps, batch, accumulation, cadences, checkpoint retention."""
  cfg = ml_collections.ConfigDict(dict(
      steps=1000,
      stop_at=0,             # stop (and checkpoint) early at this step; 0 = run to `steps`
      batch_size=32,         # global, in rows of data.seq_len tokens
      grad_accum=1,
      log_every=50,
      eval_every=500,        # 0 disables evaluation
      eval_batches=10,
      eval_batch_size=0,     # 0 = batch_size
      eval_split="validation",
      test_split="",         # also evaluated when set (reported at the best dev eval), see test_at
      test_at="best",        # 'best': only at evaluations that set a new best early_stop_metric
                             # (the only ones ever reported); 'every': at every evaluation
      early_stop_patience=0,  # evaluations without improvement before stopping; 0 = off
      early_stop_min_steps=0,  # no early stop before this step
      early_stop_metric="eval/accuracy",
      checkpoint_every=1000,
      keep_checkpoints=2,
      # 'ppmi_svd': the token table starts from PPMI-SVD vectors of the train split's first
      # `embedding_init_tokens` tokens (ptm_jax/embedding_init.py); '' = random init.
      embedding_init="",
      embedding_init_tokens=2_000_000,
      embedding_init_std=0.0,  # std of the PPMI-SVD rows; 0 = the model's initializer_range
      # > 0: the embedding tables loaded from `init_from` are rescaled so the token table has this
      # RMS (function-preserving under the embedding LayerNorm; see embedding_init.rescale_tables).
      init_embedding_rms=0.0,
      # Parameters not loaded from `init_from` but left at the fresh init: fnmatch patterns over
      # '/'-joined paths, each covering the module it names ('decoder*', 'layers_11').
      init_skip=(),
  ))
  cfg.update(overrides)
  return cfg


def base_config(family: str, variant: str, objective: str) -> ml_collections.ConfigDict:
  """A complete run config; experiment files adjust it."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.init_from = ""      # a run dir / checkpoint to load params from (fine-tuning)
  config.model = model_config(family, variant)
  config.objective = objective_config(objective)
  config.data = data_loader.default_data_config()
  config.optim = optim.default_optim_config()
  config.train = train_config()
  # num_devices: 0 = every device (of every host); a prefix of jax.devices() otherwise.
  config.mesh = ml_collections.ConfigDict(dict(preset="dp", tensor_parallel=0, num_devices=0))
  config.report = ml_collections.ConfigDict(dict(title=""))
  return config


def bert_pretraining(config: ml_collections.ConfigDict, variant: str, *,
                     steps: int = 1_000_000) -> ml_collections.ConfigDict:
  """BERT's pretraining recipe (Devlin et al. 2019, A.2), shared by the BERT-style experiments.

  AdamW 1e-4, 10k warmup, linear decay, weight decay 0.01, batch 256, 512-token rows for base/large
  (128 otherwise), bf16 compute; `runlocal` swaps in the CPU size (8k vocab, 300 steps of 16 rows).
  """
  config.data.bos, config.data.eos = True, True  # [CLS] chunk [SEP]
  config.optim.update(learning_rate=1e-4, warmup_steps=10_000, schedule="linear", weight_decay=0.01)
  config.train.update(steps=steps, batch_size=256, log_every=100, eval_every=10_000,
                      checkpoint_every=10_000)
  config.data.seq_len = 512 if variant in ("base", "large") else 128
  config.model.dtype = "bfloat16"
  if variant == "runlocal":
    config.model.dtype = "float32"
    config.data.seq_len = 128
    config.data.tokenizer.vocab_size = 8000
    config.optim.update(learning_rate=1e-3, warmup_steps=20)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=4,
                        checkpoint_every=100)
  return config
