"""GPT-2 causal-LM pretraining (Radford et al., 2019, "Language Models are Unsupervised Multitask
Learners"); `llama_*` variants use the Llama options (Touvron et al., 2023: RMSNorm, rotary, SwiGLU,
grouped-query attention, untied head).

Claim reproduced: a pre-LN decoder trained on next-token prediction of packed real text learns the
text's statistics -- held-out perplexity falls far below the unigram baseline -- with no prediction
across document (packing) boundaries.

  python -m ptm_jax.main --config experiments/gpt.py:runlocal --workdir runs/gpt
  python -m ptm_jax.main --config experiments/gpt.py:small --workdir runs/gpt2_small   # GPU/TPU

`arg` is `runlocal`, `llama_runlocal`, or a GPT-2 size: small, medium, large. The GPT-2 sizes
pad the vocabulary to a multiple of 128 and compute the loss in chunks of 256 positions with the
output layer's gradient formed in the forward pass (each the same loss and gradients as the plain
path; `--config.objective.loss_chunk_size=0 --config.objective.loss_grad_in_forward=False`
restores it).
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("decoder", variant, "clm")
  config.data.source = "news_en"
  config.data.bos, config.data.eos = False, True  # documents end with <eos>, GPT-2 style
  config.data.seq_len = 1024
  config.optim.update(learning_rate=6e-4, warmup_steps=2000, schedule="cosine",
                      end_lr_fraction=0.1, b2=0.95, eps=1e-8, weight_decay=0.1)
  config.train.update(steps=100_000, batch_size=512, log_every=100, eval_every=5000,
                      checkpoint_every=5000)
  config.model.dtype = "bfloat16"
  # The accelerator sizes take the loss-side fast paths (docs/benchmarks.md, "Means implemented";
  # each equals the plain path, tests/test_loss_fast_paths.py): the vocabulary padded to a
  # multiple of 128, the loss in chunks of 256 positions without [B, L, V] float32 logits, and
  # the output layer's gradient formed in the forward pass.
  if not variant.endswith("runlocal"):
    config.model.vocab_pad_multiple = 128
    config.objective.update(loss_chunk_size=256, loss_grad_in_forward=True)
  else:
    config.model.dtype = "float32"
    config.data.seq_len = 128
    config.data.tokenizer.update(vocab_size=8000, model_type="bpe")
    config.optim.update(learning_rate=2e-3, warmup_steps=20)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=4,
                        checkpoint_every=100)
  config.report.title = f"GPT-{variant} causal LM on {config.data.source}"
  return config
