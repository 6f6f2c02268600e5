"""The one generic training loop: sharded init, jitted step, eval, checkpoints, metrics.

Pretraining and fine-tuning both run here; they differ only in objective, data and init.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import itertools
import json
import math
import os
import signal
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn

from ptm_jax import checkpoint as ckpt
from ptm_jax import embedding_init
from ptm_jax import metrics as metrics_lib
from ptm_jax import models, objectives, optim, sharding, steps
from ptm_jax.data import loader as data_loader
from ptm_jax.data import tokenizers
from ptm_jax.state import TrainState


@contextlib.contextmanager
def _mesh_context(mesh):
  """The mesh as the context flax's logical constraints read.

  `jax.set_mesh` would be the modern spelling, but under it flax's DenseGeneral applies the 3-D
  logical sharding of a kernel to its flat 2-D initial value and fails; the legacy context does not
  (its DeprecationWarning is silenced here, where we chose it knowingly).
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    mesh.__enter__()
  try:
    yield mesh
  finally:
    mesh.__exit__(None, None, None)


class NonFiniteLossError(FloatingPointError):
  """Raised when the loss becomes NaN/Inf; names the step and the last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
  """What a finished (or stopped) run reports back to run.py."""

  workdir: str
  step: int
  train_loss: float
  eval_metrics: dict[str, float]
  eval_history: list[dict[str, float]]
  tokens_seen: int
  wall_time_s: float
  num_params: int
  preempted: bool = False


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks, so the loop saves and exits cleanly."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler, no flag.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint and stopping")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def build_model(config: ml_collections.ConfigDict, vocab_size: int, objective: Any, options: Any):
  """The model for this run: the objective's own builder if it has one, else the family's."""
  fields = {k: v for k, v in config.model.items() if k not in ("family", "variant")}
  if fields.get("vocab_size", 0) in (0, None):
    fields["vocab_size"] = vocab_size
  elif fields["vocab_size"] != vocab_size:
    raise ValueError(f"model.vocab_size={fields['vocab_size']} but the tokenizer has {vocab_size} "
                     "ids; set --config.model.vocab_size=0 to take it from the tokenizer")
  for key in ("dtype", "param_dtype"):
    if isinstance(fields.get(key), str):
      fields[key] = jnp.dtype(fields[key])
  if hasattr(objective, "build_model"):
    return objective.build_model(config.model.family, config.model.variant, fields, options)
  return models.build(config.model.family, config.model.variant, **fields)


def _init_variables(model, batch_shape, rng):
  dummy = jnp.zeros(batch_shape, jnp.int32)
  ones = jnp.ones(batch_shape, jnp.int32)
  return model.init({"params": rng, "dropout": rng}, dummy, segment_ids=ones,
                    positions=jnp.broadcast_to(jnp.arange(batch_shape[1]), batch_shape),
                    deterministic=True)["params"]


def create_state(model, tx, mesh, batch_shape, seed: int, init_params: Any | None = None):
  """Initialises the TrainState directly sharded: eval_shape -> logical specs -> jit(out_shardings)."""
  base_rng = jax.random.key(seed)

  def init(rng, boxed: bool):
    params = _init_variables(model, batch_shape, rng)
    if not boxed:
      params = nn.unbox(params)
    opt_params = params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(opt_params),
                      rng=jax.random.fold_in(rng, 1))

  with _mesh_context(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    abstract_boxed = jax.eval_shape(lambda r: init(r, True), base_rng)
    logical_specs = nn.get_partition_spec(abstract_boxed)
    state_sharding = sharding.logical_to_sharding(logical_specs, mesh,
                                                  shapes=nn.unbox(abstract_boxed))
    state = jax.jit(lambda r: init(r, False), out_shardings=state_sharding)(base_rng)
  if init_params is not None:
    merged = merge_pretrained(jax.device_get(state.params), init_params)
    state = state.replace(params=jax.device_put(merged, state_sharding.params))
  return state, state_sharding


def skip_pretrained(pretrained: dict, patterns: tuple[str, ...] | str) -> dict:
  """`pretrained` without the leaves that `train.init_skip` names: those start from the fresh init.

  A pattern is an fnmatch pattern over '/'-joined parameter paths and covers everything under
  the module it names: 'decoder*' re-initialises an encoder-decoder's decoder (layers, final
  norm, position bias; the shared token embedding is kept), 'layers_11' the top layer of a
  12-layer encoder (not layers_1), 'layers_11/mlp' only its feed-forward block.
  """
  patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
  unused = set(patterns)

  def keep(tree: dict, path: str) -> dict:
    out = {}
    for k, v in tree.items():
      here = f"{path}{k}"
      if not isinstance(v, dict):
        hits = {p for p in patterns
                if fnmatch.fnmatchcase(here, p) or fnmatch.fnmatchcase(here, p + "/*")}
        if hits:
          unused.difference_update(hits)
          continue
      out[k] = keep(v, here + "/") if isinstance(v, dict) else v
    return {k: v for k, v in out.items() if not isinstance(v, dict) or v}

  kept = keep(pretrained, "")
  if unused:
    raise ValueError(f"train.init_skip: {sorted(unused)} match no pretrained parameter (fnmatch "
                     f"over paths such as {sorted(pretrained)[0]}/...; e.g. 'decoder*')")
  return kept


def merge_pretrained(fresh: Any, pretrained: Any) -> Any:
  """Copies pretrained leaves into the fresh tree where keys and shapes match.

  The two trees are aligned at the top or one level down on either side, so an encoder's params
  land in a task model's `backbone`, and a SpanBERT `backbone` or an ELECTRA `discriminator`
  (wrappers with extra heads) lands there too.
  """
  fresh = jax.tree.map(np.asarray, fresh)

  def subtrees(tree):
    yield (), tree
    for k, sub in tree.items():
      if isinstance(sub, dict):
        yield (k,), sub

  match = next(((fpath, src) for ppath, src in subtrees(pretrained) for fpath, dst in subtrees(fresh)
                if set(src) <= set(dst)), None)
  if match is None:
    raise ValueError("init_from: the pretrained params share no top-level modules with this "
                     f"model (pretrained {sorted(pretrained)[:6]}, model {sorted(fresh)[:6]})")
  target_path, pretrained = match
  loaded, skipped = 0, []

  def copy(dst: dict, src: dict, path: str):
    nonlocal loaded
    for k, v in src.items():
      if k not in dst:
        skipped.append(f"{path}{k}")
      elif isinstance(v, dict):
        copy(dst[k], v, f"{path}{k}/")
      elif tuple(np.shape(dst[k])) != tuple(np.shape(v)):
        skipped.append(f"{path}{k} {np.shape(v)}->{np.shape(dst[k])}")
      else:
        dst[k] = np.asarray(v, dtype=np.asarray(dst[k]).dtype)
        loaded += 1

  sub = fresh
  for k in target_path:
    sub = sub[k]
  copy(sub, pretrained, "/".join(target_path) + "/" if target_path else "")
  if not loaded:
    raise ValueError(f"init_from: no pretrained tensor fits this model (skipped {skipped[:5]})")
  logging.info("init_from: loaded %d tensors, skipped %d %s", loaded, len(skipped), skipped[:5])
  return fresh


def _global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
          for k, v in local.items()}


def _mean_metrics(records: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Averages per-step metrics; counters (num_*) are summed."""
  out = {}
  for k in records[0]:
    vals = np.asarray([r[k] for r in records], np.float64)
    out[k] = float(vals.sum() if k.startswith("num_") else vals.mean())
  return out


