"""ALBERT pretraining (Lan et al., 2020, "ALBERT: A Lite BERT for Self-supervised Learning of
Language Representations").

Claim reproduced: with a factorised embedding (E = 128 << H) and ALL layers sharing one set of
weights, ALBERT-base has ~12M parameters (11,813,810 with its heads; BERT-base has 110M) yet
still learns real-text statistics with masked LM plus sentence-order prediction: the MLM loss
falls and the SOP head learns to tell in-order from swapped consecutive segments of the same
document (eval/sop_accuracy above the 50 % chance level), a task that NSP's topic cue cannot
solve (section 4.6).

  python -m ptm_jax.main --config experiments/albert.py:runlocal --workdir runs/albert
  python -m ptm_jax.main --config experiments/albert.py:base --workdir runs/albert_base  # GPU/TPU

`arg` is `runlocal` (tiny, CPU, minutes) or an ALBERT size: base, large, xlarge, xxlarge;
`--config.model.share=attention|ffn|none` gives the paper's Table 4 sharing ablation.

Recipe (section 4.1): seq_len 512 (10 % shorter pairs, as BERT), batch 4096, LAMB with peak LR
0.00176, 125K steps with linear warmup (3,125 steps) and linear decay, no dropout, SOP pairs
(`data.pairs='sop'`). Deviation: single-token masking instead of ALBERT's n-gram masking (the
span-masking objective covers that). `runlocal` keeps LAMB but scales to a CPU: batch 16,
seq_len 128, LR 5e-2 (LAMB's trust ratio bounds each layer's step to about LR x its weight norm,
so the tiny model tolerates a large LR, and a few hundred steps must move the loss).
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("albert", variant, "mlm_sop")
  config.data.source = "news_en"
  config.data.pairs = "sop"  # [CLS] A [SEP] B [SEP], consecutive segments, swapped half the time
  config.data.seq_len = 512
  config.optim.update(name="lamb", learning_rate=0.00176, warmup_steps=3125, schedule="linear",
                      weight_decay=0.01, eps=1e-6)
  config.train.update(steps=125_000, batch_size=4096, log_every=100, eval_every=10_000,
                      checkpoint_every=10_000)
  config.model.dtype = "bfloat16"
  if variant == "runlocal":
    config.model.dtype = "float32"
    config.data.seq_len = 128
    config.data.tokenizer.vocab_size = 8000
    config.optim.update(learning_rate=5e-2, warmup_steps=20)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=4,
                        checkpoint_every=100)
  config.report.title = f"ALBERT-{variant} masked LM + SOP on {config.data.source}"
  return config
