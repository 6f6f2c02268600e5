"""The equal-compute encoder comparison: eight pretraining objectives, one encoder size, one corpus,
one FLOP budget, then the same fine-tunes.

Claims looked for (each paper's, at equal pretraining compute):
  * ELECTRA >= MLM for small models (Clark et al. 2020, Tables 1 and 8: ELECTRA-Small 79.9 vs
    BERT-Small 75.1 GLUE at the same FLOPs -- its generator's FLOPs counted);
  * NSP does not help (Liu et al. 2019, RoBERTa Table 2: removing NSP matches or improves);
  * span masking >= token masking (Joshi et al. 2020, SpanBERT Tables 1-5, 6).
Members (each built from its own experiment file, so each keeps its paper's objective, data recipe and
model family): MLM (BERT without NSP), MLM+NSP (BERT), RoBERTa (FULL-SENTENCES, no NSP), whole-word
masking, ERNIE (English: words, PMI phrases, capitalised entities, the three levels mixed per row),
SpanBERT (+SBO), ALBERT (all layers shared, factorised embedding, SOP) and ELECTRA (generator 1/4 +
discriminator). Forced equal across members (ptm_jax/compare.py): encoder depth/width/heads/FFN,
`data.source`, `data.seq_len`, the one sentencepiece tokenizer, batch size, the optimizer (AdamW,
one learning rate and schedule: the per-paper optimizers differ in ways a budget comparison should
not confound), seed and the fine-tuning budget.

Budget: `comparison.reference_steps` steps of the reference member (`mlm`) at its FLOPs per step;
every member runs floor(budget / its FLOPs per step) steps (FLOP model: ptm_jax/flops.py), so the
cheaper objectives run more steps; warm-up is scaled with the step count. ALBERT's parameters differ
(shared layers); its FLOPs, not its parameters, are what is equal. Each pretrained encoder (ELECTRA's
discriminator) is fine-tuned on `rt_sentiment` and `news_source` with the same budget and seeds; the
random-init baseline is trained once per task and seed, as the shared floor.

  python -m ptm_jax.main --config experiments/compare_encoders.py:runlocal --workdir runs/cmp
  python -m ptm_jax.main --config experiments/compare_encoders.py:cpu --workdir runs/cmp_cpu
  python -m ptm_jax.main --config experiments/compare_encoders.py:gpu --workdir runs/cmp_gpu

`arg`: `runlocal` (tiny: the test suite's; 2 layers, 64 wide, vocab 2000, tens of steps, one
seed), `cpu` (2 layers, 128 wide, the quickstart's pretraining: 1,200 MLM steps on news + the
rt_sentiment text; 75 minutes on 2 CPU cores; its records are in results/compare_encoders_cpu),
`gpu` (ELECTRA-Small's shape: 12 layers, 256 wide, 4 heads; bf16; rotary positions; 6,000 MLM
steps of 128 x 128 tokens = 37 epochs of news_en; 3 seeds). Writes `compare_encoders.md`,
`compare_encoders.png` and `compare_encoders.json` in the workdir; a rerun of the same command
resumes.
"""
import ml_collections

from ptm_jax.configs import base
from ptm_jax.tasks import finetune

ARGS = ("runlocal", "cpu", "gpu")
# name -> (experiment spec, label); the specs are loaded at `runlocal` size and then resized.
MEMBERS = {
    "mlm": ("experiments/bert.py:runlocal_mlm", "MLM (BERT, no NSP)"),
    "mlm_nsp": ("experiments/bert.py:runlocal", "MLM + NSP (BERT)"),
    "roberta": ("experiments/roberta.py:runlocal", "RoBERTa (FULL-SENTENCES)"),
    "wwm": ("experiments/bert_wwm.py:runlocal", "whole-word masking"),
    "ernie": ("experiments/ernie.py:runlocal", "ERNIE (word/phrase/entity)"),
    "spanbert": ("experiments/spanbert.py:runlocal", "SpanBERT (spans + SBO)"),
    "albert": ("experiments/albert.py:runlocal", "ALBERT (shared, SOP)"),
    "electra": ("experiments/electra.py:runlocal", "ELECTRA (gen 1/4 + disc)"),
}


