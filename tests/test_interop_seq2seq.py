"""HF interop of the encoder–decoder family: T5 (v1.0 tied/ReLU, v1.1 gated-GELU/untied) and BART.

- Round trips: a random tiny HF PyTorch model -> HF's own `save_pretrained` (safetensors) -> our
  `load_pretrained` -> decoder logits and encoder output within 1e-4 on random batches with
  encoder and decoder padding; then our `save_pretrained` -> transformers `from_pretrained` -> the
  same logits, and the same tensor names HF writes.
- T5 positions reach the log-spaced buckets (max_distance smaller than the length).
- A model we build from a variant (not imported) exports to transformers at parity.
- The convert CLI round-trips a T5 dir; a BART config we cannot express is a one-line error.
- Switch Transformer (T5 with top-1 experts, a fixed expert capacity that drops tokens in the
  test batch): round trip and generation at parity; what either side cannot express is a
  one-line error on import or export.
- KV-cached generation (`generate.generate_ids`) equals transformers' `generate` for a padded
  batch of prompts: greedy and beam search (3 beams, length penalty, EOS), T5 v1.1 and BART.
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from ptm_jax import decoding, generate, interop, models  # noqa: E402
from ptm_jax.interop.__main__ import main as convert_main  # noqa: E402

B, LE, LD, V = 3, 14, 9, 120
ATOL = 1e-4

_T5 = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
           num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=10,
           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
_BART = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
             decoder_ffn_dim=48, max_position_embeddings=24)
CASES = {
    'T5ForConditionalGeneration': lambda: transformers.T5Config(feed_forward_proj='relu', **_T5),
    'T5ForConditionalGeneration-v1_1': lambda: transformers.T5Config(
        feed_forward_proj='gated-gelu', tie_word_embeddings=False, **_T5),
    'T5Model': lambda: transformers.T5Config(feed_forward_proj='gated-gelu', **_T5),
    'BartForConditionalGeneration': lambda: transformers.BartConfig(**_BART),
    # Switch: 4 experts in every other layer; capacity 3 of 14 encoder tokens, so tokens drop.
    'SwitchTransformersForConditionalGeneration': lambda: transformers.SwitchTransformersConfig(
        num_experts=4, expert_capacity=3, num_sparse_encoder_layers=1,
        num_sparse_decoder_layers=2, **dict(_T5, num_decoder_layers=4)),
    'BartModel': lambda: transformers.BartConfig(scale_embedding=True, activation_function='relu',
                                                 **_BART),
}


def _hf_model(case: str, seed: int, **overrides):
  cfg = CASES[case]()
  for k, v in overrides.items():
    setattr(cfg, k, v)
  cfg._attn_implementation = 'eager'
  model = getattr(transformers, case.split('-')[0])(cfg)
  gen = torch.Generator().manual_seed(seed)
  if case.endswith('v1_1'):  # transformers 5 ties T5's head whatever the config; untie it
    model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(model.lm_head.weight))
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      is_gain = name.endswith('weight') and 'norm' in name
      p.copy_(1.0 + 0.1 * noise if is_gain else 0.3 * noise if 'relative' in name else 0.1 * noise)
    if hasattr(model, 'final_logits_bias'):
      model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=gen))
  return model.eval()


def _batch(seed: int):
  """Random encoder/decoder tokens, right-padded to different lengths per row (with pad id 1)."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, V, size=(B, LE)).astype(np.int32)
  dec = rng.integers(3, V, size=(B, LD)).astype(np.int32)
  enc_valid = np.arange(LE)[None, :] < np.asarray([LE, 9, 4])[:, None]
  dec_valid = np.arange(LD)[None, :] < np.asarray([5, LD, 3])[:, None]
  return (np.where(enc_valid, enc, 1), enc_valid, np.where(dec_valid, dec, 1), dec_valid)


