"""HF RoFormer interop (`interop/maps/roformer.py`): our `encoder` with `positions='rotary'`.

- Import parity: a random tiny HF RoFormer (torch, eager, every weight redrawn except the fixed
  sinusoid table) -> HF's `save_pretrained` -> our `load_pretrained` -> MLM logits and every hidden
  state within 1e-4 at non-padded positions of a padded batch with token types (measured: about
  1e-6, float32 rounding of the rotation angles). Cases: `RoFormerForMaskedLM`, the factorised
  embedding (`embedding_size` < `hidden_size`), bare `RoFormerModel`.
- Export: the imported params written by our `save_pretrained` have exactly HF's tensor names and
  load in transformers to the same logits; a random-initialised ptm_jax rotary encoder exports as
  `RoFormerForMaskedLM` by default, transformers reproduces our logits, and
  import(export(params)) is bit-exact.
- The q/k permutation (HF interleaved pairs <-> our rotate-half) is not a no-op: HF's own rotation
  code and ours agree only through it, and importing without it changes the logits.
- One-line refusals naming the fix: `rope_theta != 10000` / pre-LN on export (no directory is
  written), `rotary_value=True`, `is_decoder=True` and a non-sinusoid position table on import.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from ptm_jax import interop  # noqa: E402
from ptm_jax.interop import maps  # noqa: E402
from ptm_jax.interop.maps import roformer as roformer_map  # noqa: E402
from ptm_jax.interop.pretrained import fresh_init, params_template  # noqa: E402
from ptm_jax.layers import positions as positions_lib  # noqa: E402
from ptm_jax.models import encoder  # noqa: E402

B, L, V = 3, 12, 100
ATOL = 1e-4
_SMALL = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)
# case -> (HF class, HF config kwargs, our heads the file lacks = initialised fresh)
CASES = {
    'RoFormerForMaskedLM': ('RoFormerForMaskedLM', {}, ['pooler', 'nsp_head']),
    'RoFormerForMaskedLM-factorised': ('RoFormerForMaskedLM', dict(embedding_size=16),
                                       ['pooler', 'nsp_head']),
    'RoFormerModel': ('RoFormerModel', dict(hidden_act='gelu_new'),
                      ['mlm_head', 'pooler', 'nsp_head']),
}


def _hf_model(case: str, seed: int = 0, **change):
  cls, kwargs, _ = CASES[case]
  cfg = transformers.RoFormerConfig(**{**_SMALL, **kwargs, **change})
  cfg._attn_implementation = 'eager'
  model = getattr(transformers, cls)(cfg)
  # Redraw every weight (norm gains near 1, the rest N(0, 0.1)) so a wrong mapping shows; the
  # sinusoid table `embed_positions` is a (frozen) parameter too, but it defines RoFormer: keep it.
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'embed_positions' in name:
        continue
      noise = torch.randn(p.shape, generator=gen)
      is_gain = name.endswith('weight') and 'norm' in name.lower()
      p.copy_(1.0 + 0.1 * noise if is_gain else 0.1 * noise)
  return model.eval()


def _np(t) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def _batch(seed: int):
  """Right-padded tokens (lengths 12, 9, 5), the valid mask, and token types 1 from position 4."""
  rng = np.random.default_rng(seed)
  valid = np.arange(L)[None, :] < np.asarray([12, 9, 5])[:, None]
  tokens = np.where(valid, rng.integers(5, V, size=(B, L)), 0).astype(np.int32)
  types = (np.where(np.arange(L)[None, :] >= 4, 1, 0) * valid).astype(np.int32)
  return tokens, valid, types


def _run_hf(model, tokens, valid, types) -> dict[str, np.ndarray]:
  # RoFormer takes no position_ids: it always rotates by 0, 1, ... per row, as we do below.
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(valid).long(),
                token_type_ids=torch.from_numpy(types).long(), output_hidden_states=True)
  res = {'hidden_states': [_np(h) for h in out.hidden_states]}
  if hasattr(out, 'logits'):
    res['logits'] = _np(out.logits)
  return res


def _run_ours(model, params, tokens, valid, types) -> dict[str, np.ndarray]:
  positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  out = model.apply({'params': params}, jnp.asarray(tokens),
                    segment_ids=jnp.asarray(valid.astype(np.int32)), positions=positions,
                    token_types=jnp.asarray(types), output_hidden_states=True)
  return jax.tree.map(np.asarray, out)


def _max_diff(ours: dict, theirs: dict, valid) -> float:
  """Max abs difference over every output HF gives, padded positions excluded."""
  assert len(ours['hidden_states']) == len(theirs['hidden_states'])
  pairs = list(zip(ours['hidden_states'], theirs['hidden_states']))
  if 'logits' in theirs:
    pairs.append((ours['logits'], theirs['logits']))
  worst = 0.0
  for a, b in pairs:
    assert a.shape == b.shape, (a.shape, b.shape)
    worst = max(worst, float(np.abs(a[valid] - b[valid]).max()))
  return worst


def _tensor_names(directory) -> set[str]:
  from safetensors import safe_open
  with safe_open(os.path.join(directory, 'model.safetensors'), 'np') as f:
    return set(f.keys())


def _same_tree(a: dict, b: dict) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('case', list(CASES))
def test_hf_import_parity_and_export(case, tmp_path):
  hf = _hf_model(case, seed=len(case))
  hf.save_pretrained(tmp_path / 'hf')
  pre = interop.load_pretrained(str(tmp_path / 'hf'))
  cfg = pre.config
  assert pre.family == 'encoder' and pre.info['initialised'] == CASES[case][2]
  assert cfg.positions == 'rotary' and cfg.rope_theta == 10_000
  assert 'position_embed' not in pre.params  # no table: the rotation is all the position signal
  assert cfg.max_position_embeddings == 64 and cfg.type_vocab_size == 2
  assert ('embed_project' in pre.params) == ('factorised' in case)
  tokens, valid, types = _batch(1)
  theirs = _run_hf(hf, tokens, valid, types)
  err = _max_diff(_run_ours(pre.model, pre.params, tokens, valid, types), theirs, valid)
  print(f'{case}: HF -> ours max abs difference {err:.1e}')  # measured 5e-7 .. 1e-6
  assert err <= ATOL, err

  # Ours -> HF: HF's tensor names exactly (sinusoid table included, so transformers
  # re-initialises nothing), the same outputs, and import(export) is bit-exact.
  interop.save_pretrained(pre.model, pre.params, str(tmp_path / 'ours'),
                          architecture=pre.info['architecture'])
  assert _tensor_names(tmp_path / 'ours') == _tensor_names(tmp_path / 'hf')
  back = getattr(transformers, CASES[case][0]).from_pretrained(
      tmp_path / 'ours', attn_implementation='eager').eval()
  assert _max_diff(_run_hf(back, tokens, valid, types), theirs, valid) == 0.0  # same weights
  _same_tree(interop.load_pretrained(str(tmp_path / 'ours')).params, pre.params)


def _random_encoder(**kw):
  """A random-initialised ptm_jax rotary encoder (init + noise, so biases and gains are not 0/1)."""
  cfg = encoder.Config(vocab_size=V, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                       max_position_embeddings=64, positions='rotary', **kw)
  model = encoder.Model(cfg)
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32),
                        fresh_init(params_template(model), 0.1))
  return model, params


@pytest.mark.parametrize('embedding_size', [None, 16])
def test_export_of_our_rotary_encoder(embedding_size, tmp_path):
  model, params = _random_encoder(embedding_size=embedding_size)
  amap = maps.for_config(model.config, 'encoder')
  assert amap.default_architecture == 'RoFormerForMaskedLM'  # not BERT, not ELECTRA
  tokens, valid, types = _batch(2)
  ours = _run_ours(model, params, tokens, valid, types)
  interop.save_pretrained(model, params, str(tmp_path / 'hf'))
  written = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  assert written['architectures'] == ['RoFormerForMaskedLM'] and not written['rotary_value']
  assert written['embedding_size'] == (embedding_size or 32)
  hf = transformers.RoFormerForMaskedLM.from_pretrained(tmp_path / 'hf',
                                                        attn_implementation='eager').eval()
  err = _max_diff(ours, _run_hf(hf, tokens, valid, types), valid)
  print(f'embedding_size={embedding_size}: ours -> HF max abs difference {err:.1e}')  # ~1e-6
  assert err <= ATOL, err
  back = interop.load_pretrained(str(tmp_path / 'hf'))
  assert back.config == model.config
  # Round trip: the pooler / NSP head have no RoFormer tensors (initialised fresh on import).
  assert back.info['initialised'] == ['pooler', 'nsp_head']
  keep = lambda p: {k: v for k, v in p.items() if k not in ('pooler', 'nsp_head')}  # noqa: E731
  _same_tree(keep(back.params), keep(jax.tree.map(np.asarray, params)))


def test_default_export_architectures_of_encoder_configs():
  tiny = dict(vocab_size=V, embed_dim=32, num_layers=1, num_heads=2, mlp_dim=48)
  arch = lambda **kw: maps.for_config(encoder.Config(**tiny, **kw),  # noqa: E731
                                      'encoder').default_architecture
  assert arch(positions='rotary') == 'RoFormerForMaskedLM'
  assert arch(positions='rotary', embedding_size=16) == 'RoFormerForMaskedLM'
  assert arch() == 'BertForPreTraining'  # unchanged for learned positions
  assert arch(embedding_size=16) == 'ElectraForPreTraining'
  assert arch(positions='rotary', rtd_head=True) == 'ElectraForPreTraining'  # which refuses it


def test_qk_permutation_maps_hf_rotation_onto_ours():
  """HF's interleaved rotation (its own code) equals ours on permuted features, and only then."""
  n, d, length = 2, 8, 7
  order, inverse = roformer_map.hf_order(d), roformer_map.ours_order(d)
  np.testing.assert_array_equal(order, [0, 2, 4, 6, 1, 3, 5, 7])
  np.testing.assert_array_equal(order[inverse], np.arange(d))
  np.testing.assert_array_equal(inverse[order], np.arange(d))

  rng = np.random.default_rng(0)
  q, k = rng.standard_normal((2, 1, n, length, d)).astype(np.float32)  # HF layout [B, N, L, H]
  table = torch.from_numpy(roformer_map.sinusoid_table(length, d))[None, None]
  rotate = transformers.models.roformer.modeling_roformer.RoFormerSelfAttention \
      .apply_rotary_position_embeddings
  hf_q, hf_k = (_np(t) for t in rotate(table, torch.from_numpy(q), torch.from_numpy(k)))
  hf_scores = np.einsum('bnqh,bnkh->bnqk', hf_q, hf_k)

  pos = jnp.arange(length, dtype=jnp.int32)[None]
  cos, sin = positions_lib.rotary_cos_sin(pos, d, theta=10_000.0)

  def ours(perm):  # to our [B, L, N, H] layout, rotate, back
    rot = lambda x: np.asarray(positions_lib.apply_rotary(  # noqa: E731
        jnp.asarray(x[..., perm].transpose(0, 2, 1, 3)), cos, sin)).transpose(0, 2, 1, 3)
    return rot(q), rot(k)

  our_q, our_k = ours(order)
  # Elementwise: our rotation of the permuted vector is HF's rotation, permuted.
  np.testing.assert_allclose(our_q, hf_q[..., order], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.einsum('bnqh,bnkh->bnqk', our_q, our_k), hf_scores, atol=1e-5,
                             rtol=0)
  # Control: without the permutation the attention scores differ.
  plain_q, plain_k = ours(np.arange(d))
  assert np.abs(np.einsum('bnqh,bnkh->bnqk', plain_q, plain_k) - hf_scores).max() > 0.1


