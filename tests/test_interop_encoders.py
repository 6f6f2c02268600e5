"""HF interop for ALBERT, ELECTRA and DistilBERT (`interop/maps/{albert,electra,distilbert}.py`).

- Round trips per architecture: a random-initialised tiny HF PyTorch model -> HF's own
  `save_pretrained` (safetensors) -> our `load_pretrained` -> every hidden state and every head
  output (MLM / SOP / RTD logits, pooler) within 1e-4 on padded random batches; then our
  `save_pretrained` -> transformers `from_pretrained` -> the same outputs, with exactly the tensor
  names HF writes. Covers ALBERT sharing all / none, ELECTRA with and without the embedding
  projection (E < H discriminator, E > H generator), DistilBERT learned and sinusoidal positions.
- Heads a class lacks are initialised fresh and listed in `info['initialised']`.
- One-line errors: missing / unexpected tensors (listed) per family; HF configurations we cannot
  represent (ALBERT 2 groups of 4 layers, inner_group_num 2, a non-GELU ELECTRA generator) and
  configs HF cannot represent (ALBERT share='attention').
- Our ELECTRA pretraining tree (`objectives/electra.py`) splits into a discriminator and a
  generator whose outputs equal the objective's, which transformers loads back to the same
  logits, and which `electra_pair` joins back into the same tree.
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
from ptm_jax.interop.maps import electra as electra_map  # noqa: E402
from ptm_jax.interop.pretrained import fresh_init, params_template  # noqa: E402
from ptm_jax.models import albert, encoder  # noqa: E402
from ptm_jax.objectives import electra  # noqa: E402

B, L, V = 3, 12, 300
ATOL = 1e-4

_ALBERT = dict(vocab_size=V, embedding_size=16, hidden_size=64, num_hidden_layers=3,
               num_attention_heads=4, intermediate_size=96, max_position_embeddings=32)
_ELECTRA = dict(vocab_size=V, num_hidden_layers=2, max_position_embeddings=32)
_DISTIL = dict(vocab_size=V, dim=64, n_layers=2, n_heads=4, hidden_dim=96,
               max_position_embeddings=32)
# case -> (HF class, config factory, our heads the file lacks = initialised fresh)
CASES = {
    'AlbertForPreTraining': ('AlbertForPreTraining', lambda: transformers.AlbertConfig(
        **_ALBERT), []),
    'AlbertForPreTraining-none': ('AlbertForPreTraining', lambda: transformers.AlbertConfig(
        num_hidden_groups=3, hidden_act='gelu', **_ALBERT), []),
    'AlbertForMaskedLM': ('AlbertForMaskedLM', lambda: transformers.AlbertConfig(**_ALBERT),
                          ['pooler', 'sop_head']),
    'AlbertModel': ('AlbertModel', lambda: transformers.AlbertConfig(**_ALBERT),
                    ['mlm_head', 'sop_head']),
    'ElectraForPreTraining': ('ElectraForPreTraining', lambda: transformers.ElectraConfig(
        embedding_size=64, hidden_size=64, num_attention_heads=4, intermediate_size=96,
        **_ELECTRA), ['mlm_head', 'pooler', 'nsp_head']),
    'ElectraForPreTraining-small': ('ElectraForPreTraining', lambda: transformers.ElectraConfig(
        embedding_size=32, hidden_size=64, num_attention_heads=4, intermediate_size=96,
        hidden_act='gelu_new', **_ELECTRA), ['mlm_head', 'pooler', 'nsp_head']),
    'ElectraForMaskedLM': ('ElectraForMaskedLM', lambda: transformers.ElectraConfig(
        embedding_size=64, hidden_size=32, num_attention_heads=2, intermediate_size=48,
        **_ELECTRA), ['rtd_head', 'pooler', 'nsp_head']),
    'ElectraModel': ('ElectraModel', lambda: transformers.ElectraConfig(
        embedding_size=32, hidden_size=64, num_attention_heads=4, intermediate_size=96,
        **_ELECTRA), ['mlm_head', 'rtd_head', 'pooler', 'nsp_head']),
    'DistilBertForMaskedLM': ('DistilBertForMaskedLM', lambda: transformers.DistilBertConfig(
        **_DISTIL), ['pooler', 'nsp_head']),
    'DistilBertModel': ('DistilBertModel', lambda: transformers.DistilBertConfig(**_DISTIL),
                        ['mlm_head', 'pooler', 'nsp_head']),
    'DistilBertModel-sinusoidal': ('DistilBertModel', lambda: transformers.DistilBertConfig(
        sinusoidal_pos_embds=True, activation='relu', **_DISTIL), ['mlm_head', 'pooler',
                                                                     'nsp_head']),
}


def _randomise(model, seed: int, skip: str = '') -> None:
  """Redraws every parameter (norm gains near 1, the rest N(0, 0.1)) so a wrong mapping shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if skip and skip in name:
        continue
      noise = torch.randn(p.shape, generator=gen)
      is_gain = name.endswith('weight') and 'norm' in name.lower()
      p.copy_(1.0 + 0.1 * noise if is_gain else 0.1 * noise)
  model.eval()


