"""Generation tasks (`news_headline`): fine-tune through the train loop, select on dev, decode the
titles with `ptm_jax.decoding`, score them with ROUGE-1/2/L F (Lin 2004; Google's `rouge-score`).

One fine-tune (`run_one`, dispatched from `tasks.finetune` for tasks of kind 'generation'):
  1. the run config is `finetune.finetune_config`'s with the `seq2seq_finetune` objective in the
     pre-trained family's form (`configure`: encdec / prefix_lm / unilm / glm, or
     `downstream.generation_form`), a checkpoint at every evaluation and early stopping on the
     teacher-forced dev loss (the cross-entropy of the title tokens: `downstream.label_smoothing`
     smooths the training loss only, steps.evaluation_options; UniLM, trained on a cloze of
     the title, is scored next-token as it decodes: objectives/seq2seq_finetune.py);
  2. model selection: the evaluation with the lowest dev loss (the earliest on ties) -- a dev
     ROUGE per evaluation would decode the dev set at every evaluation;
  3. that checkpoint's parameters decode the `downstream.generation_splits` (dev and test by
     default; dev decoding only reports, it selects nothing): beam search (4 beams, length
     penalty 0.6: score = sum log p / length^0.6, Wu et al. 2016's alpha as in T5's decoding) by
     default, `downstream.decode_strategy='greedy'` for the CPU-sized runs; at most
     `downstream.target_len` tokens, stopping at EOS;
  4. ROUGE-1/2/L F-measures (`rouge_score.rouge_scorer`, Porter stemming, its default
     lower-cased alphanumeric tokenisation) of each generated title against the article's real
     title (untruncated), averaged over the examples; the generations are kept in
     `generations_<split>.jsonl` and the scores in `generation.json` (a rerun reuses them);
  5. the source gain (`tasks/source_reliance.py`): the test titles' loss after another article
     minus after their own, which says whether the decoder reads the article at all.
Every form decodes with a KV cache: encoder-decoders and the prefix LM (a decoder: its source
is the prompt, prefilled bidirectionally through `prefix_flags`) through `decoding.generate`,
UniLM and GLM (encoder stacks) through the encoder's cache (`tasks/stack_cache.py`: the source
prefilled under the form's mask, then one token per step; UniLM feeds the chosen token and a new
[MASK] and reads the [MASK]). Re-running the stack over the whole row at every step
(`_stack_generate`, the reference the cached paths equal in the tests) is left for stacks
without a cache (ALBERT). At the `gpu` size of `experiments/compare_seq2seq.py` (12 layers of
width 512, bf16; 8 articles, 4 beams, 32 tokens, on 2 CPU cores) the cache takes the prefix LM's
beam search from 248 s to 7.4 s and UniLM's from 250 s to 9.6 s (GLM: 8.3 s), the same titles.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ptm_jax import checkpoint as ckpt
from ptm_jax import decoding
from ptm_jax import metrics as metrics_lib
from ptm_jax import objectives
from ptm_jax import train as train_lib
from ptm_jax.configs import base
from ptm_jax.data import tokenizers
from ptm_jax.data.sources import downstream
from ptm_jax.data.sources import news_headline
from ptm_jax.objectives import seq2seq_finetune
from ptm_jax.tasks import source_reliance
from ptm_jax.tasks import stack_cache

ROUGE_KEYS = ('rouge1', 'rouge2', 'rougeL')
STRATEGIES = ('beam', 'greedy')


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measure of predictions against references (rouge-score, stemmed)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions for {len(references)} references')
  if not predictions:
    return {k: float('nan') for k in ROUGE_KEYS}
  scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
  scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
  return {k: float(np.mean([s[k].fmeasure for s in scores])) for k in ROUGE_KEYS}


def lead_baseline(data_dir: str = '', split: str = 'test') -> dict[str, float]:
  """ROUGE-1/2/L F of the extractive LEAD baseline: each article's first n words as its title.

  n = the median title length in words of the train split (9 for news_headline), so the baseline
  is fixed by the training data, not tuned on the split it is scored on. No model: the floor a
  generated title has to clear to show that it reads the article (a decoder that ignores its
  source writes one string for every article and scores far below it).
  """
  train_words = [len(title.split()) for _, _, title in news_headline.split_examples(data_dir,
                                                                                    'train')]
  if not train_words:
    raise ValueError('news_headline has no train titles; prepare the data (make data)')
  n = int(round(float(np.median(train_words))))
  examples = news_headline.split_examples(data_dir, split)
  scores = rouge([' '.join(text.split()[:n]) for _, text, _ in examples],
                 [title for _, _, title in examples])
  return {**scores, 'words': n, 'examples': len(examples)}


def configure(ft, config, field) -> None:
  """Turns a fine-tune config (finetune.finetune_config) into a generation fine-tune, in place."""
  form = str(field('generation_form')) or seq2seq_finetune.form_for(config.model.family,
                                                                    config.model)
  target_len = int(field('target_len'))
  ft.objective = base.objective_config('seq2seq_finetune', form=form,
                                       label_smoothing=float(field('label_smoothing')))
  ft.data.generation_form = form
  ft.data.target_len = target_len
  width = news_headline.row_width(form, int(ft.data.seq_len), target_len)
  model = ft.model
  if model.get('positions', 'learned') == 'learned' and model.get('max_position_embeddings'):
    longest = max(width, target_len + 1)
    if longest > int(model.max_position_embeddings):
      raise ValueError(f'{form} rows need {longest} positions but model.max_position_embeddings='
                       f'{model.max_position_embeddings}; lower downstream.seq_len/target_len')
  steps, every = int(ft.train.steps), int(ft.train.eval_every)
  # The test split keeps finetune_config's role: its teacher-forced loss and token accuracy are
  # read beside the dev loss at each new best (train.py's test_at 'best'), a title likelihood that
  # tells inits apart even where decoding collapses to one string; decoding (ROUGE) scores it
  # once, at the selected step (run_one).
  ft.train.early_stop_metric = 'eval/loss'
  ft.train.checkpoint_every = every  # each evaluation's parameters can be the selected ones
  ft.train.keep_checkpoints = steps // every + 2


def decode_options(field, specials) -> decoding.Options:
  """decoding.Options of the configured search (beam: num_beams, length_penalty; any strategy:
  no_repeat_ngram_size, min_new_tokens)."""
  strategy = str(field('decode_strategy'))
  if strategy not in STRATEGIES:
    raise ValueError(f'downstream.decode_strategy={strategy!r}; use one of {", ".join(STRATEGIES)}')
  return decoding.Options(max_new_tokens=int(field('target_len')), strategy=strategy,
                          num_beams=int(field('num_beams')),
                          length_penalty=float(field('length_penalty')),
                          eos_ids=(specials.eos,), pad_id=specials.pad,
                          no_repeat_ngram_size=int(field('no_repeat_ngram_size')),
                          min_new_tokens=int(field('min_new_tokens')))


# ---- decoding ------------------------------------------------------------------------------------

def start_rows(batch: dict[str, np.ndarray], form: str, specials) -> dict[str, np.ndarray]:
  """A single-stack form's rows with the target slots emptied: the source, then room to generate.

  Every slot after the source belongs to the target (segment 1, positions / types / 2-D
  positions of the target part); GLM's first target slot holds [START], UniLM's a [MASK].
  Padding rows (label_weight 0) get a one-token source so that no row is fully masked.
  """
  tokens = np.asarray(batch['tokens'])
  num_rows, width = tokens.shape
  real_B = np.asarray(batch['label_weight']) > 0
  prompt_B = np.where(real_B, np.asarray(batch['prompt_len']), 1).astype(np.int32)
  slot_L = np.arange(width, dtype=np.int32)
  source_BL = slot_L[None, :] < prompt_B[:, None]
  rows = np.arange(num_rows)
  out = {'tokens': np.where(source_BL, tokens, specials.pad).astype(np.int32),
         'segment_ids': np.ones((num_rows, width), np.int32),
         'positions': np.broadcast_to(slot_L, (num_rows, width)).astype(np.int32),
         'prompt_len': prompt_B}
  if form == 'prefix_lm':
    out['prefix_flags'] = source_BL.astype(np.int32)
  elif form == 'unilm':
    out['source_flags'] = source_BL.astype(np.int32)
    out['token_types'] = np.where(source_BL, news_headline.UNILM_SOURCE_TYPE,
                                  news_headline.UNILM_TARGET_TYPE).astype(np.int32)
    out['tokens'][rows, np.minimum(prompt_B, width - 1)] = specials.mask
  elif form == 'glm':
    mask_at_B = np.maximum(prompt_B - 2, 0)  # Part A ends [MASK] [SEP]
    out['positions'] = np.where(source_BL, slot_L[None, :], mask_at_B[:, None]).astype(np.int32)
    out['block_positions'] = np.where(source_BL, 0, slot_L[None, :] - prompt_B[:, None] + 1
                                      ).astype(np.int32)
    out['part_b'] = (~source_BL).astype(np.int32)
    out['tokens'][rows, np.minimum(prompt_B, width - 1)] = specials.extra[0]
  else:
    raise ValueError(f'start_rows: {form!r} is not a single-stack form')
  return out


def prefix_lm_prompts(batch: dict[str, np.ndarray], specials) -> dict[str, np.ndarray]:
  """A prefix LM batch's sources (`start_rows`') as `decoding.generate` inputs: left-padded to
  the row width (one compiled shape for every batch) and flagged as the bidirectional prefix;
  positions then count from 0 at each source's first token, as in the training rows."""
  start = start_rows(batch, 'prefix_lm', specials)
  width = start['tokens'].shape[1]
  inputs = decoding.left_pad([row[:n] for row, n in zip(start['tokens'], start['prompt_len'])],
                             specials.pad, bucket=width)
  return {**inputs, 'prefix_flags': inputs['segment_ids'].copy()}


