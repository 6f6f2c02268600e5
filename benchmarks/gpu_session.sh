#!/usr/bin/env bash
# The next lent GPU session's measurements in one call (a session now gets 15 device minutes,
# the machine's start included, so one call of ~8 minutes leaves room for the start and little
# else). Prepared and checked on the CPU side; what each step measures is in docs/benchmarks.md
# ("The next GPU session").
#
# On the machine that calls the device, once, in the repository root (the image lacks
# ml_collections, which ptm_jax.optim imports):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl ml-collections==1.1.0
# then one device call with carry [".whl"] and timeout_s 540:
#   bash benchmarks/gpu_session.sh
#
# Steps, most important first (each bounded, so a slow one cannot take the others' time):
#   1. GPT-2 small and BERT-base, ours against the compiled PyTorch reference in one run: the
#      best measured variant, and it with every mean not yet measured on a GPU (bf16 logits,
#      hashed dropout, the loss's output-layer gradient in the forward for GPT-2, one shared MLM
#      slab for BERT);
#   2. the loss head alone at GPT-2 small's step (16 x 1024 positions): recompute vs forward.
# Everything lands under $OUT (throughput.json/.log, loss_head.json/.log, gpu.txt).
# TINY=1 runs the same steps at CPU smoke sizes (a dry run of the script, no measurement).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 \
    || echo "no nvidia-smi: not a GPU machine" > "$OUT/gpu.txt"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
BEST=mask=lengths,prng=rbg,vocab_pad=128,loss_chunk=256
SLAB=32; [ -n "${TINY:-}" ] && SLAB=2  # rows sharing one MLM slab must divide the batch
NEW="$BEST,logits=compute,dropout=hash,loss_grad=forward,slab=$SLAB"
# Children: the matmul peak, 2 ours rows + 1 compiled reference per workload (~60-110 s each,
# measured 2026-11-24); what does not fit the budget is listed as skipped in the JSON.
timeout -s TERM 400 python3 benchmarks/throughput.py --checks matmul \
    --workloads gpt2_small,bert_base --reference_modes compile --budget_s 330 \
    --variants "$BEST;$NEW" ${TINY:+--tiny --steps 2 --windows 1 --warmup 1} \
    --out "$OUT/throughput.json" > "$OUT/throughput.log" 2>&1
echo "throughput.py exit $?"
HEAD="--tokens 16384 --rows 16 --steps 10 --repeats 3"
[ -n "${TINY:-}" ] && HEAD="--tokens 256 --rows 2 --width 64 --vocab 1000 --steps 1 --repeats 1"
timeout -s TERM 90 python3 benchmarks/loss_head.py $HEAD --json "$OUT/loss_head.json" \
    > "$OUT/loss_head.log" 2>&1
echo "loss_head.py exit $?"
tail -n 40 "$OUT/throughput.log"; cat "$OUT/loss_head.log"
