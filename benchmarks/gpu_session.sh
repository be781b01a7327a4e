#!/bin/bash
# The one device run of a session with a lent GPU (issue 16's GPU figures): the GPU tests, the
# per-tensor kernel costs, and the Recorder's overhead on the ResNet (batch 256) and the CNN with
# the torch-ops path, the Triton pass, and the Triton pass on a side stream, side by side.
# Every part runs under its own timeout and the run goes on past a failure; the logs land in $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh [repeats] [runs]
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu-session}
REPEATS=${1:-9}
RUNS=${2:-1}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "== GPU tests"
timeout 240 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25
echo "== per-tensor kernels"
timeout 200 python3 benchmarks/gpu_stats_kernel.py --profile > "$OUT/kernels.md" 2>&1
grep -v "^\s*$" "$OUT/kernels.md" | grep "^|" | head -60
for run in $(seq "$RUNS"); do
  for path in torch triton side; do
    echo "== probe_overhead, $path, run $run"
    case $path in
      torch) env=() args=() ;;
      triton) env=() args=(--triton) ;;
      side) env=(INITSCOPE_STATS_STREAM=1) args=(--triton) ;;
    esac
    env "${env[@]}" timeout 150 python3 benchmarks/probe_overhead.py --device cuda --models resnet,cnn \
      --repeats "$REPEATS" "${args[@]}" 2>&1 | tee -a "$OUT/probe_overhead.md" | grep "^|\|Error\|error"
  done
done