@functools.partial(jax.jit, static_argnames=('model', 'form', 'options', 'mask_id'))
def _stack_generate(model, params, rows, form: str, options: decoding.Options, mask_id: int, rng):
  """decoding's greedy / beam loops over a stack that re-reads the whole row at each step.

  `generate_batch` uses it only for stacks without a KV cache (ALBERT): the prefix LM decodes
  through `decoding.generate` (`prefix_lm_prompts`), UniLM and GLM on the encoder family through
  `stack_cache`; both equal this function (tests/test_news_headline.py).
  """
  rows = dict(rows)
  width = rows['tokens'].shape[1]
  prompt_B = rows.pop('prompt_len')

  def logits_at(cache, at_B):
    at_B = jnp.clip(at_B, 0, width - 1)  # the loop's last, discarded step may run past the row
    batch = {**cache, 'inputs': cache['tokens']}
    return seq2seq_finetune.stack_logits(model, params, batch, form, at_B=at_B)[:, 0]

  def step(cache, tokens_B, slot_B, extras):
    del extras
    rows_B = jnp.arange(tokens_B.shape[0])
    written = cache['tokens'].at[rows_B, slot_B].set(tokens_B, mode='drop')
    read_B = slot_B
    if form == 'unilm':  # the next slot is a [MASK] that the model fills
      written = written.at[rows_B, slot_B + 1].set(jnp.int32(mask_id), mode='drop')
      read_B = slot_B + 1
    cache = {**cache, 'tokens': written}
    return logits_at(cache, read_B), cache

  # First prediction: prefix LM from the source's last slot, UniLM at its [MASK], GLM at [START].
  first_B = prompt_B - 1 if form == 'prefix_lm' else prompt_B
  logits = logits_at(rows, first_B)
  # The slot the next chosen token is written to (the loops add 1 after every step).
  slot_B = prompt_B + 1 if form == 'glm' else prompt_B
  if options.strategy == 'beam':
    return decoding._beam_search(logits, rows, slot_B, step, (), options)  # pylint: disable=protected-access
  return decoding._sample_loop(logits, rows, slot_B, step, (), options, rng)  # pylint: disable=protected-access