def evaluate(eval_step, params, config, tokenizer, batch_sharding, rng, split: str,
             derive_metrics=None, cache: dict | None = None) -> dict[str, float]:
  """One pass over `split` (at most `train.eval_batches` batches; 0 = all); target-weighted means.

  `derive_metrics(totals)` (an objective's, e.g. entity F1 from summed counts) adds split-level
  metrics that are not means of per-batch values. With a `cache` dict the split's batches are read
  (tokenized, packed) once and kept there for the next evaluation: the eval pass is deterministic.
  """
  batches = cache.get(split) if cache is not None else None
  if batches is None:
    it = data_loader.make_iterator(
        config.data, tokenizer, split=split,
        global_batch_size=config.train.eval_batch_size or config.train.batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
        repeat=False)
    batches = itertools.islice(it, config.train.eval_batches or None)
    if cache is not None:
      batches = cache[split] = list(batches)
  totals: dict[str, float] = {}
  weight_sum = 0.0
  for local in batches:
    m = jax.device_get(eval_step(params, _global_batch(local, batch_sharding), rng))
    w = float(m["num_targets"])
    weight_sum += w
    for k, v in m.items():
      totals[k] = totals.get(k, 0.0) + (float(v) if k.startswith("num_") else float(v) * w)
  if not totals:
    raise ValueError(f"evaluation split {split!r} of {config.data.source!r} "
                     "yielded no batch; lower --config.train.eval_batch_size")
  out = {k: (v if k.startswith("num_") else v / max(weight_sum, 1.0)) for k, v in totals.items()}
  if derive_metrics is not None:
    out.update(derive_metrics(out))
  return out


