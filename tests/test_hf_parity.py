"""Numerical parity with the HF PyTorch reference: BERT, GPT-2 and Llama, fp32, padded batches.

Random HF models (every weight re-drawn, LayerNorm gains included, so a wrong mapping shows)
are copied into our parameter trees by the library's name maps (`ptm_jax/interop/maps/`); outputs
must agree to 1e-4 at non-padded positions. `test_interop.py` covers the files around the maps.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from ptm_jax.interop import hf as interop_hf, maps  # noqa: E402
from ptm_jax.models import decoder, encoder  # noqa: E402

B, L, V = 3, 12, 1000
ATOL = 1e-4


def _randomise(model: 'torch.nn.Module', seed: int) -> None:
  """Redraws every HF parameter (norm gains near 1, the rest N(0, 0.1)) so nothing is trivial."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      is_gain = name.endswith('weight') and ('norm' in name.lower() or '.ln_' in name)
      p.copy_(1.0 + 0.1 * noise if is_gain else 0.1 * noise)
  model.eval()


def _np(t: 'torch.Tensor') -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def _batch(seed: int, lengths=(12, 9, 5)):
  """Right-padded random batch: tokens, segment_ids (0 = pad), positions, valid mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, V, size=(B, L)).astype(np.int32)
  valid = np.arange(L)[None, :] < np.asarray(lengths)[:, None]
  tokens = np.where(valid, tokens, 0).astype(np.int32)
  positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()
  return tokens, valid.astype(np.int32), positions, valid


def _check_complete(ours: dict, template: dict) -> None:
  """Every parameter of our model was filled, with the right shape, and nothing extra."""
  flat_t = flax.traverse_util.flatten_dict(flax.core.meta.unbox(template))
  flat_o = flax.traverse_util.flatten_dict(ours)
  assert set(flat_o) == set(flat_t), set(flat_o) ^ set(flat_t)
  for k, v in flat_t.items():
    assert flat_o[k].shape == v.shape, (k, flat_o[k].shape, v.shape)


def _from_hf(architecture: str, sd: dict, cfg) -> dict:
  """HF state dict -> our params through the library's name map (`ptm_jax.interop.maps`)."""
  tensors = {k: _np(v) for k, v in sd.items()}
  params, initialised = interop_hf.params_from_tensors(
      maps.for_architecture(architecture), cfg, tensors, lambda k: tensors[k].shape,
      tensors.__getitem__)
  assert not initialised, initialised
  return params


def _ours(model, params_template_fn, hf_params, tokens, valid, positions, token_types=None):
  template = jax.eval_shape(params_template_fn)['params']
  _check_complete(hf_params, template)
  return model.apply({'params': hf_params}, jnp.asarray(tokens), segment_ids=jnp.asarray(valid),
                     positions=jnp.asarray(positions),
                     token_types=None if token_types is None else jnp.asarray(token_types),
                     output_hidden_states=True)


def _close(ours, theirs, valid):
  ours, theirs = np.asarray(ours), _np(theirs)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=ATOL, rtol=0)


def test_bert_parity():
  hf_cfg = transformers.BertConfig(
      vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, max_position_embeddings=32, type_vocab_size=2,
      hidden_act='gelu', layer_norm_eps=1e-12, attn_implementation='eager')
  hf = transformers.BertForPreTraining(hf_cfg)
  _randomise(hf, seed=0)
  cfg = encoder.Config(vocab_size=V, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128,
                       max_position_embeddings=32, dropout_rate=0.1)
  model = encoder.Model(cfg)
  tokens, seg, pos, valid = _batch(1)
  types = np.where(np.arange(L)[None, :] >= 4, 1, 0).astype(np.int32) * seg
  params = _from_hf('BertForPreTraining', hf.state_dict(), cfg)
  ours = _ours(model, lambda: model.init(jax.random.key(0), tokens, segment_ids=seg,
                                         positions=pos, token_types=types),
               params, tokens, seg, pos, types)
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(seg).long(),
                token_type_ids=torch.from_numpy(types).long(),
                position_ids=torch.from_numpy(pos).long(), output_hidden_states=True)
  _close(ours['logits'], theirs.prediction_logits, valid)
  np.testing.assert_allclose(np.asarray(ours['nsp_logits']), _np(theirs.seq_relationship_logits),
                             atol=ATOL, rtol=0)
  assert len(ours['hidden_states']) == len(theirs.hidden_states) == 3
  for a, b in zip(ours['hidden_states'], theirs.hidden_states):
    _close(a, b, valid)
  _close(ours['hidden'], theirs.hidden_states[-1], valid)


def test_gpt2_parity():
  hf_cfg = transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                   bos_token_id=2, eos_token_id=3, attn_implementation='eager')
  hf = transformers.GPT2LMHeadModel(hf_cfg)
  _randomise(hf, seed=1)
  cfg = decoder.Config(vocab_size=V, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=256,
                       max_position_embeddings=32)
  model = decoder.Model(cfg)
  tokens, seg, pos, valid = _batch(2)
  params = _from_hf('GPT2LMHeadModel', hf.state_dict(), cfg)
  ours = _ours(model, lambda: model.init(jax.random.key(0), tokens, segment_ids=seg,
                                         positions=pos), params, tokens, seg, pos)
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(seg).long(),
                position_ids=torch.from_numpy(pos).long(), output_hidden_states=True)
  _close(ours['logits'], theirs.logits, valid)
  assert len(ours['hidden_states']) == len(theirs.hidden_states) == cfg.num_layers + 1
  for a, b in zip(ours['hidden_states'], theirs.hidden_states):
    _close(a, b, valid)


def test_llama_parity():
  hf_cfg = transformers.LlamaConfig(
      vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=32,
      rms_norm_eps=1e-6, rope_theta=10_000.0, tie_word_embeddings=False,
      bos_token_id=2, eos_token_id=3, pad_token_id=0, attn_implementation='eager')
  hf = transformers.LlamaForCausalLM(hf_cfg)
  _randomise(hf, seed=2)
  cfg = decoder.Config(**{**decoder.VARIANTS['llama_runlocal'], 'vocab_size': V, 'embed_dim': 64,
                          'num_heads': 4, 'num_kv_heads': 2, 'mlp_dim': 96})
  model = decoder.Model(cfg)
  tokens, seg, pos, valid = _batch(3)
  params = _from_hf('LlamaForCausalLM', hf.state_dict(), cfg)
  ours = _ours(model, lambda: model.init(jax.random.key(0), tokens, segment_ids=seg,
                                         positions=pos), params, tokens, seg, pos)
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(seg).long(),
                position_ids=torch.from_numpy(pos).long(), output_hidden_states=True)
  _close(ours['logits'], theirs.logits, valid)
  assert len(ours['hidden_states']) == len(theirs.hidden_states) == cfg.num_layers + 1
  for a, b in zip(ours['hidden_states'], theirs.hidden_states):
    _close(a, b, valid)