def generate_batch(model, params, batch: dict[str, np.ndarray], form: str,
                   options: decoding.Options, specials) -> np.ndarray:
  """Generated ids `[B, max_new_tokens]` (pad after EOS) for one batch of task rows."""
  if form == 'encdec':
    segment_ids = np.array(batch['segment_ids'], np.int32)
    segment_ids[:, 0] = 1  # padding rows: one visible slot, so cross-attention is never empty
    inputs = {'encoder_tokens': batch['tokens'], 'encoder_segment_ids': segment_ids}
    out = decoding.generate(model, params, inputs, options)
  elif form == 'prefix_lm':
    out = decoding.generate(model, params, prefix_lm_prompts(batch, specials), options)
  elif stack_cache.supports(model, form):
    out = stack_cache.generate(model, params, start_rows(batch, form, specials), form, options,
                               int(specials.mask), jax.random.key(0))
  else:
    rows = {k: jnp.asarray(v) for k, v in start_rows(batch, form, specials).items()}
    out = _stack_generate(model, params, rows, form, options, int(specials.mask),
                          jax.random.key(0))
  return np.asarray(jax.device_get(out['tokens']))


def ids_to_text(ids, tokenizer) -> str:
  """Text of generated ids up to the first EOS, reserved ids dropped."""
  specials = tokenizer.specials
  kept = []
  for i in (int(x) for x in ids):
    if i == specials.eos:
      break
    if i not in specials.reserved:
      kept.append(i)
  return tokenizer.decode(kept).strip()