def _sign(metric: str) -> float:
  """+1 for scores that improve upwards (accuracy, F1), -1 for losses."""
  return -1.0 if metric.endswith("loss") else 1.0


def _is_new_best(history: list[dict[str, float]], value: float, metric: str) -> bool:
  """True when `value` beats every earlier evaluation's `metric` strictly (losses: lower)."""
  if not math.isfinite(value):
    return False
  sign = _sign(metric)
  earlier = [sign * h[metric] for h in history if math.isfinite(h.get(metric, float("nan")))]
  return not earlier or sign * value > max(earlier)


def _reads_test(history: list[dict[str, float]], dev: dict[str, float], tc) -> bool:
  """Whether this evaluation also reads `test_split`.

  The test score is only ever reported at the evaluation with the best dev score (the earliest on
  ties, tasks/finetune.select_best), so with test_at='best' the test split is read only when dev
  sets a new best; 'every' (or no dev metric to judge by) reads it at every evaluation.
  """
  if tc.get("test_at", "best") == "every" or tc.early_stop_metric not in dev:
    return True
  return _is_new_best(history, dev[tc.early_stop_metric], tc.early_stop_metric)


def _should_stop_early(history: list[dict[str, float]], tc) -> bool:
  """True when the dev metric has not improved for `early_stop_patience` evaluations, at or after
  step `early_stop_min_steps` (a fine-tune on a plateau early on may still leave it: GLM's on
  news_headline sat at one dev loss for 700 steps, then fell 0.5 nats)."""
  if not tc.early_stop_patience or len(history) <= tc.early_stop_patience:
    return False
  if history[-1].get("step", 0) < tc.get("early_stop_min_steps", 0):
    return False
  sign = _sign(tc.early_stop_metric)
  values = [sign * h.get(tc.early_stop_metric, float("-inf")) for h in history]
  best_at = int(np.argmax(values))
  return len(values) - 1 - best_at >= tc.early_stop_patience


