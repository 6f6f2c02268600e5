"""Mixture-of-experts feed-forward: Switch (Fedus et al. 2022) top-1 and GShard (Lepikhin et al.
2021) top-k token routing with expert capacity.

Recipe (Switch Transformer, section 2 and appendix; the top-k form as GShard / ST-MoE):
  * a float32 router `[D, E]` gives each token a softmax over E experts; training may multiply the
    router's input by uniform noise in [1 - jitter, 1 + jitter] (Switch: 1e-2);
  * each token goes to its top-k experts; with k = 1 (Switch) the expert output is scaled by the
    router probability, with k > 1 the k gates are renormalised to sum to 1 (GShard);
  * each expert takes at most C = ceil(k * L * capacity_factor / E) tokens of a group (here: one
    row of the batch; or a fixed C, HF SwitchTransformers' `expert_capacity`), in order of position (a token's k choices together: the decoder stays
    causal, see `route`); a token over capacity is dropped from that expert (its output is 0
    there, and the block's residual carries the token through unchanged). Padding tokens are
    never routed and take no capacity;
  * the load-balancing loss E * sum_e f_e * P_e (f_e: share of the group's valid tokens whose
    first choice is e, P_e: their mean router probability for e) is 1 for uniform routing and E
    when every token picks one expert; the router z-loss (ST-MoE, Zoph et al. 2022) is the mean
    squared log-sum-exp of the router logits. Both are averaged over groups and returned, not
    added: the model weights and sums them over its MoE layers (`aux_loss`), the objective adds
    that to its loss.

KV-cache decoding routes each new token as a group of its own, which never drops it: cached
decoding equals the full forward pass where the latter drops nothing, which
`moe_eval_capacity_factor >= moe_experts / moe_top_k` (C >= L) guarantees.

Dispatch and combine are one-hot einsums (Mesh TensorFlow / T5X style): static shapes, no sort. The
expert-side activations `[E, B, C, D]` carry the logical names ('expert', 'batch', ...) so that with
the `expert` mesh preset each device runs its own experts on every group's tokens (the SPMD
partitioner turns the dispatch einsum into an all-to-all). Their cost grows with the row: the
`[B, L, E, C]` dispatch tensor holds k * factor * L^2 entries per row.

`dropless=True` (Mixtral, MegaBlocks: Gale et al. 2023) has no capacity: the B * L * k token
copies are sorted by expert and each expert applies its weights to its own contiguous run with
`jax.lax.ragged_dot` (group sizes = the experts' token counts, padding sorted past them), then
the copies go back to token order and are summed with their gates. Every token reaches its k
experts, memory is O(L k D) instead of O(L^2), and cached decoding equals the full pass. How fast
it is depends on the backend's ragged_dot (XLA CPU computes each group over all rows, E times
the work). Under the `expert` preset the experts' weights stay sharded: XLA's partitioner has each
device apply its own experts to the token copies and sums the `[B L k, D or F]` activations over
the devices (all-reduces, where the capacity path sends tokens with all-to-alls; CPU HLO read).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptm_jax.layers import dropout as dropout_lib
from ptm_jax.layers import mlp as mlp_lib


@dataclasses.dataclass(frozen=True)
class Fields:
  """The mixture-of-experts fields of the decoder and encdec Configs (`moe_experts=0`: dense);
  in `encdec` both stacks route the same layers.

  Switch's recipe by default: every other feed-forward (`moe_every=2`: layers 1, 3, ...) routed
  top-1 with capacity factor 1.25 in training and 2.0 in evaluation, load-balancing weight 0.01,
  no z-loss (ST-MoE recommends `moe_z_weight=1e-3`), router jitter 0 (Switch: 1e-2).
  """

  moe_experts: int = 0
  moe_every: int = 2
  moe_top_k: int = 1
  moe_capacity_factor: float = 1.25
  moe_eval_capacity_factor: float = 2.0
  # > 0: a fixed number of slots per expert and row instead of the factors (HF
  # SwitchTransformers' `expert_capacity`; Switch-Base-8 uses 64). 0 = from the factors.
  moe_capacity: int = 0
  moe_jitter: float = 0.0
  moe_balance_weight: float = 0.01
  moe_z_weight: float = 0.0
  # No capacity: every token reaches its top-k experts (sorted + ragged_dot; Mixtral's semantics).
  moe_dropless: bool = False


def _depths(cfg) -> list[int]:
  """The layer counts of a family's stacks (decoder: one; encoder–decoder: two)."""
  names = ('num_layers', 'num_encoder_layers', 'num_decoder_layers')
  return [getattr(cfg, n) for n in names if hasattr(cfg, n)]


