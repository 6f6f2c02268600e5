"""The main job: [tokenizer] -> pretrain -> [downstream fine-tune / probe] -> report (md + png)."""
from __future__ import annotations

import datetime
import json
import os

import jax
import ml_collections
from absl import logging

from ptm_jax import metrics as metrics_lib
from ptm_jax import train


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage the config names and writes `workdir/report.md` + `workdir/curves.png`."""
  if "comparison" in config:  # a set of runs on one FLOP budget (experiments/compare_encoders.py)
    from ptm_jax import compare
    return compare.run(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if config.train.steps == 0:
    # No pretraining stage: the fine-tunes start from the weights `init_from` names.
    result, pretrain_dir = None, _imported_weights(config, workdir)
  else:
    pretrain_dir = os.path.join(workdir, "pretrain") if _has_downstream(config) else workdir
    result = train.train(config, pretrain_dir)
  summary = {"pretrain": result, "downstream": None}
  if _has_downstream(config) and not (result and result.preempted):
    from ptm_jax import tasks  # the downstream stage is only imported when a config asks for it
    summary["downstream"] = tasks.run_downstream(config, workdir, pretrained_dir=pretrain_dir)
    if jax.process_index() == 0:  # machine-readable next to report.md (notebooks, tests, sweeps)
      with open(os.path.join(workdir, "downstream.json"), "w") as f:
        json.dump(summary["downstream"]["rows"], f, indent=1, default=float)
  if jax.process_index() == 0:
    report = write_report(config, workdir, summary)
    print(report)
  return summary


def _has_downstream(config) -> bool:
  return "downstream" in config and bool(config.downstream.get("tasks"))


def _imported_weights(config, workdir: str) -> str:
  """`train.steps=0`: the ptm_jax dir `init_from` names, or its conversion (HF dir, .gguf)."""
  if not config.init_from or not _has_downstream(config):
    raise ValueError("train.steps=0 skips pretraining: set --config.init_from (an HF dir, .gguf or "
                     "ptm_jax dir) and --config.downstream.tasks")
  from ptm_jax import interop  # only runs that start from imported weights need it
  from ptm_jax.interop import native
  from ptm_jax.data import tokenizers
  src = tokenizers.resolve_path(config.init_from)
  if native.is_ptm_dir(src):
    return src
  dst = os.path.join(workdir, "imported")
  if not native.is_ptm_dir(dst):  # a rerun reuses the conversion
    interop.convert(config.init_from, dst)
  return dst


def write_report(config, workdir: str, summary: dict) -> str:
  """Markdown report + loss curves of the run; returns the markdown text."""
  r: train.TrainResult | None = summary["pretrain"]
  title = config.report.title or f"{config.model.family}/{config.model.variant} + {config.objective.name}"
  lines = [
      f"# {title}",
      "",
      f"{datetime.date.today().isoformat()} · {jax.device_count()}× {jax.devices()[0].device_kind}"
      f" · mesh `{config.mesh.preset}` · data `{config.data.source}`",
      "",
  ]
  if r is None:
    lines.append(f"No pretraining (`train.steps=0`): fine-tuned from `{config.init_from}`.")
  else:
    lines += [
        "| stage | steps | params | tokens seen | train loss | eval loss | eval accuracy | wall time |",
        "|---|---|---|---|---|---|---|---|",
        f"| pretrain ({config.objective.name}) | {r.step} | {r.num_params / 1e6:.2f}M | "
        f"{r.tokens_seen:,} | {r.train_loss:.3f} | {r.eval_metrics.get('eval/loss', float('nan')):.3f} | "
        f"{r.eval_metrics.get('eval/accuracy', float('nan')):.3f} | {r.wall_time_s:.0f}s |",
    ]
  if summary.get("downstream"):
    lines += ["", summary["downstream"]["markdown"]]
  if r is not None:
    curves = os.path.join(workdir, "curves.png")
    # Pretraining curves only: the fine-tunes have their own figure (finetune.png).
    metrics_lib.plot_curves(os.path.join(r.workdir, metrics_lib.JSONL_NAME), curves,
                            title=f"pretraining: {config.objective.name} loss (train, eval)")
    lines += ["", f"![curves]({os.path.basename(curves)})"]
  lines.append("")
  text = "\n".join(lines)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(text)
  logging.info("report written to %s", os.path.join(workdir, "report.md"))
  return text