def _run_hf(model, batch) -> dict[str, np.ndarray]:
  enc, enc_valid, dec, dec_valid = (torch.from_numpy(np.asarray(x)).long() for x in batch)
  with torch.no_grad():
    out = model(input_ids=enc, attention_mask=enc_valid, decoder_input_ids=dec,
                decoder_attention_mask=dec_valid)
  res = {'encoder_hidden': out.encoder_last_hidden_state.numpy()}
  if hasattr(out, 'logits'):
    res['logits'] = out.logits.numpy()
  else:
    res['hidden'] = out.last_hidden_state.numpy()
  return res


def _run_ours(model, params, batch) -> dict[str, np.ndarray]:
  enc, enc_valid, dec, dec_valid = batch
  out = model.apply({'params': params}, jnp.asarray(enc), jnp.asarray(dec),
                    encoder_segment_ids=jnp.asarray(enc_valid, jnp.int32),
                    decoder_segment_ids=jnp.asarray(dec_valid, jnp.int32))
  return jax.tree.map(np.asarray, out)


def _assert_match(ours: dict, theirs: dict, batch) -> float:
  _, enc_valid, _, dec_valid = batch
  worst = float(np.abs(ours['encoder_hidden'] - theirs['encoder_hidden'])[enc_valid].max())
  for k in ('logits', 'hidden'):
    if k in theirs:
      assert ours[k].shape == theirs[k].shape, (k, ours[k].shape, theirs[k].shape)
      worst = max(worst, float(np.abs(ours[k] - theirs[k])[dec_valid].max()))
  assert worst <= ATOL, worst
  return worst


def _tensor_names(directory) -> set[str]:
  from safetensors import safe_open
  with safe_open(os.path.join(directory, 'model.safetensors'), 'np') as f:
    return set(f.keys())


@pytest.mark.parametrize('case', list(CASES))
def test_hf_round_trip(case, tmp_path):
  hf = _hf_model(case, seed=len(case))
  hf.save_pretrained(tmp_path / 'hf')
  pre = interop.load_pretrained(str(tmp_path / 'hf'))
  assert pre.family == 'encdec' and pre.info['architecture'] == case.split('-')[0]
  cfg = pre.config
  if case.startswith('T5'):
    assert cfg.tie_embeddings == (not case.endswith('v1_1'))
    assert cfg.scale_decoder_output == (not case.endswith('v1_1'))
    assert cfg.mlp == ('mlp' if case == 'T5ForConditionalGeneration' else 'swiglu')
  batch = _batch(len(case))
  theirs = _run_hf(hf, batch)
  ours = _run_ours(pre.model, pre.params, batch)
  if 'hidden' in theirs:  # bare classes: compare the decoder output itself
    ours = {'encoder_hidden': ours['encoder_hidden'], 'hidden': ours['hidden']}
  _assert_match(ours, theirs, batch)

  # Ours -> HF: transformers reads it back to the same outputs and the same tensor names.
  interop.save_pretrained(pre.model, pre.params, str(tmp_path / 'ours'),
                          architecture=pre.info['architecture'])
  assert _tensor_names(tmp_path / 'ours') == _tensor_names(tmp_path / 'hf')
  back = getattr(transformers, case.split('-')[0]).from_pretrained(
      tmp_path / 'ours', attn_implementation='eager').eval()
  _assert_match(_run_hf(back, batch), theirs, batch)


