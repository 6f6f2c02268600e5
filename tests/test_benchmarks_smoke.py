"""benchmarks/throughput.py: the FLOP model, the batch search, the attention check, and a tiny
CPU run of both sides (ours and the HF PyTorch reference) end to end; benchmarks/moe_dispatch.py:
both MoE paths run and agree; benchmarks/loss_head.py: both gradient modes run and agree."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import throughput  # noqa: E402


def test_flop_model_reproduces_the_issue_reference_mfu():
  # Issue 7 quotes the H100 reference: BERT-base ~287k tokens/s = 21 % MFU, GPT-2 small ~293k
  # tokens/s = 25 % MFU, both against 989 TFLOP/s: the formula must give the same percentages.
  bert = throughput.model_dims("encoder", "base", {})
  gpt = throughput.model_dims("decoder", "small", {})
  fpt_bert, n_bert = throughput.flops_per_token("encoder", bert, 512)
  fpt_gpt, n_gpt = throughput.flops_per_token("decoder", gpt, 1024)
  # N by hand: 12 layers x (4 D^2 + 2 D 4D) + D V (+ D^2 MLM transform for BERT).
  assert n_bert == 12 * 12 * 768 ** 2 + 768 * 30522 + 768 ** 2
  assert n_gpt == 12 * 12 * 768 ** 2 + 768 * 50257
  assert fpt_bert == 6 * n_bert + 12 * 12 * 512 * 768
  assert fpt_gpt == 6 * n_gpt + 12 * 12 * 1024 * 768
  assert round(287e3 * fpt_bert / 989e12, 2) == 0.21
  assert round(293e3 * fpt_gpt / 989e12, 2) == 0.25
  assert throughput.datasheet_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert throughput.datasheet_tflops("NVIDIA H100 PCIe") == 756.0
  assert throughput.datasheet_tflops("cpu") is None


def test_max_batch_search_doubles_then_tries_the_midpoint(monkeypatch):
  args = throughput.parse_args(["--tiny", "--max_batch", "--max_batch_limit", "16"])
  seen = []

  def fake_fits(spec, side, batch, args, budget_left, log_dir):
    seen.append((side, batch))
    limit = 24 if side == "ours" else 9
    return dict(batch=batch, fits=batch <= limit, peak_memory_bytes=None, error=None)

  monkeypatch.setattr(throughput, "_fits", fake_fits)
  spec = dict(kind="max_batch", workload=throughput.workload_spec("gpt2_small", args))
  ours, ref = throughput.max_batch_search(spec, args, lambda: 1e9, "unused")
  assert [b for s, b in seen if s == "ours"] == [4, 8, 16, 32, 24]
  assert (ours["largest_fitting"], ours["first_failing"], ours["capped"]) == (24, 32, False)
  assert [b for s, b in seen if s == "reference"] == [4, 8, 16, 12]
  assert (ref["largest_fitting"], ref["first_failing"]) == (8, 16)


def test_attention_check_code_path_on_cpu():
  # On CPU the candidate is XLA itself: identical to the XLA path, and within tolerance.
  import throughput_ours
  out = throughput_ours.cudnn_check(seed=0, b=4, t=32, n=2, h=8, candidate="xla")
  assert [c["mask"] for c in out["cases"]] == ["padding", "causal+padding", "causal+packed"]
  for case in out["cases"]:
    assert "error" not in case, case
    assert case["out_max_abs_diff"] == 0.0 and case["grad_max_abs_diff"] == 0.0
    assert 0.0 < case["out_err_xla"] < 0.05 and 0.0 < case["grad_err_xla"] < 0.5
    assert case["within_tolerance"]


def test_tiny_run_both_sides_writes_json_and_table(tmp_path):
  out = tmp_path / "results.json"
  # Compilation dominates a tiny CPU run: LLVM's cheap settings cut it by about a third.
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUMPY_RANK_PROMOTION="raise",
             XLA_FLAGS="--xla_force_host_platform_device_count=1 "
             "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  proc = subprocess.run(
      [sys.executable, "benchmarks/throughput.py", "--tiny", "--steps", "2", "--warmup", "1",
       "--windows", "1", "--workloads", "bert_base,gpt2_small", "--numerics", "--out", str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  data = json.loads(out.read_text())
  assert data["meta"]["tiny"] and data["checks"]["backend"] == "cpu"
  assert data["checks"]["matmul"]["tflops_best"] > 0
  assert "no GPU" in data["checks"]["cudnn_vs_xla"]["skipped"]
  assert any("compile" in note for note in data["skipped"])  # torch.compile: GPU only
  assert not data["errors"]
  rows = {(r["workload"], r["side"]): r for r in data["rows"]}
  assert set(rows) == {(w, s) for w in ("bert_base", "gpt2_small") for s in ("ours", "reference")}
  for (workload, side), r in rows.items():
    assert "error" not in r, r
    assert r["tokens_per_s"] > 0 and r["batch"] == 4 and r["seq_len"] == 64
    assert math.isfinite(r["loss"]) and abs(r["loss"] - math.log(512)) < 1.0  # ~uniform at init
    fpt, _ = throughput.flops_per_token(r["family"], r["dims"], 64)
    assert r["flops_per_token"] == fpt and r["mfu_measured"] > 0
  # Both sides build the same network: GPT-2 parameter for parameter; ours' BERT also holds
  # the pooler and NSP head (D^2 + D + 2 D + 2), which HF's BertForMaskedLM leaves out.
  d = 64  # throughput.TINY's width
  gpt = [rows[("gpt2_small", side)]["num_params"] for side in ("ours", "reference")]
  assert gpt[0] == gpt[1]
  assert (rows[("bert_base", "ours")]["num_params"] - rows[("bert_base", "reference")]["num_params"]
          == d * d + d + 2 * d + 2)
  assert rows[("bert_base", "ours")]["variant"] == "attn=default"  # auto -> XLA off GPU
  assert rows[("gpt2_small", "ours")]["xla_flops_per_step"] > 0
  assert {s["workload"] for s in data["summary"]} == {"bert_base", "gpt2_small"}
  assert all(s["speedup"] > 0 for s in data["summary"])
  # bf16 vs fp32 on one batch: close, and not identical (the bf16 path really is bf16).
  assert len(data["numerics"]) == 2
  for n in data["numerics"]:
    assert "error" not in n, n
    assert 0 < n["rel_loss_diff"] < 1e-2 and 0 < n["rel_grad_diff"] < 5e-2
  table = proc.stdout
  assert "| workload | B×T | side | variant | tokens/s |" in table
  assert "| bert_base | 4×64 | ours | attn=default |" in table
  assert "| gpt2_small | 4×64 | reference | eager |" in table
  assert "not a performance number" in table and "speed-up" in table


def test_preflight_names_the_missing_package_in_one_line(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "ml_collections" else real(name, *a))
  with pytest.raises(SystemExit) as exc:
    throughput.preflight(throughput.parse_args([]))
  message = str(exc.value)
  assert "ml_collections" in message and "docs/benchmarks.md" in message and "\n" not in message


def test_profile_summary_counts_stream_kernels_once(tmp_path):
  """A GPU trace's kernels live on the device's stream threads; the derived 'XLA Ops' line repeats
  the same time and host threads are no device time: neither may be counted."""
  import gzip
  import profile_step
  events = [
      dict(ph="M", pid=1, name="process_name", args=dict(name="/device:GPU:0")),
      dict(ph="M", pid=1, tid=7, name="thread_name", args=dict(name="Stream #13(Compute)")),
      dict(ph="M", pid=1, tid=8, name="thread_name", args=dict(name="XLA Ops")),
      dict(ph="M", pid=2, name="process_name", args=dict(name="/host:CPU")),
      dict(ph="X", pid=1, tid=7, dur=3000, name="sm90_xmma_gemm_f32f32_tf32f32_f32_nt"),
      dict(ph="X", pid=1, tid=7, dur=1000, name="nvjet_sm90_tst_128x160_h_bz_NNT"),
      dict(ph="X", pid=1, tid=7, dur=500, name="cudnn_generated_fort_native_sdpa_sm90_flash"),
      dict(ph="X", pid=1, tid=7, dur=400, name="input_add_reduce_fusion_8"),
      dict(ph="X", pid=1, tid=7, dur=100, name="loop_xor_fusion"),
      dict(ph="X", pid=1, tid=8, dur=5000, name="fusion.1"),
      dict(ph="X", pid=2, tid=1, dur=90000, name="PjitFunction(step)"),
  ]
  path = tmp_path / "t.trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump(dict(traceEvents=events), f)
  out = profile_step.summarise_trace(str(path), steps=2)
  assert out["kernels"] == 5 and out["busy_ms_per_step"] == 2.5
  assert out["categories"] == {"matmul": 2.0, "attention (cuDNN)": 0.25,
                               "reduction fusions": 0.2, "other fusions": 0.05}
  assert out["top_kernels"][0] == ("sm90_xmma_gemm_f32f32_tf32f32_f32_nt", 1.5)


def test_profile_step_runs_on_cpu(tmp_path):
  """The script end to end at smoke sizes: it traces, writes summary.json, and says what it ran."""
  import profile_step
  out = profile_step.main(["--tiny", "--workload", "gpt2_small", "--variant",
                           "mask=lengths,vocab_pad=128,loss_chunk=32", "--warmup", "1",
                           "--steps", "2", "--out_dir", str(tmp_path)])
  assert out["workload"] == "gpt2_small attn=default,mask=lengths,loss_chunk=32,vocab_pad=128"
  assert out["traces"] and out["traced_wall_ms_per_step"] > 0
  assert json.loads((tmp_path / "summary.json").read_text())["workload"] == out["workload"]


def test_moe_dispatch_benchmark_runs_both_paths_and_they_agree(tmp_path):
  import moe_dispatch
  out = tmp_path / "moe.json"
  results = moe_dispatch.main(["--lengths", "16,32", "--repeats", "1", "--width", "16",
                               "--mlp_dim", "32", "--experts", "4", "--json", str(out)])
  assert [(r["length"], r["path"]) for r in results] == [
      (length, path) for length in (16, 32) for path in moe_dispatch.PATHS]
  for r in results:
    assert r["step_ms"] > 0 and r["temp_mib"] is not None
    if r["path"] == "dropless":
      assert r["max_abs_diff_vs_capacity"] < 1e-5 and r["dropped_fraction"] == 0.0
  assert json.loads(out.read_text())["results"][0]["path"] == "capacity"
  with pytest.raises(SystemExit, match="unknown paths"):
    moe_dispatch.main(["--paths", "sorted"])


def test_loss_head_benchmark_runs_both_modes_and_they_agree(tmp_path):
  import loss_head
  out = tmp_path / "head.json"
  results = loss_head.main(["--tokens", "64", "--width", "16", "--vocab", "300", "--pad", "128",
                            "--chunk", "16", "--steps", "1", "--repeats", "1", "--z_loss", "1e-3",
                            "--json", str(out)])
  assert [r["mode"] for r in results] == list(loss_head.MODES)
  assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
  assert [r["vocab_matmuls"] for r in results] == [4, 3]
  data = json.loads(out.read_text())
  assert data["max_abs_grad_diff"] < 1e-3 and data["speedup"] > 0
  with pytest.raises(SystemExit, match="multiple of --rows"):
    loss_head.main(["--tokens", "63"])


def test_gpu_session_script_parses_and_its_variants_exist():
  """benchmarks/gpu_session.sh (the next GPU session's one call; run with TINY=1 on a CPU for a
  dry run, ~40 s): valid bash, and the option sets it passes are known variants."""
  script = os.path.join(REPO, "benchmarks", "gpu_session.sh")
  subprocess.run(["bash", "-n", script], check=True)
  text = open(script).read()
  best = text.split("BEST=", 1)[1].split("\n", 1)[0]
  new = text.split('NEW="$BEST', 1)[1].split('"', 1)[0].replace("$SLAB", "32")
  (a, b) = throughput.parse_variants(f"{best};{best}{new}")
  assert set(b) - set(a) == {"logits", "dropout", "loss_grad", "slab"}


def test_remat_policies_benchmark_counts_what_each_policy_recomputes(tmp_path):
  import remat_policies
  out = tmp_path / "remat.json"
  results = remat_policies.main(["--layers", "2", "--rows", "2", "--length", "32", "--vocab",
                                 "300", "--width", "64", "--repeats", "1", "--json", str(out)])
  flops = {r["row"]: r["tflop"] for r in results}
  assert list(flops) == list(remat_policies.ROWS)
  # Recomputation costs FLOPs in this order; the norm's backward changes no matmul.
  assert flops["none"] < flops["dots_all"] <= flops["dots"] < flops["full"]
  assert flops["none,autodiff_norm"] == pytest.approx(flops["none"], rel=0.05)
  assert json.loads(out.read_text())["results"][0]["row"] == "none"
