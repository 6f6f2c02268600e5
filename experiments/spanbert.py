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
  config.data.bos, config.data.eos = True, True
  config.optim.update(learning_rate=1e-4, warmup_steps=10_000, schedule="linear", weight_decay=0.01)
  config.train.update(steps=2_400_000, batch_size=256, log_every=100, eval_every=10_000,
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
  config.report.title = f"SpanBERT-{variant} (span masking + SBO) on {config.data.source}"
  return config
