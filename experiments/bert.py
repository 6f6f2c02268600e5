"""BERT pretraining with masked LM + next-sentence prediction (Devlin et al., 2019, "BERT:
Pre-training of Deep Bidirectional Transformers for Language Understanding", section 3.1).

Claim reproduced: a bidirectional encoder trained on the cloze objective (15 % of tokens selected;
80 % [MASK], 10 % random, 10 % kept) plus NSP on `[CLS] A [SEP] B [SEP]` pairs (B the true next
segment half of the time, a segment of another document otherwise) learns real-text statistics --
the MLM loss on held-out news falls far below the unigram entropy within a few hundred steps --
while the NSP head learns to tell continuations from random segments (eval/nsp_accuracy above
the 50 % chance level), and (quickstart) transfers to sentiment classification better than random
init. The plain-MLM variant (no pairs, packed chunks) is `<size>_mlm`, e.g. `runlocal_mlm`.

  python -m ptm_jax.main --config experiments/bert.py:runlocal --workdir runs/bert
  python -m ptm_jax.main --config experiments/bert.py:runlocal_mlm --workdir runs/bert_mlm
  python -m ptm_jax.main --config experiments/bert.py:base --workdir runs/bert_base   # GPU/TPU

`arg` is `runlocal` (tiny, CPU, minutes) or a BERT size: tiny, mini, small, medium, base, large;
a `_mlm` suffix drops NSP (objective `mlm`, packed single-segment rows).
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  arg = arg or "runlocal"
  plain_mlm = arg.endswith("_mlm")
  variant = arg[:-len("_mlm")] if plain_mlm else arg
  config = base.base_config("encoder", variant, "mlm" if plain_mlm else "mlm_nsp")
  config.data.source = "news_en"
  if not plain_mlm:
    config.data.pairs = "nsp"  # one [CLS] A [SEP] B [SEP] example per row, token_types 0/1
  base.bert_pretraining(config, variant, steps=1_000_000)
  what = "masked LM" if plain_mlm else "masked LM + NSP"
  config.report.title = f"BERT-{variant} {what} on {config.data.source}"
  return config