def check(cfg: Fields) -> None:
  """One-line errors for impossible mixture-of-experts settings."""
  if cfg.moe_experts < 0 or cfg.moe_every < 1:
    raise ValueError(f'moe_experts={cfg.moe_experts} must be >= 0 (0 = dense) and moe_every='
                     f'{cfg.moe_every} >= 1')
  if cfg.moe_experts and not 1 <= cfg.moe_top_k <= cfg.moe_experts:
    raise ValueError(f'moe_top_k={cfg.moe_top_k} must be in [1, moe_experts={cfg.moe_experts}]')
  if (min(cfg.moe_capacity_factor, cfg.moe_eval_capacity_factor) <= 0 or cfg.moe_jitter < 0
      or cfg.moe_capacity < 0):
    raise ValueError('moe capacity factors must be > 0, moe_capacity >= 0 and moe_jitter >= 0, '
                     f'got {cfg.moe_capacity_factor}, {cfg.moe_eval_capacity_factor}, '
                     f'{cfg.moe_capacity}, {cfg.moe_jitter}')
  depth = min(_depths(cfg), default=cfg.moe_every)
  if cfg.moe_experts and cfg.moe_every > depth:
    raise ValueError(f'moe_every={cfg.moe_every} exceeds the {depth} layers of a stack: no layer '
                     'would be routed; lower moe_every')


def is_moe_layer(cfg: Fields, index: int) -> bool:
  """Layer `index` (0-based) is routed: every `moe_every`-th layer, the last of each stretch."""
  return cfg.moe_experts > 0 and (index + 1) % cfg.moe_every == 0


def block_kwargs(cfg: Fields) -> dict[str, Any]:
  """The `layers.blocks.MoeBlock` argument of a family Config: its MoE fields, as one `Fields`."""
  return dict(moe_fields=Fields(**{f.name: getattr(cfg, f.name)
                                  for f in dataclasses.fields(Fields)}))


def mlp_kwargs(fields: Fields) -> dict[str, Any]:
  """`MoeMlp`'s routing arguments from a `Fields`."""
  return dict(num_experts=fields.moe_experts, top_k=fields.moe_top_k,
              capacity_factor=fields.moe_capacity_factor,
              eval_capacity_factor=fields.moe_eval_capacity_factor,
              capacity=fields.moe_capacity, jitter=fields.moe_jitter, dropless=fields.moe_dropless)


def model_outputs(cfg: Fields, layer_aux: Sequence[dict[str, jnp.ndarray]]) -> dict[str, Any]:
  """A family's MoE outputs: `aux_loss` (weighted router losses summed over the routed layers, as
  Switch adds them per layer) and `moe` metrics (their means over the layers); {} when dense."""
  if not layer_aux:
    return {}
  mean = lambda key: sum(a[key] for a in layer_aux) / len(layer_aux)  # noqa: E731
  aux_loss = sum(cfg.moe_balance_weight * a['balance_loss'] + cfg.moe_z_weight * a['z_loss']
                 for a in layer_aux)
  return {'aux_loss': aux_loss,
          'moe': {'moe_balance_loss': mean('balance_loss'), 'moe_z_loss': mean('z_loss'),
                  'moe_dropped_fraction': mean('dropped_fraction')}}


