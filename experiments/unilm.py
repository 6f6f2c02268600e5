"""UniLM (Dong et al., 2019, "Unified Language Model Pre-training for Natural Language
Understanding and Generation", NeurIPS).

Claim reproduced: one shared Transformer, trained on cloze tasks under bidirectional,
sequence-to-sequence, left-to-right and right-to-left self-attention masks (1/3, 1/3, 1/6, 1/6 of
each batch), learns all four at once: every per-type masked-token loss falls
(`loss_bidirectional`, `loss_seq2seq`, `loss_left_to_right`, `loss_right_to_left`) -- the network
that UniLM then fine-tunes for both NLU and generation. (The runlocal size, 300 steps, only gets
to unigram-level losses, 6.6-7.0 nats per type, where the types are not yet ordered by context.)
Recipe: BERT sizes with 6 token types (the reference's LM-identifying segment ids), 512-token rows,
15 % masking (80 % single tokens, 20 % bi/trigrams), batch 330, 770k steps, AdamW with linear warmup
and decay (the paper: 3e-5 with 40k warmup from a BERT-large init; trained from scratch here, with
BERT's 1e-4 / 10k).

  python -m ptm_jax.main --config experiments/unilm.py:runlocal --workdir runs/unilm
  python -m ptm_jax.main --config experiments/unilm.py:large --workdir runs/unilm_large

`arg` is `runlocal` or a BERT size (tiny, mini, small, medium, base, large).
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("encoder", variant, "unilm")
  config.data.source = "news_en"
  config.model.type_vocab_size = 6  # LM type in the segment embeddings (objectives/unilm.py)
  base.bert_pretraining(config, variant, steps=770_000)
  if variant != "runlocal":
    config.train.batch_size = 330
  config.report.title = f"UniLM-{variant} (4 LM masks, one network) on {config.data.source}"
  return config
