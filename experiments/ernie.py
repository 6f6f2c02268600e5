"""ERNIE 1.0 knowledge masking (Sun et al., 2019, "ERNIE: Enhanced Representation through
Knowledge Integration", Baidu).

Claim reproduced: masking whole phrases and named entities, on top of basic units, is learnable
by the same encoder and cloze loss -- the entity-level masked loss falls as the model learns to
recall whole entities from context (the paper: +1-2 points on Chinese NLI/NER/sentiment over
BERT, Table 2; its Table 3 ablation credits phrase + entity masking).
Knowledge comes from the corpus: People's Daily tags (nr/ns/nt entities, segmentation chunks) for
Chinese (`:zh`), Capitalised spans and PMI collocations for English news (default).

Schedule. The paper trains three stages: basic-level, then phrase-level, then entity-level
masking. `corrupt` is a pure function of (rng, batch), so a stage is a run with its own
`objective.level_probs`, resumed from the previous stage's workdir:

  python -m ptm_jax.main --config experiments/ernie.py:base:stage1 --workdir runs/ernie_base
  python -m ptm_jax.main --config experiments/ernie.py:base:stage2 --workdir runs/ernie_base
  python -m ptm_jax.main --config experiments/ernie.py:base:stage3 --workdir runs/ernie_base

stage1 stops at STAGE_ENDS[0] * steps, stage2 at STAGE_ENDS[1] * steps, stage3 runs to the end
(the paper gives no stage lengths; these fractions are our choice). Without a stage the run mixes
the three levels per row (level_probs 1/3 each), a one-run approximation:

  python -m ptm_jax.main --config experiments/ernie.py:runlocal --workdir runs/ernie

With `:ner` (Chinese only) the run goes on to the paper's NER transfer: `pd_ner_zh` (People's
Daily person/place/organisation tagging, entity-level F1; its test lines are held out of
`people_daily_zh`) fine-tuned from the pretrained encoder and from random init:

  python -m ptm_jax.main --config experiments/ernie.py:runlocal:zh:ner --workdir runs/ernie_ner

`arg` is `<size>[:zh][:stage1|stage2|stage3][:ner]`, size = runlocal or a BERT size.
"""
import ml_collections

from ptm_jax.configs import base
from ptm_jax.tasks import finetune

STAGE_ENDS = (0.2, 0.5)
_STAGES = {"stage1": (1.0, 0.0, 0.0), "stage2": (0.0, 1.0, 0.0), "stage3": (0.0, 0.0, 1.0)}


def get_config(arg: str = "runlocal"):
  variant, *flags = (arg or "runlocal").split(":")
  unknown = [f for f in flags if f not in ("zh", "en", "ner", *_STAGES)]
  if unknown:
    raise ValueError(f"unknown ernie.py option(s) {unknown}: use <size>[:zh][:stage1|2|3][:ner]")
  zh = "zh" in flags
  if "ner" in flags and not zh:
    raise ValueError("ernie.py ':ner' fine-tunes on the Chinese pd_ner_zh task: add ':zh'")
  config = base.base_config("encoder", variant, "ernie")
  config.data.source = "people_daily_zh" if zh else "news_en"
  config.data.annotations = ("words", "phrases", "entities")
  config.objective.basic_unit = "token" if zh else "word"  # Chinese characters / English words
  base.bert_pretraining(config, variant, steps=1_000_000)
  stage = next((f for f in flags if f in _STAGES), "")
  if stage:
    config.objective.level_probs = _STAGES[stage]
    index = int(stage[-1]) - 1
    if index < 2:
      config.train.stop_at = int(STAGE_ENDS[index] * config.train.steps)
  if "ner" in flags:
    small = variant == "runlocal"
    config.downstream = ml_collections.ConfigDict({**finetune.DEFAULTS, **dict(
        tasks=("pd_ner_zh",), seeds=(0,) if small else (0, 1, 2), steps=300 if small else 3000,
        batch_size=32, learning_rate=3e-4 if small else 5e-5, warmup_steps=30 if small else 300,
        eval_every=100 if small else 500, seq_len=128, head_dropout_rate=0.1)})
  config.report.title = f"ERNIE-{variant} knowledge masking {stage or 'mixed'} on {config.data.source}"
  return config
