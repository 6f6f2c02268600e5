"""ELECTRA replaced-token-detection pretraining (Clark et al., 2020, "ELECTRA: Pre-training Text
Encoders as Discriminators Rather Than Generators").

Claim reproduced: a discriminator trained to detect the tokens a small MLM generator replaced
learns from every input token instead of the 15 % that MLM scores, so at equal pretraining compute
ELECTRA-Small beats BERT-Small on downstream tasks (paper Table 1/8: GLUE 79.9 vs 75.1). This file
pretrains the pair; the `compare_encoders` experiment runs it next to an equal-FLOPs BERT and
fine-tunes both discriminator/encoder on the same tasks (FLOPs of both ELECTRA networks:
`ptm_jax.objectives.electra.flops_per_token`).

  python -m ptm_jax.main --config experiments/electra.py:runlocal --workdir runs/electra
  python -m ptm_jax.main --config experiments/electra.py:small --workdir runs/electra_small  # GPU
  python -m ptm_jax.main --config experiments/electra.py:base --workdir runs/electra_base    # GPU

`arg`: `runlocal` (2-layer, CPU, minutes), `small` (12 layers, H=256, 4 heads, FFN 1024, generator
1/4, LR 5e-4, batch 128, seq 128) or `base` (12 layers, H=768, generator 1/3, LR 2e-4, batch 256,
seq 512). Paper Table 6 shared settings: linear decay, 10k warmup, Adam eps 1e-6, weight decay
0.01, dropout 0.1, mask 15 %, lambda = 50, temperature 1. ELECTRA-Small's embedding is factorised
as in the paper (E = 128 < H = 256: `model.embedding_size`; each network projects the shared E-wide
embedding to its own width, as HF's `embeddings_project`). Steps are the paper's ELECTRA counts
(1M / 766k).

Watch `disc_auc` (with `disc_precision` / `disc_recall`), not `disc_accuracy`: a discriminator
that calls every token original scores the share of originals (~0.87). At CPU scale it does, and
this control separates "cannot learn" from "broken": the `compare_encoders:cpu` member's shape,
then the same with uniform replacements (a temperature of 1e6 flattens the generator's softmax:
the released code's `uniform_generator`) -- 1,000 steps on 2 CPU cores, 2026-11-24: eval AUC
0.558 vs 0.917 (docs/compare_encoders.md):

  python -m ptm_jax.main --config experiments/electra.py:runlocal --workdir runs/electra_cpu \
      --config.model.num_layers=2 --config.model.embed_dim=128 --config.model.num_heads=2 \
      --config.model.mlp_dim=512 --config.model.positions=rotary --config.data.seq_len=64 \
      --config.data.tokenizer.vocab_size=4000 --config.data.tokenizer.max_train_chars=2000000 \
      --config.optim.learning_rate=2e-3 --config.optim.warmup_steps=50 \
      --config.train.batch_size=32 --config.train.steps=1000
  # the control: the same flags and --config.objective.temperature=1e6
  # context only (2026-12-06): --config.objective.replacement=shuffle (each replaced token is
  # another selected position's original from the batch: the token alone tells nothing): AUC
  # 0.536 at this learning rate (2e-3; 0.524 after 4,000 steps), 0.680 at 5e-4; the comparison
  # rerun at one shared 5e-4 has ELECTRA level with MLM over 4 seeds (docs/compare_encoders.md, "A context-only
  # control" and "Every member at one shared learning rate of 5e-4")
"""
from ptm_jax.configs import base

VARIANTS = ("runlocal", "small", "base")


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  if variant not in VARIANTS:
    raise ValueError(f"electra takes one of {', '.join(VARIANTS)}, not {variant!r}")
  # The discriminator is a plain encoder: a fine-tune rebuilds it from config.model as its backbone.
  encoder_variant = {"runlocal": "runlocal", "small": "mini", "base": "base"}[variant]
  config = base.base_config("encoder", encoder_variant, "electra")
  config.data.source = "news_en"
  config.data.bos, config.data.eos = True, True  # [CLS] chunk [SEP]
  config.optim.update(name="adamw", schedule="linear", warmup_steps=10_000, b1=0.9, b2=0.999,
                      eps=1e-6, weight_decay=0.01)
  config.model.dtype = "bfloat16"
  if variant == "small":
    config.model.update(num_layers=12, embed_dim=256, num_heads=4, mlp_dim=1024,
                        max_position_embeddings=512, embedding_size=128)
    config.objective.generator_width_fraction = 0.25
    config.optim.learning_rate = 5e-4
    config.data.seq_len = 128
    config.train.update(steps=1_000_000, batch_size=128)
  elif variant == "base":
    config.objective.generator_width_fraction = 1 / 3
    config.optim.learning_rate = 2e-4
    config.data.seq_len = 512
    config.train.update(steps=766_000, batch_size=256)
  config.train.update(log_every=100, eval_every=10_000, checkpoint_every=10_000)
  if variant == "runlocal":
    config.model.dtype = "float32"
    config.objective.generator_width_fraction = 0.25  # H=128 -> a 32-wide, 1-head generator
    config.data.seq_len = 128
    config.data.tokenizer.vocab_size = 8000
    config.optim.update(learning_rate=1e-3, warmup_steps=20)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=4,
                        checkpoint_every=100)
  config.report.title = f"ELECTRA-{variant} replaced-token detection on {config.data.source}"
  return config
