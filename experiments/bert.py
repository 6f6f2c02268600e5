"""BERT masked-LM pretraining (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding").

Claim reproduced: a bidirectional encoder trained only with the cloze objective (15 % of tokens
selected; 80 % [MASK], 10 % random, 10 % kept) learns real-text statistics -- the MLM loss on held-out
news falls far below the unigram entropy within a few hundred steps -- and (quickstart) transfers to
sentiment classification better than random init. NSP is added by the objective-zoo issue.

  python -m ptm_jax.main --config experiments/bert.py:runlocal --workdir runs/bert
  python -m ptm_jax.main --config experiments/bert.py:base --workdir runs/bert_base   # GPU/TPU

`arg` is `runlocal` (tiny, CPU, minutes) or a BERT size: tiny, mini, small, medium, base, large.
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("encoder", variant, "mlm")
  config.data.source = "news_en"
  config.data.bos, config.data.eos = True, True  # [CLS] chunk [SEP]
  config.optim.update(learning_rate=1e-4, warmup_steps=10_000, schedule="linear", weight_decay=0.01)
  config.train.update(steps=1_000_000, batch_size=256, log_every=100, eval_every=10_000,
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
  config.report.title = f"BERT-{variant} masked LM on {config.data.source}"
  return config