def generate_split(model, params, ft, tokenizer, split: str, options: decoding.Options,
                   limit: int = 0) -> list[dict[str, Any]]:
  """[{example_id, prediction, reference}] for the first `limit` (0 = all) examples of `split`."""
  form = str(ft.data.generation_form)
  references = news_headline.titles(ft.data.get('data_dir', ''), split)
  batch_size = int(ft.train.eval_batch_size or ft.train.batch_size)
  it = downstream.make_task_iterator(ft.data, tokenizer, split=split, global_batch_size=batch_size,
                                     seed=int(ft.seed), repeat=False)
  out = []
  for batch in it:
    ids = generate_batch(model, params, batch, form, options, tokenizer.specials)
    for row, example_id in enumerate(np.asarray(batch['example_id'])):
      if batch['label_weight'][row] > 0:
        out.append({'example_id': int(example_id), 'prediction': ids_to_text(ids[row], tokenizer),
                    'reference': references[int(example_id)]})
    if limit and len(out) >= limit:
      break
  return out[:limit] if limit else out


# ---- one fine-tune -------------------------------------------------------------------------------

def restore_model(ft, run_dir: str, step: int, tokenizer):
  """(model, params): the fine-tune's model and its step-`step` parameters on the device."""
  objective = objectives.get('seq2seq_finetune')
  obj_options = objectives.build_options(objective, ft.objective)
  model = train_lib.build_model(ft, tokenizer.vocab_size, objective, obj_options)
  params = ckpt.restore_params(os.path.join(run_dir, 'checkpoints', str(step)))
  return model, jax.device_put(params, jax.devices()[0])  # restored on the host