def test_import_without_the_permutation_changes_the_logits(tmp_path, monkeypatch):
  hf = _hf_model('RoFormerForMaskedLM')
  hf.save_pretrained(tmp_path / 'hf')
  tokens, valid, types = _batch(4)
  theirs = _run_hf(hf, tokens, valid, types)
  pre = interop.load_pretrained(str(tmp_path / 'hf'))
  assert _max_diff(_run_ours(pre.model, pre.params, tokens, valid, types), theirs, valid) <= ATOL
  monkeypatch.setattr(roformer_map, 'hf_order', np.arange)  # q/k copied in HF's order
  wrong = interop.load_pretrained(str(tmp_path / 'hf'))
  q, q_wrong = (p['layers_0']['attention']['query']['kernel'] for p in (pre.params, wrong.params))
  assert not np.array_equal(q, q_wrong)
  out = _run_ours(wrong.model, wrong.params, tokens, valid, types)
  assert np.abs(out['logits'][valid] - theirs['logits'][valid]).max() > 1e-2


@pytest.mark.parametrize('change,message', [
    (dict(rope_theta=500.0), r"positions='rotary' with rope_theta=500 has no RoFormer equivalent "
                             r'\(HF RoFormer hard-codes 10000\): use rope_theta=10000'),
    (dict(pre_norm=True), r'pre_norm=True has no RoFormer equivalent'),
])
def test_unexportable_configs_are_one_line_errors(change, message, tmp_path):
  model, params = _random_encoder(**change)
  with pytest.raises(ValueError, match=message) as e:
    interop.save_pretrained(model, params, str(tmp_path / 'out'))
  assert '\n' not in str(e.value) and not (tmp_path / 'out').exists()  # nothing written


@pytest.mark.parametrize('change,message', [
    (dict(rotary_value=True), r'rotary_value=True is not supported: our encoder rotates queries '
                              r'and keys only'),
    (dict(is_decoder=True), r'is_decoder=True RoFormer checkpoints are not supported'),
    (dict(max_position_embeddings=32), r'shapes do not match.*embed_positions.weight'),
    ('table', r"embed_positions.weight is not RoFormer's sinusoid table"),
])
def test_unrepresentable_hf_files_are_one_line_errors(change, message, tmp_path):
  from safetensors.numpy import load_file, save_file
  _hf_model('RoFormerForMaskedLM').save_pretrained(tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  if change == 'table':  # a learned / rescaled position table: HF would rotate by it, we cannot
    path = str(tmp_path / 'model.safetensors')
    tensors = load_file(path)
    tensors['roformer.encoder.embed_positions.weight'] *= 1.01
    save_file(tensors, path, metadata={'format': 'pt'})
  else:
    (tmp_path / 'config.json').write_text(json.dumps({**config, **change}))
  with pytest.raises(ValueError, match=message) as e:
    interop.load_pretrained(str(tmp_path))
  assert '\n' not in str(e.value)
