"""MASS pre-training (Song et al., 2019, "MASS: Masked Sequence to Sequence Pre-training for
Language Generation", ICML).

Claim reproduced: masking a contiguous fragment of 50 % of each document in the encoder and
predicting exactly that fragment with a decoder whose other inputs are masked trains the encoder
to understand the unmasked context and the decoder to rely on it: the fragment loss falls (the
paper: k = 50 % is the best trade-off, Figure 4; BERT-like k = 1 and LM-like k = m are worse;
`--config.objective.fragment_rate` sweeps k).
Recipe: a 6+6-layer Transformer with learned positions and post-LN (the `encdec` BART layout,
1024 wide, 8 heads of 128, 4096 MLP, the paper's XLM-based model), packed 512-token rows, Adam
1e-4 (the paper's learning rate) with linear warmup/decay.

  python -m ptm_jax.main --config experiments/mass.py:runlocal --workdir runs/mass
  python -m ptm_jax.main --config experiments/mass.py:base --workdir runs/mass_base

`arg` is `runlocal` or `base`.
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  arg = arg or "runlocal"
  if arg not in ("runlocal", "base"):
    raise ValueError(f"unknown MASS size {arg!r}; known: runlocal, base")
  config = base.base_config("encdec", "bart_runlocal" if arg == "runlocal" else "bart_large",
                            "mass")
  if arg == "base":  # the paper's model: 6 + 6 layers of width 1024
    config.model.update(num_encoder_layers=6, num_decoder_layers=6, num_heads=8, head_dim=128)
  config.data.source = "news_en"
  config.data.bos, config.data.eos = True, True
  config.data.seq_len = 512
  config.optim.update(learning_rate=1e-4, warmup_steps=4000, schedule="linear", weight_decay=0.01)
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
  config.report.title = f"MASS ({arg}) fragment masking on {config.data.source}"
  return config