def _np(t) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def _hf_model(case: str, seed: int = 0):
  cls, make_config, _ = CASES[case]
  cfg = make_config()
  cfg._attn_implementation = 'eager'
  model = getattr(transformers, cls)(cfg)
  # The sinusoid table is the point of that case: keep it, redraw the rest.
  _randomise(model, seed, skip='position_embeddings' if 'sinusoidal' in case else '')
  return model


def _batch(seed: int):
  rng = np.random.default_rng(seed)
  valid = np.arange(L)[None, :] < np.asarray([12, 9, 5])[:, None]
  tokens = np.where(valid, rng.integers(5, V, size=(B, L)), 0).astype(np.int32)
  types = (np.where(np.arange(L)[None, :] >= 4, 1, 0) * valid).astype(np.int32)
  return tokens, valid, types


def _run_hf(model, tokens, valid, types) -> dict[str, np.ndarray]:
  kw = dict(input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(valid).long(),
            position_ids=torch.arange(L).expand(B, L), output_hidden_states=True)
  name = type(model).__name__
  if not name.startswith('DistilBert'):
    kw['token_type_ids'] = torch.from_numpy(types).long()
  with torch.no_grad():
    out = model(**kw)
  res = {'hidden_states': [_np(h) for h in out.hidden_states]}
  if name == 'AlbertForPreTraining':
    res['logits'], res['sop_logits'] = _np(out.prediction_logits), _np(out.sop_logits)
  elif name == 'ElectraForPreTraining':
    res['rtd_logits'] = _np(out.logits)  # [B, L]: one replaced-token logit per position
  elif hasattr(out, 'logits'):
    res['logits'] = _np(out.logits)
  if getattr(out, 'pooler_output', None) is not None:
    res['pooled'] = _np(out.pooler_output)
  return res


def _run_ours(pre, tokens, valid, types) -> dict[str, np.ndarray]:
  positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  out = pre.model.apply({'params': pre.params}, jnp.asarray(tokens),
                        segment_ids=jnp.asarray(valid.astype(np.int32)), positions=positions,
                        token_types=jnp.asarray(types) if pre.config.type_vocab_size else None,
                        output_hidden_states=True)
  return jax.tree.map(np.asarray, out)


