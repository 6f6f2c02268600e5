"""Measures every experiment's `runlocal` result on this machine and writes a markdown table.

  python benchmarks/runlocal_results.py --steps 200 --out docs/runlocal_results.md

Each experiment runs its own `runlocal` config (CPU-sized model, real corpus) for `--steps` steps
on one device; the table gives the first and last logged training loss, the held-out eval loss /
accuracy at the end, tokens/s and wall time. The README's experiment table quotes this file.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ptm_jax import metrics as metrics_lib  # noqa: E402
from ptm_jax import train  # noqa: E402
from ptm_jax.configs import load_experiment as _load_experiment  # noqa: E402

SPECS = ["bert.py:runlocal_mlm", "bert.py:runlocal", "roberta.py:runlocal", "bert_wwm.py:runlocal",
         "ernie.py:runlocal", "spanbert.py:runlocal", "albert.py:runlocal", "electra.py:runlocal",
         "gpt.py:runlocal", "gpt.py:llama_runlocal"]


def measure(spec: str, steps: int, workdir: str) -> dict:
  cfg = _load_experiment(os.path.join(REPO, "experiments", spec))
  cfg.mesh.num_devices = 1
  cfg.train.update(steps=steps, log_every=max(steps // 10, 1), eval_every=steps, eval_batches=8,
                   checkpoint_every=steps)
  t0 = time.time()
  result = train.train(cfg, workdir)
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  losses = [r for r in records if "loss" in r]
  return dict(spec=spec, objective=cfg.objective.name, family=cfg.model.family,
              params=result.num_params, first=losses[0]["loss"], last=losses[-1]["loss"],
              eval_loss=result.eval_metrics.get("eval/loss", float("nan")),
              eval_acc=result.eval_metrics.get("eval/accuracy", float("nan")),
              tokens_per_s=sum(r["tokens_per_s"] for r in losses[1:]) / max(len(losses) - 1, 1),
              wall=time.time() - t0)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--out", default=os.path.join(REPO, "docs", "runlocal_results.md"))
  parser.add_argument("--only", nargs="*", default=None)
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, spec in enumerate(args.only or SPECS):
      rows.append(measure(spec, args.steps, os.path.join(tmp, str(i))))
      print(rows[-1], flush=True)
  lines = [f"# `runlocal` results ({args.steps} steps, one CPU device)", "",
           f"{datetime.date.today().isoformat()} · {platform.processor() or platform.machine()} · "
           f"{os.cpu_count()} cores · command: `python benchmarks/runlocal_results.py "
           f"--steps {args.steps}`", "",
           "| experiment | objective × family | params | train loss first → last | eval loss | "
           "eval acc | tokens/s | wall |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| `{r['spec']}` | {r['objective']} × {r['family']} | {r['params'] / 1e6:.2f}M | "
                 f"{r['first']:.2f} → {r['last']:.2f} | {r['eval_loss']:.2f} | {r['eval_acc']:.3f} | "
                 f"{r['tokens_per_s']:,.0f} | {r['wall']:.0f}s |")
  lines += ["", "Losses are the objective's total loss (ELECTRA: L_MLM + 50·L_disc; accuracy is the "
            "discriminator's). First is the mean over the first logging interval.", ""]
  with open(args.out, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
