"""Switch Transformer: sparse mixture-of-experts language modelling (Fedus, Zoph and Shazeer, 2022,
"Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient Sparsity").

Claim reproduced: replacing every other feed-forward by E experts with top-1 routing multiplies the
parameters while keeping the FLOPs per token, and at the same number of steps (equal compute) the
sparse model reaches a lower held-out loss than its dense twin (paper Figure 1 and Table 1:
Switch-Base beats T5-Base at equal FLOPs). Recipe (section 2 and Table 9): top-1 routing, capacity
factor 1.25 in training and 2.0 in evaluation, load-balancing loss weight 0.01, router in float32,
every other layer routed; tokens over capacity skip the layer through the residual. Two forms:
the paper's own (`t5_*`: T5 v1.0 with experts in every other layer of both stacks, T5 span
corruption as in experiments/t5.py; `t5_base` is Switch-Base-8, 619M parameters, HF's
`google/switch-base-8` shape) and the GPT-2 decoder with causal LM (`runlocal`, `small`: the
decoder-only form of GShard / Switch-C); routing priority is by position, so the decoder stays
causal (tests/test_moe.py). `dense_*` variants are the same models with the experts removed: the
baseline of the claim.

FLOPs per token (`ptm_jax.flops`, training, 8000-token vocabulary): the method's cost
(`scored='expected'`: each token's one expert + the router) is the dense twin's + 0.03 % (`small`
6.599e8 vs 6.597e8; `t5_base` 7.278e8 vs 7.276e8); what this code runs (`scored='slab'`: every
expert over its capacity slots, 1.25x the tokens, + the one-hot dispatch and combine einsums, 2 E C
D each per token, which grow with the row like attention) is +17 % for `small` (T = 1024,
7.732e8) and +11 % for `t5_base` (8.086e8): the price of static shapes.
`--config.model.moe_dropless=True` drops no token and runs the method's cost (tokens sorted by
expert, `jax.lax.ragged_dot`; layers/moe.py); under `expert` it all-reduces activations where
the capacity path sends tokens with all-to-alls (docs/scaling.md).

  python -m ptm_jax.main --config experiments/switch.py:runlocal --workdir runs/switch
  python -m ptm_jax.main --config experiments/switch.py:dense_runlocal --workdir runs/switch_dense
  python -m ptm_jax.main --config experiments/switch.py:small --workdir runs/switch_small  # GPU
      # and --config.mesh.preset=expert to put the experts on different devices
  python -m ptm_jax.main --config experiments/switch.py:t5_base --workdir runs/switch_base_8

`arg`: `runlocal` (2-layer GPT, width 128, 8 experts in layer 2; CPU, minutes), `small` (GPT-2
small with 8 experts in every other layer: 124M dense, 322M parameters, the same FLOPs per token),
`t5_runlocal` (2+2-layer T5, width 128, 8 experts in the second layer of each stack), `t5_base`
(Switch-Base-8 vs T5-Base, 222.9M); each with a `dense_` twin.
"""
import os

from ptm_jax import configs
from ptm_jax.configs import base

VARIANTS = ("runlocal", "small", "t5_runlocal", "t5_base")


def get_config(arg: str = "runlocal"):
  variant = arg or "runlocal"
  dense = variant.startswith("dense_")
  size = variant[len("dense_"):] if dense else variant
  if size not in VARIANTS:
    raise ValueError(f"switch takes one of {', '.join(VARIANTS)} (or dense_<size>), not {arg!r}")
  if size.startswith("t5_"):
    return _switch_t5(size, dense)
  config = base.base_config("decoder", size, "clm")
  config.data.source = "news_en"
  config.data.bos, config.data.eos = False, True
  config.model.update(moe_experts=0 if dense else 8, moe_every=2, moe_top_k=1,
                      moe_capacity_factor=1.25, moe_eval_capacity_factor=2.0,
                      moe_balance_weight=0.01)
  config.optim.update(learning_rate=6e-4, warmup_steps=2000, schedule="cosine",
                      end_lr_fraction=0.1, b2=0.95, eps=1e-8, weight_decay=0.1)
  config.model.dtype = "bfloat16"
  config.data.seq_len = 1024
  config.train.update(steps=50_000, batch_size=256, log_every=100, eval_every=2500,
                      eval_batches=20, checkpoint_every=5000)
  if size == "runlocal":
    config.model.dtype = "float32"
    config.data.seq_len = 128
    config.data.tokenizer.update(vocab_size=8000, model_type="bpe")
    config.optim.update(learning_rate=2e-3, warmup_steps=20)
    config.train.update(steps=300, batch_size=16, log_every=10, eval_every=100, eval_batches=8,
                        checkpoint_every=100)
  kind = "dense" if dense else f"Switch-{config.model.moe_experts}"
  config.report.title = f"{kind} GPT-{size} causal LM on {config.data.source}"
  return config


def _switch_t5(size: str, dense: bool):
  """T5 span corruption (experiments/t5.py's recipe) with Switch's experts, or without."""
  t5_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "t5.py")
  config = configs.load_experiment(f"{t5_file}:{'runlocal' if size == 't5_runlocal' else size}")
  config.model.update(moe_experts=0 if dense else 8, moe_every=2, moe_top_k=1,
                      moe_capacity_factor=1.25, moe_eval_capacity_factor=2.0,
                      moe_balance_weight=0.01)
  kind = "T5" if dense else f"Switch-{config.model.moe_experts}"
  config.report.title = f"{kind} ({size}) span corruption on {config.data.source}"
  return config
