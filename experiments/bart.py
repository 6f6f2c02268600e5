"""BART denoising pre-training (Lewis et al., 2020, "BART: Denoising Sequence-to-Sequence
Pre-training for Natural Language Generation, Translation, and Comprehension", ACL).

Claim reproduced: an encoder-decoder that reconstructs documents corrupted by text infilling
(30 % of tokens in Poisson(3) spans, one [MASK] per span, zero-length spans insert one) and
sentence permutation -- the paper's best combination (Table 1) -- learns to restore the original
text: the reconstruction loss over every token falls far below its initial value, with the encoder
reading ~20 % fewer tokens than the decoder writes. Other mixes are objective options
(token_mask_rate, delete_rate, rotate), e.g. `--config.objective.delete_rate=0.15`.
Recipe: BART sizes (`bart_base`, `bart_large`: learned positions, post-LN, GELU), packed
512-token rows of documents with sentence ids (`data.annotations=('sentences',)`), AdamW with
linear warmup and decay (the paper does not state its learning rate; BART-large trained with
batch 8000 for 500k steps).

Measured at `runlocal` (300 steps, 2 CPU cores, 2026-12-07): the loss falls from 9.0 to an eval
loss of 6.95 (token accuracy 0.036), a decoder language model's level, not a reconstruction: the
post-LN encoder's output has collapsed to one vector at every position (encoder spread 0.002,
`tasks/source_reliance.encoder_spread`; 0.98 fresh). With LR 3e-4: 6.88 / 0.072 / spread 0.07;
with warmup 100: 6.40 / 0.105 / 0.011. None copies its input in 300 steps, so `runlocal` is a
smoke size of the recipe; docs/compare_seq2seq.md has the same collapse at the comparison's
shared LR (2e-3) and what it does to the fine-tunes.

  python -m ptm_jax.main --config experiments/bart.py:runlocal --workdir runs/bart
  python -m ptm_jax.main --config experiments/bart.py:base --workdir runs/bart_base

`arg` is `runlocal`, `base` or `large`.
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  arg = arg or "runlocal"
  variant = f"bart_{arg}"
  config = base.base_config("encdec", variant, "bart")
  config.data.source = "news_en"
  config.data.bos, config.data.eos = True, True  # [CLS] document [SEP], as <s> ... </s>
  config.data.annotations = ("sentences",)  # sentence ids for the permutation
  config.data.seq_len = 512
  config.optim.update(learning_rate=4e-4, warmup_steps=10_000, schedule="linear",
                      weight_decay=0.01)
  config.train.update(steps=500_000, batch_size=256, log_every=100, eval_every=10_000,
                      checkpoint_every=10_000)
  config.model.dtype = "bfloat16"
  if arg == "runlocal":
    config.model.dtype = "float32"
    config.data.seq_len = 128
    config.data.tokenizer.vocab_size = 8000
    config.optim.update(learning_rate=1e-3, warmup_steps=20)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=4,
                        checkpoint_every=100)
  config.report.title = f"BART ({variant}) infilling + sentence permutation on {config.data.source}"
  return config