def expert_capacity(tokens_per_group: int, num_experts: int, top_k: int,
                    capacity_factor: float, fixed: int = 0) -> int:
  """Slots per expert and group: `fixed` if > 0, else ceil(k * tokens * factor / E) and at least
  1; at most `tokens` (a token's k choices are distinct experts: no expert gets more)."""
  if fixed > 0:
    return min(tokens_per_group, fixed)
  return int(min(tokens_per_group,
                 max(1, math.ceil(top_k * tokens_per_group * capacity_factor / num_experts))))


def top_k_gates(router_probs_BLE: jnp.ndarray, top_k: int):
  """Each token's k experts `[B, L, k]` and gates: the router probability (k = 1, Switch) or the
  k probabilities renormalised to sum to 1 (k > 1, GShard / Mixtral)."""
  gates_BLK, experts_BLK = jax.lax.top_k(router_probs_BLE, top_k)
  if top_k > 1:
    gates_BLK = gates_BLK / jnp.sum(gates_BLK, axis=-1, keepdims=True)
  return gates_BLK, experts_BLK


def route(router_probs_BLE: jnp.ndarray, valid_BL: jnp.ndarray, top_k: int, capacity: int):
  """Token -> expert slot assignment: (dispatch `[B, L, E, C]` bool, combine `[B, L, E, C]`
  float32 gates, first-choice one-hot `[B, L, E]`, kept assignments `[B]`).

  Slots go in position order, a token's k choices together (they are k different experts): a
  token's slots depend only on the tokens before it, so a causal decoder stays causal. (GShard
  gives all first choices slots before any second choice, which would let a later token's first
  choice take the slot of an earlier token's second one.)
  """
  num_experts = router_probs_BLE.shape[-1]
  gates_BLK, experts_BLK = top_k_gates(router_probs_BLE, top_k)
  valid_BLK1 = valid_BL[..., None, None].astype(jnp.int32)
  chosen_BLKE = jax.nn.one_hot(experts_BLK, num_experts, dtype=jnp.int32) * valid_BLK1
  chosen_BLE = jnp.sum(chosen_BLKE, axis=2)  # 0/1: the k choices are distinct experts
  gate_BLE = jnp.sum(chosen_BLKE * gates_BLK[..., None], axis=2)
  slot_BLE = jnp.cumsum(chosen_BLE, axis=1) - chosen_BLE  # assignments of the earlier tokens
  kept_BLE = chosen_BLE * (slot_BLE < capacity)
  dispatch_BLEC = (jax.nn.one_hot(slot_BLE, capacity, dtype=jnp.int32)
                   * kept_BLE[..., None]).astype(bool)
  combine_BLEC = dispatch_BLEC * gate_BLE[..., None]
  kept_B = jnp.sum(kept_BLE, axis=(1, 2))
  return dispatch_BLEC, combine_BLEC, chosen_BLKE[:, :, 0], kept_B