def decode_and_score(ft, run_dir: str, step: int, tokenizer, options: decoding.Options,
                     splits, limit: int = 0, suffix: str = '') -> dict[str, dict[str, float]]:
  """ROUGE of the titles that the fine-tune's step-`step` parameters decode with `options`.

  The generations go to `run_dir/generations_<split><suffix>.jsonl`; returns, per split, the
  ROUGE-1/2/L F-measures and the number of examples.
  """
  model, params = restore_model(ft, run_dir, step, tokenizer)
  scores = {}
  for split in splits:
    generated = generate_split(model, params, ft, tokenizer, split, options, limit)
    scores[split] = {**rouge([g['prediction'] for g in generated],
                             [g['reference'] for g in generated]), 'examples': len(generated)}
    if jax.process_index() == 0:
      path = os.path.join(run_dir, f'generations_{split}{suffix}.jsonl')
      with open(path, 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(g, ensure_ascii=False) + '\n' for g in generated)
  return scores


def _eval_history(result, run_dir: str) -> list[dict[str, float]]:
  if result.eval_history:
    return list(result.eval_history)
  path = os.path.join(run_dir, metrics_lib.JSONL_NAME)
  return [r for r in metrics_lib.read_jsonl(path) if 'eval/loss' in r] if os.path.exists(path) else []


def select_lowest_loss(history: list[dict[str, float]]) -> dict[str, float] | None:
  """The evaluation with the lowest dev loss (the earliest on ties), or None."""
  scored = [h for h in history if math.isfinite(float(h.get('eval/loss', float('nan'))))]
  return min(scored, key=lambda h: (float(h['eval/loss']), int(h['step']))) if scored else None


def run_one(config, task: str, init: str, seed: int, workdir: str, pretrained_dir: str,
            tokenizer_cfg=None) -> dict[str, Any]:
  """Fine-tunes, selects on dev loss, decodes dev + test and returns the row (ROUGE F, cost)."""
  from ptm_jax.tasks import finetune  # pylint: disable=g-import-not-at-top
  field = lambda name: finetune.downstream_field(config, name)  # noqa: E731
  run_dir = os.path.join(workdir, task, init, f'seed{seed}')
  ft = finetune.finetune_config(config, task, init, seed, pretrained_dir, tokenizer_cfg)
  result = train_lib.train(ft, run_dir)
  nan = float('nan')
  row = {'task': task, 'init': init, 'seed': int(seed), 'metric': 'rougeL', 'curve_metric': 'loss',
         'form': str(ft.data.generation_form), 'steps': int(result.step),
         'wall_time_s': float(result.wall_time_s), 'workdir': run_dir,
         'preempted': bool(result.preempted), 'best_step': 0, 'dev_loss': nan, 'test_loss': nan,
         'test_token_accuracy': nan, 'test_other_source_loss': nan, 'test_source_gain': nan,
         'dev_score': nan, 'test_score': nan, 'dev_accuracy': nan, 'test_accuracy': nan,
         **{f'{s}_{k}': nan for s in ('dev', 'test') for k in ROUGE_KEYS}}
  best = select_lowest_loss(_eval_history(result, run_dir))
  if result.preempted or best is None:
    return row
  tokenizer = tokenizers.load_or_train(ft.data.tokenizer, ft.data)
  options = decode_options(field, tokenizer.specials)
  limit = int(field('generation_examples'))
  splits = tuple(str(s) for s in field('generation_splits'))
  if 'test' not in splits or set(splits) - {'validation', 'test'}:
    raise ValueError(f'downstream.generation_splits={splits}: use ("test",) or '
                     '("validation", "test")')
  settings = {'best_step': int(best['step']), 'options': repr(options), 'limit': limit,
              'splits': list(splits)}
  cache_path = os.path.join(run_dir, 'generation.json')
  t0 = time.time()
  scores, source = None, None
  if os.path.exists(cache_path):
    with open(cache_path, encoding='utf-8') as f:
      cached = json.load(f)
    if cached.get('settings') == settings:
      scores, source = cached['scores'], cached.get('source')
  if scores is None or source is None:
    if scores is None:
      scores = decode_and_score(ft, run_dir, int(best['step']), tokenizer, options, splits, limit)
    if source is None:  # cached before the source gain was measured: only that runs
      source = source_reliance.title_losses(ft, run_dir, int(best['step']), tokenizer, 'test')
    if jax.process_index() == 0:
      with open(cache_path, 'w', encoding='utf-8') as f:
        json.dump({'settings': settings, 'scores': scores, 'source': source}, f, indent=1)
  row.update(best_step=int(best['step']), dev_loss=float(best['eval/loss']),
             dev_accuracy=float(best.get('eval/accuracy', nan)),
             test_loss=float(best.get('test/loss', nan)),
             test_token_accuracy=float(best.get('test/accuracy', nan)),
             test_other_source_loss=source['other'], test_source_gain=source['gain'],
             dev_score=scores.get('validation', {}).get('rougeL', nan),
             test_score=scores['test']['rougeL'],
             examples=scores['test']['examples'], decode=f'{options.strategy}'
             + (f' {options.num_beams}, alpha {options.length_penalty:g}'
                if options.strategy == 'beam' else ''),
             wall_time_s=row['wall_time_s'] + time.time() - t0,
             **{f'dev_{k}': scores.get('validation', {}).get(k, nan) for k in ROUGE_KEYS},
             **{f'test_{k}': scores['test'][k] for k in ROUGE_KEYS})
  logging.info('generation %s/%s/seed%d: best dev loss %.4f at step %d (test loss %.4f), test '
               'ROUGE-1/2/L %.4f/%.4f/%.4f', task, init, seed, row['dev_loss'], row['best_step'],
               row['test_loss'], row['test_rouge1'], row['test_rouge2'], row['test_rougeL'])
  return row


