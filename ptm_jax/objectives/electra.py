"""ELECTRA replaced-token detection (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators", section 2 and appendix A).

Recipe, per step (everything on device, seeded from the step rng):
  * masking: `mlm.corrupt` selects each eligible position (not padding, not a reserved id) i.i.d.
    with probability `mask_rate` (0.15; the paper's Large model uses 0.25). There is no 80/10/10:
    the paper's text replaces every selected token by [MASK]; the released code
    (google-research/electra, pretrain_helpers.mask) replaces 85 % of them by [MASK] and keeps
    15 % unchanged, never a random token. The default follows the released code, which produced
    the paper's numbers (`mask_token_rate=0.85, random_token_rate=0`); `mask_token_rate=1.0` is
    the text's version.
  * generator: a small encoder (same depth; width, FFN width and heads scaled by
    `generator_width_fraction`: 1/4 for Small and Large, 1/3 for Base; heads = max(1, width // 64)
    as the released code) reads the masked input through the SHARED embeddings (token, position,
    type and their LayerNorm: one table, owned by the discriminator) and a Dense projection to its
    width, and predicts the original tokens with an MLM head tied to the shared token table
    (dense -> GELU -> LayerNorm back to the embedding width, as HF `ElectraGeneratorPredictions`).
    L_MLM is the mean cross-entropy over the selected positions.
  * sampling: at every selected position a token is drawn from softmax(logits / temperature)
    (temperature 1) with `jax.random.categorical`, under `stop_gradient`: the generator is not
    trained through the discriminator (the paper's maximum-likelihood generator).
  * discriminator: the full-size encoder reads the original sequence with the sampled tokens
    written at the selected positions; an RTD head (dense -> activation -> dense(1) per position,
    HF `ElectraDiscriminatorPredictions`) gives one logit per token. Labels are
    `corrupted != original`, so a sampled token that equals the original counts as original.
    L_Disc is the mean sigmoid cross-entropy over every non-padding position ([CLS]/[SEP] included,
    as the released code's input_mask).
  * total loss = L_MLM + disc_weight * L_Disc, disc_weight (lambda) = 50.

Controls (not the method; they tell "cannot learn" from "broken" at small scale): a temperature of
1e6 flattens the generator's softmax into uniform draws (the released code's `uniform_generator`):
a uniform draw is told apart by the token itself, a rare token being rarely original.
`replacement='shuffle'` writes at each selected position the original token of a selected position
drawn uniformly from the whole batch: the masked tokens' own unigram distribution, so the token
alone says nothing (an original and its replacement are drawn from one distribution) and only the
context can expose it. The generator still trains on its MLM loss; its samples go unused.

Parameters: {'discriminator': a complete `models.encoder` tree (embeddings + blocks; its unused
MLM/pooler/NSP heads are never created), 'generator': {'embed_project', 'encoder': {layers_i},
'mlm_head'}, 'rtd_head'}. `discriminator_params(params)` is what a fine-tune loads: the encoder a
`classify` run builds as its `backbone` has the same keys and shapes.
The discriminator's token table has the encoder's width (E = H); the paper's Small model factorises
it (E = 128 < H = 256), which needs an embedding-projection field in `models.encoder` first.

Metrics: loss, accuracy (discriminator, per non-pad token), mlm_loss, mlm_accuracy, disc_loss,
disc_accuracy, disc_auc / disc_precision / disc_recall (of the "replaced" class; precision 0 while
nothing is called replaced), replaced_fraction (share of non-pad tokens whose label is
"replaced") and num_targets (non-pad tokens, the discriminator's count; it weights gradient
accumulation).
FLOPs: `flops_per_token` / `flops_breakdown` count both networks (forward + backward).

Tests (tests/test_electra.py): RTD labels are (input != original), a sampled token equal to the
original is labelled original (generator forced to put all its mass on the original); the
discriminator loss gives exactly zero gradient to generator-only parameters while the shared
embeddings get gradient from both losses; total = L_MLM + lambda * L_Disc; one shared token table;
HF parity of both networks (ElectraForPreTraining / ElectraForMaskedLM); the runlocal run's loss
falls; a classify model's backbone receives the discriminator's weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ptm_jax import models
from ptm_jax.layers import embeddings, mlp
from ptm_jax.models import encoder
from ptm_jax.objectives import common, mlm


REPLACEMENTS = ('generator', 'shuffle')


@dataclasses.dataclass(frozen=True)
class Options:
  """ELECTRA hyper-parameters (paper appendix A, Table 6; released-code masking)."""

  mask_rate: float = 0.15
  mask_token_rate: float = 0.85  # released code; the paper's text: 1.0 (all [MASK])
  random_token_rate: float = 0.0
  sparse_logits: bool = True  # generator vocab projection only at the selected positions
  generator_width_fraction: float = 0.25  # Small/Large 1/4, Base 1/3
  generator_num_heads: int = 0  # 0 = max(1, generator width // 64), as the released code
  generator_num_layers: int = 0  # 0 = the discriminator's depth
  disc_weight: float = 50.0  # lambda
  temperature: float = 1.0  # sampling temperature of the generator's softmax
  replacement: str = 'generator'  # 'generator' (the method) | 'shuffle' (context-only control)

  def __post_init__(self):
    self.mlm_options()  # validates the masking rates
    if not 0.0 < self.generator_width_fraction <= 1.0:
      raise ValueError('electra.Options.generator_width_fraction must be in (0, 1], got '
                       f'{self.generator_width_fraction}')
    if self.generator_num_heads < 0 or self.generator_num_layers < 0:
      raise ValueError('electra.Options.generator_num_heads/num_layers must be >= 0 (0 = auto)')
    if self.disc_weight < 0 or self.temperature <= 0:
      raise ValueError('electra.Options: disc_weight must be >= 0 and temperature > 0, got '
                       f'{self.disc_weight}, {self.temperature}')
    if self.replacement not in REPLACEMENTS:
      raise ValueError(f'electra.Options.replacement must be one of {REPLACEMENTS}, got '
                       f'{self.replacement!r}')

  def mlm_options(self) -> mlm.Options:
    return mlm.Options(mask_rate=self.mask_rate, mask_token_rate=self.mask_token_rate,
                       random_token_rate=self.random_token_rate, sparse_logits=self.sparse_logits)


def generator_config(disc: encoder.Config, options: Options) -> encoder.Config:
  """The generator's encoder config: the discriminator's, with width/FFN/heads scaled down."""
  width = int(round(disc.embed_dim * options.generator_width_fraction))
  heads = options.generator_num_heads or max(1, width // 64)
  if width < 1 or width % heads:
    raise ValueError(f'generator width {width} (= {disc.embed_dim} x '
                     f'{options.generator_width_fraction}) is not divisible into {heads} heads')
  return dataclasses.replace(
      disc, embed_dim=width, num_heads=heads, head_dim=None,
      mlp_dim=max(1, int(round(disc.mlp_dim * options.generator_width_fraction))),
      num_layers=options.generator_num_layers or disc.num_layers)


class RTDHead(nn.Module):
  """Replaced-token detection: dense(H) -> activation -> dense(1); float32 logits `[B, L]`."""

  config: encoder.Config

  @nn.compact
  def __call__(self, hidden_BLD: jnp.ndarray) -> jnp.ndarray:
    cfg, dt = self.config, encoder.dtypes(self.config)
    kw = dict(use_bias=True, stddev=cfg.initializer_range, **dt)
    h_BLD = mlp.dense(cfg.embed_dim, ('embed', 'mlp'), name='dense', **kw)(hidden_BLD)
    h_BLD = mlp.activation(cfg.activation)(h_BLD)
    logits_BL1 = mlp.dense(1, ('mlp', None), name='out', **kw)(h_BLD)
    return logits_BL1[..., 0].astype(jnp.float32)


class Generator(nn.Module):
  """The small MLM network over the shared embeddings: project -> blocks -> tied MLM head."""

  config: encoder.Config  # the generator's (embed_dim = its width)
  embed_config: encoder.Config  # the discriminator's (resolved_embedding_size = the shared width E)

  def setup(self):
    cfg = self.config
    self.embed_project = mlp.dense(cfg.embed_dim, ('embed', 'mlp'), use_bias=True,
                                   stddev=cfg.initializer_range, **encoder.dtypes(cfg))
    # Only `encode` is called: the blocks are created, the encoder's own embeddings/heads are not.
    self.encoder = encoder.Model(cfg)
    # dense back to the shared table's width E, GELU, LayerNorm, tied decoder (HF
    # generator_predictions); E = the discriminator's width unless its embedding is factorised.
    self.mlm_head = encoder.tied_mlm_head(dataclasses.replace(self.embed_config, activation='gelu'))

  def __call__(self, x_BLE, decode, *, segment_ids, attention_mask=None, deterministic=True,
               logits_positions=None, positions=None):
    """Shared embeddings `[B, L, E]` -> (MLM logits `[B, L|K, V]` float32, hidden `[B, L, Hg]`)."""
    hidden_BLH, _ = self.encoder.encode(self.embed_project(x_BLE), segment_ids=segment_ids,
                                        attention_mask=attention_mask, deterministic=deterministic,
                                        positions=positions)
    scored = hidden_BLH
    if logits_positions is not None:
      scored = embeddings.gather_slab(hidden_BLH, logits_positions)
    return self.mlm_head(scored, decode), hidden_BLH


class Model(nn.Module):
  """Generator + discriminator sharing one embedding block (the discriminator's)."""

  config: encoder.Config  # the discriminator
  generator_config: encoder.Config

  def setup(self):
    self.discriminator = encoder.Model(self.config)
    self.generator = Generator(self.generator_config, self.config)
    self.rtd_head = RTDHead(self.config)

  def _embed(self, tokens, positions, token_types, deterministic, project=True):
    return self.discriminator.embed(tokens, positions=positions, token_types=token_types,
                                    deterministic=deterministic, project=project)

  def generate(self, tokens, *, segment_ids, positions, token_types=None, attention_mask=None,
               deterministic=True, logits_positions=None) -> dict[str, Any]:
    """Generator on (masked) tokens -> dict(logits `[B, L|K, V]`, hidden `[B, L, Hg]`)."""
    # The shared E-wide embedding output (before the discriminator's own `embed_project`, as in
    # HF, where each network projects E to its width).
    x_BLE = self._embed(tokens, positions, token_types, deterministic, project=False)
    logits, hidden = self.generator(x_BLE, self.discriminator.token_embed.attend,
                                    segment_ids=segment_ids, attention_mask=attention_mask,
                                    deterministic=deterministic, logits_positions=logits_positions,
                                    positions=positions)
    return {'logits': logits, 'hidden': hidden}

  def discriminate(self, tokens, *, segment_ids, positions, token_types=None, attention_mask=None,
                   deterministic=True, output_hidden_states=False) -> dict[str, Any]:
    """Discriminator on (corrupted) tokens -> dict(rtd_logits `[B, L]`, hidden, hidden_states)."""
    x_BLD = self._embed(tokens, positions, token_types, deterministic)
    hidden_BLD, states = self.discriminator.encode(
        x_BLD, segment_ids=segment_ids, attention_mask=attention_mask,
        deterministic=deterministic, output_hidden_states=output_hidden_states, positions=positions)
    out = {'hidden': hidden_BLD, 'rtd_logits': self.rtd_head(hidden_BLD)}
    if output_hidden_states:
      out['hidden_states'] = states
    return out

  def __call__(self, tokens, *, segment_ids, positions, token_types=None, attention_mask=None,
               deterministic=True, output_hidden_states=False, logits_positions=None):
    """Both networks on the same tokens (init, inspection): generator `logits` + discriminator."""
    kw = dict(segment_ids=segment_ids, positions=positions, token_types=token_types,
              attention_mask=attention_mask, deterministic=deterministic)
    gen = self.generate(tokens, logits_positions=logits_positions, **kw)
    out = self.discriminate(tokens, output_hidden_states=output_hidden_states, **kw)
    return {**out, 'logits': gen['logits'], 'generator_hidden': gen['hidden']}


def build_model(family: str, variant: str, fields: dict[str, Any], options: Options) -> Model:
  """The ELECTRA pair whose discriminator is `models.build(family, variant, **fields)`."""
  if family != 'encoder':
    raise ValueError(f'electra trains an encoder discriminator; model.family is {family!r}')
  disc = models.build(family, variant, **fields).config  # validates variant and fields
  return Model(config=disc, generator_config=generator_config(disc, options))


def discriminator_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """The discriminator's encoder tree: what a downstream `classify` backbone loads."""
  return params['discriminator']


def corrupt(rng, batch, *, specials, options: Options = Options()):
  """MLM masking for the generator (no random replacement); adds inputs/targets/weights (+ mlm_*)."""
  return mlm.corrupt(rng, batch, specials=specials, options=options.mlm_options())


def sample_tokens(rng, logits, temperature: float = 1.0) -> jax.Array:
  """Int32 ids drawn from softmax(logits / temperature) over the last axis; no gradient flows."""
  logits = jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def shuffled_originals(rng, targets, weights) -> jax.Array:
  """For every slot of `targets`, the target of a weighted slot drawn uniformly over the batch."""
  flat_targets = jnp.asarray(targets, jnp.int32).reshape(-1)
  logits = jnp.where(jnp.asarray(weights).reshape(-1) > 0, 0.0, -jnp.inf)
  picks = jax.random.categorical(rng, logits, shape=targets.shape)
  return flat_targets[picks]


def replace_tokens(tokens_BL, sampled, weights, positions_BK=None) -> jax.Array:
  """`tokens_BL` with `sampled` written where `weights` > 0 (at `positions_BK` when sparse)."""
  tokens_BL = jnp.asarray(tokens_BL, jnp.int32)
  if positions_BK is None:
    return jnp.where(weights > 0, sampled, tokens_BL)
  current_BK = jnp.take_along_axis(tokens_BL, positions_BK, axis=1)
  new_BK = jnp.where(weights > 0, sampled, current_BK)
  rows_BK = jnp.broadcast_to(jnp.arange(tokens_BL.shape[0], dtype=jnp.int32)[:, None],
                             positions_BK.shape)
  # The positions of a row are distinct (a prefix of a permutation), so the scatter is exact.
  return tokens_BL.at[rows_BK, positions_BK].set(new_BK)


def rtd_labels(corrupted_BL, original_BL) -> jax.Array:
  """Float32 1.0 where the discriminator's input differs from the original token."""
  return (corrupted_BL != original_BL).astype(jnp.float32)


def loss_terms(params, batch, rng, *, model, options: Options = Options()):
  """(L_MLM, L_Disc, metrics) of a corrupted batch; `rng=None` = deterministic evaluation."""
  if rng is None:
    # Evaluation: no dropout, and a fixed sampling key, so repeated evaluations agree.
    gen_rngs = disc_rngs = None
    sample_rng = jax.random.key(0)
  else:
    gen_rng, sample_rng, disc_rng = jax.random.split(rng, 3)
    gen_rngs, disc_rngs = {'dropout': gen_rng}, {'dropout': disc_rng}
  common_kw = dict(segment_ids=batch['segment_ids'], positions=batch['positions'],
                   token_types=batch.get('token_types'), deterministic=rng is None)
  sparse = 'mlm_positions' in batch
  positions_BK = batch['mlm_positions'] if sparse else None
  targets = batch['mlm_targets'] if sparse else batch['targets']
  weights = batch['mlm_weights'] if sparse else batch['weights']

  gen = model.apply({'params': params}, batch['inputs'], logits_positions=positions_BK,
                    rngs=gen_rngs, method='generate', **common_kw)
  mlm_loss, mlm_metrics = common.lm_loss_and_metrics(gen['logits'], targets, weights)

  original_BL = jnp.asarray(batch['tokens'], jnp.int32)
  if options.replacement == 'shuffle':
    sampled = shuffled_originals(sample_rng, targets, weights)
  else:
    sampled = sample_tokens(sample_rng, gen['logits'], options.temperature)
  corrupted_BL = replace_tokens(original_BL, sampled, weights, positions_BK)
  labels_BL = rtd_labels(corrupted_BL, original_BL)

  disc = model.apply({'params': params}, corrupted_BL, rngs=disc_rngs, method='discriminate',
                     **common_kw)
  logits_BL = disc['rtd_logits']
  real_BL = (batch['segment_ids'] != 0).astype(jnp.float32)
  num_real = jnp.sum(real_BL)
  denom = jnp.maximum(num_real, 1.0)
  disc_loss = jnp.sum(optax.sigmoid_binary_cross_entropy(logits_BL, labels_BL) * real_BL) / denom
  predicted_BL = (logits_BL > 0).astype(jnp.float32)
  correct_BL = (predicted_BL == labels_BL).astype(jnp.float32)
  disc_accuracy = jnp.sum(correct_BL * real_BL) / denom
  # Accuracy alone hides an early discriminator that calls everything original (accuracy = the
  # share of originals): AUC, precision and recall of "replaced" show it, as in the released code.
  hits = jnp.sum(predicted_BL * labels_BL * real_BL)
  num_replaced = jnp.sum(labels_BL * real_BL)
  metrics = {
      'accuracy': disc_accuracy, 'mlm_loss': mlm_loss, 'mlm_accuracy': mlm_metrics['accuracy'],
      'disc_loss': disc_loss, 'disc_accuracy': disc_accuracy,
      'disc_auc': common.binary_auc(logits_BL, labels_BL, real_BL),
      'disc_precision': hits / jnp.maximum(jnp.sum(predicted_BL * real_BL), 1.0),
      'disc_recall': hits / jnp.maximum(num_replaced, 1.0),
      'replaced_fraction': num_replaced / denom, 'num_targets': num_real}
  return mlm_loss, disc_loss, metrics


def loss(params, batch, rng, *, model, specials=None, options: Options = Options()):
  """L_MLM + disc_weight * L_Disc over an already corrupted batch, and its metrics."""
  del specials
  mlm_loss, disc_loss, metrics = loss_terms(params, batch, rng, model=model, options=options)
  total = mlm_loss + options.disc_weight * disc_loss
  return total, {'loss': total, **metrics}


# ---------------------------------------------------------------------------------------------
# FLOPs (matmuls only, 2 FLOPs per multiply-add; training = forward + backward = 3 x forward).


def _as_encoder_config(model_config, vocab_size: int | None) -> encoder.Config:
  if isinstance(model_config, encoder.Config):
    cfg = model_config
  else:
    fields = dict(model_config.to_dict() if hasattr(model_config, 'to_dict') else model_config)
    fields.pop('family', None)
    variant = fields.pop('variant', None)
    base = dict(encoder.VARIANTS[variant]) if variant else {}
    cfg = encoder.Config(**{**base, **fields})
  if vocab_size:
    cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
  if not cfg.vocab_size:
    raise ValueError('flops: model.vocab_size is 0 (taken from the tokenizer); pass vocab_size=')
  return cfg


def encoder_forward_flops_per_token(cfg: encoder.Config, seq_len: int) -> float:
  """Forward matmul FLOPs per token of an encoder's blocks (QKV/out, attention, FFN)."""
  d, hd = cfg.embed_dim, cfg.num_heads * cfg.resolved_head_dim
  per_layer = 2 * 4 * d * hd + 2 * 2 * seq_len * hd + 2 * 2 * d * cfg.mlp_dim
  return float(cfg.num_layers * per_layer)


def flops_breakdown(model_config, options: Options = Options(), *, seq_len: int = 128,
                    vocab_size: int | None = None) -> dict[str, float]:
  """Training FLOPs per token of the generator, the discriminator, both, and gen/disc ratio.

  The generator's vocabulary projection is counted where it runs: at the K = mean + 6 std
  gathered positions with `sparse_logits` (K / seq_len of the tokens), else at every token.
  `model_config` is an `encoder.Config` or the experiment's `config.model` (discriminator).
  """
  disc = _as_encoder_config(model_config, vocab_size)
  gen = generator_config(disc, options)
  # E = the shared table's width, H / h = discriminator / generator widths.
  e, v, h, d = disc.resolved_embedding_size, disc.vocab_size, gen.embed_dim, disc.embed_dim
  scored = (mlm.max_predictions(seq_len, options.mask_rate) / seq_len if options.sparse_logits
            else 1.0)
  gen_fwd = (2 * e * h + encoder_forward_flops_per_token(gen, seq_len)
             + scored * (2 * h * e + 2 * e * v))
  disc_fwd = (encoder_forward_flops_per_token(disc, seq_len) + 2 * d * d + 2 * d
              + (2 * e * d if e != d else 0))  # blocks, RTD head, factorised embed_project
  out = {'generator': 3.0 * gen_fwd, 'discriminator': 3.0 * disc_fwd}
  out['total'] = out['generator'] + out['discriminator']
  out['generator_to_discriminator'] = out['generator'] / out['discriminator']
  return out


def flops_per_token(model_config, options: Options = Options(), *, seq_len: int = 128,
                    vocab_size: int | None = None) -> float:
  """Training FLOPs per token of one ELECTRA step, both networks (see `flops_breakdown`)."""
  return flops_breakdown(model_config, options, seq_len=seq_len, vocab_size=vocab_size)['total']
