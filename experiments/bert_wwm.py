"""BERT with whole-word masking (Google's BERT-wwm release, 2019-05-31; Cui et al. 2021,
"Pre-Training with Whole Word Masking for Chinese BERT", IEEE/ACM TASLP).

Claim reproduced: masking all pieces of a word together (15 % of tokens, 80/10/10 per word) is a
harder cloze task than piece masking -- at equal steps the masked-token loss is higher than
BERT's (experiments/bert.py) because a piece can no longer be guessed from its own word's other
pieces -- and it still falls steadily on real text; the representations transfer downstream at
least as well as BERT's (the paper: +0.5-1 F1 on SQuAD/CMRC, same GLUE).

  python -m ptm_jax.main --config experiments/bert_wwm.py:runlocal --workdir runs/bert_wwm
  python -m ptm_jax.main --config experiments/bert_wwm.py:base --workdir runs/bert_wwm_base
  python -m ptm_jax.main --config experiments/bert_wwm.py:base:zh --workdir runs/bert_wwm_zh

`arg` is `runlocal` or a BERT size (tiny, mini, small, medium, base, large), optionally `:zh` for
People's Daily with its own word segmentation (default: English news, sentencepiece '▁' words).
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant, _, lang = (arg or "runlocal").partition(":")
  config = base.base_config("encoder", variant, "wwm")
  config.data.source = "people_daily_zh" if lang == "zh" else "news_en"
  config.data.annotations = ("words",)  # word_ids [B, L] in every batch
  base.bert_pretraining(config, variant, steps=1_000_000)
  config.report.title = f"BERT-wwm-{variant} on {config.data.source}"
  return config