@pytest.mark.parametrize('variant', ['t5_runlocal', 'bart_runlocal', 'switch_runlocal'])
def test_our_variant_exports_at_parity(variant, tmp_path):
  depth = 2 if variant.startswith('switch') else 1  # Switch routes layer 1 of each stack
  extra = dict(moe_capacity=4) if variant.startswith('switch') else {}  # HF: a fixed capacity
  model = models.build('encdec', variant, vocab_size=V, num_encoder_layers=depth,
                       num_decoder_layers=depth, **extra)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = flax.core.meta.unbox(
      model.init(jax.random.key(3), tokens, segment_ids=tokens, positions=None)['params'])
  # Non-trivial norms and logits bias, so a dropped or misplaced tensor shows.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
      if str(path[-1]) in ("['scale']", "['bias']") else x, params)
  interop.save_pretrained(model, params, str(tmp_path / 'hf'))
  cls = {'t5': 'T5ForConditionalGeneration', 'bart': 'BartForConditionalGeneration',
         'switch': 'SwitchTransformersForConditionalGeneration'}[variant.split('_')[0]]
  assert json.loads((tmp_path / 'hf' / 'config.json').read_text())['architectures'] == [cls]
  hf = getattr(transformers, cls).from_pretrained(tmp_path / 'hf',
                                                  attn_implementation='eager').eval()
  batch = _batch(7)
  _assert_match(_run_ours(model, params, batch), _run_hf(hf, batch), batch)


def test_convert_cli_round_trip_t5(tmp_path):
  hf = _hf_model('T5ForConditionalGeneration-v1_1', seed=4)
  hf.save_pretrained(tmp_path / 'hf')
  assert convert_main(['convert', '--src', str(tmp_path / 'hf'),
                       '--dst', str(tmp_path / 'ptm')]) == 0
  direct = interop.load_pretrained(str(tmp_path / 'hf'))
  restored = interop.load_pretrained(str(tmp_path / 'ptm'))
  assert restored.family == 'encdec' and restored.config == direct.config
  jax.tree.map(np.testing.assert_array_equal, restored.params, direct.params)
  assert convert_main(['convert', '--src', str(tmp_path / 'ptm'), '--dst', str(tmp_path / 'back'),
                       '--to', 'hf']) == 0
  from safetensors.numpy import load_file
  a = load_file(str(tmp_path / 'hf' / 'model.safetensors'))
  b = load_file(str(tmp_path / 'back' / 'model.safetensors'))
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_unsupported_bart_config_is_one_line_error(tmp_path):
  hf = _hf_model('BartForConditionalGeneration', seed=1)
  hf.save_pretrained(tmp_path / 'hf')
  config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  config['decoder_attention_heads'] = 2
  (tmp_path / 'hf' / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match='different encoder/decoder head counts') as e:
    interop.load_pretrained(str(tmp_path / 'hf'))
  assert '\n' not in str(e.value)


def test_switch_transformers_one_line_errors(tmp_path):
  """What our encdec MoE cannot express is refused on import, and what HF's cannot on export."""
  case = 'SwitchTransformersForConditionalGeneration'
  _hf_model(case, seed=2).save_pretrained(tmp_path / 'good')
  config = json.loads((tmp_path / 'good' / 'config.json').read_text())
  for change, message in (({'router_bias': True}, 'router_bias'),
                          ({'num_sparse_decoder_layers': 1}, 'decoder sparse step 4'),
                          ({'num_sparse_encoder_layers': 2}, 'encoder sparse step 1 != decoder 2'),
                          ({'router_dtype': 'bfloat16'}, 'router_dtype')):
    (tmp_path / 'good' / 'config.json').write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message) as e:
      interop.load_pretrained(str(tmp_path / 'good'))
    assert '\n' not in str(e.value)
  (tmp_path / 'good' / 'config.json').write_text(json.dumps(config))
  pre = interop.load_pretrained(str(tmp_path / 'good'))
  for change, message in (({'moe_top_k': 2}, 'routes top-1'), ({'moe_capacity': 0}, 'fixed expert'),
                          ({'mlp': 'swiglu'}, 'plain MLPs'), ({'tie_embeddings': False}, 'ties')):
    cfg = dataclasses.replace(pre.config, **change)
    with pytest.raises(ValueError, match=message) as e:
      interop.hf.save(cfg, 'encdec', pre.params, str(tmp_path / 'out'))
    assert '\n' not in str(e.value) and not os.path.exists(tmp_path / 'out')