def mean_std(values) -> str:
  """'mean ± sample std' of the finite values (3 decimals), or 'n/a'."""
  vals = np.asarray([v for v in values if math.isfinite(v)], np.float64)
  if vals.size == 0:
    return 'n/a'
  return f'{vals.mean():.3f} ± {(vals.std(ddof=1) if vals.size > 1 else 0.0):.3f}'


def summarize(rows: list[dict[str, Any]]) -> str:
  """Markdown: per generation task and init, test ROUGE-1/2/L F (mean ± std over seeds)."""
  rows = [r for r in rows if r.get('metric') == 'rougeL' and not r['preempted']]
  if not rows:
    return ''
  lines = ['## Generation', '',
           'ROUGE F-measures (rouge-score, stemmed) of the generated titles at the evaluation with '
           'the lowest dev loss, and the teacher-forced test loss (cross-entropy per title token, '
           'no label smoothing) and token accuracy there; source gain = the test loss of each '
           'title after another article minus after its own (tasks/source_reliance.py; 0: the '
           'decoder does not read the article); mean ± sample std over seeds.', '',
           '| task | init | seeds | form | decoding | dev loss | test loss | test token acc. | '
           'source gain | dev ROUGE-L | test ROUGE-1 | test ROUGE-2 | test ROUGE-L | '
           'test examples |',
           '|---|' + '---|' * 13]
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in rows:
    groups.setdefault((r['task'], r['init']), []).append(r)
  for (task, init), rs in groups.items():
    lines.append(f'| {task} | {init} | {len(rs)} | {rs[0]["form"]} | {rs[0].get("decode", "")} | '
                 f'{mean_std([r["dev_loss"] for r in rs])} | '
                 f'{mean_std([r.get("test_loss", math.nan) for r in rs])} | '
                 f'{mean_std([r.get("test_token_accuracy", math.nan) for r in rs])} | '
                 f'{mean_std([r.get("test_source_gain", math.nan) for r in rs])} | '
                 f'{mean_std([r["dev_rougeL"] for r in rs])} | '
                 + ' | '.join(mean_std([r[f'test_{k}'] for r in rs]) for k in ROUGE_KEYS)
                 + f' | {rs[0].get("examples", 0)} |')
  return '\n'.join(lines)
