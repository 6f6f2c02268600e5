"""RoBERTa pretraining (Liu et al., 2019, "RoBERTa: A Robustly Optimized BERT Pretraining
Approach").

Claim reproduced: BERT's masked LM alone, with the paper's changes -- dynamic masking (re-drawn
every step on device), FULL-SENTENCES inputs that cross document boundaries (a separator between
documents, one attention segment per row; `data.cross_document`), no NSP and no token types,
larger batches with a larger learning rate, Adam beta2 = 0.98 -- trains a model whose masked-LM
loss falls steadily on real text without any sentence-pair signal (the paper's Table 2: dropping
NSP matches or improves downstream results).

  python -m ptm_jax.main --config experiments/roberta.py:runlocal --workdir runs/roberta
  python -m ptm_jax.main --config experiments/roberta.py:base --workdir runs/roberta_base  # GPU/TPU

`arg` is `runlocal` (tiny, CPU, minutes), `base` or `large` (the paper's Table 9 recipes).

Model: the BERT encoder with `type_vocab_size=0`, `position_offset=2` and 514 position rows, as
HF RoBERTa (positions start at padding_idx + 1 = 2; every row is one segment so positions run
0..L-1 and the offset is exactly HF's), LayerNorm eps 1e-5. Tokenizer: byte-fallback BPE (the
closest the project's sentencepiece gets to RoBERTa's byte-level BPE).

Scaling of the schedule: the paper moves from BERT's batch 256 / peak LR 1e-4 / 1M steps to batch
8K / 6e-4 (base; 4e-4 large) / 500K steps with 24K (30K) warmup steps, i.e. the LR grows about as
sqrt(batch) (6 ~ sqrt(32)) and the step count halves. `runlocal` applies the same rules to
BERT's runlocal (batch 16, LR 1e-3, 300 steps, warmup 20): batch 4x = 64, LR sqrt(4)x = 2e-3,
steps / 2 = 150, warmup 5 % (the paper's 24K/500K) = 8 steps.
"""
from ptm_jax.configs import base

_PAPER = {  # Table 9: peak LR, warmup steps
    "base": (6e-4, 24_000),
    "large": (4e-4, 30_000),
}


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("encoder", variant, "mlm")
  config.model.update(type_vocab_size=0, position_offset=2, max_position_embeddings=514,
                      layer_norm_eps=1e-5)
  config.data.source = "news_en"
  config.data.cross_document = True  # FULL-SENTENCES: <s> sentences </s> sentences ... per row
  config.data.bos, config.data.eos = True, True  # <s> starts each row; </s> separates documents
  config.data.tokenizer.update(model_type="bpe", byte_fallback=True)
  config.data.seq_len = 512
  lr, warmup = _PAPER.get(variant, _PAPER["base"])
  config.optim.update(name="adamw", learning_rate=lr, warmup_steps=warmup, schedule="linear",
                      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)
  config.train.update(steps=500_000, batch_size=8192, log_every=100, eval_every=10_000,
                      checkpoint_every=10_000)
  config.model.dtype = "bfloat16"
  if variant == "runlocal":
    config.model.dtype = "float32"
    config.data.seq_len = 128
    config.data.tokenizer.vocab_size = 8000
    config.optim.update(learning_rate=2e-3, warmup_steps=8)
    config.train.update(steps=150, batch_size=64, log_every=10, eval_every=50, eval_batches=4,
                        checkpoint_every=50)
  config.report.title = f"RoBERTa-{variant} (FULL-SENTENCES masked LM) on {config.data.source}"
  return config