def get_config(arg: str = "runlocal"):
  arg = arg or "runlocal"
  if arg not in ARGS:
    raise ValueError(f"compare_encoders takes one of {', '.join(ARGS)}, not {arg!r}")
  # The shared settings live in an ordinary run config (every field overridable by flag); the
  # members take theirs from it. model/objective here are the reference member's and the baseline's.
  config = base.base_config("encoder", "runlocal", "mlm")
  config.data.source = "news_en"
  config.data.bos, config.data.eos = True, True
  config.optim.update(name="adamw", schedule="linear", weight_decay=0.01, b1=0.9, b2=0.999,
                      eps=1e-6)
  config.comparison = ml_collections.ConfigDict(dict(
      members=tuple(MEMBERS),
      experiments={k: spec for k, (spec, _) in MEMBERS.items()},
      labels={k: label for k, (_, label) in MEMBERS.items()},
      reference="mlm",
      reference_steps=0,      # the budget: this many steps of the reference member
      albert_embedding_size=0,  # ALBERT's E (its factorised embedding); 0 = embed_dim // 4
      # How sparse vocabulary projections count (ptm_jax/flops.py): 'expected' = mask_rate x
      # seq_len, the method's cost (BERT's max_predictions_per_seq); 'slab' = the static slab this
      # code computes (mean + 6 sd of the masked count: 60 of 64 positions for SpanBERT's spans).
      scored_positions="expected",
      pretrain_eval=True,     # one held-out evaluation at the end of each pretraining
      compilation_cache=True,  # workdir/xla_cache: same-shaped fine-tunes compile once
      # Runs that span machines (ptm_jax/compare_records.py): a directory that keeps one record per
      # finished unit (read first, written as each unit ends), units to run now (() = all that have
      # no record) and a wall-time budget in seconds after which no new unit starts (0 = none).
      records_dir="",
      run_only=(),
      time_budget_s=0.0,
  ))
  if arg == "runlocal":
    config.model.update(num_layers=2, embed_dim=64, num_heads=1, mlp_dim=256,
                        max_position_embeddings=128, dtype="float32")
    config.data.seq_len = 64
    config.data.tokenizer.update(vocab_size=2000, max_train_chars=1_000_000)
    config.optim.update(learning_rate=1e-3, warmup_steps=4)
    config.train.update(batch_size=8, log_every=10, eval_batches=2)
    config.comparison.update(reference_steps=20, pretrain_eval=False)
    downstream = dict(seeds=(0,), steps=10, batch_size=16, learning_rate=3e-4, warmup_steps=2,
                      eval_every=10, eval_batch_size=256, train_examples=320)
  elif arg == "cpu":
    # The quickstart's pretraining: 1,200 MLM steps of 32 x 64 tokens (2.4M tokens, ~3.3 min on 2
    # cores) on news plus the unlabelled rt_sentiment train/validation text (task-adaptive
    # pretraining, Gururangan et al. 2020; the test splits are never read by pretraining). With
    # news only and 500 steps (the size until 2026-12-06) no member beat random init on either
    # task (docs/compare_encoders.md). Rotary positions (with BERT's learned table,
    # `--config.model.positions=learned`, these encoders stayed bag-of-words models: README, "Why
    # rotary positions").
    config.data.source = "news_en:0.5,rt_sentiment:0.5"
    config.model.update(num_layers=2, embed_dim=128, num_heads=2, mlp_dim=512,
                        max_position_embeddings=128, dtype="float32", positions="rotary")
    config.data.seq_len = 64
    config.data.tokenizer.update(vocab_size=4000, max_train_chars=2_000_000)
    config.optim.update(learning_rate=2e-3, warmup_steps=50)
    config.train.update(batch_size=32, log_every=50, eval_batches=8)
    config.comparison.update(reference_steps=1_200)
    # The quickstart's fine-tuning protocol: LR 1e-3 (its dev sweep over {3e-4, 1e-3, 2e-3}),
    # up to 900 steps of 16 rows with early stopping on dev (patience 3), rt_sentiment snippets
    # packed up to 8 per row (~26 per step; news_source articles fill a row each: 16 per step).
    # At 300 unpacked steps (the protocol until 2026-11-24) both inits were still improving.
    downstream = dict(seeds=(0, 1), steps=900, batch_size=16, pack_examples=8, learning_rate=1e-3,
                      warmup_steps=30, eval_every=100, early_stop_patience=3, eval_batch_size=256,
                      train_examples=0)
  else:
    # Rotary positions for every member, as the `cpu` table was run: with BERT's learned table the
    # CPU-size encoders never learned word order (README, "Why rotary positions"); the scheme is
    # shared, so it favours no objective.
    config.model.update(num_layers=12, embed_dim=256, num_heads=4, mlp_dim=1024,
                        max_position_embeddings=512, dtype="bfloat16", positions="rotary")
    config.data.seq_len = 128
    config.data.tokenizer.update(vocab_size=8000)
    config.optim.update(learning_rate=5e-4, warmup_steps=500)
    config.train.update(batch_size=128, log_every=100, eval_batches=20)
    # The budget in passes over the corpus, BERT's ratio: its 1M steps of 256 x 512 tokens were
    # ~40 epochs of 3.3B words. news_en's train split is 2.66M tokens under this 8k vocabulary,
    # so 6,000 MLM steps of 128 x 128 tokens are 37 epochs (98M tokens); the 20k steps planned
    # until 2026-11-25 would have been 123 epochs of a 14M-parameter model over 2.66M tokens.
    config.comparison.update(reference_steps=6_000)
    # The cpu size's fine-tuning protocol at this row length: rt_sentiment snippets packed up to
    # 8 per 128-token row (~3 per row; 32 rows ~ 100 snippets, ~1 epoch per 100 steps); up to
    # 1,000 steps (~10 epochs of either task) with early stopping on dev (patience 4).
    downstream = dict(seeds=(0, 1, 2), steps=1000, batch_size=32, pack_examples=8,
                      learning_rate=1e-4, warmup_steps=100, eval_every=100, eval_batch_size=256,
                      early_stop_patience=4, train_examples=0)
  # Every fine-tune field (tasks/finetune.py DEFAULTS) is present, so each is overridable by flag.
  # Mean pooling: MLM-only members never train the [CLS] vector or the pooler.
  config.downstream = ml_collections.ConfigDict({**finetune.DEFAULTS, **dict(
      tasks=("rt_sentiment", "news_source"), seq_len=config.data.seq_len, pooling="mean",
      head_dropout_rate=0.1, weight_decay=0.01, **downstream)})
  config.report.title = f"Equal-compute encoder comparison ({arg})"
  return config
