"""Sequence-to-sequence fine-tuning (a generation task such as `news_headline`) for every family
that the seq2seq pre-training objectives train, in the form each paper fine-tunes with.

Rows come from `data/sources/news_headline.py` in `data.generation_form` = `Options.form`:
  * 'encdec' (T5, BART, MASS; Raffel et al. 2020, Lewis et al. 2020, Song et al. 2019): the
    encoder reads the source, the decoder is teacher-forced on target = title EOS (inputs
    shifted right from the model's `decoder_start_id`), loss over every target token;
  * 'prefix_lm' (Raffel et al. 2020 section 3.2.1): one decoder over [CLS] source [SEP] title
    EOS, bidirectional over the source (`prefix_flags`), next-token loss on the title and EOS;
  * 'unilm' (Dong et al. 2019 section 3.2, generation fine-tuning): one encoder under UniLM's
    seq2seq mask (source bidirectional, target causal + source) with its seq2seq token types; a
    `target_mask_rate` share of the target tokens (0.7: the reference fine-tuning scripts'
    `--mask_prob 0.7`, with label smoothing 0.1) is corrupted 80 % [MASK] / 10 % random / 10 %
    kept, as its pre-training cloze (the reference code's Preprocess4Seq2seq), and predicted at
    its own slot; decoding appends a [MASK] and predicts it (`tasks/generation.py`). Dev and
    test losses (`Options.for_evaluation`, score='next_token') score every target token as
    decoding reads it instead: at a [MASK] after the real tokens before it, in one pass over
    the row doubled with a [MASK] copy of each target slot (`next_token_rows`), so the loss is
    the title's next-token NLL like the other forms', deterministic, and ranks what is decoded;
  * 'glm' (Du et al. 2022 section 2.3, "text generation"): Part A = the source with one [MASK]
    appended, Part B = [START] title, generated autoregressively with GLM's 2-D positions and
    the A-bidirectional / B-causal mask; loss over the title and [END] (= EOS).
`stack_logits` is the forward pass of each form, shared with decoding (`tasks/generation.py`).
Optional label smoothing and z-loss apply to every form alike.

Tests (tests/test_news_headline.py): the fine-tune of each form lowers its loss on the task; the
end-to-end run generates titles scored by ROUGE, pretrained and random init.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ptm_jax.objectives import common, glm, mlm, seq2seq, unilm

FORMS = ('encdec', 'prefix_lm', 'unilm', 'glm')
SCORES = ('cloze', 'next_token')


def ADDS_MODEL_AUX_LOSS(options) -> bool:  # noqa: N802 (the flag other objectives set)
  """The encoder–decoder form's loss adds a mixture-of-experts model's router losses."""
  return options.form == 'encdec'


@dataclasses.dataclass(frozen=True)
class Options:
  """Fine-tuning form and loss options."""

  form: str = 'encdec'  # 'encdec' | 'prefix_lm' | 'unilm' | 'glm' (= data.generation_form)
  target_mask_rate: float = 0.7  # unilm: share of target tokens corrupted per step
  mask_token_rate: float = 0.8  # unilm: of the corrupted target tokens, [MASK] ...
  random_token_rate: float = 0.1  # ... or a random id (the rest stay)
  label_smoothing: float = 0.0
  z_loss: float = 0.0
  # unilm: 'cloze' (training: the corrupted share predicted at its own slots) or 'next_token'
  # (evaluation: every target token at a [MASK] after the real ones before it, as decoded).
  score: str = 'cloze'

  def __post_init__(self):
    if self.form not in FORMS:
      raise ValueError(f'seq2seq_finetune.Options.form must be one of {", ".join(FORMS)}, got '
                       f'{self.form!r}')
    if not 0.0 < self.target_mask_rate <= 1.0:
      raise ValueError('seq2seq_finetune.Options.target_mask_rate must be in (0, 1], got '
                       f'{self.target_mask_rate}')
    if self.score not in SCORES:
      raise ValueError(f'seq2seq_finetune.Options.score must be one of {", ".join(SCORES)}, got '
                       f'{self.score!r}')
    mlm.Options(0.15, self.mask_token_rate, self.random_token_rate)

  def for_evaluation(self) -> 'Options':
    """The options dev/test losses use (steps.evaluation_options): UniLM scored next-token."""
    return dataclasses.replace(self, score='next_token') if self.form == 'unilm' else self


def form_for(family: str, model_fields) -> str:
  """The fine-tuning form of a pre-trained model: by family (GLM: the 2-D position encoder)."""
  if family == 'encdec':
    return 'encdec'
  if family == 'decoder':
    return 'prefix_lm'
  if family == 'encoder':
    return 'glm' if model_fields.get('block_position_embeddings') else 'unilm'
  raise ValueError(f'no seq2seq fine-tuning form for model family {family!r}; generation tasks '
                   'need encdec, decoder or encoder')


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """Names the row's arrays as the form's loss reads them; UniLM also corrupts target tokens."""
  if options.form == 'encdec':
    return {**batch, 'inputs': batch['tokens'], 'input_segment_ids': batch['segment_ids'],
            'input_positions': batch['positions']}
  if options.form != 'unilm' or options.score == 'next_token':  # next_token_rows adds [MASK]s
    return {**batch, 'inputs': batch['tokens']}  # UniLM rows weigh every target slot already
  tokens_BL = batch['tokens'].astype(jnp.int32)
  choose_rng, action_rng, random_rng = jax.random.split(rng, 3)
  chosen_BL = (batch['target_flags'] != 0) & (
      jax.random.uniform(choose_rng, tokens_BL.shape) < options.target_mask_rate)
  action_BL = jax.random.uniform(action_rng, tokens_BL.shape)
  to_mask_BL = chosen_BL & (action_BL < options.mask_token_rate)
  to_random_BL = chosen_BL & ~to_mask_BL & (
      action_BL < options.mask_token_rate + options.random_token_rate)
  inputs_BL = jnp.where(to_mask_BL, jnp.int32(specials.mask), tokens_BL)
  inputs_BL = jnp.where(to_random_BL, mlm.random_non_reserved(random_rng, tokens_BL.shape, specials),
                        inputs_BL)
  return {**batch, 'inputs': inputs_BL, 'weights': chosen_BL.astype(jnp.float32)}


def _decoder_logits_at(module, tokens, segment_ids, positions, prefix_flags, at_B):
  x_BLD = module.embed(tokens, positions=positions)
  hidden_BLD, _, _ = module.decode(x_BLD, segment_ids=segment_ids, positions=positions,
                                   prefix_flags=prefix_flags)
  return module.lm_logits(jnp.take_along_axis(hidden_BLD, at_B[:, None, None], axis=1))


def next_token_rows(batch, mask_id: int) -> dict[str, jax.Array]:
  """UniLM rows `[B, W]` doubled to `[B, 2W]` so that one pass scores every target token as
  decoding does (the pseudo-masked layout of UniLMv2, Bao et al. 2020, used here for scoring).

  Slot W + i is a [MASK] copy of target slot i (same position and token type). The real half
  keeps UniLM's seq2seq mask (source bidirectional, target causal + source); copy i sees the
  source, the real target slots before i and itself, which is exactly what the [MASK] appended
  at slot i sees when decoding (tasks/stack_cache.py), so its logits are decoding's. Copies of
  non-target slots are padding. The scored slots are `logits_positions` W..2W-1.
  """
  tokens_BL = batch['tokens'].astype(jnp.int32)
  target_BL = batch['target_flags'] != 0
  source_BL = batch['source_flags'] != 0
  width = tokens_BL.shape[1]
  idx = jnp.arange(width)
  real_BLL = unilm.attention_mask(jnp.full((tokens_BL.shape[0],), unilm.SEQ2SEQ, jnp.int32),
                                  source_BL)[:, 0]
  copy_BLL = source_BL[:, None, :] | (idx[None, :] < idx[:, None])[None]
  no_BLL = jnp.zeros_like(real_BLL)
  own_BLL = jnp.broadcast_to(jnp.eye(width, dtype=bool), real_BLL.shape)
  mask_BLL = jnp.concatenate([jnp.concatenate([real_BLL, no_BLL], axis=2),
                              jnp.concatenate([copy_BLL, own_BLL], axis=2)], axis=1)
  double = lambda x: jnp.concatenate([x, x], axis=1)  # noqa: E731
  return {'inputs': jnp.concatenate([tokens_BL, jnp.where(target_BL, mask_id, 0)], axis=1),
          'segment_ids': jnp.concatenate(
              [batch['segment_ids'], jnp.where(target_BL, batch['segment_ids'], 0)], axis=1),
          'positions': double(batch['positions']), 'token_types': double(batch['token_types']),
          'attention_mask': mask_BLL[:, None],
          'logits_positions': jnp.broadcast_to(width + idx, tokens_BL.shape)}


def stack_logits(model, params, batch, form: str, *, rng=None, at_B=None):
  """Float32 logits of a single-stack form ('prefix_lm' | 'unilm' | 'glm'): `[B, W, V]`, or
  `[B, 1, V]` at slot `at_B[b]` of each row (decoding: the vocabulary projection of one slot)."""
  kw = dict(deterministic=rng is None, rngs=None if rng is None else {'dropout': rng})
  inputs, segment_ids, positions = batch['inputs'], batch['segment_ids'], batch['positions']
  if form == 'prefix_lm':
    if at_B is not None:
      return model.apply({'params': params}, inputs, segment_ids, positions, batch['prefix_flags'],
                         at_B, method=_decoder_logits_at)
    return model.apply({'params': params}, inputs, segment_ids=segment_ids, positions=positions,
                       prefix_flags=batch['prefix_flags'], **kw)['logits']
  if at_B is not None:
    kw['logits_positions'] = at_B[:, None]
  if form == 'unilm':
    types = getattr(model.config, 'type_vocab_size', 0)
    mode_B = jnp.full((inputs.shape[0],), unilm.SEQ2SEQ, jnp.int32)
    return model.apply({'params': params}, inputs, segment_ids=segment_ids, positions=positions,
                       token_types=batch['token_types'] if types >= 6 else None,
                       attention_mask=unilm.attention_mask(mode_B, batch['source_flags'] != 0),
                       **kw)['logits']
  if form == 'glm':
    return model.apply({'params': params}, inputs, segment_ids=segment_ids, positions=positions,
                       block_positions=batch['block_positions'],
                       attention_mask=glm.attention_mask(batch['part_b']), **kw)['logits']
  raise ValueError(f'stack_logits: {form!r} is not a single-stack form')


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """Mean (label-smoothed) cross-entropy over the weighted target slots, and its metrics."""
  if options.form == 'encdec':
    return seq2seq.loss(params, batch, rng, model=model, specials=specials, z_loss=options.z_loss,
                        label_smoothing=options.label_smoothing)
  if options.form == 'unilm' and options.score == 'next_token':
    rows = next_token_rows(batch, specials.mask)
    types = getattr(model.config, 'type_vocab_size', 0)
    logits = model.apply({'params': params}, rows['inputs'], segment_ids=rows['segment_ids'],
                         positions=rows['positions'],
                         token_types=rows['token_types'] if types >= 6 else None,
                         attention_mask=rows['attention_mask'],
                         logits_positions=rows['logits_positions'], deterministic=rng is None,
                         rngs=None if rng is None else {'dropout': rng})['logits']
  else:
    logits = stack_logits(model, params, batch, options.form, rng=rng)
  return common.lm_loss_and_metrics(logits, batch['targets'], batch['weights'],
                                    z_loss=options.z_loss, label_smoothing=options.label_smoothing)
