"""Numerical parity with the HF PyTorch reference: BERT, GPT-2 and Llama, fp32, padded batches.

Random HF models (every weight re-drawn, LayerNorm gains included, so a wrong mapping shows)
are copied into our parameter trees by the small name maps below; outputs must agree to 1e-4
at non-padded positions. The maps move to `ptm_jax/interop/` with the interop issue.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

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


def bert_params_from_hf(sd: dict, cfg: encoder.Config) -> dict:
  """HF `BertForPreTraining` state dict -> our encoder params."""
  n, h = cfg.num_heads, cfg.resolved_head_dim
  g = lambda k: _np(sd[k])
  ln = lambda k: {'scale': g(k + '.weight'), 'bias': g(k + '.bias')}
  p = {
      'token_embed': {'embedding': g('bert.embeddings.word_embeddings.weight')},
      'position_embed': {'embedding': g('bert.embeddings.position_embeddings.weight')},
      'type_embed': {'embedding': g('bert.embeddings.token_type_embeddings.weight')},
      'embed_norm': ln('bert.embeddings.LayerNorm'),
      'pooler': {'kernel': g('bert.pooler.dense.weight').T, 'bias': g('bert.pooler.dense.bias')},
      'mlm_head': {
          'dense': {'kernel': g('cls.predictions.transform.dense.weight').T,
                    'bias': g('cls.predictions.transform.dense.bias')},
          'norm': ln('cls.predictions.transform.LayerNorm'),
          'bias': g('cls.predictions.bias')},
      'nsp_head': {'kernel': g('cls.seq_relationship.weight').T,
                   'bias': g('cls.seq_relationship.bias')},
  }
  for i in range(cfg.num_layers):
    pre = f'bert.encoder.layer.{i}.'
    qkv = lambda name: {'kernel': g(pre + f'attention.self.{name}.weight').T.reshape(-1, n, h),
                        'bias': g(pre + f'attention.self.{name}.bias').reshape(n, h)}
    p[f'layers_{i}'] = {
        'attention': {
            'query': qkv('query'), 'key': qkv('key'), 'value': qkv('value'),
            'out': {'kernel': g(pre + 'attention.output.dense.weight').T.reshape(n, h, -1),
                    'bias': g(pre + 'attention.output.dense.bias')}},
        'attention_norm': ln(pre + 'attention.output.LayerNorm'),
        'mlp': {'wi': {'kernel': g(pre + 'intermediate.dense.weight').T,
                       'bias': g(pre + 'intermediate.dense.bias')},
                'wo': {'kernel': g(pre + 'output.dense.weight').T,
                       'bias': g(pre + 'output.dense.bias')}},
        'mlp_norm': ln(pre + 'output.LayerNorm'),
    }
  return p


def gpt2_params_from_hf(sd: dict, cfg: decoder.Config) -> dict:
  """HF `GPT2LMHeadModel` state dict (Conv1D weights are [in, out]) -> our decoder params."""
  n, h, d = cfg.num_heads, cfg.resolved_head_dim, cfg.embed_dim
  g = lambda k: _np(sd[k])
  ln = lambda k: {'scale': g(k + '.weight'), 'bias': g(k + '.bias')}
  p = {'token_embed': {'embedding': g('transformer.wte.weight')},
       'position_embed': {'embedding': g('transformer.wpe.weight')},
       'final_norm': ln('transformer.ln_f')}
  for i in range(cfg.num_layers):
    pre = f'transformer.h.{i}.'
    w_qkv, b_qkv = g(pre + 'attn.c_attn.weight'), g(pre + 'attn.c_attn.bias')
    attn = {name: {'kernel': w_qkv[:, j * d:(j + 1) * d].reshape(d, n, h),
                   'bias': b_qkv[j * d:(j + 1) * d].reshape(n, h)}
            for j, name in enumerate(('query', 'key', 'value'))}
    attn['out'] = {'kernel': g(pre + 'attn.c_proj.weight').reshape(n, h, d),
                   'bias': g(pre + 'attn.c_proj.bias')}
    p[f'layers_{i}'] = {
        'attention': attn, 'attention_norm': ln(pre + 'ln_1'), 'mlp_norm': ln(pre + 'ln_2'),
        'mlp': {'wi': {'kernel': g(pre + 'mlp.c_fc.weight'), 'bias': g(pre + 'mlp.c_fc.bias')},
                'wo': {'kernel': g(pre + 'mlp.c_proj.weight'), 'bias': g(pre + 'mlp.c_proj.bias')}},
    }
  return p


def llama_params_from_hf(sd: dict, cfg: decoder.Config) -> dict:
  """HF `LlamaForCausalLM` state dict (untied, no biases) -> our decoder params."""
  n, h, kv = cfg.num_heads, cfg.resolved_head_dim, cfg.num_kv_heads
  g = lambda k: _np(sd[k])
  p = {'token_embed': {'embedding': g('model.embed_tokens.weight')},
       'final_norm': {'scale': g('model.norm.weight')},
       'lm_head': {'kernel': g('lm_head.weight').T}}
  for i in range(cfg.num_layers):
    pre = f'model.layers.{i}.'
    heads = lambda name, k: {'kernel': g(pre + f'self_attn.{name}.weight').T.reshape(-1, k, h)}
    p[f'layers_{i}'] = {
        'attention': {'query': heads('q_proj', n), 'key': heads('k_proj', kv),
                      'value': heads('v_proj', kv),
                      'out': {'kernel': g(pre + 'self_attn.o_proj.weight').T.reshape(n, h, -1)}},
        'attention_norm': {'scale': g(pre + 'input_layernorm.weight')},
        'mlp_norm': {'scale': g(pre + 'post_attention_layernorm.weight')},
        'mlp': {'wi_gate': {'kernel': g(pre + 'mlp.gate_proj.weight').T},
                'wi_up': {'kernel': g(pre + 'mlp.up_proj.weight').T},
                'wo': {'kernel': g(pre + 'mlp.down_proj.weight').T}},
    }
  return p


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
  params = bert_params_from_hf(hf.state_dict(), cfg)
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
  params = gpt2_params_from_hf(hf.state_dict(), cfg)
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
  params = llama_params_from_hf(hf.state_dict(), cfg)
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
