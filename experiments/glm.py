"""GLM autoregressive blank infilling (Du et al., 2022, "GLM: General Language Model Pretraining
with Autoregressive Blank Infilling", ACL).

Claim reproduced: one Transformer whose Part A (text with blanks) is read bidirectionally and whose
Part B (the blanked spans, shuffled, each opened by [START]) is generated left to right with 2-D
positions learns to fill multi-token blanks autoregressively: the Part B loss falls far below its
initial value, the model knowing each blank's place (position 1) but not its length (position 2
counts up inside the span) -- the property that lets GLM generate variable-length text.
Recipe: GLM-Base/Large = BERT sizes with a second learned position table
(`model.block_position_embeddings`), 15 % of tokens in Poisson(3) spans, 512-token rows, batch
1024, 200k steps (the paper's BERT-comparable setting); AdamW with warmup and linear decay
(BERT's schedule here). [START] is `<extra_id_0>` (`data.tokenizer.extra_ids=1`), [END] is [SEP].

  python -m ptm_jax.main --config experiments/glm.py:runlocal --workdir runs/glm
  python -m ptm_jax.main --config experiments/glm.py:base --workdir runs/glm_base

`arg` is `runlocal` or a BERT size (tiny, mini, small, medium, base, large).
"""
from ptm_jax.configs import base


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  config = base.base_config("encoder", variant, "glm")
  config.data.source = "news_en"
  config.model.block_position_embeddings = True  # GLM's second position (inside a span)
  config.model.type_vocab_size = 0  # GLM has no segment embeddings
  config.data.tokenizer.extra_ids = 1  # <extra_id_0> = [START]
  base.bert_pretraining(config, variant, steps=200_000)
  config.optim.update(learning_rate=4e-4 if variant != "runlocal" else 1e-3)
  if variant != "runlocal":
    config.train.batch_size = 1024
  config.report.title = f"GLM-{variant} blank infilling on {config.data.source}"
  return config
