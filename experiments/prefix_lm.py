"""Prefix LM (Raffel et al., 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", Table 4 "Prefix LM"; Liu et al., 2018): a decoder-only Transformer that
attends bidirectionally over a random prefix of each document and predicts the rest left to right.

Claim reproduced: with the fully-visible prefix the decoder still learns next-token prediction on
the target portion (the loss falls like a causal LM's), while the prefix positions are free to use
right context -- the mask T5 found to beat a plain causal LM as a pre-training objective
(Table 2: prefix LM > LM on GLUE/SQuAD/translation).
Recipe: GPT-2 sizes, packed 1024-token rows, each document split at a uniform point, AdamW 6e-4
with cosine decay (GPT-2's; the T5 paper trains its decoder-only LM with Adafactor).

  python -m ptm_jax.main --config experiments/prefix_lm.py:runlocal --workdir runs/prefix_lm
  python -m ptm_jax.main --config experiments/prefix_lm.py:small --workdir runs/prefix_lm_small

`arg` is `runlocal`, `llama_runlocal`, or a GPT-2 size: small, medium, large.
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("decoder", variant, "prefix_lm")
  config.data.source = "news_en"
  config.data.bos, config.data.eos = True, True  # [CLS] prefix | target [SEP]
  config.data.seq_len = 1024
  config.optim.update(learning_rate=6e-4, warmup_steps=2000, schedule="cosine",
                      end_lr_fraction=0.1, b2=0.95, eps=1e-8, weight_decay=0.1)
  config.train.update(steps=100_000, batch_size=512, log_every=100, eval_every=5000,
                      checkpoint_every=5000)
  config.model.dtype = "bfloat16"
  if variant.endswith("runlocal"):
    config.model.dtype = "float32"
    config.data.seq_len = 128
    config.data.tokenizer.update(vocab_size=8000, model_type="bpe")
    config.optim.update(learning_rate=2e-3, warmup_steps=20)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=4,
                        checkpoint_every=100)
  config.report.title = f"Prefix LM ({variant} decoder) on {config.data.source}"
  return config
