"""T5 span-corruption pre-training (Raffel et al., 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer", JMLR, section 3.7 / Tables 4-5).

Claim reproduced: replacing random spans (15 % of tokens, mean length 3) with sentinels and
predicting only the dropped spans trains an encoder-decoder as well as i.i.d. denoising while the
decoder reads ~5x fewer tokens than the row (568 raw tokens -> 512 encoder inputs and only 114
decoder targets): the loss falls on targets a fifth of the row's length
(`num_targets` / `num_encoder_tokens` ~ 0.22 in the metrics).
Recipe: T5 v1.0 sizes (`t5_small`, `t5_base`, `t5_large`; v1.1 with `t5_v1_1_*`), C4-style rows
of 568 contiguous tokens (`data.cross_document`: T5 corrupts before packing, so a row is one
stream), 100 sentinels (`data.tokenizer.extra_ids`), batch 128, 2^19 steps, Adafactor at 0.01
(T5's inverse-sqrt decay after 10k steps is approximated by a cosine to 10 %), z-loss 1e-4.

  python -m ptm_jax.main --config experiments/t5.py:runlocal --workdir runs/t5
  python -m ptm_jax.main --config experiments/t5.py:t5_base --workdir runs/t5_base

`arg` is `runlocal` or an encdec T5 variant (t5_small, t5_base, t5_large, t5_v1_1_small, ...).
"""
from ptm_jax.configs import base
from ptm_jax.objectives import span_corruption


def get_config(arg: str = "runlocal"):
  arg = arg or "runlocal"
  variant = "t5_runlocal" if arg == "runlocal" else arg
  config = base.base_config("encdec", variant, "span_corruption")
  config.data.source = "news_en"
  config.data.cross_document = True  # one contiguous stream per row, as T5's pre-packing examples
  config.data.bos, config.data.eos = False, True  # T5 has no BOS; </s> ends each document
  config.data.tokenizer.extra_ids = 100  # <extra_id_0..99>
  options = span_corruption.Options()
  config.data.seq_len = span_corruption.tokens_length_for(512, options)[0]  # 568
  config.optim.update(name="adafactor", learning_rate=0.01, warmup_steps=0, schedule="cosine",
                      end_lr_fraction=0.1, weight_decay=0.0, clip_norm=0.0)
  config.train.update(steps=2 ** 19, batch_size=128, log_every=100, eval_every=10_000,
                      checkpoint_every=10_000)
  config.model.dtype = "bfloat16"
  if arg == "runlocal":
    config.model.dtype = "float32"
    config.data.seq_len = span_corruption.tokens_length_for(128, options)[0]  # 141 -> 128 / 29
    config.data.tokenizer.vocab_size = 8000
    config.optim.update(name="adamw", learning_rate=1e-3, warmup_steps=20, schedule="linear",
                        end_lr_fraction=0.0, weight_decay=0.01, clip_norm=1.0)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=4,
                        checkpoint_every=100)
  config.report.title = f"T5 ({variant}) span corruption on {config.data.source}"
  return config
