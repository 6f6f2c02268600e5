"""RoFormer (`RoFormerForMaskedLM`, `RoFormerModel`) <-> our `encoder` family, `positions='rotary'`.

RoFormer (Su et al. 2021) is BERT's post-LN encoder without a position table: queries and keys
are rotated by position in every layer. Everything but the rotation is BERT under a `roformer.`
prefix, so the layers reuse `bert.layer_from_hf` / `layer_to_hf`.

Decisions:
- Rotary layout. Ours (`layers/positions.py`, as HF Llama) is rotate-half: head dim i pairs with
  i + d/2 at frequency i. HF RoFormer rotates interleaved pairs: dims 2i and 2i+1 at frequency i
  (`sin_pos = stack([sin, sin], -1)`, `rotate_half = stack([-x[..., 1::2], x[..., ::2]], -1)`).
  The frequencies agree: HF's `RoFormerSinusoidalPositionalEmbedding` gives pair i the angle
  pos / 10000^(2i/d), ours pos * theta^(-2i/d) with theta = 10000, and both number positions
  0, 1, ... per sequence. So a per-head permutation of the query and key output features
  converts one layout into the other: our i <- HF 2i, our i + d/2 <- HF 2i + 1 (`hf_order`;
  `ours_order` is its inverse, used on export). Why it is exact: rotating a permuted vector in the
  permuted layout is the permuted rotation (each HF pair becomes one of our pairs, same angle and
  sign), and a score q.k sums over all head dims, so permuting q and k alike leaves it unchanged.
  Values and the output projection are not rotated and keep HF's order. Only q/k are reindexed
  (no arithmetic), so import(export(params)) is bit-exact.
- `rope_theta`: HF hard-codes 10000, so a config with another `rope_theta` is refused on export.
- `encoder.embed_positions.weight`: HF's sinusoid table ([max_position_embeddings, head_dim],
  no learned weights). We write it as HF computes it (so transformers loads our file without
  re-initialising anything), and on import check that the file's table is that sinusoid (else
  HF and we would rotate differently). `max_position_embeddings` (only its size) is kept as ours.
- `rotary_value=True` (values rotated too) has no counterpart in our attention: refused on import.
- `embedding_size` E != `hidden_size` H is the encoder's factorised embedding, exactly as for
  ELECTRA: E-wide tables + LayerNorm, then `embed_project` = HF `roformer.embeddings_project`, and
  the MLM transform `cls.predictions.transform.dense` H -> E before the tied [V, E] decoder.
- Token types (`type_vocab_size`, 2 by default) are our `type_embed`; the MLM head
  (`cls.predictions.transform.dense/LayerNorm`, tied decoder + `cls.predictions.bias`) is our
  `mlm_head`, as in BERT. RoFormer has no pooler and no NSP head: ours are initialised fresh on
  import (listed in `info['initialised']`) and never exported.
- Refused (one line): `is_decoder`, untied decoders (`tie_word_embeddings=False`), and on export
  pre-LN, `position_offset`, `rtd_head`, block positions, head_dim != H / heads, no token types.
"""
from __future__ import annotations

import numpy as np

from ptm_jax.interop.maps import (ArchMap, Getter, activation_from_hf, dense, dense_out, factorised,
                                  ln, ln_out, require)
from ptm_jax.interop.maps.bert import layer_from_hf, layer_to_hf

BASE = 'roformer.'
THETA = 10_000.0  # HF RoFormer's only rotary base
TABLE = BASE + 'encoder.embed_positions.weight'