def _hf_generate(hf, prompts, options, pad_id, start_id):
  """transformers' generate on right-padded prompts -> new ids per row, cut after EOS."""
  width = max(len(p) for p in prompts)
  ids = torch.tensor([p + [pad_id] * (width - len(p)) for p in prompts])
  mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
  with torch.no_grad():
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=options.max_new_tokens,
                      do_sample=False, num_beams=options.num_beams if options.strategy == 'beam'
                      else 1, length_penalty=options.length_penalty, early_stopping='never',
                      eos_token_id=list(options.eos_ids) or None, pad_token_id=pad_id,
                      decoder_start_token_id=start_id, forced_bos_token_id=None,
                      forced_eos_token_id=None, min_length=0,
                      no_repeat_ngram_size=options.no_repeat_ngram_size,
                      min_new_tokens=options.min_new_tokens)
  rows = []
  for row in out[:, 1:].tolist():  # drop the decoder start token
    ends = [i for i, t in enumerate(row) if t in options.eos_ids]
    rows.append(row[:ends[0] + 1] if ends else row[:options.max_new_tokens])
  return rows


@pytest.mark.parametrize('case', ['T5ForConditionalGeneration-v1_1', 'BartForConditionalGeneration',
                                  'SwitchTransformersForConditionalGeneration'])
def test_generation_matches_transformers(case, tmp_path):
  # Equal stack depths: transformers' T5 cache is sized by the encoder's layer count.
  depth = dict(num_decoder_layers=2) if case.startswith('T5') else dict(decoder_layers=2)
  if case.startswith('Switch'):
    depth = dict(num_decoder_layers=2, num_sparse_decoder_layers=1, decoder_sparse_step=2)
  hf = _hf_model(case, seed=11, **depth)
  hf.save_pretrained(tmp_path / 'hf')
  pre = interop.load_pretrained(str(tmp_path / 'hf'))
  pad_id, start_id = hf.config.pad_token_id, hf.config.decoder_start_token_id
  assert pre.config.decoder_start_id == start_id
  prompts = [[5, 17, 33, 8, 61, 90, 12], [44, 3, 71, 26]]
  free = generate.generate_ids(pre.model, pre.params, prompts,
                               decoding.Options(max_new_tokens=6, pad_id=pad_id))
  eos = free[0][2]  # a token row 0 emits at its 3rd step: EOS paths are exercised
  for options in (decoding.Options(max_new_tokens=6, eos_ids=(eos,), pad_id=pad_id),
                  decoding.Options(max_new_tokens=6, eos_ids=(eos,), pad_id=pad_id,
                                   strategy='beam', num_beams=3, length_penalty=1.0)):
    ours = generate.generate_ids(pre.model, pre.params, prompts, options)
    assert ours == _hf_generate(hf, prompts, options, pad_id, start_id), options.strategy
  # transformers' no_repeat_ngram_size and min_new_tokens processors, over 12 tokens where the
  # free titles repeat a bigram (a random model loops), with EOS the first token of row 1.
  long = generate.generate_ids(pre.model, pre.params, prompts,
                               decoding.Options(max_new_tokens=12, pad_id=pad_id))
  grams = lambda row: [tuple(row[j:j + 2]) for j in range(len(row) - 1)]  # noqa: E731
  assert any(len(set(grams(r))) < len(grams(r)) for r in long), long
  eos = long[1][0]
  for strategy in ('greedy', 'beam'):
    options = decoding.Options(max_new_tokens=12, eos_ids=(eos,), pad_id=pad_id,
                               strategy=strategy, num_beams=3, length_penalty=1.0,
                               no_repeat_ngram_size=2, min_new_tokens=3)
    ours = generate.generate_ids(pre.model, pre.params, prompts, options)
    assert ours == _hf_generate(hf, prompts, options, pad_id, start_id), strategy
    assert all(len(set(grams(r))) == len(grams(r)) and eos not in r[:3] for r in ours), ours
