"""SpanBERT (Joshi et al., 2020, "SpanBERT: Improving Pre-training by Representing and Predicting
Spans", TACL).

Claim reproduced: masking contiguous random spans of whole words (lengths ~ Geometric(0.2)
truncated at 10 words, mean 3.8; 15 % of tokens; 80/10/10 per span) and adding the span boundary
objective -- predicting each masked token from the two tokens just outside its span plus a
position embedding -- trains without NSP on single long sequences; the SBO loss falls together
with the MLM loss, i.e. the boundary representations learn to summarise the span (the paper: SBO
+ span masking beat BERT on SQuAD / coreference; its Table 6 ablation credits SBO).
The recipe: BERT-base/large sizes, 512-token single-document rows, batch 256, 2.4 M steps, AdamW
1e-4, 10k warm-up, linear decay (the paper's); objectives/spanbert.py has the exact masking.

  python -m ptm_jax.main --config experiments/spanbert.py:runlocal --workdir runs/spanbert
  python -m ptm_jax.main --config experiments/spanbert.py:base --workdir runs/spanbert_base

`arg` is `runlocal` or a BERT size (tiny, mini, small, medium, base, large).
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("encoder", variant, "spanbert")
  config.data.source = "news_en"
  config.data.annotations = ("words",)  # spans are counted in whole words
  base.bert_pretraining(config, variant, steps=2_400_000)
  config.report.title = f"SpanBERT-{variant} (span masking + SBO) on {config.data.source}"
  return config