def hf_order(head_dim: int) -> np.ndarray:
  """Index of the HF feature each of our head features takes: ours i <- HF 2i, i + d/2 <- 2i + 1."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def ours_order(head_dim: int) -> np.ndarray:
  """The inverse of `hf_order`: HF 2i <- ours i, HF 2i + 1 <- ours i + d/2 (used on export)."""
  return np.argsort(hf_order(head_dim))


def permute_qk(layer: dict, order: np.ndarray) -> dict:
  """A copy of one block's params with query/key head features reindexed by `order`.

  Kernels are [D, N, H] and biases [N, H]: the last axis is the per-head feature.
  """
  attention = dict(layer['attention'])
  for name in ('query', 'key'):
    attention[name] = {k: v[..., order] for k, v in attention[name].items()}
  return {**layer, 'attention': attention}


def sinusoid_table(num_positions: int, head_dim: int) -> np.ndarray:
  """HF's `RoFormerSinusoidalPositionalEmbedding.create_weight` (even head_dim): float64 angles
  pos / 10000^(2i/d), sin in the first half, cos in the second, cast to float32.

  Not `layers.positions.sinusoidal` (same layout): that one computes in float32, whose angles at
  large positions differ from HF's by ~1e-4, and the file's table must match HF's to 1e-6."""
  half = np.arange(head_dim // 2, dtype=np.float64)
  angles = np.arange(num_positions, dtype=np.float64)[:, None] / np.power(
      THETA, 2 * half / head_dim)[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def _config_from_hf(c: dict) -> dict:
  require(not c.get('rotary_value', False),
          'RoFormer rotary_value=True is not supported: our encoder rotates queries and keys only, '
          'not values')
  require(not c.get('is_decoder', False), 'is_decoder=True RoFormer checkpoints are not supported')
  require(c.get('tie_word_embeddings', True),
          'RoFormer with tie_word_embeddings=False is not supported (only the tied MLM decoder)')
  require(c.get('type_vocab_size', 2) >= 1, 'RoFormer with type_vocab_size=0 is not supported')
  width, heads = c['hidden_size'], c['num_attention_heads']
  require(width % heads == 0 and (width // heads) % 2 == 0,
          f'RoFormer hidden_size={width} / num_attention_heads={heads} must be an even head size')
  width_e = c.get('embedding_size') or width
  return dict(
      vocab_size=c['vocab_size'], embed_dim=width, num_layers=c['num_hidden_layers'],
      num_heads=heads, head_dim=None, mlp_dim=c['intermediate_size'],
      max_position_embeddings=c.get('max_position_embeddings', 1536),
      type_vocab_size=c.get('type_vocab_size', 2), position_offset=0,
      positions='rotary', rope_theta=THETA,
      embedding_size=None if width_e == width else width_e,
      layer_norm_eps=c.get('layer_norm_eps', 1e-12),
      activation=activation_from_hf(c.get('hidden_act', 'gelu')),
      dropout_rate=c.get('hidden_dropout_prob', 0.1),
      attention_dropout_rate=c.get('attention_probs_dropout_prob', 0.1),
      initializer_range=c.get('initializer_range', 0.02))


def _matches(cfg) -> bool:
  # Every rotary encoder without ELECTRA's RTD head or DistilBERT's missing token types (those maps
  # refuse rotary themselves); `_config_to_hf` then names whatever else RoFormer cannot express.
  return cfg.positions == 'rotary' and not cfg.rtd_head and cfg.type_vocab_size >= 1


def _config_to_hf(cfg) -> dict:
  require(cfg.positions == 'rotary', f'positions={cfg.positions!r} has no RoFormer equivalent '
          "(RoFormer is positions='rotary')")
  require(cfg.rope_theta == THETA, f"positions='rotary' with rope_theta={cfg.rope_theta:g} has no "
          'RoFormer equivalent (HF RoFormer hard-codes 10000): use rope_theta=10000')
  require(cfg.head_dim in (None, cfg.embed_dim // cfg.num_heads),
          f'head_dim={cfg.head_dim} != embed_dim / num_heads has no RoFormer equivalent')
  require(not cfg.pre_norm, 'pre_norm=True has no RoFormer equivalent (post-LN only)')
  require(cfg.position_offset == 0, 'position_offset > 0 has no RoFormer equivalent')
  require(not cfg.block_position_embeddings,
          'block_position_embeddings=True has no RoFormer equivalent')
  require(getattr(cfg, 'tie_embeddings', True),
          'tie_embeddings=False has no RoFormer equivalent (its MLM decoder is tied)')
  require(not cfg.rtd_head, 'rtd_head=True has no RoFormer equivalent')
  require(cfg.type_vocab_size >= 1, 'type_vocab_size=0 has no RoFormer equivalent')
  return dict(
      model_type='roformer', vocab_size=cfg.vocab_size,
      embedding_size=cfg.resolved_embedding_size, hidden_size=cfg.embed_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_position_embeddings,
      type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
      hidden_act=cfg.activation, hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      initializer_range=cfg.initializer_range, rotary_value=False, tie_word_embeddings=True,
      is_decoder=False, pad_token_id=0)


def _params_from_hf(get: Getter, cfg) -> dict:
  n, h = cfg.num_heads, cfg.resolved_head_dim
  table = get(TABLE)
  require(np.allclose(table, sinusoid_table(*table.shape), rtol=0, atol=1e-6),
          f"{TABLE} is not RoFormer's sinusoid table (base 10000): HF would rotate by it, we "
          'cannot')
  e = BASE + 'embeddings.'
  p = {
      'token_embed': {'embedding': get(e + 'word_embeddings.weight')},
      'type_embed': {'embedding': get(e + 'token_type_embeddings.weight')},
      'embed_norm': ln(get, e + 'LayerNorm'),
      'mlm_head': {'dense': dense(get, 'cls.predictions.transform.dense'),
                   'norm': ln(get, 'cls.predictions.transform.LayerNorm'),
                   'bias': get('cls.predictions.bias')},
  }
  if factorised(cfg):
    p['embed_project'] = dense(get, BASE + 'embeddings_project')
  order = hf_order(h)
  for i in range(cfg.num_layers):
    p[f'layers_{i}'] = permute_qk(layer_from_hf(get, f'{BASE}encoder.layer.{i}.', n, h), order)
  return p


def _params_to_hf(p: dict, cfg) -> dict:
  # Runs under jax.eval_shape too (hf.expected_tensors): the permutation is a gather with a
  # constant index and the sinusoid table a constant, both fine on tracers.
  e = BASE + 'embeddings.'
  out = {e + 'word_embeddings.weight': p['token_embed']['embedding'],
         e + 'token_type_embeddings.weight': p['type_embed']['embedding'],
         TABLE: sinusoid_table(cfg.max_position_embeddings, cfg.resolved_head_dim)}
  out.update(ln_out(p['embed_norm'], e + 'LayerNorm'))
  if factorised(cfg):
    out.update(dense_out(p['embed_project'], BASE + 'embeddings_project'))
  order = ours_order(cfg.resolved_head_dim)
  for i in range(cfg.num_layers):
    out.update(layer_to_hf(permute_qk(p[f'layers_{i}'], order), f'{BASE}encoder.layer.{i}.'))
  head = p['mlm_head']
  out.update(dense_out(head['dense'], 'cls.predictions.transform.dense'))
  out.update(ln_out(head['norm'], 'cls.predictions.transform.LayerNorm'))
  out['cls.predictions.bias'] = head['bias']
  return out


ROFORMER = ArchMap(
    model_type='roformer', family='encoder', base_prefix=BASE,
    architectures={'RoFormerForMaskedLM': ('mlm_head',), 'RoFormerModel': ()},
    heads={'mlm_head': 'cls.predictions.'},
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    params_from_hf=_params_from_hf,
    params_to_hf=_params_to_hf,
    matches=_matches,
    default_architecture='RoFormerForMaskedLM',
    # Older files may store the tied decoder (= the word table and `cls.predictions.bias`).
    ignore_suffixes=('cls.predictions.decoder.weight', 'cls.predictions.decoder.bias'),
    unmapped=('pooler', 'nsp_head'),
)

MAPS = [ROFORMER]