def _assert_match(ours: dict, theirs: dict, valid) -> float:
  """Max abs difference over every output HF gives (padded positions excluded); <= ATOL."""
  assert len(ours['hidden_states']) == len(theirs['hidden_states'])
  pairs = list(zip(ours['hidden_states'], theirs['hidden_states']))
  pairs += [(ours[k], theirs[k]) for k in ('logits', 'rtd_logits') if k in theirs]
  worst = 0.0
  for a, b in pairs:
    assert a.shape == b.shape, (a.shape, b.shape)
    worst = max(worst, float(np.abs(a[valid] - b[valid]).max()))
  for k in ('sop_logits', 'pooled'):
    if k in theirs:
      worst = max(worst, float(np.abs(ours[k] - theirs[k]).max()))
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
  assert pre.info['initialised'] == CASES[case][2]
  tokens, valid, types = _batch(1)
  theirs = _run_hf(hf, tokens, valid, types)
  err = _assert_match(_run_ours(pre, tokens, valid, types), theirs, valid)
  print(f'{case}: HF -> ours max abs error {err:.1e}')
  if case.startswith('Albert'):
    assert pre.family == 'albert' and pre.config.share == ('none' if 'none' in case else 'all')
  elif case.startswith('Electra'):
    e = hf.config.embedding_size
    assert pre.config.rtd_head and pre.config.resolved_embedding_size == e
    assert ('embed_project' in pre.params) == (e != hf.config.hidden_size)
  else:
    assert pre.config.type_vocab_size == 0 and 'type_embed' not in pre.params

  # Ours -> HF: transformers reads it back to the same outputs and the same tensor names.
  interop.save_pretrained(pre.model, pre.params, str(tmp_path / 'ours'),
                          architecture=pre.info['architecture'])
  assert _tensor_names(tmp_path / 'ours') == _tensor_names(tmp_path / 'hf')
  back = getattr(transformers, CASES[case][0]).from_pretrained(
      tmp_path / 'ours', attn_implementation='eager').eval()
  _assert_match(_run_hf(back, tokens, valid, types), theirs, valid)


def test_default_export_architecture_follows_the_config(tmp_path):
  def written(cfg, family='encoder'):
    return maps.for_config(cfg, family).default_architecture

  tiny = dict(vocab_size=V, embed_dim=32, num_layers=1, num_heads=2, mlp_dim=48)
  assert written(encoder.Config(**tiny)) == 'BertForPreTraining'
  assert written(encoder.Config(**tiny, type_vocab_size=0)) == 'DistilBertForMaskedLM'
  assert written(encoder.Config(**tiny, rtd_head=True)) == 'ElectraForPreTraining'
  assert written(encoder.Config(**tiny, embedding_size=16)) == 'ElectraForPreTraining'
  assert written(encoder.Config(**tiny, position_offset=2, type_vocab_size=1)) == (
      'RobertaForMaskedLM')
  assert written(albert.Config(**tiny, embedding_size=8), 'albert') == 'AlbertForPreTraining'
  with pytest.raises(ValueError, match=r"share='attention' has no HF ALBERT equivalent") as e:
    model = albert.Model(albert.Config(**tiny, embedding_size=8, share='attention'))
    interop.save_pretrained(model, _fresh(model), str(tmp_path / 'x'))
  assert '\n' not in str(e.value)


def _fresh(model) -> dict:
  """Initialised params of `model` without compiling it (numpy, as the importer's fresh heads)."""
  return fresh_init(params_template(model), model.config.initializer_range)


def _save(directory, tensors: dict, config: dict):
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, 'model.safetensors'))
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config, f)


@pytest.mark.parametrize('case,gone,model_type', [
    ('AlbertForPreTraining', 'albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight',
     'albert'),
    ('ElectraForPreTraining-small', 'electra.embeddings_project.weight', 'electra'),
    ('DistilBertForMaskedLM', 'distilbert.transformer.layer.1.attention.k_lin.bias',
     'distilbert'),
])
def test_missing_and_unexpected_tensors_are_one_line_errors(case, gone, model_type, tmp_path):
  from safetensors.numpy import load_file
  _hf_model(case).save_pretrained(tmp_path / 'good')
  config = json.loads((tmp_path / 'good' / 'config.json').read_text())
  tensors = load_file(str(tmp_path / 'good' / 'model.safetensors'))
  assert gone in tensors
  _save(tmp_path / 'missing', {k: v for k, v in tensors.items() if k != gone}, config)
  with pytest.raises(ValueError, match=rf'missing 1 tensor\(s\) for {model_type}: {gone}$') as e:
    interop.load_pretrained(str(tmp_path / 'missing'))
  assert '\n' not in str(e.value)
  extra = {f'{gone[:-len(".weight")]}.adapter{i}.weight': np.zeros(2, np.float32) for i in range(9)}
  _save(tmp_path / 'extra', {**tensors, **extra}, config)
  with pytest.raises(ValueError, match=rf'9 unexpected tensor\(s\) for {model_type}: .*adapter0'
                                       r'.*\(\+1 more\)$') as e:
    interop.load_pretrained(str(tmp_path / 'extra'))
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('case,change,message', [
    ('AlbertForPreTraining', dict(num_hidden_layers=4, num_hidden_groups=2),
     r'num_hidden_groups=2 is not supported: use 1'),
    ('AlbertForPreTraining', dict(inner_group_num=2), r'inner_group_num=2 is not supported'),
    ('ElectraForMaskedLM', dict(hidden_act='gelu_new'),
     r"ElectraForMaskedLM with hidden_act='gelu_new' is not supported"),
])
def test_unrepresentable_hf_configs_are_refused(case, change, message, tmp_path):
  hf = _hf_model(case)
  hf.save_pretrained(tmp_path / 'hf')
  config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  (tmp_path / 'hf' / 'config.json').write_text(json.dumps({**config, **change}))
  with pytest.raises(ValueError, match=message) as e:
    interop.load_pretrained(str(tmp_path / 'hf'))
  assert '\n' not in str(e.value)