def router_losses(logits_BLE: jnp.ndarray, probs_BLE: jnp.ndarray, first_BLE: jnp.ndarray,
                  valid_BL: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Switch load-balancing loss and ST-MoE router z-loss, means over the groups' valid tokens."""
  num_experts = probs_BLE.shape[-1]
  valid_BL1 = valid_BL[..., None].astype(jnp.float32)
  count_B1 = jnp.maximum(jnp.sum(valid_BL1, axis=1), 1.0)
  share_BE = jnp.sum(first_BLE, axis=1) / count_B1  # f_e: share of first choices
  mean_prob_BE = jnp.sum(probs_BLE * valid_BL1, axis=1) / count_B1  # P_e
  has_tokens_B = jnp.sum(valid_BL, axis=1) > 0
  groups = jnp.maximum(jnp.sum(has_tokens_B), 1)
  balance_B = num_experts * jnp.sum(share_BE * mean_prob_BE, axis=-1)
  z_BL = jnp.square(jax.nn.logsumexp(logits_BLE, axis=-1))
  z_B = jnp.sum(z_BL * valid_BL, axis=1) / count_B1[:, 0]
  return {'balance_loss': jnp.sum(balance_B * has_tokens_B) / groups,
          'z_loss': jnp.sum(z_B * has_tokens_B) / groups}


class MoeMlp(nn.Module):
  """Top-k routed experts, each an MLP or SwiGLU of width `mlp_dim`: (y `[B, L, D]`, aux dict)."""

  num_experts: int
  mlp_dim: int
  top_k: int = 1
  capacity_factor: float = 1.25  # Switch's training default
  eval_capacity_factor: float = 2.0  # Switch's evaluation default
  capacity: int = 0  # > 0: this many slots per expert and row, whatever the factors
  jitter: float = 0.0  # Switch: 1e-2 (multiplicative noise on the router's input, training only)
  dropless: bool = False  # no capacity: sorted tokens + ragged_dot (module doc)
  mlp: str = 'mlp'  # or 'swiglu'
  activation: str = 'gelu'
  use_bias: bool = True
  init_stddev: float = 0.02
  out_init_stddev: float | None = None
  dropout_rate: float = 0.0  # on the experts' hidden activations (Switch's "expert dropout")
  dropout_impl: str = 'bits'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _kernel(self, name: str, shape, axes, stddev: float):
    init = nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)
    return self.param(name, init, shape, self.param_dtype).astype(self.dtype)

  def _bias_EX(self, name: str, size: int, axis: str):
    init = nn.with_logical_partitioning(nn.initializers.zeros, ('expert', axis))
    return self.param(name, init, (self.num_experts, size), self.param_dtype).astype(self.dtype)

  def _experts(self, x, matmul, bias, hidden_names, deterministic: bool):
    """Every expert's MLP / SwiGLU on its own tokens, in either layout: `matmul(x, w_EXY)`
    applies each expert's `[X, Y]` weights to its tokens, `bias(b_EY)` spreads each expert's bias
    over them, `hidden_names` are the hidden activations' logical axes (None: unconstrained)."""
    width, hidden = x.shape[-1], self.mlp_dim
    std_in, std_out = self.init_stddev, self.out_init_stddev or self.init_stddev
    act = mlp_lib.activation(self.activation)
    h = matmul(x, self._kernel('wi', (self.num_experts, width, hidden),
                               ('expert', 'embed', 'mlp'), std_in))
    if self.use_bias:
      h = h + bias(self._bias_EX('wi_bias', hidden, 'mlp'))
    if self.mlp == 'swiglu':
      up = matmul(x, self._kernel('wi_up', (self.num_experts, width, hidden),
                                  ('expert', 'embed', 'mlp'), std_in))
      if self.use_bias:  # as the dense SwiGLU: both projections biased
        up = up + bias(self._bias_EX('wi_up_bias', hidden, 'mlp'))
      h = act(h) * up
    else:
      h = act(h)
    if hidden_names is not None:
      h = nn.with_logical_constraint(h, hidden_names)
    h = dropout_lib.Dropout(self.dropout_rate, self.dropout_impl)(h, deterministic)
    y = matmul(h, self._kernel('wo', (self.num_experts, hidden, width),
                               ('expert', 'mlp', 'embed'), std_out))
    if self.use_bias:
      y = y + bias(self._bias_EX('wo_bias', width, 'embed'))
    return y

  def _with_capacity(self, x_BLD, probs_BLE, valid_BL, deterministic: bool):
    """One-hot dispatch into `[E, B, C, D]` expert slots and back: (y, first choices, kept)."""
    factor = self.eval_capacity_factor if deterministic else self.capacity_factor
    capacity = expert_capacity(x_BLD.shape[1], self.num_experts, self.top_k, factor,
                               self.capacity)
    dispatch_BLEC, combine_BLEC, first_BLE, kept_B = route(probs_BLE, valid_BL, self.top_k,
                                                           capacity)
    names_EBCD = ('expert', 'batch', None, 'embed')
    x_EBCD = jnp.einsum('blec,bld->ebcd', dispatch_BLEC.astype(self.dtype), x_BLD)
    x_EBCD = nn.with_logical_constraint(x_EBCD, names_EBCD)
    y_EBCD = self._experts(x_EBCD, lambda x, w: jnp.einsum('ebcx,exy->ebcy', x, w),
                           lambda b_EY: b_EY[:, None, None], ('expert', 'batch', None, 'mlp'),
                           deterministic)
    y_EBCD = nn.with_logical_constraint(y_EBCD, names_EBCD)
    y_BLD = jnp.einsum('blec,ebcd->bld', combine_BLEC.astype(self.dtype), y_EBCD)
    return y_BLD, first_BLE, jnp.sum(kept_B)

  def _dropless(self, x_BLD, probs_BLE, valid_BL, deterministic: bool):
    """Sorted by expert, `ragged_dot` per expert, back to token order: (y, first choices, kept)."""
    rows, length, width = x_BLD.shape
    k, num_experts = self.top_k, self.num_experts
    gates_BLK, experts_BLK = top_k_gates(probs_BLE, k)
    # The B * L * k token copies, padding given expert id E so that it sorts after every group.
    expert_N = jnp.where(valid_BL[..., None], experts_BLK, num_experts).reshape(-1)
    order_N = jnp.argsort(expert_N, stable=True)  # stable: each expert's tokens in position order
    sizes_E = jnp.bincount(expert_N, length=num_experts + 1)[:num_experts].astype(jnp.int32)
    x_ND = x_BLD.reshape(rows * length, width)[order_N // k]
    sorted_expert_N = jnp.minimum(expert_N[order_N], num_experts - 1)  # padding: any bias, unused
    y_ND = self._experts(x_ND, lambda x, w: jax.lax.ragged_dot(x, w, sizes_E),
                         lambda b_EY: b_EY[sorted_expert_N], None, deterministic)
    inverse_N = jnp.zeros_like(order_N).at[order_N].set(jnp.arange(order_N.size))
    y_BLKD = y_ND[inverse_N].reshape(rows, length, k, width)
    # ragged_dot leaves the rows past the groups (padding) undefined: select, do not multiply.
    y_BLKD = jnp.where(valid_BL[..., None, None], y_BLKD, 0)
    y_BLD = jnp.einsum('blk,blkd->bld', gates_BLK.astype(self.dtype), y_BLKD)
    first_BLE = jax.nn.one_hot(experts_BLK[..., 0], num_experts, dtype=jnp.int32) * valid_BL[
        ..., None]
    return y_BLD, first_BLE, jnp.sum(valid_BL) * k

  @nn.compact
  def __call__(self, x_BLD: jnp.ndarray, valid_BL: jnp.ndarray, deterministic: bool = True):
    if not 1 <= self.top_k <= self.num_experts:
      raise ValueError(f'moe top_k={self.top_k} must be in [1, num_experts={self.num_experts}]')
    if self.mlp not in ('mlp', 'swiglu'):
      raise ValueError(f"unknown mlp {self.mlp!r}; known: 'mlp', 'swiglu'")
    valid_BL = valid_BL.astype(bool)
    router_in_BLD = x_BLD.astype(jnp.float32)
    if self.jitter > 0 and not deterministic:
      noise = jax.random.uniform(self.make_rng('dropout'), router_in_BLD.shape, jnp.float32,
                                 1.0 - self.jitter, 1.0 + self.jitter)
      router_in_BLD = router_in_BLD * noise
    router_DE = self.param('router', nn.with_logical_partitioning(
        nn.initializers.normal(self.init_stddev), ('embed', None)),
        (x_BLD.shape[-1], self.num_experts), self.param_dtype)
    logits_BLE = jnp.einsum('bld,de->ble', router_in_BLD, router_DE.astype(jnp.float32))
    probs_BLE = jax.nn.softmax(logits_BLE, axis=-1)

    routing = self._dropless if self.dropless else self._with_capacity
    y_BLD, first_BLE, kept = routing(x_BLD, probs_BLE, valid_BL, deterministic)
    y_BLD = nn.with_logical_constraint(y_BLD, ('batch', 'length', 'embed'))
    aux = router_losses(logits_BLE, probs_BLE, first_BLE, valid_BL)
    routed = jnp.maximum(jnp.sum(valid_BL) * self.top_k, 1)
    aux['dropped_fraction'] = 1.0 - kept / routed
    return y_BLD, aux