def count_based_embeddings(config: ml_collections.ConfigDict, tokenizer, model) -> dict:
  """`{'token_embed': {'embedding': table}}` from `train.embedding_init` (see embedding_init.py).

  Every process reads the same leading rows of the train split (shard 0 of 1), so the table is
  identical on every host without communication.
  """
  tc = config.train
  if tc.embedding_init != "ppmi_svd":
    raise ValueError(f"train.embedding_init={tc.embedding_init!r}: use 'ppmi_svd' or ''")
  cfg = getattr(model, "config", None)
  if cfg is None or not hasattr(cfg, "resolved_embedding_size"):
    raise ValueError("train.embedding_init needs a model with a `token_embed` table sized by "
                     "embedding_size/embed_dim (the encoder family); unset it for this model")
  rows = data_loader.make_iterator(config.data, tokenizer, split="train",
                                   global_batch_size=tc.batch_size, seed=config.seed,
                                   process_index=0, process_count=1, repeat=False)
  start = time.time()
  table, info = embedding_init.ppmi_svd_embeddings(
      rows, tokenizer.vocab_size, cfg.resolved_embedding_size, init_stddev=float(tc.get("embedding_init_std", 0.0)) or cfg.initializer_range,
      max_tokens=int(tc.get("embedding_init_tokens", 2_000_000)), seed=config.seed)
  logging.info("embedding_init=ppmi_svd: %d tokens read, %d of %d rows from PPMI-SVD in %.1fs",
               info["tokens"], info["initialised_rows"], info["vocab_size"], time.time() - start)
  return {"token_embed": {"embedding": table}}


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Runs (or resumes) training as configured; writes metrics, config and checkpoints to workdir."""
  tc = config.train
  if tc.get("test_at", "best") not in ("best", "every"):
    raise ValueError(f"train.test_at={tc.test_at!r}: use 'best' or 'every'")
  os.makedirs(workdir, exist_ok=True)
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices else None
  mesh = sharding.make_mesh(config.mesh.preset, devices=devices,
                            tensor_parallel=config.mesh.tensor_parallel)
  if tc.batch_size % sharding.data_parallel_size(mesh):
    raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the "
                     f"{sharding.data_parallel_size(mesh)} data-parallel shards of mesh {dict(mesh.shape)}")
  tokenizer = tokenizers.load_or_train(config.data.tokenizer, config.data)
  objective = objectives.get(config.objective.name)
  options = objectives.build_options(objective, {k: v for k, v in config.objective.items()
                                                 if k != "name"})
  model = build_model(config, tokenizer.vocab_size, objective, options)
  tx, schedule = optim.make_optimizer(config.optim, tc.steps)
  per_device_rows = max(tc.batch_size // jax.device_count(), 1)
  init_params = ckpt.restore_params(config.init_from) if config.init_from else None
  if init_params is not None and tc.get("init_skip"):
    init_params = skip_pretrained(init_params, tc.init_skip)
  if init_params is not None and tc.get("init_embedding_rms"):
    init_params = embedding_init.rescale_tables(init_params, float(tc.init_embedding_rms))
  if tc.get("embedding_init") and init_params is None and not ckpt.has_checkpoint(workdir):
    init_params = count_based_embeddings(config, tokenizer, model)
  state, state_sharding = create_state(model, tx, mesh, (per_device_rows, config.data.seq_len),
                                       config.seed, init_params)
  num_params = count_params(state.params)
  batch_sharding = sharding.batch_sharding(mesh)

  loss_fn, corrupt_fn = steps.bind_objective(objective, model=model, specials=tokenizer.specials,
                                             options=options)
  train_step = jax.jit(steps.make_train_step(loss_fn, corrupt_fn, tx, schedule, tc.grad_accum),
                       in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, None), donate_argnums=(0,))
  eval_loss_fn, eval_corrupt_fn = steps.bind_objective(
      objective, model=model, specials=tokenizer.specials,
      options=steps.evaluation_options(options))
  eval_step = jax.jit(steps.make_eval_step(eval_loss_fn, eval_corrupt_fn),
                      in_shardings=(state_sharding.params, batch_sharding, None))
  eval_rng = jax.random.key(config.seed + 7919)
  # Eval batches are read once per run and reused (a small labelled split, or eval_batches of a
  # corpus); a whole large corpus split (eval_batches=0) is streamed each time instead.
  from ptm_jax.data.sources import downstream  # pylint: disable=g-import-not-at-top
  eval_cache = {} if (tc.eval_batches or config.data.source in downstream.TASKS) else None

  data_iter = data_loader.make_iterator(
      config.data, tokenizer, split="train", global_batch_size=tc.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"),
                              max_to_keep=tc.keep_checkpoints)
  start_step = 0
  if manager.latest_step() is not None:
    state, start_step = ckpt.restore(manager, state, data_iter)
    start_step = int(start_step)
    logging.info("resumed from step %d", start_step)
  config_dict = json.loads(config.to_json_best_effort())
  if config_dict.get("model", {}).get("vocab_size") in (0, None):
    # The resolved size, so a reader of the run (interop.native.load) need not count table rows,
    # which `vocab_pad_multiple` pads past the tokenizer's ids.
    config_dict["model"]["vocab_size"] = int(tokenizer.vocab_size)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_dict, f, indent=2)

  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
  end_step = min(tc.steps, tc.stop_at) if tc.stop_at else tc.steps
  bar = metrics_lib.ProgressBar(total=end_step, initial=start_step,
                                desc="/".join(os.path.normpath(workdir).split(os.sep)[-3:]))
  pending: list[dict[str, jax.Array]] = []
  # A resumed run continues the history it already wrote (tokens seen, evals, last loss).
  history = metrics_lib.read_jsonl(os.path.join(workdir, metrics_lib.JSONL_NAME)) if start_step else []
  eval_history = [{k: v for k, v in r.items() if k == "step" or "/" in k}
                  for r in history if any("/" in k for k in r)]
  train_records = [r for r in history if "loss" in r]
  last = train_records[-1] if train_records else {"loss": float("nan")}
  last_saved = start_step if start_step else None
  tokens_seen = int(last.get("tokens_seen", 0))
  t_log, t0 = time.time(), time.time()
  step = start_step
  preempted = False

  def flush_pending(step_now: int):
    """Pulls the buffered per-step metrics to host (one sync per log interval) and logs them."""
    nonlocal pending, tokens_seen, t_log, last
    if not pending:
      return
    records = jax.device_get(pending)
    for i, r in enumerate(records):
      if not math.isfinite(float(r["loss"])):
        bad = step_now - len(records) + i + 1
        manager.wait_until_finished()  # the named checkpoint must be complete on disk
        where = (f"the last good checkpoint is step {last_saved} in {manager.directory}"
                 if last_saved else "no checkpoint was saved yet")
        raise NonFiniteLossError(f"loss became {float(r['loss'])} at step {bad}; {where}; "
                                 "lower --config.optim.learning_rate or enable clipping")
    m = _mean_metrics(records)
    now = time.time()
    tokens_seen += int(m["num_tokens"])
    m["tokens_per_s"] = m["num_tokens"] / max(now - t_log, 1e-9)
    t_log = now
    last = m
    writer.write(step_now, {k: v for k, v in m.items() if k != "num_tokens"} | {
        "tokens_seen": tokens_seen})
    bar.update(step_now, loss=m["loss"], tokens_per_s=m["tokens_per_s"])
    pending = []

  with _SigtermFlag() as sigterm, _mesh_context(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    for step in range(start_step + 1, end_step + 1):
      local = next(data_iter)
      state, m = train_step(state, _global_batch(local, batch_sharding))
      pending.append(m)
      is_last = step == end_step
      if step % tc.log_every == 0 or is_last or sigterm.raised:
        flush_pending(step)
      if tc.eval_every and (step % tc.eval_every == 0 or is_last):
        flush_pending(step)
        ev_logged = {}
        for prefix, split in (("eval", tc.eval_split), ("test", tc.test_split)):
          if split and (prefix == "eval" or _reads_test(eval_history, ev_logged, tc)):
            ev = evaluate(eval_step, state.params, config, tokenizer, batch_sharding, eval_rng, split,
                          getattr(objective, "derive_metrics", None), eval_cache)
            ev_logged.update({f"{prefix}/{k}": v for k, v in ev.items()})
        eval_history.append({"step": step, **ev_logged})
        writer.write(step, ev_logged)
        if _should_stop_early(eval_history, tc):
          logging.info("early stop at step %d: no %s improvement in %d evaluations", step,
                       tc.early_stop_metric, tc.early_stop_patience)
          is_last = True
      if step % tc.checkpoint_every == 0 or is_last or sigterm.raised:
        flush_pending(step)  # never checkpoint a state whose loss was not checked
        ckpt.save(manager, step, state, data_iter, config_dict, force=True)
        last_saved = step
      if sigterm.raised:
        preempted = True
      if sigterm.raised or is_last:
        break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  bar.close()
  return TrainResult(workdir=workdir, step=step, train_loss=last["loss"],
                     eval_metrics={k: v for k, v in (eval_history[-1] if eval_history else {}).items()
                                   if k != "step"},
                     eval_history=eval_history, tokens_seen=tokens_seen,
                     wall_time_s=time.time() - t0, num_params=num_params, preempted=preempted)