def test_electra_pretraining_tree_exports_as_discriminator_and_generator(tmp_path):
  """objectives/electra.py params -> ElectraForPreTraining + ElectraForMaskedLM -> back."""
  disc_cfg = encoder.Config(vocab_size=V, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=96,
                            max_position_embeddings=32)
  model = electra.Model(disc_cfg, electra.generator_config(
      disc_cfg, electra.Options(generator_width_fraction=0.5, generator_num_heads=2)))
  tokens, valid, types = _batch(3)
  seg = jnp.asarray(valid.astype(np.int32))
  positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  kw = dict(segment_ids=seg, positions=positions, token_types=jnp.asarray(types))
  rng = np.random.default_rng(5)
  params = jax.tree.map(  # init + noise: LayerNorm biases and head biases are non-zero too
      lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), _fresh(model))
  theirs = jax.tree.map(np.asarray, jax.jit(model.apply)({'params': params}, jnp.asarray(tokens),
                                                         **kw))

  (d_cfg, d_params), (g_cfg, g_params) = electra_map.split_pretraining(
      params, model.config, model.generator_config)
  for cfg, p, arch, ours_key, ref_key in (
      (d_cfg, d_params, 'ElectraForPreTraining', 'rtd_logits', 'rtd_logits'),
      (g_cfg, g_params, 'ElectraForMaskedLM', 'logits', 'logits')):
    net = encoder.Model(cfg)
    # The split model alone reproduces the objective's network (missing heads filled in fresh).
    full = {**_fresh(net), **p}
    out = jax.jit(net.apply)({'params': full}, jnp.asarray(tokens), **kw)
    np.testing.assert_allclose(np.asarray(out[ours_key])[valid], theirs[ref_key][valid],
                               atol=ATOL, rtol=0)
    interop.save_pretrained(net, full, str(tmp_path / arch), architecture=arch)
    back = getattr(transformers, arch).from_pretrained(tmp_path / arch,
                                                       attn_implementation='eager').eval()
    with torch.no_grad():
      hf_out = _np(back(input_ids=torch.from_numpy(tokens).long(),
                        attention_mask=torch.from_numpy(valid).long(),
                        token_type_ids=torch.from_numpy(types).long()).logits)
    np.testing.assert_allclose(hf_out[valid], theirs[ref_key][valid], atol=ATOL, rtol=0)

  disc = interop.load_pretrained(str(tmp_path / 'ElectraForPreTraining'))
  gen = interop.load_pretrained(str(tmp_path / 'ElectraForMaskedLM'))
  assert gen.config.embed_dim == 32 and gen.config.resolved_embedding_size == 64
  joined = electra_map.electra_pair(disc.params, gen.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0, rtol=0), joined,
               jax.tree.map(np.asarray, params))
  with pytest.raises(ValueError, match='as wide as the shared embedding'):
    electra_map.split_pretraining(params, model.config, model.config)
